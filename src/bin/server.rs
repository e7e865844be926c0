//! `server -c <clusterId> -s <serverId> -h <coordHost> -k <coordPort> -p <port>`

use clap::Parser;
use tinysns::config::{self, Knobs};

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
    /// Coordinator host.
    #[arg(short = 'h')]
    coord_host: String,
    /// Coordinator port.
    #[arg(short = 'k', value_parser = clap::value_parser!(u16).range(1..))]
    coord_port: u16,
    /// Port to listen on.
    #[arg(short = 'p', value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// Host name that clients and peers use to reach this server.
    #[arg(long = "host", env = "SNS_HOST", default_value = "127.0.0.1")]
    host: String,
    #[command(flatten)]
    knobs: Knobs,
    /// Print help.
    #[arg(long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

#[tokio::main]
async fn main() {
    let cli: Cli = config::parse_args();
    config::init_daemon_logging();
    let listener = config::listen("server", cli.port).await;
    let opts = tinysns::server::Options {
        cluster: cli.cluster,
        server_id: cli.server,
        coordinator: format!("{}:{}", cli.coord_host, cli.coord_port),
        host: cli.host,
        port: cli.port,
        heartbeat: cli.knobs.heartbeat(),
        data_dir: cli.knobs.data_dir,
    };
    config::exit_with(
        "server",
        tinysns::server::run(listener, opts, config::shutdown_signal()).await,
    );
}
