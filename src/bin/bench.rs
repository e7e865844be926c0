//! `bench`: the Tiny SNS benchmark (see `tinysns::bench` and README).

use tinysns::bench::{self, Args};
use tinysns::config;

#[tokio::main]
async fn main() {
    let args: Args = config::parse_args();
    if args.serve_echo {
        let listener = config::listen("bench", 0).await;
        if let Err(e) = bench::echo::serve(listener).await {
            eprintln!("bench: echo server: {e}");
            std::process::exit(1);
        }
        return;
    }
    std::process::exit(bench::run(args).await);
}
