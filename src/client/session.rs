//! Being logged in, and staying so: finding the master through the
//! coordinator, the login, the task that keeps the session alive, failing
//! over with backoff, and running a command so that a failover in the middle
//! of it goes unnoticed.
//!
//! Every call goes through [`within`], which gives it a deadline and turns a
//! failure into an [`Error`] through the crate's one mapping; everything
//! after that decides from the variant: [`Error::is_unavailable`] means "nobody
//! answered, ask the coordinator again", anything else is the server's
//! answer.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use log::{debug, info};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::Status;
use tonic::transport::ClientTlsConfig;

use super::Options;
use super::command::{Command, list_lines, reply_line};
use super::screen::Ui;
use crate::config;
use crate::course::{Outcome, Rpc};
use crate::error::{Error, quote};
use crate::proto::csce438::{Request, sns_service_client::SnsServiceClient};
use crate::proto::tinysns::{UserRequest, coordinator_client::CoordinatorClient};
use crate::trust::{Link, Timing, with_deadline};

/// Shortest RPC deadline, whatever the lease: a loaded server must not be
/// mistaken for a dead one.
const MIN_RPC_DEADLINE: Duration = Duration::from_millis(500);
/// Assumed lease if a server announces none (two default heartbeat periods,
/// the server's failure window).
const FALLBACK_LEASE: Duration = Duration::from_millis(2 * crate::config::DEFAULT_HEARTBEAT_MS);
const BACKOFF_FIRST: Duration = Duration::from_millis(50);

/// The largest reply the client takes: LIST at the default user cap. A
/// cluster's `all_users.txt` holds at most the cap (local and remote users
/// count), but the caller's followers may be users of every cluster, each
/// cluster holding at most the cap of its own: `1 + clusters` caps of ids,
/// each at most 20 digits and 2 bytes of framing (88 MB for 1,000,000 users
/// and three clusters; tonic's default, 4 MiB, is about 400,000 users).
pub(super) const MAX_REPLY_BYTES: usize = (1 + config::DEFAULT_CLUSTERS as usize)
    * config::DEFAULT_MAX_USERS as usize
    * (config::MAX_USER_DIGITS + 2);
pub(super) const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// A random nonzero id (0 means "none" in the protocol).
pub(super) fn random_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

pub(super) fn rpc_deadline(lease: Duration) -> Duration {
    lease.max(MIN_RPC_DEADLINE)
}

fn refresh_period(lease: Duration) -> Duration {
    (lease / 4).max(Duration::from_millis(50))
}

/// 50 ms doubling to 500 ms: quick to recover, never spinning.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(super) fn new() -> Self {
        Self::capped(BACKOFF_MAX)
    }

    /// Backing off to at most `max` (at least the first delay).
    pub(super) fn capped(max: Duration) -> Self {
        Backoff {
            next: BACKOFF_FIRST,
            max: max.max(BACKOFF_FIRST),
        }
    }

    pub(super) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

