//! The `chaos` scenario: seeded random faults under posting load, then a
//! check of every file against the history of what was sent and
//! acknowledged ([`super::audit`]).
//!
//! # The run
//! A system of 3 clusters (`SNS_HEARTBEAT_MS=500`, so the failure window is
//! 1 s; a 1 s synchronizer cycle) and `--posters` simulated users, ids 1..=N
//! (so spread over the clusters). Each poster does what this project's
//! client does: asks the coordinator for its master, logs in with one
//! session token (refreshed every quarter lease, as the client's refresher
//! does), follows users (first one in its own cluster and one in another,
//! then the others at random times during the run), and posts on its
//! timeline stream with a `post_id`. After an error it asks the coordinator
//! again and resends the same post with the same `post_id`, or the same
//! FOLLOW with the same `request_id`; UNAVAILABLE (or a broken stream, or a
//! deadline) is never fatal. Its channel has the client's keep-alive (half a
//! lease), and a post unacknowledged for 5 failure windows counts as a
//! broken stream. Unlike the client, its first stream asks for everything
//! since before the run (`resume_after`), so that its screen should get its
//! whole timeline file; every post it shows is kept (by author and time, as
//! the client does).
//!
//! As root, the run is in a [`netlab::Lab`] of its own (namespaces named
//! `snc<pid>...`, removed at the end): the coordinator, each server and each
//! synchronizer on a host of its own with its own address, the posters on
//! one more host (`clients`). Without root everything is on loopback and
//! the partitions below are left out (the report says so).
//!
//! # The faults
//! Poisson arrivals at `--rate` a minute from a seeded RNG (`--seed`; the
//! report prints it). Each picks a target that has no fault: a cluster whose
//! master has an in-service slave and whose synchronizer is alive (per the
//! coordinator's table), or the coordinator; then a kind: SIGKILL of the
//! master, slave or synchronizer, restarted (servers with their directory,
//! or with it deleted); SIGSTOP, then SIGCONT; SIGKILL or SIGSTOP of the
//! coordinator; and in a lab, silent drops (nft, no RST): the master cut
//! from the coordinator only, master and slave cut from each other, the
//! synchronizer cut from the other synchronizers, and packets from the
//! master to the coordinator dropped (the other way open). Each is healed
//! (restart, SIGCONT, the drops removed) after 0.5-3 failure windows, and
//! the target takes no new fault until it is whole again (a restarted
//! process is back, the cluster has a master and an in-service slave, and
//! a server hit is one of them). So at most one fault at a time hits a
//! cluster, plus at most one the coordinator, and no cluster fault starts
//! while the coordinator has one (its table says what is whole): the
//! single-failure model of SPEC §4. What it does not cover (master and
//! slave down together, a master killed while its slave is out of service)
//! is never injected.
//!
//! # The end
//! Everything is healed; posters finish the operation in flight (they keep
//! retrying) and stop; the system must settle (every cluster has a master,
//! an in-service slave and a live synchronizer that has completed two full
//! cycles since) within a deadline; then the files are checked until clean
//! or a deadline, and the screens the same way. Anything lost, doubled,
//! unexpected or divergent fails the scenario (exit status 1).

use super::Ctx;
use super::audit::{self, Screen, Sent};
use super::report::{Outcome, Row};
use super::stats::Samples;
use super::system::{CLIENTS, Settings, System, host_of, in_service_slave, lab_hosts, master_of};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tinysns::config::cluster_of;
use tinysns::course::{Outcome as Reply, Rpc};
use tinysns::error::Error;
use tinysns::proto::csce438::sns_service_client::SnsServiceClient;
use tinysns::proto::csce438::{Message, Request};
use tinysns::proto::tinysns::coordinator_client::CoordinatorClient;
use tinysns::proto::tinysns::{Kind as ProcKind, ServerList, UserRequest};
use tinysns::timefmt::{self, Nanos};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CLUSTERS: u32 = 3;
const HEARTBEAT_MS: u64 = 500;
const SYNC_INTERVAL_MS: u64 = 1000;
/// Two heartbeats: when the coordinator declares a process failed.
const WINDOW: Duration = Duration::from_millis(2 * HEARTBEAT_MS);

// ---------------------------------------------------------------------------
// History

#[derive(Debug, Clone)]
struct PostRec {
    author: u64,
    text: String,
    acked: bool,
}

#[derive(Debug, Clone)]
struct FollowRec {
    follower: u64,
    followee: u64,
    acked: bool,
}

/// Every operation and its outcome, and what the screens showed.
#[derive(Debug, Default)]
struct History {
    posts: Vec<PostRec>,
    follows: Vec<FollowRec>,
    logins: std::collections::BTreeSet<u64>,
    /// Acknowledged writes: when, in which cluster.
    acks: Vec<(Instant, u32)>,
    screens: BTreeMap<u64, Screen>,
    reconnects: u64,
    ack_timeouts: u64,
    /// Answers that were neither an outcome nor UNAVAILABLE.
    other_errors: u64,
    /// The first few of them, for the report.
    error_samples: Vec<String>,
    /// A FOLLOW answered "already following" (on a retry: its first
    /// attempt was applied and the id was not recognised).
    already_following: u64,
}

type Shared = Arc<Mutex<History>>;

impl History {
    fn error(&mut self, what: String) {
        self.other_errors += 1;
        if self.error_samples.len() < 10 && !self.error_samples.contains(&what) {
            self.error_samples.push(what);
        }
    }
}

fn with<T>(h: &Shared, f: impl FnOnce(&mut History) -> T) -> T {
    match h.lock() {
        Ok(mut g) => f(&mut g),
        Err(p) => f(&mut p.into_inner()),
    }
}

// ---------------------------------------------------------------------------
// A poster: the client's retry rules, straight over gRPC

fn random_id() -> u64 {
    rand::random::<u64>() | 1
}

