//! `bench`: the Tiny SNS benchmark (see the `snsbench` library and README).

use snsbench::{self as bench, Args};
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
