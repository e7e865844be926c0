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

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = match config::parse_args() {
        Ok(cli) => cli,
        Err(status) => return status,
    };
    let trust = match cli.knobs.trust() {
        Ok(t) => t,
        Err(status) => return status,
    };
    let opts = Options {
        clusters: cli.clusters,
        heartbeat: cli.knobs.heartbeat(),
        state_dir: cli.knobs.data_dir.join("coordinator"),
        trust,
        http_port: cli.knobs.http_port,
    };
    config::run_daemon("coordinator", cli.port, |listener, shutdown| {
        coordinator::run(listener, opts, shutdown)
    })
    .await
}
