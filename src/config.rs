//! Settings shared by every process: the knobs of SPEC §1 and the partitioning
//! rule.
//!
//! Every knob is a long flag with an environment-variable fallback, so tests and
//! benchmarks can shrink the periods without touching the public short flags.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::error::Error;

/// Default heartbeat period of servers and synchronizers.
pub const DEFAULT_HEARTBEAT_MS: u64 = 10_000;
/// Default period of the synchronizers' full diff-and-push cycle.
pub const DEFAULT_SYNC_INTERVAL_MS: u64 = 30_000;
/// Default number of clusters.
pub const DEFAULT_CLUSTERS: u32 = 3;

/// The knobs that servers, synchronizers and the coordinator share.
#[derive(clap::Args, Debug, Clone)]
pub struct Knobs {
    /// Heartbeat period in milliseconds; a process is declared failed after two
    /// missed heartbeats.
    #[arg(long = "heartbeat-ms", env = "SNS_HEARTBEAT_MS", default_value_t = DEFAULT_HEARTBEAT_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_ms: u64,
    /// Period of the synchronizers' full diff-and-push cycle, in milliseconds.
    #[arg(long = "sync-interval-ms", env = "SNS_SYNC_INTERVAL_MS", default_value_t = DEFAULT_SYNC_INTERVAL_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub sync_interval_ms: u64,
    /// Root of the data directories.
    #[arg(
        long = "data-dir",
        env = "SNS_DATA_DIR",
        default_value = "./cluster_data"
    )]
    pub data_dir: PathBuf,
    /// Durability: with `true` (the default) a write is acknowledged only once
    /// it is flushed to disk (fdatasync) on both servers; `false` leaves the
    /// flush to the kernel, so a machine crash (not a process crash) can lose
    /// recent writes. Accepts true/false, 1/0, on/off, yes/no.
    #[arg(long = "fsync", env = "SNS_FSYNC", default_value = "true",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub fsync: bool,
    /// Port of the HTTP endpoint (`/metrics`, `/healthz`; the coordinator's
    /// also serves the dashboard at `/` and `/api/table`), on all
    /// interfaces. Off when unset.
    #[arg(long = "http-port", env = "SNS_HTTP_PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub http_port: Option<u16>,
    #[command(flatten)]
    pub trust: crate::trust::TrustArgs,
}

impl Knobs {
    /// The key and TLS settings (SPEC §5); at start-up, a bad file is a
    /// one-line reason and status 2, as with bad flags.
    pub fn trust(&self) -> Result<crate::trust::Trust, ExitCode> {
        init_daemon_logging();
        crate::trust::Trust::load(&self.trust, &self.data_dir).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(2)
        })
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
    pub fn sync_interval(&self) -> Duration {
        Duration::from_millis(self.sync_interval_ms)
    }
    /// The failure window: two missed heartbeats.
    pub fn failure_window(&self) -> Duration {
        2 * self.heartbeat()
    }
}

/// Default of `SNS_MAX_USERS`.
pub const DEFAULT_MAX_USERS: u64 = 1_000_000;
/// Default of `SNS_MAX_STREAMS`.
pub const DEFAULT_MAX_STREAMS: u64 = 1000;
/// Default of `SNS_MAX_STREAMS_PER_USER`.
pub const DEFAULT_MAX_STREAMS_PER_USER: u64 = 4;

/// The bounds on what outsiders can make a process hold (SPEC §5).
#[derive(clap::Args, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most users a cluster accepts (`all_users.txt`, local and remote): a
    /// login of a new user or a synchronizer's push past it is refused.
    #[arg(long = "max-users", env = "SNS_MAX_USERS", default_value_t = DEFAULT_MAX_USERS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_users: u64,
    /// Most timeline streams a server holds open at once.
    #[arg(long = "max-streams", env = "SNS_MAX_STREAMS", default_value_t = DEFAULT_MAX_STREAMS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_streams: u64,
    /// Most timeline streams one user holds open at once.
    #[arg(long = "max-streams-per-user", env = "SNS_MAX_STREAMS_PER_USER",
          default_value_t = DEFAULT_MAX_STREAMS_PER_USER,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_streams_per_user: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_users: DEFAULT_MAX_USERS,
            max_streams: DEFAULT_MAX_STREAMS,
            max_streams_per_user: DEFAULT_MAX_STREAMS_PER_USER,
        }
    }
}

