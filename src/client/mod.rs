//! The interactive terminal client (SPEC §2), written so that it can be driven
//! without a terminal: [`run`] takes the input lines from a channel and writes
//! the user interface to any [`Write`], and returns the exit status.
//!
//! # Design
//!
//! **Identity.** A client process picks one random *session* token when it
//! starts and sends it with every call. The server uses it to tell "this user's
//! live client logging in again" (allowed: a refresh, or a reconnection after
//! failover) from "a second client for the same user" (refused with
//! `ALREADY_EXISTS`). A background task keeps the session alive by repeating
//! `Login` every quarter of the lease the server announced, so a client that is
//! killed (even with SIGKILL) stops refreshing and its session lapses by itself.
//!
//! **Start-up.** The coordinator names the master of the user's cluster; the
//! client logs in there. Anything that looks transient (no master yet, refused
//! connection, timeouts) is retried with a short exponential backoff until the
//! connect timeout runs out; a refusal from a server that did answer is final.
//! Either way the user sees only `connection failed: -1`.
//!
//! **Failover.** Every call has a deadline (the lease, at least 500 ms) so that
//! a hung server is noticed, and the timeline stream, which cannot have one,
//! relies on HTTP/2 keep-alive pings (half a lease) to notice a dead
//! connection. When a call fails in a way that says "nobody answered" rather
//! than "the server said no", the client asks the coordinator again, backing
//! off between attempts, and logs in with the same session on whatever server it
//! names: silently if it is the same server (it may have come back), with
//! `Reconnecting to <host>:<port>...` if it is a new master.
//!
//! **Idempotent retries.** After a failover the command in flight is retried
//! once with the same `request_id`, so a FOLLOW that reached the old master
//! just before it died is not applied twice. Posts carry a client-chosen
//! `post_id`; each stays in an unacknowledged queue until the server's
//! acknowledgement arrives, and the whole queue is resent on every new stream.
//! The server stores a post with a known `post_id` once, so a resend can never
//! double a post.
//!
//! **No post shown twice.** A new stream starts with the last 20 posts again.
//! The client remembers the `(author, time)` of every post it has printed (that
//! pair identifies a post, SPEC §3) and skips posts it has already shown.
//!
//! **Input during an outage.** In timeline mode the client keeps reading input
//! while it reconnects, so posts typed during the outage get their own time and
//! join the queue; they are sent as soon as the new stream is open. On end of
//! input it waits a bounded time for outstanding acknowledgements, then exits.

use std::collections::HashSet;
use std::future::Future;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use log::{debug, info, warn};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::model;
use crate::proto::csce438::{ListReply, Message, Request, sns_service_client::SnsServiceClient};
use crate::proto::tinysns::{UserRequest, coordinator_client::CoordinatorClient};
use crate::timefmt;

/// The title block of SPEC §2, one line per entry (the first is the empty line
/// before it).
pub const TITLE: [&str; 8] = [
    "",
    "========= TINY SNS CLIENT =========",
    " Command Lists and Format:",
    " FOLLOW <username>",
    " UNFOLLOW <username>",
    " LIST",
    " TIMELINE",
    "=====================================",
];
/// The prompt, printed without a newline.
pub const PROMPT: &str = "Cmd> ";
pub const CONNECTION_FAILED: &str = "connection failed: -1";
pub const SUCCESS: &str = "Command completed successfully";
pub const ALREADY_EXISTS: &str = "Input username already exists, command failed";
pub const INVALID_USERNAME: &str = "Command failed with invalid username";
pub const NOT_A_FOLLOWER: &str = "Command failed with not a follower";
pub const UNKNOWN_REASON: &str = "Command failed with unknown reason";
pub const INVALID_COMMAND: &str = "Invalid Command";
pub const NO_ARGUMENTS: &str = "Invalid Input -- No Arguments Given";
pub const INVALID_TWO_WORD_COMMAND: &str = "Command failed with invalid command";
pub const IN_TIMELINE: &str = "Now you are in the timeline";

/// Default for [`Options::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(3000);
/// Default for [`Options::eof_wait`].
pub const DEFAULT_EOF_WAIT: Duration = Duration::from_secs(10);
/// Shortest RPC deadline, whatever the lease: a loaded server must not be
/// mistaken for a dead one.
const MIN_RPC_DEADLINE: Duration = Duration::from_millis(500);
/// Assumed lease if a server announces none (two default heartbeat periods,
/// the server's failure window).
const FALLBACK_LEASE: Duration = Duration::from_millis(2 * crate::config::DEFAULT_HEARTBEAT_MS);
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// A timeline stream that lived this long was healthy; a failure after that
/// does not count towards the reopen backoff.
const HEALTHY_STREAM: Duration = Duration::from_secs(1);

/// What the client needs to know to start.
#[derive(Debug, Clone)]
pub struct Options {
    pub coord_host: String,
    pub coord_port: u16,
    pub user: u64,
    /// How long the first login may take before the client gives up with
    /// `connection failed: -1`.
    pub connect_timeout: Duration,
    /// How long, after end of input in timeline mode, to wait for posts that
    /// the server has not acknowledged yet.
    pub eof_wait: Duration,
    /// Whether Ctrl-C (SIGINT) ends the client cleanly, logging out first.
    pub handle_interrupt: bool,
}

impl Options {
    pub fn new(coord_host: impl Into<String>, coord_port: u16, user: u64) -> Self {
        Options {
            coord_host: coord_host.into(),
            coord_port,
            user,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            eof_wait: DEFAULT_EOF_WAIT,
            handle_interrupt: false,
        }
    }
}

// ---------------------------------------------------------------------------
// The pure parts: parsing, reply mapping, formatting.

