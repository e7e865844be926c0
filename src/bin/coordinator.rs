//! `coordinator -p <port>`: the routing table, heartbeats, failure detection
//! and promotion. All the logic lives in `tinysns::coordinator`; this is flag
//! parsing, logging and signal handling.

use std::process::ExitCode;

use clap::Parser;
use tinysns::config;
use tinysns::coordinator::{self, Options};

/// Tiny SNS coordinator.
#[derive(Parser, Debug)]
#[command(name = "coordinator", version, about)]
struct Cli {
    /// Port to listen on (all interfaces).
    #[arg(short = 'p', value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// Number of clusters; users live in cluster ((id - 1) % N) + 1.
    #[arg(long = "clusters", env = "SNS_CLUSTERS", default_value_t = config::DEFAULT_CLUSTERS,
          value_parser = clap::value_parser!(u32).range(1..))]
    clusters: u32,
    #[command(flatten)]
    knobs: config::Knobs,
}

/// Completes on Ctrl-C or SIGTERM, so that `kill <pid>` stops us cleanly.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                log::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    log::info!("shutting down");
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = config::parse_args();
    config::init_daemon_logging();
    let listener = match tokio::net::TcpListener::bind(("0.0.0.0", cli.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("coordinator: cannot listen on port {}: {e}", cli.port);
            return ExitCode::from(1);
        }
    };
    let opts = Options {
        clusters: cli.clusters,
        heartbeat: cli.knobs.heartbeat(),
        state_dir: cli.knobs.data_dir.join("coordinator"),
    };
    match coordinator::run(listener, opts, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line on stderr (where the log goes too) is enough.
            eprintln!("coordinator: {e}");
            ExitCode::from(1)
        }
    }
}
