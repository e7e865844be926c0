//! `snsctl`: the operator's tool. `snsctl tls init <dir>` makes a CA and a
//! certificate for `./startup.sh --tls` (SPEC §5).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tinysns::config;

/// Tiny SNS operator's tool.
#[derive(Parser, Debug)]
#[command(name = "snsctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand, Debug)]
enum Top {
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

fn main() -> ExitCode {
    let cli: Cli = match config::parse_args() {
        Ok(cli) => cli,
        Err(status) => return status,
    };
    match cli.command {
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