/// One line of command-mode input, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// An empty line: just prompt again.
    Empty,
    Follow(String),
    UnFollow(String),
    List,
    Timeline,
    /// Not a command; the payload is the line to print.
    Invalid(&'static str),
}

/// Parses a command-mode line as SPEC §2 describes. The argument is not
/// checked here: the server is the authority on what a valid username is.
pub fn parse_command(line: &str) -> Command {
    let line = line.trim_end_matches('\r');
    if line.is_empty() {
        return Command::Empty;
    }
    match line.split_once(' ') {
        None if line.eq_ignore_ascii_case("LIST") => Command::List,
        None if line.eq_ignore_ascii_case("TIMELINE") => Command::Timeline,
        None => Command::Invalid(INVALID_COMMAND),
        Some((word, argument)) => {
            let argument = argument.trim();
            let make: fn(String) -> Command = if word.eq_ignore_ascii_case("FOLLOW") {
                Command::Follow
            } else if word.eq_ignore_ascii_case("UNFOLLOW") {
                Command::UnFollow
            } else {
                return Command::Invalid(INVALID_TWO_WORD_COMMAND);
            };
            if argument.is_empty() {
                Command::Invalid(NO_ARGUMENTS)
            } else {
                make(argument.to_owned())
            }
        }
    }
}

/// The line printed for a FOLLOW/UNFOLLOW/LIST outcome, by gRPC status code.
/// (Failover codes reach this only when a retried command failed again.)
pub fn reply_line(code: Code) -> &'static str {
    match code {
        Code::Ok => SUCCESS,
        Code::AlreadyExists => ALREADY_EXISTS,
        Code::NotFound | Code::InvalidArgument => INVALID_USERNAME,
        Code::FailedPrecondition => NOT_A_FOLLOWER,
        _ => UNKNOWN_REASON,
    }
}

/// Whether a failed call means "the server did not answer" (so ask the
/// coordinator and try elsewhere) rather than "the server said no".
///
/// Statuses the server sends have no source error; statuses that tonic builds
/// from a local transport failure (refused connection, reset stream, broken
/// HTTP/2 connection, keep-alive timeout) carry the underlying error, whatever
/// code they were mapped to.
pub fn needs_failover(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
        || std::error::Error::source(status).is_some()
        // The channel's readiness error is turned into a bare UNKNOWN.
        || (status.code() == Code::Unknown && status.message().starts_with("Service was not ready"))
}

/// `label` then the items joined by ", ", with nothing after the colon when
/// there are none (SPEC §2).
fn labelled_list(label: &str, items: &[String]) -> String {
    if items.is_empty() {
        format!("{label}:")
    } else {
        format!("{label}: {}", items.join(", "))
    }
}

/// The three lines LIST prints. The server already sorts both lists.
pub fn list_lines(reply: &ListReply) -> Vec<String> {
    vec![
        SUCCESS.to_owned(),
        labelled_list("All users", &reply.all_users),
        labelled_list("Followers", &reply.followers),
    ]
}

/// `<author> (<ctime>) >> <text>`
pub fn format_post(author: &str, time: timefmt::Nanos, text: &str) -> String {
    format!("{author} ({}) >> {text}", timefmt::to_ctime(time))
}

/// A random nonzero id (0 means "none" in the protocol).
fn random_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

fn rpc_deadline(lease: Duration) -> Duration {
    lease.max(MIN_RPC_DEADLINE)
}

fn refresh_period(lease: Duration) -> Duration {
    (lease / 4).max(Duration::from_millis(50))
}

/// 50 ms doubling to 500 ms: quick to recover, never spinning.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self::capped(BACKOFF_MAX)
    }

    /// Backing off to at most `max` (at least the first delay).
    fn capped(max: Duration) -> Self {
        Backoff {
            next: BACKOFF_FIRST,
            max: max.max(BACKOFF_FIRST),
        }
    }

    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

// ---------------------------------------------------------------------------
// Output.

/// The user interface on `out`: every write is flushed at once, so the client
/// behaves the same on a pipe as on a terminal. The mutex lets the reconnect
/// logic and the input handling both print while a failover is in progress;
/// it is never held across an await.
struct Ui<W> {
    out: Mutex<W>,
}

impl<W: Write> Ui<W> {
    fn new(out: W) -> Self {
        Ui {
            out: Mutex::new(out),
        }
    }

    fn write(&self, text: &str) {
        let mut out = match self.out.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        // A closed stdout is not a reason to stop: the user may still be
        // typing posts, and diagnostics go to stderr anyway.
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            debug!("cannot write to the output: {e}");
        }
    }

    fn line(&self, text: &str) {
        self.write(&format!("{text}\n"));
    }

    fn prompt(&self) {
        self.write(PROMPT);
    }
}

// ---------------------------------------------------------------------------
// Connections.

/// Who we are, as every request says it.
#[derive(Debug, Clone)]
struct Identity {
    user: u64,
    username: String,
    session: String,
}

