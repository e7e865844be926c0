//! `synchronizer -h <coordHost> -k <coordPort> -p <port> -i <synchronizerId>`

use std::process::ExitCode;

use clap::Parser;
use tinysns::config::{self, PeerArgs};

/// A Tiny SNS follower synchronizer: carries users, follows and posts between
/// its cluster and the others.
#[derive(Parser, Debug)]
#[command(name = "synchronizer", disable_help_flag = true)]
struct Cli {
    /// Synchronizer id, which is the id of the cluster it serves.
    #[arg(short = 'i', value_parser = clap::value_parser!(u32).range(1..))]
    id: u32,
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
    let opts = tinysns::synchronizer::Options {
        id: cli.id,
        coordinator: p.coordinator(),
        host: p.host,
        port: p.port,
        heartbeat: p.knobs.heartbeat(),
        sync_interval: p.knobs.sync_interval(),
        fsync: p.knobs.fsync,
        http_port: p.knobs.http_port,
        data_dir: p.knobs.data_dir,
        trust,
        limits: p.limits,
    };
    config::run_daemon("synchronizer", opts.port, |listener, shutdown| {
        tinysns::synchronizer::run(listener, opts, shutdown)
    })
    .await
}