impl Limits {
    /// Whether a directory holding `known` users may take `new` more.
    pub fn admit_users(&self, known: usize, new: usize) -> Result<(), Error> {
        if new == 0 || (known as u64).saturating_add(new as u64) <= self.max_users {
            Ok(())
        } else {
            Err(Error::Exhausted(format!(
                "this cluster holds its maximum of {} users",
                self.max_users
            )))
        }
    }
}

/// The flags that servers and synchronizers share: where the coordinator is,
/// where to listen and how others reach us, and the knobs.
#[derive(clap::Args, Debug, Clone)]
pub struct PeerArgs {
    /// Coordinator host.
    #[arg(short = 'h')]
    pub coord_host: String,
    /// Coordinator port.
    #[arg(short = 'k', value_parser = clap::value_parser!(u16).range(1..))]
    pub coord_port: u16,
    /// Port to listen on.
    #[arg(short = 'p', value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Host name that other processes use to reach this one.
    #[arg(long = "host", env = "SNS_HOST", default_value = "127.0.0.1")]
    pub host: String,
    #[command(flatten)]
    pub knobs: Knobs,
    #[command(flatten)]
    pub limits: Limits,
    /// Print help.
    #[arg(long = "help", action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

impl PeerArgs {
    /// The coordinator's address, `host:port`.
    pub fn coordinator(&self) -> String {
        format!("{}:{}", self.coord_host, self.coord_port)
    }
}

/// The cluster a user lives in: `((id - 1) % n) + 1`.
pub fn cluster_of(user: u64, clusters: u32) -> u32 {
    let n = u64::from(clusters.max(1));
    ((user.saturating_sub(1) % n) + 1) as u32
}

/// Digits of the largest user id (`u64::MAX`).
pub const MAX_USER_DIGITS: usize = 20;

/// Parses a user id as the protocol spells it: a positive decimal integer in
/// ASCII digits, without sign, spaces, newline or leading zeros, that fits
/// in 64 bits. Anything else is not a user (one spelling per user, so that
/// `u04_timeline.txt` is nobody's file).
pub fn parse_user(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.is_empty()
        || b.len() > MAX_USER_DIGITS
        || b[0] == b'0'
        || !b.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    s.parse().ok()
}

/// Directory of one server: `<data>/cluster_<c>/server_<s>/`.
pub fn server_dir(data_dir: &std::path::Path, cluster: u32, server: u32) -> PathBuf {
    data_dir
        .join(format!("cluster_{cluster}"))
        .join(format!("server_{server}"))
}

/// Directory of one cluster: `<data>/cluster_<c>/`.
pub fn cluster_dir(data_dir: &std::path::Path, cluster: u32) -> PathBuf {
    data_dir.join(format!("cluster_{cluster}"))
}

/// Initialises `env_logger` with `info` as the default level for daemons
/// (once; later calls do nothing).
pub fn init_daemon_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .try_init()
        .ok();
}

/// Reads the flags, with SPEC §1's behaviour when they are wrong: a one-line
/// reason and usage on stderr, then `Err` with status 2 for `main` to return.
/// Help and version are printed, and `Err` carries status 0.
pub fn parse_args<T: clap::Parser>() -> Result<T, ExitCode> {
    T::try_parse().map_err(|e| {
        use clap::error::ErrorKind;
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        let text = e.to_string();
        // clap's message runs over several lines (the reason, then e.g. the
        // missing flags); fold it into one.
        let reason = text
            .lines()
            .map(str::trim)
            .take_while(|l| !l.starts_with("Usage:"))
            .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
            .collect::<Vec<_>>()
            .join(" ");
        let reason = reason.trim_start_matches("error: ");
        let usage = T::command().render_usage();
        eprintln!("error: {reason}");
        eprintln!("{usage}");
        ExitCode::from(2)
    })
}

