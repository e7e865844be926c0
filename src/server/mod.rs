//! The server: serves the clients of one cluster as its master, or mirrors
//! the master as its slave.
//!
//! # Roles
//! A server registers with the coordinator through its heartbeats; the reply
//! tells it whether it is the cluster's master or its slave, the cluster's
//! epoch and who its peer is. Only the master serves clients; a slave answers
//! them `UNAVAILABLE`, so that a client with a stale address asks the
//! coordinator again. A slave first brings its directory up to date with the
//! master's and then follows every write (see [`crate::server::replication`]).
//!
//! # Writes
//! Every client write (a new user, a follow, an unfollow, a post) becomes one
//! [`WriteOp`] with a time chosen by the master. Under the store lock the
//! master checks the request and stages the operation ([`Store::stage`]), so
//! that the checks of the next request see it; the replication task then
//! mirrors it to the slave and writes it to the master's own files before the
//! client gets its answer. The slave applies the same operations with the
//! same code, so both directories hold the same records; applying is
//! idempotent, so a re-sent batch stores nothing twice. A retried write is
//! recognised by its client id (`post_id`, `request_id`), remembered by master
//! and slave alike, and answered as the first one was.
//!
//! # Timelines
//! A TIMELINE stream first gets the last 20 posts of the user's timeline file,
//! read backwards from its end (the cost does not depend on the history), then
//! follows the file from the offset it has read up to. It wakes up on an
//! in-process signal for the server's own writes and on an inotify event
//! (through `notify`) for what the synchronizer appends; both are only hints
//! to read from the saved offset, so a merged or lost event delays nothing
//! that the next one does not bring. The stream ends when the client goes
//! away, or with `UNAVAILABLE` when this server stops being the master.
//!
//! # Sessions
//! A client logs in with a random session token and refreshes it by logging
//! in again; a session not refreshed for two heartbeat periods has expired. A
//! login for a user whose live session has another token is refused, which is
//! SPEC's duplicate-login rule; a killed client's session simply runs out, and
//! a client that exits cleanly logs out.

pub mod replication;

use crate::config::{cluster_of, parse_user};
use crate::model::validate_post;
use crate::proto::csce438::sns_service_server::{SnsService, SnsServiceServer};
use crate::proto::csce438::{ListReply, Message, Reply, Request as SnsRequest};
use crate::proto::tinysns::coordinator_client::CoordinatorClient;
use crate::proto::tinysns::replica_server::ReplicaServer;
use crate::proto::tinysns::{
    AddUser, FollowOp, HeartbeatReply, HeartbeatRequest, Kind, PostOp, Role, ServerInfo, WriteOp,
    write_op,
};
use crate::server::replication::{Following, OpLog, ReplicaApi, SlaveLink, op_id};
use crate::storage::journal::Journal;
use crate::storage::store::Store;
use crate::storage::{self, FileKind, FollowLog, Post, timeline_file};
use crate::timefmt::{self, MonotonicClock};
use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a server is started.
#[derive(Debug, Clone)]
pub struct Options {
    pub cluster: u32,
    pub server_id: u32,
    /// The coordinator, `host:port`.
    pub coordinator: String,
    /// The host name others reach this server at.
    pub host: String,
    pub port: u16,
    pub heartbeat: Duration,
    /// Acknowledge a write only once it is flushed to disk ([`crate::storage::journal`]).
    pub fsync: bool,
    pub data_dir: PathBuf,
}

