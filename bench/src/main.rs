//! `bench`: the Tiny SNS benchmark (see the `snsbench` library and README).

use std::process::ExitCode;

use snsbench::{self as bench, Args};
use tinysns::config;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = match config::parse_args() {
        Ok(args) => args,
        Err(status) => return status,
    };
    if args.serve_echo {
        return match config::listen(0).await {
            Ok(listener) => {
                config::exit_code("bench: echo server", bench::echo::serve(listener).await)
            }
            Err(e) => config::exit_code("bench", Err(e)),
        };
    }
    config::exit_status(bench::run(args).await)
}
