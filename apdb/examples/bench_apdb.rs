//! Prints the `apflow bench apdb` report until the CLI subcommand exists:
//! `cargo run -p apflow-apdb --release --example bench_apdb`

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = apflow_apdb::bench::BenchConfig::default();
    match rt.block_on(apflow_apdb::bench::run_sqlite(&config, dir.path())) {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}
