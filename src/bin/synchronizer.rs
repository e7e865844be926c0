//! `synchronizer -h <coordHost> -k <coordPort> -p <port> -i <synchronizerId>`

use clap::Parser;
use tinysns::config::{self, Knobs};

/// A Tiny SNS follower synchronizer: carries users, follows and posts between
/// its cluster and the others.
#[derive(Parser, Debug)]
#[command(name = "synchronizer", disable_help_flag = true)]
struct Cli {
    /// Coordinator host.
    #[arg(short = 'h')]
    coord_host: String,
    /// Coordinator port.
    #[arg(short = 'k', value_parser = clap::value_parser!(u16).range(1..))]
    coord_port: u16,
    /// Port to listen on.
    #[arg(short = 'p', value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// Synchronizer id, which is the id of the cluster it serves.
    #[arg(short = 'i', value_parser = clap::value_parser!(u32).range(1..))]
    id: u32,
    /// Host name that other synchronizers use to reach this one.
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
    let listener = config::listen("synchronizer", cli.port).await;
    let opts = tinysns::synchronizer::Options {
        id: cli.id,
        coordinator: format!("{}:{}", cli.coord_host, cli.coord_port),
        host: cli.host,
        port: cli.port,
        heartbeat: cli.knobs.heartbeat(),
        sync_interval: cli.knobs.sync_interval(),
        data_dir: cli.knobs.data_dir,
    };
    config::exit_with(
        "synchronizer",
        tinysns::synchronizer::run(listener, opts, config::shutdown_signal()).await,
    );
}
