//! `snsctl`: the operator's tool. `snsctl status` prints the coordinator's
//! routing table (`--json` for scripts), `snsctl watch` redraws it every
//! second (SPEC §7); `snsctl tls init <dir>` makes a CA and a certificate
//! for `./startup.sh --tls` (SPEC §5).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tinysns::config;
use tinysns::ops::table;
use tonic::transport::ClientTlsConfig;

/// Tiny SNS operator's tool.
#[derive(Parser, Debug)]
#[command(name = "snsctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand, Debug)]
enum Top {
    /// Prints the routing table: every server's role, state, epoch and
    /// heartbeat age, the synchronizers' lag, the latest failovers.
    Status(Coord),
    /// Like `status`, redrawn in place every second until Ctrl-C.
    Watch(Coord),
    /// TLS certificates.
    #[command(subcommand)]
    Tls(Tls),
}

#[derive(Subcommand, Debug)]
enum Tls {
    /// Makes a CA (ca.pem, ca.key) and one certificate signed by it
    /// (node.pem, node.key) in DIR, for the given hosts.
    Init {
        /// Where to write the files (created if missing).
        dir: PathBuf,
        /// A host name or address the certificate is good for; repeat for
        /// more (default: localhost, 127.0.0.1, ::1).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

/// Where the coordinator is, as the course client's flags name it.
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
struct Coord {
    /// The coordinator's host.
    #[arg(short = 'h', long = "host", default_value = "127.0.0.1")]
    host: String,
    /// The coordinator's gRPC port (`./startup.sh`'s by default).
    #[arg(short = 'k', long = "port", default_value_t = 9000, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// The table as JSON (the form of the coordinator's `/api/table`).
    #[arg(long)]
    json: bool,
    /// The CA that signed the coordinator's certificate, if it speaks TLS.
    #[arg(long = "tls-ca", env = "SNS_TLS_CA", value_name = "caFile")]
    tls_ca: Option<PathBuf>,
    /// How many of the latest events to show.
    #[arg(long, default_value_t = 8)]
    events: usize,
    /// Print help.
    #[arg(long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// A coordinator that does not answer within this is reported as down.
const DEADLINE: Duration = Duration::from_secs(3);

async fn status(c: &Coord, tls: Option<&ClientTlsConfig>) -> Result<String, String> {
    let t = table::fetch(&c.host, c.port, tls, DEADLINE)
        .await
        .map_err(|e| e.to_string())?;
    if c.json {
        serde_json::to_string_pretty(&t).map_err(|e| e.to_string())
    } else {
        Ok(table::render(&t, c.events))
    }
}

async fn run(c: Coord, watch: bool) -> ExitCode {
    let tls = match c.tls_ca.as_deref().map(tinysns::trust::tls::client_config) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !watch {
        return match status(&c, tls.as_ref()).await {
            Ok(text) => {
                println!("{}", text.trim_end());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            _ = tick.tick() => {}
        }
        // A coordinator that is down is shown as such, and watched for
        // until it is back: that is what a watch is for.
        let text = status(&c, tls.as_ref())
            .await
            .unwrap_or_else(|e| format!("error: {e}"));
        let now = chrono::Utc::now().format("%H:%M:%S");
        // Home, clear: the table is redrawn in place.
        print!(
            "\x1b[H\x1b[2Jcoordinator {}:{} at {now} UTC (Ctrl-C to stop)\n\n{}\n",
            c.host,
            c.port,
            text.trim_end()
        );
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }
}

fn main() -> ExitCode {
    let cli: Cli = match config::parse_args() {
        Ok(cli) => cli,
        Err(status) => return status,
    };
    match cli.command {
        Top::Status(c) => runtime(run(c, false)),
        Top::Watch(c) => runtime(run(c, true)),
        Top::Tls(Tls::Init { dir, mut hosts }) => {
            if hosts.is_empty() {
                hosts = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
            }
            match tinysns::trust::tls::make(&dir, &hosts) {
                Ok(made) => {
                    println!(
                        "made {}, {} and {} for {}",
                        made.ca.display(),
                        made.cert.display(),
                        made.key.display(),
                        hosts.join(", ")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs `f` on a small runtime: one call at a time needs no more.
fn runtime(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}
