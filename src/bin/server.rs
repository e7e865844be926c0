//! `server -c <clusterId> -s <serverId> -h <coordHost> -k <coordPort> -p <port>`

use std::process::ExitCode;

use clap::Parser;
use tinysns::config::{self, PeerArgs};

/// A Tiny SNS server: serves the clients of one cluster as its master, or
/// mirrors the master as its slave.
#[derive(Parser, Debug)]
#[command(name = "server", disable_help_flag = true)]
struct Cli {
    /// Cluster id (1..=number of clusters).
    #[arg(short = 'c', value_parser = clap::value_parser!(u32).range(1..))]
    cluster: u32,
    /// Server id within the cluster.
    #[arg(short = 's', value_parser = clap::value_parser!(u32).range(1..))]
    server: u32,
    #[command(flatten)]
    peer: PeerArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = match config::parse_args() {
        Ok(cli) => cli,
        Err(status) => return status,
    };
    let p = cli.peer;
    let trust = match p.knobs.trust() {
        Ok(t) => t,
        Err(status) => return status,
    };
    let opts = tinysns::server::Options {
        cluster: cli.cluster,
        server_id: cli.server,
        coordinator: p.coordinator(),
        host: p.host,
        port: p.port,
        heartbeat: p.knobs.heartbeat(),
        fsync: p.knobs.fsync,
        data_dir: p.knobs.data_dir,
        trust,
        limits: p.limits,
        http_port: p.knobs.http_port,
    };
    config::run_daemon("server", opts.port, |listener, shutdown| {
        tinysns::server::run(listener, opts, shutdown)
    })
    .await
}