impl Identity {
    fn new(user: u64) -> Self {
        Identity {
            user,
            username: user.to_string(),
            session: format!("{:016x}", rand::random::<u64>()),
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
struct Conn {
    host: String,
    port: u16,
    sns: SnsServiceClient<Channel>,
    lease: Duration,
}

impl Conn {
    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// An endpoint for `host:port`. With a lease, HTTP/2 keep-alive pings every
/// half lease notice a dead connection even on an idle timeline stream.
fn endpoint(
    host: &str,
    port: u16,
    lease: Option<Duration>,
    connect_timeout: Duration,
) -> Result<Endpoint, tonic::transport::Error> {
    // A bare IPv6 address needs brackets in a URI.
    let uri = if host.contains(':') && !host.starts_with('[') {
        format!("http://[{host}]:{port}")
    } else {
        format!("http://{host}:{port}")
    };
    let mut ep = Endpoint::from_shared(uri)?.connect_timeout(connect_timeout);
    if let Some(lease) = lease {
        let half = (lease / 2).max(Duration::from_millis(100));
        ep = ep.http2_keep_alive_interval(half).keep_alive_timeout(half);
    }
    Ok(ep)
}

/// Runs one call under a deadline; an expired deadline is DEADLINE_EXCEEDED.
async fn within<T>(
    limit: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match timeout(limit, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no answer within {} ms",
            limit.as_millis()
        ))),
    }
}

/// Why a login attempt failed.
#[derive(Debug)]
enum LoginError {
    /// Nobody answered properly: worth another try.
    Transient(String),
    /// A server answered with a refusal.
    Refused(Status),
}

/// Asks the coordinator for the master of the user's cluster.
async fn ask_master(
    coord: &CoordinatorClient<Channel>,
    user: u64,
    limit: Duration,
) -> Result<(String, u16), String> {
    let mut coord = coord.clone();
    let info = within(limit, coord.get_server(UserRequest { user_id: user }))
        .await
        .map_err(|s| format!("coordinator: {:?}: {}", s.code(), s.message()))?;
    let port = u16::try_from(info.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("coordinator named a bad port {}", info.port))?;
    if info.hostname.is_empty() {
        return Err("coordinator named no host".into());
    }
    Ok((info.hostname, port))
}

/// Connects to `host:port` and logs in. `lease_hint` is the lease we already
/// know (for the keep-alive settings), if any.
async fn login_at(
    id: &Identity,
    host: &str,
    port: u16,
    lease_hint: Option<Duration>,
    limit: Duration,
) -> Result<Conn, LoginError> {
    let ep = endpoint(host, port, lease_hint, limit)
        .map_err(|e| LoginError::Transient(format!("bad server address {host}:{port}: {e}")))?;
    let mut sns = SnsServiceClient::new(ep.connect_lazy());
    let reply = match within(limit, sns.login(id.request(Vec::new(), random_id()))).await {
        Ok(reply) => reply,
        Err(s) if needs_failover(&s) => {
            return Err(LoginError::Transient(format!(
                "login at {host}:{port}: {:?}: {}",
                s.code(),
                s.message()
            )));
        }
        Err(s) => return Err(LoginError::Refused(s)),
    };
    let lease = if reply.lease_ms == 0 {
        FALLBACK_LEASE
    } else {
        Duration::from_millis(reply.lease_ms)
    };
    // The keep-alive settings depend on the lease, which the first login
    // only now learnt: open the working channel with them.
    if lease_hint != Some(lease) {
        let ep = endpoint(host, port, Some(lease), rpc_deadline(lease))
            .map_err(|e| LoginError::Transient(e.to_string()))?;
        sns = SnsServiceClient::new(ep.connect_lazy());
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
    coord: &CoordinatorClient<Channel>,
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
                Err(LoginError::Refused(s)) => {
                    info!("login refused: {:?}: {}", s.code(), s.message());
                    return None;
                }
                Err(LoginError::Transient(e)) => debug!("{e}"),
            },
            Err(e) => debug!("{e}"),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        sleep(backoff.next_delay().min(left)).await;
    }
}

/// Aborts the task when dropped, so the refresher never outlives [`run`].
struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    /// Aborts the task and waits until it has stopped.
    async fn stop(mut self) {
        self.0.abort();
        let _ = (&mut self.0).await;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps the session alive on whichever server is current: a `Login` with the
/// same session every quarter lease. Failures are only logged: the foreground
/// notices a dead server by itself and fails over.
fn spawn_refresher(id: Identity, current: watch::Receiver<Conn>) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        loop {
            let lease = current.borrow().lease;
            sleep(refresh_period(lease)).await;
            let conn = current.borrow().clone();
            let mut sns = conn.sns.clone();
            let call = sns.login(id.request(Vec::new(), random_id()));
            match within(rpc_deadline(conn.lease), call).await {
                Ok(_) => debug!("session refreshed at {}", conn.addr()),
                Err(s) => debug!(
                    "session refresh at {} failed: {:?}: {}",
                    conn.addr(),
                    s.code(),
                    s.message()
                ),
            }
        }
    }))
}

// ---------------------------------------------------------------------------
// Timeline state.

/// What to do after a line of input in timeline mode.
enum Step {
    Continue,
    Send(Message),
    Exit,
}

/// Posts shown and posts not yet acknowledged; survives reconnections.
struct Timeline {
    username: String,
    shown: HashSet<(String, timefmt::Nanos)>,
    /// Sent (or waiting to be sent) and not yet acknowledged, oldest first.
    unacked: Vec<Message>,
    eof: bool,
    /// After end of input: when to stop waiting for acknowledgements.
    give_up_at: Option<Instant>,
    eof_wait: Duration,
}

impl Timeline {
    fn on_input<W: Write>(&mut self, line: Option<String>, ui: &Ui<W>) -> Step {
        let Some(line) = line else {
            self.eof = true;
            if self.unacked.is_empty() {
                return Step::Exit;
            }
            info!(
                "end of input; waiting for {} unacknowledged post(s)",
                self.unacked.len()
            );
            self.give_up_at = Some(Instant::now() + self.eof_wait);
            return Step::Continue;
        };
        let text = line.trim_end_matches('\r');
        if text.is_empty() {
            return Step::Continue;
        }
        if let Err(reason) = model::validate_post(text) {
            ui.line(&format!("Post not sent: {reason}"));
            return Step::Continue;
        }
        let post = Message {
            username: self.username.clone(),
            msg: text.to_owned(),
            timestamp: Some(timefmt::to_timestamp(timefmt::now())),
            post_id: random_id(),
            ack_id: 0,
            session: String::new(),
        };
        self.unacked.push(post.clone());
        Step::Send(post)
    }