/// Runs one call under a deadline; an expired deadline means nobody answered.
pub(super) async fn within<T>(
    limit: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Error> {
    match timeout(limit, call).await {
        Ok(result) => result.map(tonic::Response::into_inner).map_err(Error::from),
        Err(_) => Err(Error::Unavailable(format!(
            "no answer within {} ms",
            limit.as_millis()
        ))),
    }
}

/// Who we are, as every request says it, and how we reach servers (TLS
/// or not).
#[derive(Debug, Clone)]
pub(super) struct Identity {
    user: u64,
    pub(super) username: String,
    pub(super) session: String,
    tls: Option<ClientTlsConfig>,
}

impl Identity {
    fn new(user: u64, tls: Option<ClientTlsConfig>) -> Self {
        Identity {
            user,
            username: user.to_string(),
            session: format!("{:016x}", rand::random::<u64>()),
            tls,
        }
    }

    fn request(&self, arguments: Vec<String>, request_id: u64) -> Request {
        Request {
            username: self.username.clone(),
            arguments,
            session: self.session.clone(),
            request_id,
        }
    }
}

/// A logged-in server.
#[derive(Debug, Clone)]
pub(super) struct Conn {
    host: String,
    port: u16,
    pub(super) sns: SnsServiceClient<Link>,
    pub(super) lease: Duration,
}

impl Conn {
    pub(super) fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A channel to `host:port` ([`crate::trust::link`]). With a lease (two of
/// the server's heartbeats), it is timed by that heartbeat: HTTP/2
/// keep-alive pings, also on an idle connection, close a connection that
/// stopped answering (a cut link that drops packets and closes nothing)
/// within a lease, even under a timeline stream that has nothing to say; a
/// connection attempt gives up after a heartbeat; and a call that misses its
/// deadline replaces the connection for the next one. Without a lease (the
/// first login), the connection may take `connect_timeout`.
fn link(
    host: &str,
    port: u16,
    lease: Option<Duration>,
    connect_timeout: Duration,
    tls: Option<&ClientTlsConfig>,
) -> Result<Link, Error> {
    let addr = crate::trust::host_port(host, port);
    let ep = crate::trust::endpoint(&addr, tls)?;
    let timing = match lease {
        Some(lease) => Timing::of(lease / 2).with_deadline(rpc_deadline(lease)),
        None => Timing {
            connect: connect_timeout,
            ..Timing::of(FALLBACK_LEASE / 2).with_deadline(connect_timeout)
        },
    };
    Ok(Link::new(ep, timing))
}

/// The client API over `link`, taking replies up to [`MAX_REPLY_BYTES`].
fn sns_client(link: Link) -> SnsServiceClient<Link> {
    SnsServiceClient::new(link).max_decoding_message_size(MAX_REPLY_BYTES)
}

/// Asks the coordinator for the master of the user's cluster. A bad answer
/// is as good as none: ask again.
async fn ask_master(
    coord: &CoordinatorClient<Link>,
    user: u64,
    limit: Duration,
) -> Result<(String, u16), Error> {
    let mut coord = coord.clone();
    // The deadline is the channel's to keep, so that a connection to the
    // coordinator that stalled is replaced for the next question.
    let info = coord
        .get_server(with_deadline(UserRequest { user_id: user }, limit))
        .await
        .map(tonic::Response::into_inner)
        .map_err(Error::from)?;
    let port = u16::try_from(info.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Error::Unavailable(format!("coordinator named a bad port {}", info.port)))?;
    if info.hostname.is_empty() {
        return Err(Error::Unavailable("coordinator named no host".into()));
    }
    Ok((info.hostname, port))
}

/// The outcome an OK reply names (SPEC §6); a message not in the table is
/// the server's fault, not an outcome.
fn outcome(rpc: Rpc, msg: &str) -> Result<Outcome, Error> {
    Outcome::from_msg(rpc, msg)
        .ok_or_else(|| Error::Internal(format!("unexpected reply to {rpc:?}: {}", quote(msg))))
}

/// Connects to `host:port` and logs in. `lease_hint` is the lease we already
/// know (for the keep-alive settings), if any. An unavailable error is worth
/// another try; any other is the server's refusal.
async fn login_at(
    id: &Identity,
    host: &str,
    port: u16,
    lease_hint: Option<Duration>,
    limit: Duration,
) -> Result<Conn, Error> {
    let ch = link(host, port, lease_hint, limit, id.tls.as_ref())
        .map_err(|e| Error::Unavailable(format!("bad server address {host}:{port}: {e}")))?;
    let mut sns = sns_client(ch);
    let reply = within(limit, sns.login(id.request(Vec::new(), random_id())))
        .await
        .map_err(|e| match e {
            Error::Unavailable(m) => Error::Unavailable(format!("login at {host}:{port}: {m}")),
            refused => refused,
        })?;
    match outcome(Rpc::Login, &reply.msg)? {
        Outcome::LoggedIn => {}
        refused => {
            return Err(Error::AlreadyExists(format!(
                "login at {host}:{port}: {}",
                refused.msg()
            )));
        }
    }
    let lease = if reply.lease_ms == 0 {
        FALLBACK_LEASE
    } else {
        Duration::from_millis(reply.lease_ms)
    };
    // The keep-alive settings depend on the lease, which the first login
    // only now learnt: open the working channel with them.
    if lease_hint != Some(lease) {
        sns = sns_client(link(
            host,
            port,
            Some(lease),
            rpc_deadline(lease),
            id.tls.as_ref(),
        )?);
    }
    info!("logged in at {host}:{port}, lease {} ms", lease.as_millis());
    Ok(Conn {
        host: host.to_owned(),
        port,
        sns,
        lease,
    })
}

/// The first login, bounded by the connect timeout. `None` means
/// `connection failed: -1`.
async fn first_login(
    id: &Identity,
    coord: &CoordinatorClient<Link>,
    total: Duration,
) -> Option<Conn> {
    let deadline = Instant::now() + total;
    let mut backoff = Backoff::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            info!("no server could log us in within {} ms", total.as_millis());
            return None;
        }
        match ask_master(coord, id.user, left).await {
            Ok((host, port)) => match login_at(id, &host, port, None, left).await {
                Ok(conn) => return Some(conn),
                Err(e) if e.is_unavailable() => debug!("{e}"),
                Err(e) => {
                    info!("login refused: {e:?}");
                    return None;
                }
            },
            Err(e) => debug!("coordinator: {e}"),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        sleep(backoff.next_delay().min(left)).await;
    }
}

/// The task that keeps the session alive on whichever server is current: a
/// `Login` with the same session every quarter lease. Failures are only
/// logged: the foreground notices a dead server by itself and fails over.
/// It stops when told, or when dropped, so it never outlives [`super::run`].
struct Refresher {
    task: JoinHandle<()>,
    stop: DropGuard,
}

impl Refresher {
    fn spawn(id: Identity, current: watch::Receiver<Conn>) -> Self {
        let stop = CancellationToken::new();
        let refreshing = async move {
            loop {
                let lease = current.borrow().lease;
                sleep(refresh_period(lease)).await;
                let conn = current.borrow().clone();
                let mut sns = conn.sns.clone();
                let call = sns.login(id.request(Vec::new(), random_id()));
                match within(rpc_deadline(conn.lease), call).await {
                    Ok(r) if r.msg == Outcome::LoggedIn.msg() => {
                        debug!("session refreshed at {}", conn.addr());
                    }
                    Ok(r) => debug!("session refresh at {} refused: {}", conn.addr(), r.msg),
                    Err(e) => debug!("session refresh at {} failed: {e:?}", conn.addr()),
                }
            }
        };
        let token = stop.clone();
        Refresher {
            task: tokio::spawn(async move {
                token.run_until_cancelled(refreshing).await;
            }),
            stop: stop.drop_guard(),
        }
    }

    /// Stops the task and waits until it has stopped.
    async fn stop(self) {
        self.stop.disarm().cancel();
        if let Err(e) = self.task.await {
            debug!("the session refresher failed: {e}");
        }
    }
}

/// A logged-in client: who it is, where the coordinator is, and the server
/// it is logged in at now.
pub(super) struct Session {
    pub(super) id: Identity,
    coord: CoordinatorClient<Link>,
    pub(super) conn: Conn,
    /// Tells the refresher which server is current.
    current: watch::Sender<Conn>,
    refresher: Refresher,
}

impl Session {
    /// Logs in as `opts` says, within its connect timeout, and starts keeping
    /// the session alive. `None` means `connection failed: -1`.
    pub(super) async fn open(opts: &Options) -> Option<Session> {
        let id = Identity::new(opts.user, opts.tls.clone());
        let coord = match link(
            &opts.coord_host,
            opts.coord_port,
            None,
            opts.connect_timeout,
            opts.tls.as_ref(),
        ) {
            Ok(ch) => CoordinatorClient::new(ch),
            Err(e) => {
                info!("bad coordinator address: {e}");
                return None;
            }
        };
        let conn = first_login(&id, &coord, opts.connect_timeout).await?;
        let (current, watcher) = watch::channel(conn.clone());
        let refresher = Refresher::spawn(id.clone(), watcher);
        Some(Session {
            id,
            coord,
            conn,
            current,
            refresher,
        })
    }

    /// Leaves no session behind, so the user can log in again at once; a
    /// client that is killed instead leaves one that expires with its lease.
    /// The refresher is stopped first so that no refresh follows the logout
    /// (the server also refuses to revive a session that was logged out).
    pub(super) async fn close(self) {
        self.refresher.stop().await;
        let mut sns = self.conn.sns.clone();
        let logout = sns.logout(self.id.request(Vec::new(), 0));
        if let Err(e) = within(rpc_deadline(self.conn.lease), logout).await {
            debug!("logout: {e}");
        }
    }

    /// Finds the master again and logs in there; keeps trying as long as it
    /// takes (the user is waiting for it). Sleeps `pause` first.
    pub(super) async fn failover<W: Write>(&mut self, ui: &Ui<W>, pause: Duration) {
        if !pause.is_zero() {
            sleep(pause).await;
        }
        // With short heartbeats a failover is quick: do not sleep through
        // it. A quarter of the lease (half a heartbeat), 50 to 500 ms.
        let mut backoff = Backoff::capped((self.conn.lease / 4).min(BACKOFF_MAX));
        let mut announced: Option<String> = None;
        loop {
            let limit = rpc_deadline(self.conn.lease);
            match ask_master(&self.coord, self.id.user, limit).await {
                Ok((host, port)) => {
                    let addr = format!("{host}:{port}");
                    if addr != self.conn.addr() && announced.as_deref() != Some(addr.as_str()) {
                        ui.line(&format!("Reconnecting to {addr}..."));
                        announced = Some(addr);
                    }
                    match login_at(&self.id, &host, port, Some(self.conn.lease), limit).await {
                        Ok(conn) => {
                            self.conn = conn.clone();
                            self.current.send_replace(conn);
                            return;
                        }
                        Err(e) => debug!("{e:?}"),
                    }
                }
                Err(e) => debug!("coordinator: {e}"),
            }
            sleep(backoff.next_delay()).await;
        }
    }

    /// One attempt at a FOLLOW, UNFOLLOW or LIST: the lines to print.
    async fn call(&self, cmd: &Command, request_id: u64) -> Result<Vec<String>, Error> {
        let mut sns = self.conn.sns.clone();
        let limit = rpc_deadline(self.conn.lease);
        match cmd {
            Command::Follow(who) => {
                let req = self.id.request(vec![who.clone()], request_id);
                let reply = within(limit, sns.follow(req)).await?;
                Ok(vec![
                    reply_line(Ok(outcome(Rpc::Follow, &reply.msg)?)).to_owned(),
                ])
            }
            Command::UnFollow(who) => {
                let req = self.id.request(vec![who.clone()], request_id);
                let reply = within(limit, sns.un_follow(req)).await?;
                Ok(vec![
                    reply_line(Ok(outcome(Rpc::UnFollow, &reply.msg)?)).to_owned(),
                ])
            }
            Command::List => {
                let req = self.id.request(Vec::new(), request_id);
                let reply = within(limit, sns.list(req)).await?;
                Ok(list_lines(&reply))
            }
            other => Err(Error::Internal(format!("not a server command: {other:?}"))),
        }
    }

    /// Runs a command, failing over and retrying it once (same request id) if
    /// the server did not answer, so a FOLLOW that reached the old master
    /// just before it died is not applied twice.
    pub(super) async fn command<W: Write>(&mut self, ui: &Ui<W>, cmd: &Command) {
        let request_id = random_id();
        let result = match self.call(cmd, request_id).await {
            Err(e) if e.is_unavailable() => {
                info!("{cmd:?} failed ({e}); failing over");
                self.failover(ui, Duration::ZERO).await;
                let again = self.call(cmd, request_id).await;
                if let Err(e) = &again
                    && e.is_unavailable()
                {
                    info!("{cmd:?} failed again ({e})");
                }
                again
            }
            other => other,
        };
        match result {
            Ok(lines) => lines.iter().for_each(|l| ui.line(l)),
            Err(e) => {
                debug!("{cmd:?}: {e:?}");
                ui.line(reply_line(Err(&e)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a failed call means "the server did not answer" (ask the
    /// coordinator, try elsewhere) rather than "the server said no".
    fn needs_failover(status: Status) -> bool {
        Error::from(status).is_unavailable()
    }

    #[test]
    fn failover_classification() {
        assert!(needs_failover(Status::unavailable("down")));
        assert!(needs_failover(Status::deadline_exceeded("slow")));
        assert!(!needs_failover(Status::already_exists("dup")));
        assert!(!needs_failover(Status::internal("bug")));
        // A local transport failure keeps its cause as the source.
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(needs_failover(Status::from_error(Box::new(io))));
        // The channel's readiness error is turned into a bare UNKNOWN.
        assert!(needs_failover(Status::unknown("Service was not ready: x")));
        assert!(!needs_failover(Status::unknown("something else")));
        // A CANCELLED from a server is its answer; a reset stream is not.
        assert!(!needs_failover(Status::cancelled("by the server")));
        let mut reset = Status::cancelled("stream reset");
        reset.set_source(std::sync::Arc::new(std::io::Error::other("h2")));
        assert!(needs_failover(reset));
    }

    #[tokio::test]
    async fn an_unanswered_call_is_unavailable() {
        let call = std::future::pending::<Result<tonic::Response<()>, Status>>();
        let e = within(Duration::from_millis(1), call).await;
        assert!(e.is_err_and(|e| e.is_unavailable()));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::new();
        let got: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [50, 100, 200, 400, 500, 500]);
        let mut b = Backoff::capped(Duration::from_millis(10));
        let got: Vec<u128> = (0..3).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [50, 50, 50]);
    }

    #[test]
    fn a_list_at_the_user_cap_fits_in_a_reply() {
        use crate::proto::csce438::ListReply;
        use prost::Message;
        // Each id of a reply costs the same: measure the longest one.
        let one = |all: usize, followers: usize| {
            ListReply {
                all_users: vec![u64::MAX.to_string(); all],
                followers: vec![u64::MAX.to_string(); followers],
            }
            .encoded_len()
        };
        let per_id = one(1, 0);
        assert_eq!(one(3, 4), 7 * per_id);
        let n = config::DEFAULT_MAX_USERS as usize;
        let at_cap = (n + n * config::DEFAULT_CLUSTERS as usize) * per_id;
        assert!(at_cap <= MAX_REPLY_BYTES, "{at_cap} > {MAX_REPLY_BYTES}");
    }

    #[test]
    fn deadlines_follow_the_lease() {
        assert_eq!(rpc_deadline(Duration::from_millis(100)), MIN_RPC_DEADLINE);
        assert_eq!(
            rpc_deadline(Duration::from_secs(20)),
            Duration::from_secs(20)
        );
        assert_eq!(
            refresh_period(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            refresh_period(Duration::from_millis(40)),
            Duration::from_millis(50)
        );
    }

    #[tokio::test]
    async fn ids_are_never_zero_and_addresses_are_uris() {
        assert!((0..1000).all(|_| random_id() != 0));
        assert!(link("::1", 9000, None, MIN_RPC_DEADLINE, None).is_ok());
        assert!(link("[::1]", 9000, None, MIN_RPC_DEADLINE, None).is_ok());
        assert!(
            link(
                "localhost",
                9000,
                Some(FALLBACK_LEASE),
                MIN_RPC_DEADLINE,
                None
            )
            .is_ok()
        );
        assert!(link("bad host", 9000, None, MIN_RPC_DEADLINE, None).is_err());
    }
}