/// Runs a server on `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: tokio::net::TcpListener,
    opts: Options,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    let mut coordinator =
        crate::coordinator::membership::client(&opts.coordinator, opts.heartbeat)?;
    let mut info = crate::coordinator::membership::info(
        Kind::Server,
        opts.cluster,
        opts.server_id,
        &opts.host,
        opts.port,
    );
    // Tells this run from earlier ones: a master's report that it took in
    // an earlier run of us does not make us in service.
    info.process = rand::random::<u64>() | 1;
    let process = info.process;
    // Register before serving: the reply says how many clusters there are,
    // which decides which users live here.
    let sent = Instant::now();
    let first =
        crate::coordinator::membership::register(&mut coordinator, &info, opts.heartbeat).await?;
    let dir = crate::config::server_dir(&opts.data_dir, opts.cluster, opts.server_id);
    let mut store = Store::open(&dir, opts.cluster, first.clusters)?;
    let (mut journal, replay) = Journal::open(&dir, opts.fsync)?;
    for op in &replay {
        store.apply(op)?;
    }
    if !replay.is_empty() {
        log::info!("replayed {} journaled operation(s)", replay.len());
    }
    // What the last run wrote may not be on disk yet: replay found it in the
    // files (the page cache outlives a killed process) but not necessarily
    // on the disk. Flush every data file before the journal is emptied.
    store.take_dirty();
    if !journal.is_empty() && opts.fsync {
        storage::sync_files(&storage::data_files(&dir)?)?;
        storage::sync_dir(&dir)?;
    }
    journal.clear()?;
    let (report_tx, report_rx) = mpsc::channel(16);
    let node = Arc::new(Node {
        addr: format!("{}:{}", opts.host, opts.port),
        lease: 2 * opts.heartbeat,
        failure_window: 2 * opts.heartbeat,
        opts,
        dir,
        clusters: first.clusters,
        store: Mutex::new(store),
        journal: Mutex::new(journal),
        role: AtomicI32::new(Role::None as i32),
        epoch: AtomicU64::new(0),
        sessions: Mutex::new(HashMap::new()),
        wakers: Mutex::new(HashMap::new()),
        recent: Mutex::new(Recent::default()),
        clock: MonotonicClock::default(),
        mirror: Mirror::default(),
        repl: Mutex::new(Repl {
            incarnation: rand::random(),
            ..Default::default()
        }),
        resync_lock: tokio::sync::Mutex::new(()),
        process,
        report: report_tx,
    });
    for op in &replay {
        node.record_ids(op);
    }
    node.clone().on_heartbeat(first, sent, 0);
    log::info!(
        "server {} of cluster {} serving at {} from {}",
        node.opts.server_id,
        node.opts.cluster,
        node.addr,
        node.dir.display()
    );

    let _watcher = node.clone().watch_directory()?;
    tokio::spawn(node.clone().heartbeat_loop(coordinator, info, report_rx));
    tokio::spawn(node.clone().mirror_loop());

    tonic::transport::Server::builder()
        .add_service(SnsServiceServer::new(ClientApi(node.clone())))
        .add_service(
            ReplicaServer::new(ReplicaApi(node.clone()))
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .serve_with_incoming_shutdown(
            crate::config::incoming(listener),
            shutdown.clone().cancelled_owned(),
        )
        .await?;
    log::info!(
        "server {} of cluster {} stopped",
        node.opts.server_id,
        node.opts.cluster
    );
    Ok(())
}

struct Session {
    token: String,
    expires: Instant,
    /// Logged out: a late refresh with this token must not revive it.
    ended: bool,
}

/// A staged write waiting for the mirror.
pub(crate) struct Pending {
    pub seq: u64,
    pub op: WriteOp,
    /// The files its staged records go to ([`Store::stage`]).
    pub files: Vec<FileKind>,
    pub done: oneshot::Sender<Result<(), Status>>,
}

/// The ordered queue of staged writes.
#[derive(Default)]
pub(crate) struct Mirror {
    pub queue: Mutex<Vec<Pending>>,
    pub kick: Notify,
}

/// Replication state: as a master, and as a slave.
#[derive(Default)]
pub(crate) struct Repl {
    /// Changes at every start and whenever the operation log is reset: a
    /// slave's position is only meaningful within one incarnation.
    pub incarnation: u64,
    pub log: OpLog,
    /// The number of the last operation written to our files.
    pub committed: u64,
    /// The slave in service.
    pub slave: Option<SlaveLink>,
    /// Until when this master may let writes out (see `replication`).
    pub lease_until: Option<Instant>,
    /// As a slave: the master we follow, once in sync.
    pub following: Option<Following>,
    pub resyncing: bool,
    /// Heartbeat replies in a row that said we are not in service although
    /// we follow a master: our master dropped us.
    pub dropped_replies: u32,
}