    /// Handles a message from the server; true when the client is done.
    fn on_message<W: Write>(&mut self, m: Message, ui: &Ui<W>) -> bool {
        if m.ack_id != 0 {
            self.unacked.retain(|p| p.post_id != m.ack_id);
            return self.eof && self.unacked.is_empty();
        }
        match &m.timestamp {
            Some(ts) => {
                let t = timefmt::from_timestamp(ts);
                if self.shown.insert((m.username.clone(), t)) {
                    ui.line(&format_post(&m.username, t, &m.msg));
                }
            }
            // Without a time there is nothing to recognise it by later.
            None => ui.line(&format_post(&m.username, 0, &m.msg)),
        }
        false
    }

    /// When to stop waiting; far away until end of input.
    fn give_up_at(&self) -> Instant {
        self.give_up_at
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400))
    }

    fn waiting(&self) -> bool {
        self.give_up_at.is_some()
    }

    fn give_up(&self) {
        warn!("exiting with {} unacknowledged post(s)", self.unacked.len());
    }
}

/// How a timeline stream ended.
enum StreamEnd {
    /// The client is done: exit 0.
    Done,
    /// The stream broke; `healthy` if it worked for a while before.
    Broken { healthy: bool },
}

// ---------------------------------------------------------------------------
// The client proper.

struct Client {
    id: Identity,
    coord: CoordinatorClient<Channel>,
    conn: Conn,
    /// Tells the refresher which server is current.
    current: watch::Sender<Conn>,
}

impl Client {
    /// Finds the master again and logs in there; keeps trying as long as it
    /// takes (the user is waiting for it). Sleeps `pause` first.
    async fn failover<W: Write>(&mut self, ui: &Ui<W>, pause: Duration) {
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
                        Err(LoginError::Transient(e)) => debug!("{e}"),
                        Err(LoginError::Refused(s)) => {
                            debug!("login refused: {:?}: {}", s.code(), s.message());
                        }
                    }
                }
                Err(e) => debug!("{e}"),
            }
            sleep(backoff.next_delay()).await;
        }
    }

    /// One attempt at a FOLLOW, UNFOLLOW or LIST: the lines to print.
    async fn call(&self, cmd: &Command, request_id: u64) -> Result<Vec<String>, Status> {
        let mut sns = self.conn.sns.clone();
        let limit = rpc_deadline(self.conn.lease);
        match cmd {
            Command::Follow(who) => {
                let req = self.id.request(vec![who.clone()], request_id);
                within(limit, sns.follow(req)).await?;
                Ok(vec![SUCCESS.to_owned()])
            }
            Command::UnFollow(who) => {
                let req = self.id.request(vec![who.clone()], request_id);
                within(limit, sns.un_follow(req)).await?;
                Ok(vec![SUCCESS.to_owned()])
            }
            Command::List => {
                let req = self.id.request(Vec::new(), request_id);
                let reply = within(limit, sns.list(req)).await?;
                Ok(list_lines(&reply))
            }
            other => Err(Status::internal(format!("not a server command: {other:?}"))),
        }
    }

    /// Runs a command, failing over and retrying it once (same request id) if
    /// the server did not answer.
    async fn command<W: Write>(&mut self, ui: &Ui<W>, cmd: &Command) {
        let request_id = random_id();
        let result = match self.call(cmd, request_id).await {
            Err(s) if needs_failover(&s) => {
                info!(
                    "{cmd:?} failed ({:?}: {}); failing over",
                    s.code(),
                    s.message()
                );
                self.failover(ui, Duration::ZERO).await;
                match self.call(cmd, request_id).await {
                    Err(s) if needs_failover(&s) => {
                        info!("{cmd:?} failed again ({:?}: {})", s.code(), s.message());
                        Err(Status::unknown("retry failed"))
                    }
                    other => other,
                }
            }
            other => other,
        };
        match result {
            Ok(lines) => lines.iter().for_each(|l| ui.line(l)),
            Err(s) => {
                debug!("{cmd:?}: {:?}: {}", s.code(), s.message());
                ui.line(reply_line(s.code()));
            }
        }
    }

    /// Timeline mode, until the end of input (and acknowledgements).
    async fn timeline<W: Write>(
        &mut self,
        ui: &Ui<W>,
        input: &mut mpsc::Receiver<String>,
        eof_wait: Duration,
    ) -> i32 {
        let mut tl = Timeline {
            username: self.id.username.clone(),
            shown: HashSet::new(),
            unacked: Vec::new(),
            eof: false,
            give_up_at: None,
            eof_wait,
        };
        // Grows while streams keep breaking at once, so that a server that
        // keeps refusing the stream is not hammered.
        let mut reopen = Backoff::new();
        loop {
            let pause = match self.stream_once(ui, input, &mut tl).await {
                StreamEnd::Done => return 0,
                StreamEnd::Broken { healthy: true } => {
                    reopen = Backoff::new();
                    Duration::ZERO
                }
                StreamEnd::Broken { healthy: false } => reopen.next_delay(),
            };
            if !self.failover_reading(ui, input, &mut tl, pause).await {
                return 0;
            }
        }
    }

    /// Opens a stream on the current server, resends what is unacknowledged,
    /// and relays posts both ways until the stream breaks or the client is
    /// done.
    async fn stream_once<W: Write>(
        &mut self,
        ui: &Ui<W>,
        input: &mut mpsc::Receiver<String>,
        tl: &mut Timeline,
    ) -> StreamEnd {
        let opened = Instant::now();
        let (tx, rx) = mpsc::unbounded_channel();
        // On a reconnection, the newest post already shown: the server sends
        // every post since, not only the last 20, so none is skipped.
        let since = tl.shown.iter().map(|(_, t)| *t).max();
        let hello = Message {
            username: self.id.username.clone(),
            session: self.id.session.clone(),
            timestamp: since.map(timefmt::to_timestamp),
            ..Message::default()
        };
        // The receiver is alive until the end of this function.
        let _ = tx.send(hello);
        for post in &tl.unacked {
            let _ = tx.send(post.clone());
        }
        let mut sns = self.conn.sns.clone();
        let limit = rpc_deadline(self.conn.lease);
        let mut inbound = match within(limit, sns.timeline(UnboundedReceiverStream::new(rx))).await
        {
            Ok(s) => s,
            Err(s) => {
                info!(
                    "timeline stream at {} not opened: {:?}: {}",
                    self.conn.addr(),
                    s.code(),
                    s.message()
                );
                return StreamEnd::Broken { healthy: false };
            }
        };
        debug!("timeline stream open at {}", self.conn.addr());
        let mut got_message = false;
        loop {
            tokio::select! {
                m = inbound.message() => match m {
                    Ok(Some(m)) => {
                        got_message = true;
                        if tl.on_message(m, ui) {
                            return StreamEnd::Done;
                        }
                    }
                    other => {
                        match other {
                            Err(s) => info!("timeline stream broke: {:?}: {}", s.code(), s.message()),
                            _ => info!("timeline stream ended by the server"),
                        }
                        return StreamEnd::Broken {
                            healthy: got_message || opened.elapsed() >= HEALTHY_STREAM,
                        };
                    }
                },
                line = input.recv(), if !tl.eof => match tl.on_input(line, ui) {
                    Step::Continue => {}
                    Step::Exit => return StreamEnd::Done,
                    // If the stream is gone, the post stays queued and is
                    // resent on the next one.
                    Step::Send(post) => { let _ = tx.send(post); }
                },
                () = sleep_until(tl.give_up_at()), if tl.waiting() => {
                    tl.give_up();
                    return StreamEnd::Done;
                }
            }
        }
    }

    /// Fails over while still reading input (posts typed now are queued).
    /// False when the client is done instead.
    async fn failover_reading<W: Write>(
        &mut self,
        ui: &Ui<W>,
        input: &mut mpsc::Receiver<String>,
        tl: &mut Timeline,
        pause: Duration,
    ) -> bool {
        let failover = self.failover(ui, pause);
        tokio::pin!(failover);
        loop {
            tokio::select! {
                () = &mut failover => return true,
                line = input.recv(), if !tl.eof => match tl.on_input(line, ui) {
                    Step::Exit => return false,
                    Step::Continue | Step::Send(_) => {}
                },
                () = sleep_until(tl.give_up_at()), if tl.waiting() => {
                    tl.give_up();
                    return false;
                }
            }
        }
    }
}

