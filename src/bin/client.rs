//! `client -h <coordHost> -k <coordPort> -u <userId>`: the interactive
//! terminal client. This file only parses flags, sets up logging and feeds
//! standard input to [`tinysns::client::run`], where the logic lives.

use std::io::BufRead;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tinysns::client::{self, Options};
use tinysns::config;

/// The Tiny SNS terminal client.
#[derive(Parser, Debug)]
#[command(name = "client", disable_help_flag = true)]
struct Cli {
    /// Coordinator host.
    #[arg(short = 'h', value_name = "coordHost")]
    host: String,
    /// Coordinator port.
    #[arg(short = 'k', value_name = "coordPort", value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// User id (a positive integer).
    #[arg(short = 'u', value_name = "userId", value_parser = parse_user_arg)]
    user: u64,
    /// How long to keep trying the first login before giving up, in ms.
    #[arg(
        long = "connect-timeout-ms",
        env = "SNS_CONNECT_TIMEOUT_MS",
        default_value_t = 3000
    )]
    connect_timeout_ms: u64,
    /// TLS: connect with TLS, checking servers against this CA certificate
    /// (PEM), as made by `./startup.sh --tls` (`run/tls/ca.pem`).
    #[arg(long = "tls-ca", env = "SNS_TLS_CA", value_name = "caFile")]
    tls_ca: Option<std::path::PathBuf>,
    /// Print help.
    #[arg(long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

fn parse_user_arg(s: &str) -> Result<u64, String> {
    config::parse_user(s).ok_or_else(|| format!("`{s}` is not a user id (a positive integer)"))
}

/// Reads standard input line by line on a plain thread (reading stdin is
/// blocking) and hands each line, without its newline, to the client. End of
/// input closes the channel.
fn read_stdin(tx: tokio::sync::mpsc::Sender<String>) {
    let stdin = std::io::stdin();
    let mut stdin = stdin.lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match stdin.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                // Bytes that are not UTF-8 become U+FFFD rather than ending
                // the session.
                let line = String::from_utf8_lossy(&buf).into_owned();
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::debug!("cannot read standard input: {e}");
                break;
            }
        }
    }
}

fn main() -> ExitCode {
    let cli: Cli = match config::parse_args() {
        Ok(cli) => cli,
        Err(status) => return status,
    };
    // The user interface owns stdout; diagnostics go to stderr, off unless
    // RUST_LOG asks for them.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off"))
        .format_timestamp_millis()
        .init();

    let tls = match cli
        .tls_ca
        .as_deref()
        .map(tinysns::trust::tls::client_config)
    {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };

    let (tx, rx) = tokio::sync::mpsc::channel(64);
    // Detached: the process exits when `main` returns, even if this thread is
    // still blocked in a read.
    std::thread::spawn(move || read_stdin(tx));

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = Options {
        connect_timeout: Duration::from_millis(cli.connect_timeout_ms),
        handle_interrupt: true,
        tls,
        ..Options::new(cli.host, cli.port, cli.user)
    };
    let status = runtime.block_on(client::run(opts, rx, std::io::stdout()));
    // As `exit` did: whatever `run` left behind (a stream, a retry) is
    // dropped, not waited for.
    runtime.shutdown_background();
    config::exit_status(status)
}