/// The state of one server process.
pub(crate) struct Node {
    pub opts: Options,
    pub addr: String,
    pub dir: PathBuf,
    clusters: u32,
    /// How long a client session lives without a refresh.
    lease: Duration,
    /// Two heartbeats: how long the coordinator waits before declaring a
    /// process failed.
    pub failure_window: Duration,
    pub store: Mutex<Store>,
    /// Taken before the store lock when both are needed.
    pub journal: Mutex<Journal>,
    role: AtomicI32,
    pub epoch: AtomicU64,
    sessions: Mutex<HashMap<u64, Session>>,
    /// One version counter per user with an open timeline, bumped when the
    /// user's timeline file may have grown.
    wakers: Mutex<HashMap<u64, watch::Sender<u64>>>,
    recent: Mutex<Recent>,
    clock: MonotonicClock,
    pub mirror: Mirror,
    pub repl: Mutex<Repl>,
    /// Held by a resync; mirrored batches wait for it.
    pub resync_lock: tokio::sync::Mutex<()>,
    /// This run's random start number (`ServerInfo.process`).
    pub process: u64,
    /// Asks the heartbeat task for a heartbeat now; answers whether the
    /// coordinator took it (and we are still master).
    report: mpsc::Sender<oneshot::Sender<bool>>,
}

/// How many client ids per user are remembered to recognise a retry.
const RECENT_IDS: usize = 1024;

/// The latest client ids per user.
#[derive(Default)]
struct RecentIds(HashMap<u64, std::collections::VecDeque<u64>>);

impl RecentIds {
    fn contains(&self, user: u64, id: u64) -> bool {
        self.0.get(&user).is_some_and(|ids| ids.contains(&id))
    }

    fn insert(&mut self, user: u64, id: u64) {
        let ids = self.0.entry(user).or_default();
        if ids.len() == RECENT_IDS {
            ids.pop_front();
        }
        ids.push_back(id);
    }

    fn remove(&mut self, user: u64, id: u64) {
        if let Some(ids) = self.0.get_mut(&user) {
            ids.retain(|i| *i != id);
        }
    }
}

/// Client ids of posts and of follow/unfollow requests already taken.
#[derive(Default)]
struct Recent {
    posts: RecentIds,
    requests: RecentIds,
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (our
/// critical sections leave the data consistent at every step).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn storage_error(e: std::io::Error) -> Status {
    log::error!("storage error: {e}");
    Status::internal(format!("storage error: {e}"))
}

impl Node {
    pub(crate) fn role(&self) -> Role {
        Role::try_from(self.role.load(Ordering::SeqCst)).unwrap_or(Role::None)
    }

    pub(crate) fn require_master(&self) -> Result<(), Status> {
        if self.role() == Role::Master {
            Ok(())
        } else {
            Err(Status::unavailable(format!(
                "server {} is not the master of cluster {}",
                self.opts.server_id, self.opts.cluster
            )))
        }
    }

    pub(crate) fn check_cluster(&self, cluster: u32) -> Result<(), Status> {
        if cluster == self.opts.cluster {
            Ok(())
        } else {
            Err(Status::invalid_argument(format!(
                "this server is in cluster {}, not {cluster}",
                self.opts.cluster
            )))
        }
    }

    /// Whether this master may let a write out now, renewing its lease with
    /// a heartbeat first if it ran out (a busy machine delays heartbeats):
    /// the coordinator's answer shows whether anyone took over meanwhile.
    pub(crate) async fn ensure_lease(&self) -> Result<(), Status> {
        if self.check_lease().is_ok() {
            return Ok(());
        }
        self.require_master()?;
        let epoch = self.epoch.load(Ordering::SeqCst);
        if self.report_now().await && self.epoch.load(Ordering::SeqCst) == epoch {
            self.check_lease()
        } else {
            Err(Status::unavailable("this server is no longer the master"))
        }
    }