/// Deadline of one call: the lease, at least 500 ms (the client's rule).
fn deadline(lease: Duration) -> Duration {
    lease.max(Duration::from_millis(500))
}

async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(Error::from(s)),
        Err(_) => Err(Error::Unavailable("no answer within the deadline".into())),
    }
}

struct Conn {
    addr: String,
    sns: SnsServiceClient<Channel>,
    lease: Duration,
}

/// An open timeline stream: posts go out on `tx`; a task reads what comes
/// back (so the server never waits on us) into `rx`.
struct Stream {
    tx: mpsc::UnboundedSender<Message>,
    rx: mpsc::UnboundedReceiver<Result<Message, String>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Stop signals: 1 = stop starting operations, 2 = quit.
type Phase = watch::Receiver<u8>;

struct Poster {
    id: u64,
    cluster: u32,
    session: String,
    coord: CoordinatorClient<Channel>,
    conn: Option<Conn>,
    stream: Option<Stream>,
    hist: Shared,
    newest_shown: Nanos,
    phase: Phase,
    /// The one post in flight: (text, post_id).
    pending: Option<(String, u64)>,
    rng: StdRng,
    posted: u64,
    /// The server logged in at, for the session refresher.
    current: Current,
}

/// The client and lease of the server a poster is logged in at.
type Current = Arc<Mutex<Option<(SnsServiceClient<Channel>, Duration)>>>;

/// What the client's refresher does: a `Login` with the same session every
/// quarter lease on the current server, so the session never lapses while
/// the poster lives. Failures are left to the poster to notice.
async fn refresher(id: u64, session: String, current: Current, phase: Phase) {
    while *phase.borrow() < 2 {
        let now = current.lock().ok().and_then(|c| c.clone());
        let lease = now.as_ref().map_or(WINDOW, |(_, l)| *l);
        tokio::time::sleep((lease / 4).max(Duration::from_millis(50))).await;
        if let Some((mut sns, lease)) = now {
            let req = Request {
                username: id.to_string(),
                arguments: Vec::new(),
                session: session.clone(),
                request_id: random_id(),
            };
            let _ = within(deadline(lease), sns.login(req)).await;
        }
    }
}

impl Poster {
    fn quitting(&self) -> bool {
        *self.phase.borrow() >= 2
    }

    /// Asks the coordinator for the master and logs in, until it works or
    /// the run ends. Drops the stream if the master changed.
    async fn connect(&mut self) -> bool {
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.quitting() {
                return false;
            }
            match self.try_login().await {
                Ok(()) => return true,
                Err(e) if e.is_unavailable() => {}
                Err(e) => with(&self.hist, |h| h.error(format!("login: {e:?}"))),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(250));
        }
    }