/// Runs the client: logs in, prints the title block, then reads commands from
/// `input` (one line each, without the newline; a closed channel is end of
/// input) and writes the user interface to `out`. Returns the exit status.
pub async fn run<W: Write + Send>(opts: Options, mut input: mpsc::Receiver<String>, out: W) -> i32 {
    let ui = Ui::new(out);
    let id = Identity::new(opts.user);
    let coord = match endpoint(
        &opts.coord_host,
        opts.coord_port,
        None,
        opts.connect_timeout,
    ) {
        Ok(ep) => CoordinatorClient::new(ep.connect_lazy()),
        Err(e) => {
            info!("bad coordinator address: {e}");
            ui.line(CONNECTION_FAILED);
            return 1;
        }
    };
    let Some(conn) = first_login(&id, &coord, opts.connect_timeout).await else {
        ui.line(CONNECTION_FAILED);
        return 1;
    };
    let (current, watcher) = watch::channel(conn.clone());
    let refresher = spawn_refresher(id.clone(), watcher);
    let mut client = Client {
        id: id.clone(),
        coord,
        conn,
        current: current.clone(),
    };

    TITLE.iter().for_each(|l| ui.line(l));
    let session = async {
        loop {
            ui.prompt();
            let Some(line) = input.recv().await else {
                return 0;
            };
            match parse_command(&line) {
                Command::Empty => {}
                Command::Invalid(text) => ui.line(text),
                Command::Timeline => {
                    ui.line(SUCCESS);
                    ui.line(IN_TIMELINE);
                    return client.timeline(&ui, &mut input, opts.eof_wait).await;
                }
                cmd => client.command(&ui, &cmd).await,
            }
        }
    };
    let interrupted = async {
        if opts.handle_interrupt {
            let _ = tokio::signal::ctrl_c().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let code = tokio::select! {
        code = session => code,
        _ = interrupted => 130,
    };
    // Leave no session behind, so the user can log in again at once; a
    // client that is killed instead leaves one that expires with its lease.
    // The refresher is stopped first so that no refresh follows the logout
    // (the server also refuses to revive a session that was logged out).
    refresher.stop().await;
    let conn = current.borrow().clone();
    let mut sns = conn.sns.clone();
    let logout = sns.logout(id.request(Vec::new(), 0));
    if let Err(e) = tokio::time::timeout(rpc_deadline(conn.lease), logout).await {
        debug!("logout timed out: {e}");
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::csce438::Reply;
    use crate::proto::csce438::sns_service_server::{SnsService, SnsServiceServer};
    use crate::proto::tinysns::coordinator_server::{Coordinator, CoordinatorServer};
    use crate::proto::tinysns::{Empty, HeartbeatReply, HeartbeatRequest, ServerInfo, ServerList};
    use std::sync::Arc;
    use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
    use tonic::Response;

    #[test]
    fn command_parsing() {
        use Command::*;
        assert_eq!(parse_command(""), Empty);
        assert_eq!(parse_command("\r"), Empty);
        assert_eq!(parse_command("LIST"), List);
        assert_eq!(parse_command("list\r"), List);
        assert_eq!(parse_command("TimeLine"), Timeline);
        assert_eq!(parse_command("FOLLOW"), Invalid(INVALID_COMMAND));
        assert_eq!(parse_command("hello"), Invalid(INVALID_COMMAND));
        assert_eq!(parse_command("follow 2"), Follow("2".into()));
        assert_eq!(parse_command("FOLLOW   12  \r"), Follow("12".into()));
        assert_eq!(parse_command("UnFollow abc"), UnFollow("abc".into()));
        assert_eq!(parse_command("FOLLOW "), Invalid(NO_ARGUMENTS));
        assert_eq!(parse_command("UNFOLLOW   "), Invalid(NO_ARGUMENTS));
        assert_eq!(parse_command("LIST x"), Invalid(INVALID_TWO_WORD_COMMAND));
        assert_eq!(parse_command("POST hi"), Invalid(INVALID_TWO_WORD_COMMAND));
        assert_eq!(parse_command(" "), Invalid(INVALID_TWO_WORD_COMMAND));
    }

    #[test]
    fn reply_mapping() {
        assert_eq!(reply_line(Code::Ok), SUCCESS);
        assert_eq!(reply_line(Code::AlreadyExists), ALREADY_EXISTS);
        assert_eq!(reply_line(Code::NotFound), INVALID_USERNAME);
        assert_eq!(reply_line(Code::InvalidArgument), INVALID_USERNAME);
        assert_eq!(reply_line(Code::FailedPrecondition), NOT_A_FOLLOWER);
        assert_eq!(reply_line(Code::Internal), UNKNOWN_REASON);
        assert_eq!(reply_line(Code::Unavailable), UNKNOWN_REASON);
    }

    #[test]
    fn failover_classification() {
        assert!(needs_failover(&Status::unavailable("down")));
        assert!(needs_failover(&Status::deadline_exceeded("slow")));
        assert!(!needs_failover(&Status::already_exists("dup")));
        assert!(!needs_failover(&Status::internal("bug")));
        // A local transport failure keeps its cause as the source.
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(needs_failover(&Status::from_error(Box::new(io))));
    }

    #[test]
    fn list_formatting() {
        let reply = ListReply {
            all_users: vec!["1".into(), "2".into(), "3".into()],
            followers: vec![],
        };
        assert_eq!(
            list_lines(&reply),
            [SUCCESS, "All users: 1, 2, 3", "Followers:"]
        );
        let reply = ListReply {
            all_users: vec!["1".into()],
            followers: vec!["2".into(), "3".into()],
        };
        assert_eq!(list_lines(&reply)[2], "Followers: 2, 3");
    }

    #[test]
    fn post_formatting() {
        let t = 1_795_457_407_123_456_789;
        assert_eq!(
            format_post("2", t, "hello"),
            format!("2 ({}) >> hello", timefmt::to_ctime(t))
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::new();
        let got: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [50, 100, 200, 400, 500, 500]);
    }

    // -- Against mock servers ------------------------------------------------

    type Master = Arc<Mutex<Option<u16>>>;
    type Log = Arc<Mutex<Vec<String>>>;

    fn push(log: &Log, entry: String) {
        log.lock().expect("log").push(entry);
    }

    fn entries(log: &Log) -> Vec<String> {
        log.lock().expect("log").clone()
    }

    struct MockCoord {
        master: Master,
    }

    #[tonic::async_trait]
    impl Coordinator for MockCoord {
        async fn heartbeat(
            &self,
            _: tonic::Request<HeartbeatRequest>,
        ) -> Result<Response<HeartbeatReply>, Status> {
            Err(Status::unimplemented("mock"))
        }
        async fn get_server(
            &self,
            _: tonic::Request<UserRequest>,
        ) -> Result<Response<ServerInfo>, Status> {
            match *self.master.lock().expect("master") {
                Some(port) => Ok(Response::new(ServerInfo {
                    hostname: "127.0.0.1".into(),
                    port: port.into(),
                    ..ServerInfo::default()
                })),
                None => Err(Status::unavailable("no master")),
            }
        }
        async fn get_synchronizer(
            &self,
            _: tonic::Request<UserRequest>,
        ) -> Result<Response<ServerInfo>, Status> {
            Err(Status::unimplemented("mock"))
        }
        async fn get_all_synchronizers(
            &self,
            _: tonic::Request<Empty>,
        ) -> Result<Response<ServerList>, Status> {
            Err(Status::unimplemented("mock"))
        }
        async fn get_table(
            &self,
            _: tonic::Request<Empty>,
        ) -> Result<Response<ServerList>, Status> {
            Err(Status::unimplemented("mock"))
        }
    }

    /// A scripted server. With `hand_over_to`, it points the coordinator at
    /// that port and answers UNAVAILABLE to a FOLLOW, or breaks the timeline
    /// stream after the first post, as a dying master would.
    #[derive(Clone)]
    struct MockSns {
        log: Log,
        login: Code,
        unfollow: Code,
        posts: Vec<Message>,
        hand_over_to: Option<(Master, u16)>,
    }

    impl MockSns {
        fn new() -> Self {
            MockSns {
                log: Log::default(),
                login: Code::Ok,
                unfollow: Code::Ok,
                posts: Vec::new(),
                hand_over_to: None,
            }
        }

        fn hand_over(&self) -> bool {
            match &self.hand_over_to {
                Some((master, port)) => {
                    *master.lock().expect("master") = Some(*port);
                    true
                }
                None => false,
            }
        }
    }

    fn reply(code: Code) -> Result<Response<Reply>, Status> {
        if code == Code::Ok {
            Ok(Response::new(Reply::default()))
        } else {
            Err(Status::new(code, "mock"))
        }
    }

    #[tonic::async_trait]
    impl SnsService for MockSns {
        async fn login(&self, r: tonic::Request<Request>) -> Result<Response<Reply>, Status> {
            let r = r.into_inner();
            push(&self.log, format!("login {} {}", r.username, r.session));
            if self.login != Code::Ok {
                return Err(Status::new(self.login, "mock"));
            }
            Ok(Response::new(Reply {
                msg: String::new(),
                lease_ms: 2000,
            }))
        }
        async fn logout(&self, _: tonic::Request<Request>) -> Result<Response<Reply>, Status> {
            Ok(Response::new(Reply::default()))
        }
        async fn list(&self, _: tonic::Request<Request>) -> Result<Response<ListReply>, Status> {
            Ok(Response::new(ListReply {
                all_users: vec!["1".into(), "2".into(), "3".into()],
                followers: vec![],
            }))
        }
        async fn follow(&self, r: tonic::Request<Request>) -> Result<Response<Reply>, Status> {
            let r = r.into_inner();
            push(
                &self.log,
                format!("follow {} {}", r.arguments.join(","), r.request_id),
            );
            if self.hand_over() {
                return Err(Status::unavailable("going down"));
            }
            reply(Code::Ok)
        }
        async fn un_follow(&self, r: tonic::Request<Request>) -> Result<Response<Reply>, Status> {
            let r = r.into_inner();
            push(&self.log, format!("unfollow {}", r.arguments.join(",")));
            reply(self.unfollow)
        }

        type TimelineStream = ReceiverStream<Result<Message, Status>>;

        async fn timeline(
            &self,
            r: tonic::Request<tonic::Streaming<Message>>,
        ) -> Result<Response<Self::TimelineStream>, Status> {
            let mut inbound = r.into_inner();
            let (tx, rx) = mpsc::channel(16);
            let me = self.clone();
            tokio::spawn(async move {
                let Ok(Some(hello)) = inbound.message().await else {
                    return;
                };
                push(
                    &me.log,
                    format!("hello {} {}", hello.username, hello.session),
                );
                for p in &me.posts {
                    let _ = tx.send(Ok(p.clone())).await;
                }
                while let Ok(Some(post)) = inbound.message().await {
                    push(&me.log, format!("post {} {}", post.msg, post.post_id));
                    if me.hand_over() {
                        let _ = tx.send(Err(Status::unavailable("going down"))).await;
                        return;
                    }
                    let ack = Message {
                        ack_id: post.post_id,
                        ..Message::default()
                    };
                    let _ = tx.send(Ok(ack)).await;
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        }
    }

    async fn listener() -> (tokio::net::TcpListener, u16) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        (l, port)
    }

    async fn serve_coord(master: Master) -> u16 {
        let (l, port) = listener().await;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(CoordinatorServer::new(MockCoord { master }))
                .serve_with_incoming(TcpListenerStream::new(l)),
        );
        port
    }

    fn serve_sns_on(l: tokio::net::TcpListener, mock: MockSns) {
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(SnsServiceServer::new(mock))
                .serve_with_incoming(TcpListenerStream::new(l)),
        );
    }

    fn post(author: &str, t: timefmt::Nanos, text: &str) -> Message {
        Message {
            username: author.into(),
            msg: text.into(),
            timestamp: Some(timefmt::to_timestamp(t)),
            ..Message::default()
        }
    }

    /// Runs the client with these input lines (then end of input); returns
    /// the exit status and the output.
    async fn drive(coord_port: u16, lines: &[&str]) -> (i32, String) {
        let (tx, rx) = mpsc::channel(lines.len().max(1));
        for l in lines {
            tx.send((*l).to_owned()).await.expect("queue input");
        }
        drop(tx);
        let mut opts = Options::new("127.0.0.1", coord_port, 1);
        opts.connect_timeout = Duration::from_millis(400);
        let mut out = Vec::new();
        let code = timeout(Duration::from_secs(20), run(opts, rx, &mut out))
            .await
            .expect("client finished");
        (code, String::from_utf8(out).expect("utf-8 output"))
    }

    fn title() -> String {
        TITLE.iter().map(|l| format!("{l}\n")).collect()
    }

    #[tokio::test]
    async fn commands_and_timeline() {
        let master = Master::default();
        let (l, port) = listener().await;
        let mut mock = MockSns::new();
        mock.unfollow = Code::FailedPrecondition;
        mock.posts = vec![post("2", 1_000_000_000_000_000_000, "old")];
        let log = mock.log.clone();
        serve_sns_on(l, mock);
        *master.lock().expect("master") = Some(port);
        let coord = serve_coord(master).await;

        let (code, out) = drive(
            coord,
            &[
                "",
                "bogus",
                "LIST",
                "follow 2",
                "UNFOLLOW 3",
                "FOLLOW ",
                "list x",
                "TIMELINE",
                "hello",
                "bad\u{7}",
            ],
        )
        .await;
        assert_eq!(code, 0, "{out}");
        let expected = format!(
            "{}Cmd> Cmd> Invalid Command\nCmd> {SUCCESS}\nAll users: 1, 2, 3\nFollowers:\n\
             Cmd> {SUCCESS}\nCmd> {NOT_A_FOLLOWER}\nCmd> {NO_ARGUMENTS}\n\
             Cmd> {INVALID_TWO_WORD_COMMAND}\nCmd> {SUCCESS}\n{IN_TIMELINE}\n",
            title()
        );
        assert!(out.starts_with(&expected), "{out}");
        let rest: Vec<&str> = out[expected.len()..].lines().collect();
        assert!(rest.contains(&format_post("2", 1_000_000_000_000_000_000, "old").as_str()));
        assert!(
            rest.iter().any(|l| l.starts_with("Post not sent: ")),
            "{out}"
        );
        assert_eq!(rest.len(), 2, "{out}");

        let log = entries(&log);
        let login = &log[0];
        let session = login.strip_prefix("login 1 ").expect("login first");
        assert_eq!(session.len(), 16);
        assert!(log.contains(&format!("hello 1 {session}")), "{log:?}");
        assert!(log.iter().any(|e| e.starts_with("follow 2 ")), "{log:?}");
        assert!(log.contains(&"unfollow 3".to_owned()), "{log:?}");
        let posts: Vec<&String> = log.iter().filter(|e| e.starts_with("post ")).collect();
        assert_eq!(posts.len(), 1, "{log:?}");
        assert!(posts[0].starts_with("post hello "));
    }

    #[tokio::test]
    async fn command_is_retried_on_the_new_master() {
        let master = Master::default();
        let (la, a) = listener().await;
        let (lb, b) = listener().await;
        let mut old = MockSns::new();
        old.hand_over_to = Some((master.clone(), b));
        let new = MockSns::new();
        let (log_a, log_b) = (old.log.clone(), new.log.clone());
        serve_sns_on(la, old);
        serve_sns_on(lb, new);
        *master.lock().expect("master") = Some(a);
        let coord = serve_coord(master).await;

        let (code, out) = drive(coord, &["FOLLOW 2"]).await;
        assert_eq!(code, 0);
        assert!(
            out.ends_with(&format!(
                "Cmd> Reconnecting to 127.0.0.1:{b}...\n{SUCCESS}\nCmd> "
            )),
            "{out}"
        );
        let follows = |log: &Log| -> Vec<String> {
            entries(log)
                .into_iter()
                .filter(|e| e.starts_with("follow "))
                .collect()
        };
        assert_eq!(follows(&log_a), follows(&log_b));
        assert_eq!(follows(&log_a).len(), 1);
        // The same session on both servers.
        let login = |log: &Log| entries(log)[0].clone();
        assert_eq!(login(&log_a), login(&log_b));
    }

    #[tokio::test]
    async fn timeline_survives_failover_without_duplicates() {
        let master = Master::default();
        let (la, a) = listener().await;
        let (lb, b) = listener().await;
        let p1 = post("2", 1_000_000_000_000_000_000, "one");
        let p2 = post("3", 1_000_000_001_000_000_000, "two");
        let mut old = MockSns::new();
        old.posts = vec![p1.clone()];
        old.hand_over_to = Some((master.clone(), b));
        let mut new = MockSns::new();
        new.posts = vec![p1, p2];
        let (log_a, log_b) = (old.log.clone(), new.log.clone());
        serve_sns_on(la, old);
        serve_sns_on(lb, new);
        *master.lock().expect("master") = Some(a);
        let coord = serve_coord(master).await;

        let (code, out) = drive(coord, &["TIMELINE", "x"]).await;
        assert_eq!(code, 0, "{out}");
        let one = format_post("2", 1_000_000_000_000_000_000, "one");
        let two = format_post("3", 1_000_000_001_000_000_000, "two");
        assert_eq!(out.lines().filter(|l| *l == one).count(), 1, "{out}");
        assert_eq!(out.lines().filter(|l| *l == two).count(), 1, "{out}");
        assert!(
            out.contains(&format!("Reconnecting to 127.0.0.1:{b}...\n")),
            "{out}"
        );
        let posts = |log: &Log| -> Vec<String> {
            entries(log)
                .into_iter()
                .filter(|e| e.starts_with("post "))
                .collect()
        };
        // Resent with its original post id.
        assert_eq!(posts(&log_a).len(), 1);
        assert_eq!(posts(&log_a), posts(&log_b));
    }

    #[tokio::test]
    async fn refused_login_fails_at_once() {
        let master = Master::default();
        let (l, port) = listener().await;
        let mut mock = MockSns::new();
        mock.login = Code::AlreadyExists;
        serve_sns_on(l, mock);
        *master.lock().expect("master") = Some(port);
        let coord = serve_coord(master).await;
        let (code, out) = drive(coord, &["LIST"]).await;
        assert_eq!((code, out.as_str()), (1, "connection failed: -1\n"));
    }

    #[tokio::test]
    async fn no_master_fails_after_the_connect_timeout() {
        let coord = serve_coord(Master::default()).await;
        let started = std::time::Instant::now();
        let (code, out) = drive(coord, &["LIST"]).await;
        assert_eq!((code, out.as_str()), (1, "connection failed: -1\n"));
        assert!(started.elapsed() >= Duration::from_millis(400));
    }

    #[tokio::test]
    async fn unreachable_coordinator_fails() {
        // A port nobody listens on.
        let (l, port) = listener().await;
        drop(l);
        let (code, out) = drive(port, &[]).await;
        assert_eq!((code, out.as_str()), (1, "connection failed: -1\n"));
    }
}