    /// Whether this master may let a write out now: fencing (see
    /// `replication`).
    pub(crate) fn check_lease(&self) -> Result<(), Status> {
        self.require_master()?;
        let until = lock(&self.repl).lease_until;
        if until.is_some_and(|t| Instant::now() < t) {
            Ok(())
        } else {
            Err(Status::unavailable(
                "this master has not reached the coordinator within the failure window",
            ))
        }
    }

    /// The user a request comes from, who must hold a live session.
    fn caller(&self, username: &str, session: &str) -> Result<u64, Status> {
        self.require_master()?;
        let user = parse_user(username)
            .ok_or_else(|| Status::invalid_argument(format!("invalid user id {username:?}")))?;
        let mut sessions = lock(&self.sessions);
        match sessions.get_mut(&user) {
            Some(s) if s.expires > Instant::now() && !s.ended && s.token == session => {
                s.expires = Instant::now() + self.lease;
                Ok(user)
            }
            _ => Err(Status::unauthenticated(format!(
                "user {user} is not logged in"
            ))),
        }
    }

    fn subscribe(&self, user: u64) -> watch::Receiver<u64> {
        lock(&self.wakers)
            .entry(user)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    pub(crate) fn wake(&self, users: &[u64]) {
        let wakers = lock(&self.wakers);
        for u in users {
            if let Some(w) = wakers.get(u) {
                w.send_modify(|v| *v += 1);
            }
        }
    }

    pub(crate) fn wake_all(&self) {
        for w in lock(&self.wakers).values() {
            w.send_modify(|v| *v += 1);
        }
    }

    /// Remembers the client id an operation carries.
    pub(crate) fn record_ids(&self, op: &WriteOp) {
        self.with_ids(op, RecentIds::insert);
    }

    /// Forgets it again (the operation was abandoned).
    pub(crate) fn forget_ids(&self, op: &WriteOp) {
        self.with_ids(op, RecentIds::remove);
    }

    fn with_ids(&self, op: &WriteOp, f: impl FnOnce(&mut RecentIds, u64, u64)) {
        if let Some((post, user, id)) = op_id(op) {
            let mut recent = lock(&self.recent);
            let ids = if post {
                &mut recent.posts
            } else {
                &mut recent.requests
            };
            f(ids, user, id);
        }
    }

    fn seen_post(&self, user: u64, post_id: u64) -> bool {
        post_id != 0 && lock(&self.recent).posts.contains(user, post_id)
    }

    fn seen_request(&self, user: u64, request_id: u64) -> bool {
        request_id != 0 && lock(&self.recent).requests.contains(user, request_id)
    }

    /// Checks a client write and, if it is to be done, stages it and queues
    /// it for the mirror; then waits until it is mirrored and written. `build`
    /// runs under the store lock, so the checks and writes of concurrent
    /// requests do not interleave.
    async fn write(
        &self,
        build: impl FnOnce(&mut Store, &MonotonicClock) -> Result<Option<WriteOp>, Status>,
    ) -> Result<(), Status> {
        self.ensure_lease().await?;
        let done = {
            let mut store = lock(&self.store);
            let Some(op) = build(&mut store, &self.clock)? else {
                return Ok(());
            };
            let files = store.stage(&op).map_err(|e| {
                store.reset();
                storage_error(e)
            })?;
            self.record_ids(&op);
            let seq = lock(&self.repl).log.push(op.clone());
            let (tx, rx) = oneshot::channel();
            lock(&self.mirror.queue).push(Pending {
                seq,
                op,
                files,
                done: tx,
            });
            self.mirror.kick.notify_one();
            rx
        };
        done.await
            .unwrap_or_else(|_| Err(Status::unavailable("the server is shutting down")))
    }

    /// Stops acting as master: no write gets out any more, the staged ones
    /// are dropped, and the timelines end so their clients move on.
    pub(crate) fn step_down(&self, why: &str) {
        let was = Role::try_from(self.role.swap(Role::Slave as i32, Ordering::SeqCst))
            .unwrap_or(Role::None);
        let mut repl = lock(&self.repl);
        repl.lease_until = None;
        repl.slave = None;
        repl.following = None;
        drop(repl);
        if was == Role::Master {
            log::warn!(
                "server {} of cluster {} steps down: {why}",
                self.opts.server_id,
                self.opts.cluster
            );
        }
        self.wake_all();
    }

    /// Asks for a heartbeat now and waits for the coordinator's answer.
    pub(crate) async fn report_now(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.report.send(tx).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Acts on the coordinator's answer to a heartbeat sent at `sent`.
    /// Returns whether we are (still) the master.
    fn on_heartbeat(
        self: Arc<Self>,
        reply: HeartbeatReply,
        sent: Instant,
        reported_slave: u32,
    ) -> bool {
        let role = Role::try_from(reply.role).unwrap_or(Role::None);
        let epoch = self.epoch.load(Ordering::SeqCst);
        if reply.epoch < epoch {
            // A coordinator that lost its state; it will learn our epoch.
            log::warn!(
                "coordinator answered with epoch {} < ours {epoch}",
                reply.epoch
            );
        }
        match role {
            Role::Master => {
                let old = self.role.swap(Role::Master as i32, Ordering::SeqCst);
                self.epoch.fetch_max(reply.epoch, Ordering::SeqCst);
                let mut repl = lock(&self.repl);
                if old != Role::Master as i32 {
                    log::info!(
                        "server {} of cluster {} is now master (epoch {})",
                        self.opts.server_id,
                        self.opts.cluster,
                        reply.epoch
                    );
                    // A new reign: our operation log starts empty.
                    repl.incarnation = rand::random();
                    repl.log = OpLog::default();
                    repl.committed = 0;
                    repl.slave = None;
                    repl.following = None;
                }
                // The lease only counts if the coordinator heard about the
                // slave we mirror to now: a reply to a heartbeat that still
                // named a slave we have since dropped must not let us go on
                // alone. (A small margin covers timer granularity.)
                let current = repl.slave.as_ref().map_or(0, |l| l.server_id);
                if current == reported_slave {
                    repl.lease_until = Some(sent + self.failure_window - self.failure_window / 16);
                }
                true
            }
            _ => {
                if self.role() == Role::Master {
                    self.step_down("the coordinator says we are a slave");
                }
                let old = self.role.swap(Role::Slave as i32, Ordering::SeqCst);
                self.epoch.fetch_max(reply.epoch, Ordering::SeqCst);
                if old != Role::Slave as i32 {
                    log::info!(
                        "server {} of cluster {} is now slave (epoch {})",
                        self.opts.server_id,
                        self.opts.cluster,
                        reply.epoch
                    );
                }
                let master = reply
                    .peer
                    .filter(|p| p.alive && p.role == Role::Master as i32)
                    .map(|p| format!("{}:{}", p.hostname, p.port));
                let mut repl = lock(&self.repl);
                let Some(master) = master else {
                    return false;
                };
                let in_sync = repl.following.as_ref().is_some_and(|f| f.master == master);
                if in_sync && !reply.in_service {
                    repl.dropped_replies += 1;
                } else {
                    repl.dropped_replies = 0;
                }
                if (!in_sync || repl.dropped_replies >= 2) && !repl.resyncing {
                    repl.resyncing = true;
                    repl.following = None;
                    repl.dropped_replies = 0;
                    drop(repl);
                    log::info!("resyncing from master {master}");
                    tokio::spawn(self.clone().resync(master));
                }
                false
            }
        }
    }

    async fn heartbeat_loop(
        self: Arc<Self>,
        mut coordinator: CoordinatorClient<Channel>,
        info: ServerInfo,
        mut reports: mpsc::Receiver<oneshot::Sender<bool>>,
    ) {
        let mut tick = tokio::time::interval(self.opts.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let waiter = tokio::select! {
                _ = tick.tick() => None,
                w = reports.recv() => w,
            };
            let mut info = info.clone();
            info.role = self.role() as i32;
            let (in_service_slave, in_service_process) = if self.role() == Role::Master {
                lock(&self.repl)
                    .slave
                    .as_ref()
                    .map_or((0, 0), |l| (l.server_id, l.process))
            } else {
                (0, 0)
            };
            let req = HeartbeatRequest {
                info: Some(info),
                epoch: self.epoch.load(Ordering::SeqCst),
                in_service_slave,
                in_service_process,
            };
            let sent = Instant::now();
            let master = match coordinator.heartbeat(req).await {
                Ok(r) => self
                    .clone()
                    .on_heartbeat(r.into_inner(), sent, in_service_slave),
                Err(e) => {
                    log::warn!(
                        "heartbeat to {} failed: {}",
                        self.opts.coordinator,
                        e.message()
                    );
                    false
                }
            };
            if let Some(w) = waiter {
                let _ = w.send(master);
            }
        }
    }

    /// Watches the directory so that timelines see what the synchronizer
    /// appends. The watch lives as long as the returned value.
    fn watch_directory(self: Arc<Self>) -> std::io::Result<crate::storage::watch::DirWatch> {
        let node = self.clone();
        crate::storage::watch::watch_dir(&self.dir, move |change| match change {
            crate::storage::watch::Change::Files(paths) => {
                let users: Vec<u64> = paths
                    .iter()
                    .filter_map(|p| match FileKind::parse(p) {
                        Some(FileKind::Timeline(u)) => Some(u),
                        _ => None,
                    })
                    .collect();
                node.wake(&users);
            }
            crate::storage::watch::Change::Rescan => node.wake_all(),
        })
    }
}

// ---------------------------------------------------------------------------
// The client API

struct ClientApi(Arc<Node>);

fn argument(req: &SnsRequest) -> Result<u64, Status> {
    let arg = req.arguments.first().map(|s| s.trim()).unwrap_or("");
    parse_user(arg).ok_or_else(|| Status::invalid_argument(format!("invalid username {arg:?}")))
}

fn ok(msg: &str) -> Response<Reply> {
    Response::new(Reply {
        msg: msg.to_string(),
        lease_ms: 0,
    })
}

#[tonic::async_trait]
impl SnsService for ClientApi {
    async fn login(&self, req: Request<SnsRequest>) -> Result<Response<Reply>, Status> {
        let node = &self.0;
        if node.role() != Role::Master {
            // The coordinator sent this client here: it has probably just
            // promoted us, and we would only hear so at our next heartbeat.
            // Ask now rather than make the client wait a heartbeat.
            node.report_now().await;
        }
        node.require_master()?;
        let req = req.into_inner();
        let user = parse_user(&req.username).ok_or_else(|| {
            Status::invalid_argument(format!("invalid user id {:?}", req.username))
        })?;
        let home = cluster_of(user, node.clusters);
        if home != node.opts.cluster {
            return Err(Status::failed_precondition(format!(
                "user {user} lives in cluster {home}, not {}",
                node.opts.cluster
            )));
        }
        {
            let mut sessions = lock(&node.sessions);
            let now = Instant::now();
            if let Some(s) = sessions.get(&user)
                && s.expires > now
            {
                if s.ended && s.token == req.session {
                    return Err(Status::unauthenticated("this session was logged out"));
                }
                if !s.ended && s.token != req.session {
                    return Err(Status::already_exists(format!(
                        "user {user} is already logged in"
                    )));
                }
            }
            sessions.insert(
                user,
                Session {
                    token: req.session.clone(),
                    expires: now + node.lease,
                    ended: false,
                },
            );
        }
        node.write(|store, _| {
            let known = store.users().map_err(storage_error)?.contains(&user);
            Ok((!known).then_some(WriteOp {
                op: Some(write_op::Op::AddUser(AddUser { user })),
            }))
        })
        .await?;
        // The write may have waited: the lease starts now.
        if let Some(s) = lock(&node.sessions).get_mut(&user)
            && s.token == req.session
        {
            s.expires = Instant::now() + node.lease;
        }
        Ok(Response::new(Reply {
            msg: "Login successful".into(),
            lease_ms: node.lease.as_millis() as u64,
        }))
    }

    async fn list(&self, req: Request<SnsRequest>) -> Result<Response<ListReply>, Status> {
        let node = &self.0;
        let req = req.into_inner();
        let user = node.caller(&req.username, &req.session)?;
        let mut store = lock(&node.store);
        let all_users = store
            .users()
            .map_err(storage_error)?
            .iter()
            .map(u64::to_string)
            .collect();
        let followers = store
            .followers(user)
            .map_err(storage_error)?
            .current()
            .iter()
            .map(u64::to_string)
            .collect();
        Ok(Response::new(ListReply {
            all_users,
            followers,
        }))
    }

    async fn follow(&self, req: Request<SnsRequest>) -> Result<Response<Reply>, Status> {
        self.follow_or_unfollow(req.into_inner(), true).await
    }

    async fn un_follow(&self, req: Request<SnsRequest>) -> Result<Response<Reply>, Status> {
        self.follow_or_unfollow(req.into_inner(), false).await
    }

    async fn logout(&self, req: Request<SnsRequest>) -> Result<Response<Reply>, Status> {
        let node = &self.0;
        let req = req.into_inner();
        let user = parse_user(&req.username).ok_or_else(|| {
            Status::invalid_argument(format!("invalid user id {:?}", req.username))
        })?;
        let mut sessions = lock(&node.sessions);
        // Keep the entry, marked, until its lease runs out, so that a refresh
        // still in flight cannot revive it.
        if let Some(s) = sessions.get_mut(&user)
            && s.token == req.session
        {
            s.ended = true;
        }
        Ok(ok("Logout successful"))
    }

    type TimelineStream = Pin<Box<dyn Stream<Item = Result<Message, Status>> + Send>>;

    async fn timeline(
        &self,
        req: Request<Streaming<Message>>,
    ) -> Result<Response<Self::TimelineStream>, Status> {
        let node = self.0.clone();
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before naming its user"))?;
        let user = node.caller(&first.username, &first.session)?;
        let (tx, rx) = mpsc::channel(256);
        // Subscribe before reading the file, so no append is missed.
        let changes = node.subscribe(user);
        let since = first.timestamp.as_ref().map(timefmt::from_timestamp);
        tokio::spawn(deliver(node.clone(), user, since, changes, tx.clone()));
        tokio::spawn(receive(node, user, inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl ClientApi {
    async fn follow_or_unfollow(
        &self,
        req: SnsRequest,
        follow: bool,
    ) -> Result<Response<Reply>, Status> {
        let node = &self.0;
        let user = node.caller(&req.username, &req.session)?;
        let target = argument(&req)?;
        if target == user {
            return Err(if follow {
                Status::already_exists("you cannot follow yourself")
            } else {
                Status::invalid_argument("you cannot unfollow yourself")
            });
        }
        node.write(|store, clock| {
            if node.seen_request(user, req.request_id) {
                // A retry of a request already done (its answer was lost).
                return Ok(None);
            }
            if !store.users().map_err(storage_error)?.contains(&target) {
                return Err(Status::not_found(format!("no user {target}")));
            }
            let following = store.following(user).map_err(storage_error)?;
            match (follow, following.contains(target)) {
                (true, true) => {
                    return Err(Status::already_exists(format!(
                        "already following {target}"
                    )));
                }
                (false, false) => {
                    return Err(Status::failed_precondition(format!(
                        "not following {target}"
                    )));
                }
                _ => {}
            }
            let time_ns = clock.next_after(following.max_time());
            Ok(Some(WriteOp {
                op: Some(write_op::Op::Follow(FollowOp {
                    follower: user,
                    followee: target,
                    request_id: req.request_id,
                    time_ns,
                    follow,
                })),
            }))
        })
        .await?;
        Ok(ok("Command completed successfully"))
    }
}

fn post_message(p: &Post) -> Message {
    Message {
        username: p.author.to_string(),
        msg: p.text.clone(),
        timestamp: Some(timefmt::to_timestamp(p.time)),
        ..Default::default()
    }
}

/// Whether `p` belongs on the screen of someone with this follow history: its
/// author is followed now, and it was posted after the follow began.
fn shown(following: &FollowLog, p: &Post) -> bool {
    following
        .since(p.author)
        .is_some_and(|since| p.time > since)
}

/// Most posts sent to a client that resumes its timeline.
const RESUME_MAX: usize = 10_000;
/// How much older than the newest post a resuming client has shown a post may
/// be and still not have reached it (it came from another cluster late).
const RESUME_SLACK_NS: i64 = 60_000_000_000;

/// Sends the last 20 posts of `user`'s timeline, then every new one, until
/// the client goes away.
async fn deliver(
    node: Arc<Node>,
    user: u64,
    since: Option<timefmt::Nanos>,
    mut changes: watch::Receiver<u64>,
    tx: mpsc::Sender<Result<Message, Status>>,
) {
    let path = timeline_file(&node.dir, user);
    let following = |node: &Node| -> Result<FollowLog, Status> {
        let mut store = lock(&node.store);
        Ok(store.following(user).map_err(storage_error)?.clone())
    };
    let result = async {
        let f = following(&node)?;
        // No early stop: remote posts arrive late, so the file is not in time
        // order across authors. The scan ends after 20 shown posts (far only
        // for a user who unfollowed everyone they read).
        let last = match since {
            None => storage::last_posts(&path, 20, |p| shown(&f, p), |_| false),
            // A resuming client: everything after what it has shown. Remote
            // posts arrive late, so look a little further back; the client
            // drops what it has shown already.
            Some(t) => storage::last_posts(
                &path,
                RESUME_MAX,
                |p| shown(&f, p),
                |p| p.time <= t.saturating_sub(RESUME_SLACK_NS),
            ),
        }
        .map_err(storage_error)?;
        let mut posts = last.posts;
        posts.sort_by_key(|p| p.time);
        let mut offset = last.end;
        for p in &posts {
            if tx.send(Ok(post_message(p))).await.is_err() {
                return Ok(());
            }
        }
        loop {
            tokio::select! {
                _ = tx.closed() => return Ok(()),
                r = changes.changed() => if r.is_err() { return Ok(()) },
            }
            node.require_master()?;
            let (bytes, end) = storage::read_from(&path, offset).map_err(storage_error)?;
            offset = end;
            if bytes.is_empty() {
                continue;
            }
            let f = following(&node)?;
            let (records, _) = storage::split_records(&bytes, storage::Format::Records);
            for p in records.into_iter().filter_map(Post::decode) {
                if shown(&f, &p) && tx.send(Ok(post_message(&p))).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    .await;
    if let Err(status) = result {
        let _ = tx.send(Err(status)).await;
    }
    log::debug!("timeline of user {user} closed");
}

/// Stores the posts a client sends on its timeline stream and acknowledges
/// each once stored (and mirrored).
async fn receive(
    node: Arc<Node>,
    user: u64,
    mut inbound: Streaming<Message>,
    tx: mpsc::Sender<Result<Message, Status>>,
) {
    loop {
        let msg = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                // A message that does not decode (e.g. a post that is not
                // UTF-8) is bad input: say so. A broken connection has no one
                // left to tell, and the send fails harmlessly.
                log::debug!("timeline stream of user {user} broke: {}", e.message());
                let status = Status::invalid_argument(format!("bad message: {}", e.message()));
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        if let Err(reason) = validate_post(&msg.msg) {
            let _ = tx.send(Err(Status::invalid_argument(reason))).await;
            return;
        }
        if let Err(status) = node.require_master() {
            let _ = tx.send(Err(status)).await;
            return;
        }
        let post_id = msg.post_id;
        {
            let text = msg.msg;
            let result = node
                .write(|store, clock| {
                    // Checked under the store lock, where ids are recorded:
                    // a resent post is stored once.
                    if node.seen_post(user, post_id) {
                        return Ok(None);
                    }
                    let time_ns = clock.next_after(store.latest_post(user).map_err(storage_error)?);
                    Ok(Some(WriteOp {
                        op: Some(write_op::Op::Post(PostOp {
                            author: user,
                            time_ns,
                            text,
                            post_id,
                        })),
                    }))
                })
                .await;
            if let Err(status) = result {
                let _ = tx.send(Err(status)).await;
                return;
            }
        }
        if post_id != 0 {
            let ack = Message {
                username: user.to_string(),
                ack_id: post_id,
                ..Default::default()
            };
            if tx.send(Ok(ack)).await.is_err() {
                return;
            }
        }
    }
}
