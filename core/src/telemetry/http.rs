//! The HTTP endpoints every service serves: `/metrics` (Prometheus text format) and
//! `/healthz`. Other components add routes (the schema registry, the alert archive)
//! by merging their own [`axum::Router`] before serving.

use std::net::SocketAddr;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

async fn metrics_handler() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        super::metrics::render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// The router with `/metrics` and `/healthz`.
pub fn router() -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
}

/// A running HTTP server.
#[derive(Debug)]
pub struct Server {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// The serving task.
    pub task: JoinHandle<()>,
}

/// Serves `router` on `listen` (`host:port`; port 0 picks a free port).
pub async fn serve(listen: &str, router: Router) -> std::io::Result<Server> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "HTTP server stopped.");
        }
    });
    tracing::info!(%addr, "Serving /metrics and /healthz.");
    Ok(Server { addr, task })
}
