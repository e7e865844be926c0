//! `server -c <clusterId> -s <serverId> -h <coordHost> -k <coordPort> -p <port>`

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
async fn main() {
    let cli: Cli = config::parse_args();
    config::init_daemon_logging();
    let p = cli.peer;
    let listener = config::listen("server", p.port).await;
    let opts = tinysns::server::Options {
        cluster: cli.cluster,
        server_id: cli.server,
        coordinator: p.coordinator(),
        host: p.host,
        port: p.port,
        heartbeat: p.knobs.heartbeat(),
        fsync: p.knobs.fsync,
        data_dir: p.knobs.data_dir,
    };
    config::exit_with(
        "server",
        tinysns::server::run(listener, opts, config::shutdown_on_signal()).await,
    );
}