/// Listens on `0.0.0.0:port`; the error is a one-line reason (e.g. the port
/// is taken).
pub async fn listen(port: u16) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen on port {port}: {e}")))
}

/// How long open calls get to end after a daemon is told to stop, before
/// their connections are cut (a client that stopped reading must not hold a
/// daemon up: SIGTERM ends it within a second).
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// Awaits a gRPC server (built with `serve_with_incoming_shutdown` on
/// `stop`); once `stop` is cancelled, its open calls get [`SHUTDOWN_GRACE`]
/// to end, and then the server is dropped with its connections.
pub async fn serve_until<E>(
    serve: impl std::future::Future<Output = Result<(), E>>,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<(), E> {
    tokio::pin!(serve);
    tokio::select! {
        r = &mut serve => r,
        _ = async {
            stop.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            log::warn!("open calls did not end within {SHUTDOWN_GRACE:?} of shutdown; cutting them off");
            Ok(())
        }
    }
}

/// The connections a gRPC server accepts on `listener`, with Nagle's
/// algorithm off: a timeline sends small messages one at a time, and with
/// Nagle on, each waits for the peer's delayed ACK (40 ms on Linux).
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// How a daemon ends: status 0, or 1 with its error on one line of stderr,
/// after its name.
pub fn exit_code<E: std::fmt::Display>(name: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A status that a part's `run` returned as a number, for `main` to return
/// (one outside 0..=255 is 1).
pub fn exit_status(status: i32) -> ExitCode {
    u8::try_from(status).map_or(ExitCode::FAILURE, ExitCode::from)
}

/// The rest of a daemon's `main` once its flags are read: logging, the
/// listener on `port`, then `run` until Ctrl-C or SIGTERM, and the status it
/// ends with ([`exit_code`]).
pub async fn run_daemon<F, Fut, E>(name: &str, port: u16, run: F) -> ExitCode
where
    F: FnOnce(tokio::net::TcpListener, tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    init_daemon_logging();
    match listen(port).await {
        Ok(listener) => exit_code(name, run(listener, shutdown_on_signal()).await),
        Err(e) => exit_code(name, Err(e)),
    }
}

/// A token that is cancelled on Ctrl-C or SIGTERM: the daemons' shutdown.
/// Every task of a daemon watches it (or a child of it) and ends cleanly.
pub fn shutdown_on_signal() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        log::info!("shutting down");
        cancel.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitioning() {
        assert_eq!(cluster_of(1, 3), 1);
        assert_eq!(cluster_of(2, 3), 2);
        assert_eq!(cluster_of(3, 3), 3);
        assert_eq!(cluster_of(4, 3), 1);
        assert_eq!(cluster_of(7, 1), 1);
    }

    #[test]
    fn the_user_cap_counts_only_new_users() {
        let l = Limits {
            max_users: 5,
            ..Limits::default()
        };
        assert!(l.admit_users(4, 1).is_ok());
        assert!(l.admit_users(5, 0).is_ok(), "known users always log in");
        assert!(
            l.admit_users(7, 0).is_ok(),
            "a lowered cap refuses only new ones"
        );
        let e = l.admit_users(5, 1).unwrap_err();
        assert_eq!(
            e,
            Error::Exhausted("this cluster holds its maximum of 5 users".into())
        );
        assert!(l.admit_users(3, 3).is_err(), "a batch is refused whole");
        assert!(l.admit_users(usize::MAX, 1).is_err());
    }

    #[test]
    fn user_ids() {
        assert_eq!(parse_user("12"), Some(12));
        assert_eq!(parse_user("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "1a",
            " 1",
            "abc",
            "99999999999999999999999",
            "18446744073709551616",
            "4\n",
            "4\r",
            "\t4",
            "04",
            "00000000000000000000001",
            "٤",
            "１",
        ] {
            assert_eq!(parse_user(bad), None, "{bad:?}");
        }
    }
}
