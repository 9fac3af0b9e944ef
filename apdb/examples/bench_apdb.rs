//! Prints the `apflow bench apdb` report until the CLI subcommand exists:
//! `cargo run -p apflow-apdb --release --example bench_apdb [DIR]` (the database is kept in
//! `DIR` when one is given).

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = std::env::args_os()
        .nth(1)
        .map_or_else(|| tmp.path().to_owned(), std::path::PathBuf::from);
    let config = apflow_apdb::bench::BenchConfig::default();
    match rt.block_on(apflow_apdb::bench::run_sqlite(&config, &dir)) {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}