    async fn try_login(&mut self) -> Result<(), Error> {
        let lease = self.conn.as_ref().map_or(WINDOW, |c| c.lease);
        let info = within(
            deadline(lease),
            self.coord.get_server(UserRequest { user_id: self.id }),
        )
        .await?;
        let addr = format!("{}:{}", info.hostname, info.port);
        if self.conn.as_ref().is_none_or(|c| c.addr != addr) {
            self.stream = None;
            let half = (lease / 2).max(Duration::from_millis(100));
            let ch = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| Error::Unavailable(e.to_string()))?
                .connect_timeout(deadline(lease))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(half)
                .keep_alive_timeout(half)
                .connect_lazy();
            if self.conn.is_some() {
                with(&self.hist, |h| h.reconnects += 1);
            }
            self.conn = Some(Conn {
                addr,
                sns: SnsServiceClient::new(ch),
                lease,
            });
        }
        let req = self.request(Vec::new(), random_id());
        let Some(conn) = self.conn.as_mut() else {
            return Err(Error::Unavailable("no server".into()));
        };
        let reply = within(deadline(conn.lease), conn.sns.login(req)).await?;
        match Reply::from_msg(Rpc::Login, &reply.msg) {
            Some(Reply::LoggedIn) => {
                if reply.lease_ms > 0 {
                    conn.lease = Duration::from_millis(reply.lease_ms);
                }
                if let Ok(mut c) = self.current.lock() {
                    *c = Some((conn.sns.clone(), conn.lease));
                }
                with(&self.hist, |h| h.logins.insert(self.id));
                Ok(())
            }
            _ => Err(Error::Precondition(format!("login: {}", reply.msg))),
        }
    }

    fn request(&self, arguments: Vec<String>, request_id: u64) -> Request {
        Request {
            username: self.id.to_string(),
            arguments,
            session: self.session.clone(),
            request_id,
        }
    }

    /// Opens the stream on the current server and resends the post in
    /// flight. False if it could not be opened (fail over and try again).
    async fn open_stream(&mut self) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let (tx, out) = mpsc::unbounded_channel();
        let _ = tx.send(Message {
            username: self.id.to_string(),
            session: self.session.clone(),
            resume_after: Some(timefmt::to_timestamp(self.newest_shown)),
            ..Default::default()
        });
        if let Some((text, post_id)) = &self.pending {
            let _ = tx.send(post_message(self.id, text, *post_id));
        }
        let opened = within(
            deadline(conn.lease),
            conn.sns.timeline(UnboundedReceiverStream::new(out)),
        )
        .await;
        let mut inbound = match opened {
            Ok(s) => s,
            Err(e) => {
                if !e.is_unavailable() {
                    with(&self.hist, |h| h.error(format!("timeline: {e:?}")));
                }
                return false;
            }
        };
        let (in_tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            loop {
                let m = inbound.message().await;
                let end = match m {
                    Ok(Some(m)) => {
                        if in_tx.send(Ok(m)).is_err() {
                            return;
                        }
                        continue;
                    }
                    Ok(None) => "the server ended the stream".to_string(),
                    Err(s) => format!("{:?}: {}", s.code(), s.message()),
                };
                let _ = in_tx.send(Err(end));
                return;
            }
        });
        self.stream = Some(Stream { tx, rx, reader });
        true
    }

    /// Makes sure there is a stream, failing over as long as it takes.
    async fn ensure_stream(&mut self) -> bool {
        let mut backoff = Duration::from_millis(50);
        while self.stream.is_none() {
            if self.conn.is_none() && !self.connect().await {
                return false;
            }
            if self.open_stream().await {
                return true;
            }
            // Not opened: ask the coordinator again.
            self.broken();
            if self.quitting() {
                return false;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(250));
        }
        true
    }

    /// The stream broke: ask the coordinator again (the client's rule).
    fn broken(&mut self) {
        self.stream = None;
        self.conn = None;
        if let Ok(mut c) = self.current.lock() {
            *c = None;
        }
    }

    fn show(&mut self, m: &Message) {
        let (Ok(author), Some(ts)) = (m.username.parse::<u64>(), m.timestamp.as_ref()) else {
            with(&self.hist, |h| {
                h.error(format!("a post without author or time: {m:?}"))
            });
            return;
        };
        let t = timefmt::from_timestamp(ts);
        self.newest_shown = self.newest_shown.max(t);
        let id = self.id;
        with(&self.hist, |h| {
            h.screens
                .entry(id)
                .or_default()
                .insert((author, t, m.msg.clone()))
        });
    }

    /// Reads the stream until `ack` is acknowledged (true), the stream
    /// breaks, or `limit` passes (false; both count as broken).
    async fn drain(&mut self, ack: Option<u64>, limit: Duration) -> bool {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let Some(s) = self.stream.as_mut() else {
                return false;
            };
            let got = tokio::time::timeout_at(until, s.rx.recv()).await;
            match got {
                Ok(Some(Ok(m))) => {
                    if m.ack_id != 0 {
                        if Some(m.ack_id) == ack {
                            return true;
                        }
                    } else {
                        self.show(&m);
                    }
                }
                Ok(Some(Err(_)) | None) => {
                    self.broken();
                    return false;
                }
                Err(_) => {
                    if ack.is_some() {
                        with(&self.hist, |h| h.ack_timeouts += 1);
                        self.broken();
                    }
                    return ack.is_none();
                }
            }
        }
    }

    /// Posts one new post, resending it with the same id until it is
    /// acknowledged (or the run ends).
    async fn post(&mut self) {
        self.posted += 1;
        let text = format!("chaos u{} #{}", self.id, self.posted);
        let post_id = random_id();
        let idx = with(&self.hist, |h| {
            h.posts.push(PostRec {
                author: self.id,
                text: text.clone(),
                acked: false,
            });
            h.posts.len() - 1
        });
        self.pending = Some((text.clone(), post_id));
        let mut first = true;
        loop {
            if self.quitting() {
                return;
            }
            let had_stream = self.stream.is_some();
            if !self.ensure_stream().await {
                return;
            }
            // A new stream resent the post when it opened.
            if first && had_stream {
                let sent = self
                    .stream
                    .as_ref()
                    .is_some_and(|s| s.tx.send(post_message(self.id, &text, post_id)).is_ok());
                if !sent {
                    self.broken();
                    continue;
                }
            }
            first = false;
            let lease = self.conn.as_ref().map_or(WINDOW, |c| c.lease);
            if self.drain(Some(post_id), (5 * lease).max(5 * WINDOW)).await {
                self.pending = None;
                let c = self.cluster;
                with(&self.hist, |h| {
                    h.posts[idx].acked = true;
                    h.acks.push((Instant::now(), c));
                });
                return;
            }
        }
    }

    /// FOLLOW `target`: the same request id after an error; a new one after
    /// "no such user" (nothing happened; the synchronizers have not carried
    /// that user here yet).
    async fn follow(&mut self, target: u64) {
        let idx = with(&self.hist, |h| {
            h.follows.push(FollowRec {
                follower: self.id,
                followee: target,
                acked: false,
            });
            h.follows.len() - 1
        });
        let mut rid = random_id();
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.quitting() {
                return;
            }
            if self.conn.is_none() && !self.connect().await {
                return;
            }
            let req = self.request(vec![target.to_string()], rid);
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            let answer = within(deadline(conn.lease), conn.sns.follow(req)).await;
            match answer.map(|r| Reply::from_msg(Rpc::Follow, &r.msg)) {
                Ok(Some(outcome @ (Reply::Followed | Reply::AlreadyFollowing))) => {
                    let already = matches!(outcome, Reply::AlreadyFollowing);
                    let c = self.cluster;
                    with(&self.hist, |h| {
                        h.follows[idx].acked = true;
                        h.acks.push((Instant::now(), c));
                        if already {
                            h.already_following += 1;
                        }
                    });
                    return;
                }
                Ok(Some(Reply::UnknownFollowee)) => {
                    rid = random_id();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(other) => {
                    with(&self.hist, |h| h.error(format!("follow: {other:?}")));
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => {
                    if e.is_unavailable() {
                        self.broken();
                    } else if matches!(e, Error::Unauthenticated(_)) {
                        // The session lapsed: log in again.
                        with(&self.hist, |h| h.error(format!("follow: {e:?}")));
                        self.broken();
                    } else {
                        with(&self.hist, |h| h.error(format!("follow: {e:?}")));
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
            backoff = (backoff * 2).min(Duration::from_millis(250));
        }
    }
}

fn post_message(user: u64, text: &str, post_id: u64) -> Message {
    Message {
        username: user.to_string(),
        msg: text.to_string(),
        timestamp: Some(timefmt::to_timestamp(timefmt::now())),
        post_id,
        ..Default::default()
    }
}

/// One poster's life: log in, the first follows, then posts (and the other
/// follows when they are due) until told to stop; then it keeps its screen
/// up to date until told to quit.
async fn run_poster(
    mut p: Poster,
    first: Vec<u64>,
    mut later: Vec<(Instant, u64)>,
    interval: Duration,
    idle: Arc<std::sync::atomic::AtomicUsize>,
) {
    if p.connect().await {
        for t in first {
            p.follow(t).await;
        }
        while *p.phase.borrow() == 0 {
            let now = Instant::now();
            if let Some(i) = later.iter().position(|(due, _)| *due <= now) {
                let (_, t) = later.swap_remove(i);
                p.follow(t).await;
            } else {
                p.post().await;
            }
            let pause = interval.mul_f64(p.rng.random_range(0.5..1.5));
            if p.stream.is_some() {
                p.drain(None, pause).await;
            } else {
                tokio::time::sleep(pause).await;
            }
        }
    }
    idle.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    while !p.quitting() {
        if !p.ensure_stream().await {
            break;
        }
        p.drain(None, Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------
// Faults

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum FaultKind {
    KillMaster,
    KillMasterWipe,
    PauseMaster,
    KillSlave,
    KillSlaveWipe,
    PauseSlave,
    KillSynchronizer,
    PauseSynchronizer,
    KillCoordinator,
    PauseCoordinator,
    CutMasterCoordinator,
    CutMasterSlave,
    IsolateSynchronizer,
    CutMasterToCoordinatorOneWay,
}

use FaultKind as F;

const CLUSTER_FAULTS: [FaultKind; 8] = [
    F::KillMaster,
    F::KillMasterWipe,
    F::PauseMaster,
    F::KillSlave,
    F::KillSlaveWipe,
    F::PauseSlave,
    F::KillSynchronizer,
    F::PauseSynchronizer,
];
const COORDINATOR_FAULTS: [FaultKind; 2] = [F::KillCoordinator, F::PauseCoordinator];
/// Cluster faults that need a lab (every process on a host of its own).
const PARTITIONS: [FaultKind; 4] = [
    F::CutMasterCoordinator,
    F::CutMasterSlave,
    F::IsolateSynchronizer,
    F::CutMasterToCoordinatorOneWay,
];

impl FaultKind {
    fn name(self) -> &'static str {
        match self {
            F::KillMaster => "SIGKILL master, restart",
            F::KillMasterWipe => "SIGKILL master, restart without its directory",
            F::PauseMaster => "SIGSTOP master, SIGCONT",
            F::KillSlave => "SIGKILL slave, restart",
            F::KillSlaveWipe => "SIGKILL slave, restart without its directory",
            F::PauseSlave => "SIGSTOP slave, SIGCONT",
            F::KillSynchronizer => "SIGKILL synchronizer, restart",
            F::PauseSynchronizer => "SIGSTOP synchronizer, SIGCONT",
            F::KillCoordinator => "SIGKILL coordinator, restart",
            F::PauseCoordinator => "SIGSTOP coordinator, SIGCONT",
            F::CutMasterCoordinator => "cut master from coordinator",
            F::CutMasterSlave => "cut master from slave",
            F::IsolateSynchronizer => "cut synchronizer from its peers",
            F::CutMasterToCoordinatorOneWay => "cut master -> coordinator one way",
        }
    }

    fn pause(self) -> bool {
        matches!(
            self,
            F::PauseMaster | F::PauseSlave | F::PauseSynchronizer | F::PauseCoordinator
        )
    }

    /// Whether the process lives on (a pause or a cut, not a kill).
    fn keeps_process(self) -> bool {
        self.pause() || PARTITIONS.contains(&self)
    }
}

#[derive(Debug, Clone)]
struct Fault {
    kind: FaultKind,
    cluster: Option<u32>,
    proc: String,
    server: Option<(u32, u32)>,
    /// The process's `process` number in the table before the fault.
    old_process: u64,
    injected: Instant,
    heal_at: Instant,
    healed: Option<Instant>,
    whole: Option<Instant>,
    /// The lab links dropped (from, to), for partitions.
    cuts: Vec<(String, String)>,
}

fn synchronizer_of(t: &ServerList, c: u32) -> Option<&tinysns::proto::tinysns::ServerInfo> {
    t.servers
        .iter()
        .find(|e| e.kind == ProcKind::Synchronizer as i32 && e.cluster_id == c)
}

/// A master with an in-service slave and a live synchronizer.
fn cluster_whole(t: &ServerList, c: u32) -> bool {
    master_of(t, c).is_some()
        && in_service_slave(t, c).is_some()
        && synchronizer_of(t, c).is_some_and(|e| e.alive)
}

/// Injects `kind` into cluster `c` (or the coordinator).
fn inject(
    sys: &mut System,
    t: &ServerList,
    kind: FaultKind,
    c: u32,
    heal_after: Duration,
) -> Result<Fault, BoxError> {
    let mut cuts = Vec::new();
    let (proc, server, old_process, cluster) = match kind {
        F::CutMasterCoordinator | F::CutMasterToCoordinatorOneWay | F::CutMasterSlave => {
            let m = master_of(t, c).ok_or("no master")?;
            let name = System::server_name(c, m.server_id);
            let mh = host_of(&name);
            match kind {
                F::CutMasterSlave => {
                    let s = in_service_slave(t, c).ok_or("no slave")?;
                    let sh = host_of(&System::server_name(c, s.server_id));
                    cuts.push((mh.clone(), sh.clone()));
                    cuts.push((sh, mh));
                }
                F::CutMasterCoordinator => {
                    cuts.push((mh.clone(), host_of("coordinator")));
                    cuts.push((host_of("coordinator"), mh));
                }
                _ => cuts.push((mh, host_of("coordinator"))),
            }
            (name, Some((c, m.server_id)), m.process, Some(c))
        }
        F::IsolateSynchronizer => {
            let e = synchronizer_of(t, c).ok_or("no synchronizer")?;
            let me = host_of(&format!("synchronizer_{c}"));
            for other in (1..=CLUSTERS).filter(|o| *o != c) {
                let peer = host_of(&format!("synchronizer_{other}"));
                cuts.push((me.clone(), peer.clone()));
                cuts.push((peer, me.clone()));
            }
            (format!("synchronizer_{c}"), None, e.process, Some(c))
        }
        F::KillMaster | F::KillMasterWipe | F::PauseMaster => {
            let e = master_of(t, c).ok_or("no master")?;
            (
                System::server_name(c, e.server_id),
                Some((c, e.server_id)),
                e.process,
                Some(c),
            )
        }
        F::KillSlave | F::KillSlaveWipe | F::PauseSlave => {
            let e = in_service_slave(t, c).ok_or("no slave")?;
            (
                System::server_name(c, e.server_id),
                Some((c, e.server_id)),
                e.process,
                Some(c),
            )
        }
        F::KillSynchronizer | F::PauseSynchronizer => {
            let e = synchronizer_of(t, c).ok_or("no synchronizer")?;
            (format!("synchronizer_{c}"), None, e.process, Some(c))
        }
        F::KillCoordinator | F::PauseCoordinator => ("coordinator".to_string(), None, 0, None),
    };
    if !cuts.is_empty() {
        let lab = sys.settings.lab.clone().ok_or("a partition needs a lab")?;
        for (from, to) in &cuts {
            lab.cut_one_way(from, to)?;
        }
    } else if kind.pause() {
        sys.signal(&proc, libc::SIGSTOP)?;
    } else {
        sys.kill(&proc)?;
        if matches!(kind, F::KillMasterWipe | F::KillSlaveWipe)
            && let Some((c, s)) = server
        {
            remove_dir(&sys.server_dir(c, s))?;
        }
    }
    let now = Instant::now();
    Ok(Fault {
        kind,
        cluster,
        proc,
        server,
        old_process,
        injected: now,
        heal_at: now + heal_after,
        healed: None,
        whole: None,
        cuts,
    })
}

/// Deletes a server's directory while its synchronizer may still be
/// writing into it (it makes files as fast as they go): try again a little.
fn remove_dir(dir: &std::path::Path) -> Result<(), BoxError> {
    let mut tries = 0;
    loop {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if tries >= 50 => {
                return Err(format!("cannot delete {}: {e}", dir.display()).into());
            }
            Err(_) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn heal(sys: &mut System, f: &mut Fault) -> Result<(), BoxError> {
    if !f.cuts.is_empty() {
        let lab = sys.settings.lab.clone().ok_or("a partition needs a lab")?;
        for (from, to) in &f.cuts {
            lab.heal(from, to)?;
        }
    } else if f.kind.pause() {
        sys.signal(&f.proc, libc::SIGCONT)?;
    } else if let Some((c, s)) = f.server {
        sys.start_server(c, s)?;
    } else if let Some(c) = f.cluster {
        sys.start_synchronizer(c)?;
    } else {
        sys.start_coordinator()?;
    }
    f.healed = Some(Instant::now());
    Ok(())
}

/// Whether the target of a healed fault is whole again.
fn recovered(t: &ServerList, f: &Fault, busy: &[u32]) -> bool {
    let Some(c) = f.cluster else {
        // The coordinator answers, and sees every cluster without a fault
        // of its own whole.
        return (1..=CLUSTERS).all(|c| busy.contains(&c) || cluster_whole(t, c));
    };
    if !cluster_whole(t, c) {
        return false;
    }
    let entry = match f.server {
        Some((c, s)) => t
            .servers
            .iter()
            .find(|e| e.kind == ProcKind::Server as i32 && e.cluster_id == c && e.server_id == s),
        None => synchronizer_of(t, c),
    };
    let Some(e) = entry else { return false };
    // A restarted process is back (a new process number); a resumed one
    // heartbeats again. A server must be master or in service.
    let healed_ms = f.healed.map_or(0, |h| h.elapsed().as_millis() as u64);
    let back = e.alive
        && (f.kind.keeps_process()
            || (f.old_process != 0 && e.process != f.old_process)
            || (f.old_process == 0 && e.last_heartbeat_ms_ago < healed_ms));
    let serving = f.server.is_none()
        || master_of(t, c).is_some_and(|m| m.server_id == e.server_id)
        || in_service_slave(t, c).is_some_and(|m| m.server_id == e.server_id);
    back && serving
}

/// Faults injected so far, and the RNG that picks them.
struct Injector {
    /// `faults.log` in the run's directory: each injection, heal and
    /// recovery with the wall-clock time, to read beside the processes' logs.
    log: Option<std::fs::File>,
    rng: StdRng,
    /// The cluster faults to choose from (partitions only in a lab).
    kinds: Vec<FaultKind>,
    rate_per_s: f64,
    next_at: Instant,
    active: Vec<Fault>,
    done: Vec<Fault>,
    /// Faults whose target did not recover within the deadline.
    stuck: Vec<String>,
}

const RECOVERY_DEADLINE: Duration = Duration::from_secs(120);

impl Injector {
    fn note(&mut self, what: String) {
        use std::io::Write;
        log::info!("chaos: {what}");
        if let Some(f) = self.log.as_mut() {
            let _ = writeln!(f, "{} {what}", timefmt::to_rfc3339(timefmt::now()));
        }
    }

    fn new(seed: u64, rate_per_min: u64, partitions: bool, log: Option<std::fs::File>) -> Injector {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut kinds = CLUSTER_FAULTS.to_vec();
        if partitions {
            kinds.extend(PARTITIONS);
        }
        let rate_per_s = rate_per_min as f64 / 60.0;
        let next_at = Instant::now() + exp(&mut rng, rate_per_s);
        Injector {
            log,
            rng,
            kinds,
            rate_per_s,
            next_at,
            active: Vec::new(),
            done: Vec::new(),
            stuck: Vec::new(),
        }
    }

    fn busy(&self) -> Vec<u32> {
        self.active.iter().filter_map(|f| f.cluster).collect()
    }

    fn coordinator_busy(&self) -> bool {
        self.active.iter().any(|f| f.cluster.is_none())
    }

    /// One step: heals what is due, notes what recovered, injects when due.
    async fn step(&mut self, sys: &mut System, injecting: bool) -> Result<(), BoxError> {
        let now = Instant::now();
        let mut notes = Vec::new();
        for f in &mut self.active {
            if f.healed.is_none() && (f.heal_at <= now || !injecting) {
                heal(sys, f)?;
                notes.push(format!("healed: {} ({})", f.kind.name(), f.proc));
            }
        }
        for n in notes {
            self.note(n);
        }
        let table = sys.table_within(Duration::from_millis(300)).await;
        if let Some(t) = &table {
            let busy = self.busy();
            let mut i = 0;
            while i < self.active.len() {
                let f = &self.active[i];
                let others: Vec<u32> = busy
                    .iter()
                    .copied()
                    .filter(|c| Some(*c) != f.cluster)
                    .collect();
                if f.healed.is_some() && recovered(t, f, &others) {
                    let mut f = self.active.remove(i);
                    f.whole = Some(Instant::now());
                    let what = format!("whole again: {} ({})", f.kind.name(), f.proc);
                    self.done.push(f);
                    self.note(what);
                } else {
                    i += 1;
                }
            }
        }
        for f in &self.active {
            if let Some(h) = f.healed
                && h.elapsed() > RECOVERY_DEADLINE
            {
                let what = format!(
                    "{} ({}) not whole {} s after its heal",
                    f.kind.name(),
                    f.proc,
                    RECOVERY_DEADLINE.as_secs()
                );
                if !self.stuck.contains(&what) {
                    log::warn!("{what}");
                    self.stuck.push(what);
                }
            }
        }
        if !injecting || Instant::now() < self.next_at {
            return Ok(());
        }
        let mut targets: Vec<u32> = Vec::new();
        if let Some(t) = &table
            && !self.coordinator_busy()
        {
            let busy = self.busy();
            targets.extend((1..=CLUSTERS).filter(|c| !busy.contains(c) && cluster_whole(t, *c)));
        }
        if !self.coordinator_busy() {
            // 0 stands for the coordinator.
            targets.push(0);
        }
        let Some(t) = table.as_ref().filter(|_| !targets.is_empty()) else {
            return Ok(());
        };
        let target = targets[self.rng.random_range(0..targets.len())];
        let kinds: &[FaultKind] = if target == 0 {
            &COORDINATOR_FAULTS
        } else {
            &self.kinds
        };
        let kind = kinds[self.rng.random_range(0..kinds.len())];
        let heal_after = WINDOW.mul_f64(self.rng.random_range(0.5..3.0));
        let f = inject(sys, t, kind, target, heal_after)?;
        self.note(format!(
            "injected: {} ({}), to be healed in {} ms",
            kind.name(),
            f.proc,
            heal_after.as_millis()
        ));
        self.active.push(f);
        self.next_at = Instant::now() + exp(&mut self.rng, self.rate_per_s);
        Ok(())
    }
}

/// An exponentially distributed pause: Poisson arrivals at `rate` a second.
fn exp(rng: &mut StdRng, rate: f64) -> Duration {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    Duration::from_secs_f64((-u.ln() / rate).min(3600.0))
}

// ---------------------------------------------------------------------------
// The scenario

fn sent_of(h: &History) -> Sent {
    let mut s = Sent::default();
    for p in &h.posts {
        let e = s.posts.entry((p.author, p.text.clone())).or_insert(false);
        *e |= p.acked;
    }
    for f in &h.follows {
        let e = s.follows.entry((f.follower, f.followee)).or_insert(false);
        *e |= f.acked;
    }
    s.users = h.logins.clone();
    s
}

/// Polls `check` until it is clean or `limit` passes; returns the last
/// findings.
async fn settle<T>(limit: Duration, mut check: impl FnMut() -> (bool, T)) -> T {
    let until = Instant::now() + limit;
    loop {
        let (clean, found) = check();
        if clean || Instant::now() > until {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn first_ack_after(acks: &[(Instant, u32)], at: Instant, cluster: Option<u32>) -> Option<Duration> {
    acks.iter()
        .filter(|(t, c)| *t > at && cluster.is_none_or(|x| x == *c))
        .map(|(t, _)| *t - at)
        .min()
}

/// Prefix of the lab's namespaces (netlab adds this process's pid).
const LAB_PREFIX: &str = "snc";

/// Runs the scenario: as root in a lab of its own (every process on a host
/// of its own, the posters on [`CLIENTS`], partitions among the faults);
/// otherwise on loopback with process faults only.
pub async fn chaos(ctx: &Ctx) -> Result<Outcome, BoxError> {
    let args = ctx.chaos.clone();
    let root = ctx.scratch.join("chaos");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let mut out = run(root, args, None).await?;
        out.notes.push(
            "not root: every process on loopback, no network partitions (run as root for them)"
                .into(),
        );
        return Ok(out);
    }
    let hosts = lab_hosts(CLUSTERS);
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let lab = Arc::new(
        netlab::Lab::with_prefix(LAB_PREFIX, &names)
            .map_err(|e| format!("cannot build the network lab: {e}"))?,
    );
    let inside = lab.clone();
    let thread = lab.spawn_in(CLIENTS, move || -> Result<Outcome, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(run(root, args, Some(inside)))
            .map_err(|e| e.to_string())
    })?;
    let joined = tokio::task::spawn_blocking(move || thread.join()).await?;
    let out = joined.map_err(|_| "the chaos thread panicked")??;
    // The lab's namespaces go with the last reference, after every process
    // (the thread's System killed them).
    drop(lab);
    Ok(out)
}

async fn run(
    root: std::path::PathBuf,
    args: super::ChaosArgs,
    lab: Option<Arc<netlab::Lab>>,
) -> Result<Outcome, BoxError> {
    let mut out = Outcome::new("chaos");
    let partitions = lab.is_some();
    let mut sys = System::start(
        &root,
        Settings {
            clusters: CLUSTERS,
            heartbeat_ms: HEARTBEAT_MS,
            sync_interval_ms: SYNC_INTERVAL_MS,
            fsync: true,
            lab,
        },
    )
    .await?;
    let coord = sys.coordinator();
    let hist: Shared = Arc::default();
    let (phase_tx, phase_rx) = watch::channel(0u8);
    let idle = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let begin_ns = timefmt::now() - 3_600_000_000_000;
    let mut plan_rng = StdRng::seed_from_u64(args.seed ^ 0x5eed);
    let ids: Vec<u64> = (1..=args.posters).collect();
    let mut tasks = Vec::new();
    for &id in &ids {
        let c = cluster_of(id, CLUSTERS);
        let mut others: Vec<u64> = ids.iter().copied().filter(|u| *u != id).collect();
        // Shuffle, then the first follows: one in its own cluster, one in
        // another; the rest at random times during the run.
        for i in (1..others.len()).rev() {
            others.swap(i, plan_rng.random_range(0..=i));
        }
        let mut first = Vec::new();
        for local in [true, false] {
            if let Some(i) = others
                .iter()
                .position(|u| (cluster_of(*u, CLUSTERS) == c) == local)
            {
                first.push(others.remove(i));
            }
        }
        let later = others
            .into_iter()
            .map(|u| {
                (
                    start + args.duration.mul_f64(plan_rng.random_range(0.0..1.0)),
                    u,
                )
            })
            .collect();
        let poster = Poster {
            id,
            cluster: c,
            session: format!("chaos-{:016x}", rand::random::<u64>()),
            coord: super::system::coordinator_client(&coord)?,
            conn: None,
            stream: None,
            hist: hist.clone(),
            newest_shown: begin_ns,
            phase: phase_rx.clone(),
            pending: None,
            rng: StdRng::seed_from_u64(args.seed.wrapping_add(id)),
            posted: 0,
            current: Current::default(),
        };
        tasks.push(tokio::spawn(refresher(
            id,
            poster.session.clone(),
            poster.current.clone(),
            phase_rx.clone(),
        )));
        tasks.push(tokio::spawn(run_poster(
            poster,
            first,
            later,
            args.interval,
            idle.clone(),
        )));
    }
    let fault_log = std::fs::File::create(root.join("faults.log")).ok();
    let mut inj = Injector::new(args.seed, args.rate_per_min, partitions, fault_log);
    let run_until = start + args.duration;
    while Instant::now() < run_until {
        inj.step(&mut sys, true).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Heal everything, and wait for every target to be whole again.
    let heal_deadline = Instant::now() + RECOVERY_DEADLINE;
    while !inj.active.is_empty() && Instant::now() < heal_deadline {
        inj.step(&mut sys, false).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(lab) = &sys.settings.lab {
        // Nothing stays cut, whatever happened above.
        lab.heal_all()?;
    }
    let _ = phase_tx.send(1);
    let finish_deadline = Instant::now() + Duration::from_secs(60);
    while idle.load(std::sync::atomic::Ordering::SeqCst) < ids.len()
        && Instant::now() < finish_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let posting_ended = Instant::now();
    // Settled: every cluster whole, and two full synchronizer cycles since.
    let mut base: HashMap<u32, (u64, u64)> = HashMap::new();
    let settled = sys
        .wait_for("the system to settle", Duration::from_secs(120), |t| {
            t.is_some_and(|t| (1..=CLUSTERS).all(|c| cluster_whole(t, c)))
        })
        .await;
    // Two more full cycles of each synchronizer (a restarted one counts
    // from 0).
    if let Some(t) = sys.table_within(Duration::from_secs(2)).await {
        for c in 1..=CLUSTERS {
            if let Some(e) = synchronizer_of(&t, c) {
                base.insert(c, (e.process, e.full_cycles));
            }
        }
    }
    let cycled = sys
        .wait_for(
            "two full synchronizer cycles",
            Duration::from_secs(60),
            |t| {
                t.is_some_and(|t| {
                    (1..=CLUSTERS).all(|c| {
                        cluster_whole(t, c)
                            && synchronizer_of(t, c).is_some_and(|e| match base.get(&c) {
                                Some((p, n)) if *p == e.process => e.full_cycles >= n + 2,
                                _ => e.full_cycles >= 2,
                            })
                    })
                })
            },
        )
        .await;
    let data = sys.data.clone();
    let found = settle(Duration::from_secs(60), || {
        let sent = with(&hist, |h| sent_of(h));
        let dirs = audit::read_dirs(&data, CLUSTERS);
        let f = audit::audit(CLUSTERS, &dirs, &sent);
        (f.clean(), f)
    })
    .await;
    let seen = settle(Duration::from_secs(30), || {
        let screens = with(&hist, |h| h.screens.clone());
        let dirs = audit::read_dirs(&data, CLUSTERS);
        let f = audit::screens(CLUSTERS, &dirs, &screens);
        (f.clean(), f)
    })
    .await;
    let _ = phase_tx.send(2);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let h = match Arc::try_unwrap(hist) {
        Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
        Err(shared) => with(&shared, std::mem::take),
    };
    // The figures.
    let posts_acked = h.posts.iter().filter(|p| p.acked).count();
    let follows_acked = h.follows.iter().filter(|f| f.acked).count();
    out.rows.push(Row::new("seed", args.seed as f64, ""));
    out.rows.push(Row::new(
        "faults injected for",
        args.duration.as_secs_f64(),
        "s",
    ));
    out.rows.push(Row::new("posters", args.posters as f64, ""));
    out.rows
        .push(Row::new("posts sent", h.posts.len() as f64, ""));
    out.rows
        .push(Row::new("posts acknowledged", posts_acked as f64, ""));
    out.rows.push(Row::new(
        "posts failed (no answer by the end)",
        (h.posts.len() - posts_acked) as f64,
        "",
    ));
    out.rows
        .push(Row::new("follows sent", h.follows.len() as f64, ""));
    out.rows
        .push(Row::new("follows acknowledged", follows_acked as f64, ""));
    out.rows.push(Row::new(
        "follows failed (no answer by the end)",
        (h.follows.len() - follows_acked) as f64,
        "",
    ));
    let mut by_kind: BTreeMap<FaultKind, Vec<&Fault>> = BTreeMap::new();
    for f in inj.done.iter().chain(inj.active.iter()) {
        by_kind.entry(f.kind).or_default().push(f);
    }
    let total: usize = by_kind.values().map(Vec::len).sum();
    out.rows.push(Row::new("faults", total as f64, ""));
    for (k, list) in &by_kind {
        out.rows
            .push(Row::new(format!("  {}", k.name()), list.len() as f64, ""));
    }
    let zero = |what: &str, n: usize| Row::new(what, n as f64, "").target("0", n == 0);
    out.rows.push(zero("lost", found.lost.len()));
    out.rows.push(zero("doubled", found.doubled.len()));
    out.rows.push(zero("unexpected", found.unexpected.len()));
    out.rows.push(zero("divergent", found.divergent.len()));
    out.rows
        .push(zero("screens: posts never shown", seen.missing.len()));
    out.rows
        .push(zero("screens: posts shown twice", seen.doubled.len()));
    out.rows.push(zero(
        "screens: posts shown and not stored",
        seen.unexpected.len(),
    ));
    out.rows.push(zero(
        "faults not recovered",
        inj.stuck.len() + inj.active.len(),
    ));
    out.rows.push(Row::new(
        "reconnections of posters",
        h.reconnects as f64,
        "",
    ));
    out.rows.push(Row::new(
        "posts unacknowledged for 5 windows (resent)",
        h.ack_timeouts as f64,
        "",
    ));
    out.rows.push(Row::new(
        "FOLLOWs answered \"already following\"",
        h.already_following as f64,
        "",
    ));
    out.rows.push(Row::new(
        "other errors (retried)",
        h.other_errors as f64,
        "",
    ));
    for (k, list) in &by_kind {
        let (mut fault_ack, mut heal_ack, mut heal_whole) =
            (Samples::default(), Samples::default(), Samples::default());
        for f in list {
            if let Some(d) = first_ack_after(&h.acks, f.injected, f.cluster) {
                fault_ack.push(d);
            }
            if let Some(healed) = f.healed {
                if let Some(d) = first_ack_after(&h.acks, healed, f.cluster) {
                    heal_ack.push(d);
                }
                if let Some(w) = f.whole {
                    heal_whole.push(w - healed);
                }
            }
        }
        for (what, s) in [
            ("fault to next ack", fault_ack),
            ("heal to next ack", heal_ack),
            ("heal to whole", heal_whole),
        ] {
            let s = s.summary();
            if s.n == 0 {
                continue;
            }
            out.rows.push(
                Row::new(format!("{}: {what}, max", k.name()), s.max, "ms").beside("p50", s.p50),
            );
            out.summaries.push((format!("{}: {what}", k.name()), s));
        }
    }
    out.notes.push(format!(
        "{} posters (users 1..={}) over {CLUSTERS} clusters, SNS_HEARTBEAT_MS={HEARTBEAT_MS} (failure window {} ms), SNS_SYNC_INTERVAL_MS={SYNC_INTERVAL_MS}; {} faults/min requested, seed {} (--seed {} repeats the schedule)",
        args.posters,
        args.posters,
        WINDOW.as_millis(),
        args.rate_per_min,
        args.seed,
        args.seed
    ));
    out.notes.push(
        format!("single-failure model: at most one fault at a time per cluster plus one of the coordinator, each healed after 0.5-3 failure windows; a target takes no new fault until whole again (restarted process back, master with an in-service slave); {}", if partitions {
            "every process on a network namespace of its own, partitions are silent drops (nft)"
        } else {
            "partitions are not injected"
        }),
    );
    out.notes.push(format!(
        "settled {} s after posting ended{}; recovery: fault (or heal) to the next acknowledged write in that cluster (any cluster for the coordinator), heal to the target whole again; ratio column is max/p50",
        (Instant::now() - posting_ended).as_secs(),
        match (&settled, &cycled) {
            (Ok(_), Ok(_)) => String::new(),
            (Err(e), _) | (_, Err(e)) => format!(" (did not settle: {e})"),
        }
    ));
    for e in &h.error_samples {
        out.notes.push(format!("an error the posters retried: {e}"));
    }
    let mut bad = Vec::new();
    for (what, list) in [
        ("lost", &found.lost),
        ("doubled", &found.doubled),
        ("unexpected", &found.unexpected),
        ("divergent", &found.divergent),
        ("never shown", &seen.missing),
        ("shown twice", &seen.doubled),
        ("shown, not stored", &seen.unexpected),
        ("not recovered", &inj.stuck),
    ] {
        for l in list.iter().take(20) {
            out.notes.push(format!("{what}: {l}"));
        }
        if list.len() > 20 {
            out.notes
                .push(format!("{what}: ... and {} more", list.len() - 20));
        }
        if !list.is_empty() {
            bad.push(format!("{what} {}", list.len()));
        }
    }
    if !inj.active.is_empty() {
        bad.push(format!("{} faults not recovered", inj.active.len()));
    }
    if !bad.is_empty() {
        out.error = Some(format!("FAIL: {} (seed {})", bad.join(", "), args.seed));
    }
    Ok(out)
}
