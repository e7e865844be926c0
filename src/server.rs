//! The server: serves the clients of one cluster and mirrors every write.
//!
//! # Roles
//! A server registers with the coordinator through its heartbeats; the reply
//! tells it whether it is the cluster's master or its slave, the cluster's
//! epoch and who its peer is. Only the master serves clients; a slave answers
//! them `UNAVAILABLE`, so that a client with a stale address asks the
//! coordinator again.
//!
//! # Writes
//! Every client write (a new user, a follow, an unfollow, a post) becomes one
//! [`WriteOp`] with a time chosen by the master. Under the store lock the
//! master checks the request, applies the operation to its own directory
//! ([`Store`]) and queues it for the slave in the same order; it answers the
//! client once the mirror has handed the operation to the slave (or has given
//! the slave up as unreachable). The mirror sends whatever has queued up while
//! the previous batch was in flight as one batch, so concurrent writers share
//! round trips. The slave applies the same operations with the same code, so
//! both directories hold the same records; applying is idempotent, so a
//! re-sent batch stores nothing twice.
//!
//! # Timelines
//! A TIMELINE stream first gets the last 20 posts of the user's timeline file,
//! read backwards from its end (the cost does not depend on the history), then
//! follows the file from the offset it has read up to. It wakes up on an
//! in-process signal for the server's own writes and on an inotify event
//! (through `notify`) for what the synchronizer appends; both are only hints
//! to read from the saved offset, so a merged or lost event delays nothing
//! that the next one does not bring. The stream ends when the client goes
//! away.
//!
//! # Sessions
//! A client logs in with a random session token and refreshes it by logging
//! in again; a session not refreshed for two heartbeat periods has expired. A
//! login for a user whose live session has another token is refused, which is
//! SPEC's duplicate-login rule; a killed client's session simply runs out.

use crate::config::{cluster_of, parse_user};
use crate::model::validate_post;
use crate::proto::csce438::sns_service_server::{SnsService, SnsServiceServer};
use crate::proto::csce438::{ListReply, Message, Reply, Request as SnsRequest};
use crate::proto::tinysns::coordinator_client::CoordinatorClient;
use crate::proto::tinysns::replica_client::ReplicaClient;
use crate::proto::tinysns::replica_server::{Replica, ReplicaServer};
use crate::proto::tinysns::{
    AddUser, ApplyReply, ApplyRequest, FollowOp, HeartbeatRequest, JoinReply, JoinRequest, Kind,
    PostOp, Role, ServerInfo, SnapshotChunk, SnapshotRequest, WriteOp, write_op,
};
use crate::storage::{self, FollowLog, Post, timeline_file};
use crate::store::Store;
use crate::timefmt::{self, MonotonicClock};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
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
    pub data_dir: PathBuf,
}

/// Runs a server on `listener` until `shutdown` completes.
pub async fn run(
    listener: tokio::net::TcpListener,
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    let coordinator = Endpoint::from_shared(format!("http://{}", opts.coordinator))?
        .connect_timeout(opts.heartbeat.max(Duration::from_millis(200)))
        .timeout(opts.heartbeat.max(Duration::from_millis(200)))
        .connect_lazy();
    let mut coordinator = CoordinatorClient::new(coordinator);
    let info = ServerInfo {
        cluster_id: opts.cluster,
        server_id: opts.server_id,
        hostname: opts.host.clone(),
        port: u32::from(opts.port),
        kind: Kind::Server as i32,
        ..Default::default()
    };

    // Register before serving: the reply says how many clusters there are,
    // which decides which users live here.
    let mut backoff = Duration::from_millis(50);
    let first = loop {
        let req = HeartbeatRequest {
            info: Some(info.clone()),
            ..Default::default()
        };
        match coordinator.heartbeat(req).await {
            Ok(r) => break r.into_inner(),
            Err(e) if e.code() == tonic::Code::InvalidArgument => {
                return Err(
                    format!("the coordinator refused to register us: {}", e.message()).into(),
                );
            }
            Err(e) => {
                log::warn!(
                    "cannot reach the coordinator at {}: {}",
                    opts.coordinator,
                    e.message()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(opts.heartbeat);
            }
        }
    };
    let dir = crate::config::server_dir(&opts.data_dir, opts.cluster, opts.server_id);
    let store = Store::open(&dir, opts.cluster, first.clusters)?;
    let node = Arc::new(Node {
        addr: format!("{}:{}", opts.host, opts.port),
        lease: 2 * opts.heartbeat,
        opts,
        dir,
        clusters: first.clusters,
        store: Mutex::new(store),
        role: AtomicI32::new(Role::None as i32),
        epoch: AtomicU64::new(0),
        sessions: Mutex::new(HashMap::new()),
        wakers: Mutex::new(HashMap::new()),
        recent_posts: Mutex::new(RecentIds::default()),
        clock: MonotonicClock::default(),
        mirror: Mirror::default(),
        joined: Mutex::new(None),
    });
    node.on_heartbeat(first).await;
    log::info!(
        "server {} of cluster {} serving at {} from {}",
        node.opts.server_id,
        node.opts.cluster,
        node.addr,
        node.dir.display()
    );

    let _watcher = node.clone().watch_directory()?;
    tokio::spawn(node.clone().heartbeat_loop(coordinator, info));
    tokio::spawn(node.clone().mirror_loop());

    tonic::transport::Server::builder()
        .add_service(SnsServiceServer::new(ClientApi(node.clone())))
        .add_service(ReplicaServer::new(ReplicaApi(node.clone())))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
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

/// The state of one server process.
struct Node {
    opts: Options,
    addr: String,
    dir: PathBuf,
    clusters: u32,
    lease: Duration,
    store: Mutex<Store>,
    role: AtomicI32,
    epoch: AtomicU64,
    sessions: Mutex<HashMap<u64, Session>>,
    /// One version counter per user with an open timeline, bumped when the
    /// user's timeline file may have grown.
    wakers: Mutex<HashMap<u64, watch::Sender<u64>>>,
    /// `(user, post_id)` of posts already stored, so a resent post is stored
    /// once.
    recent_posts: Mutex<RecentIds>,
    clock: MonotonicClock,
    mirror: Mirror,
    /// As a slave: the master we have announced ourselves to.
    joined: Mutex<Option<String>>,
}

/// How many post ids per user are remembered to recognise a resent post.
const RECENT_IDS: usize = 1024;

/// The latest client post ids per user.
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
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (our
/// critical sections leave the data consistent at every step).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn storage_error(e: std::io::Error) -> Status {
    log::error!("storage error: {e}");
    Status::internal(format!("storage error: {e}"))
}

impl Node {
    fn role(&self) -> Role {
        Role::try_from(self.role.load(Ordering::SeqCst)).unwrap_or(Role::None)
    }

    fn require_master(&self) -> Result<(), Status> {
        if self.role() == Role::Master {
            Ok(())
        } else {
            Err(Status::unavailable(format!(
                "server {} is not the master of cluster {}",
                self.opts.server_id, self.opts.cluster
            )))
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

    fn wake(&self, users: &[u64]) {
        let wakers = lock(&self.wakers);
        for u in users {
            if let Some(w) = wakers.get(u) {
                w.send_modify(|v| *v += 1);
            }
        }
    }

    fn wake_all(&self) {
        for w in lock(&self.wakers).values() {
            w.send_modify(|v| *v += 1);
        }
    }

    /// Checks a client write and, if it is to be done, applies it here and
    /// queues it for the slave; then waits for the mirror. `build` runs under
    /// the store lock, so checks and writes of concurrent requests do not
    /// interleave.
    async fn write(
        &self,
        build: impl FnOnce(&mut Store, &MonotonicClock) -> Result<Option<WriteOp>, Status>,
    ) -> Result<(), Status> {
        let done = {
            let mut store = lock(&self.store);
            let Some(op) = build(&mut store, &self.clock)? else {
                return Ok(());
            };
            let changed = store.apply(&op).map_err(storage_error)?;
            self.wake(&changed);
            self.mirror.push(op)
        };
        // The mirror answers even when the slave is gone; a dropped sender
        // would only mean the process is shutting down.
        let _ = done.await;
        Ok(())
    }

    async fn on_heartbeat(&self, reply: crate::proto::tinysns::HeartbeatReply) {
        let role = Role::try_from(reply.role).unwrap_or(Role::None);
        let old =
            Role::try_from(self.role.swap(role as i32, Ordering::SeqCst)).unwrap_or(Role::None);
        self.epoch.fetch_max(reply.epoch, Ordering::SeqCst);
        if old != role {
            log::info!(
                "cluster {} server {} is now {:?} (epoch {})",
                self.opts.cluster,
                self.opts.server_id,
                role,
                reply.epoch
            );
        }
        let peer = reply.peer.filter(|p| p.alive).map(|p| {
            (
                Role::try_from(p.role).unwrap_or(Role::None),
                format!("{}:{}", p.hostname, p.port),
            )
        });
        match (role, peer) {
            (Role::Master, Some((Role::Slave, addr))) => self.mirror.set_slave_if_none(&addr),
            (Role::Slave, Some((Role::Master, addr))) => {
                let already = lock(&self.joined).as_deref() == Some(addr.as_str());
                if !already {
                    self.join(addr).await;
                }
            }
            _ => {}
        }
        if role == Role::Master {
            *lock(&self.joined) = None;
        }
    }

    /// Announces this slave to its master so that mirroring starts at once.
    async fn join(&self, master: String) {
        let req = JoinRequest {
            cluster_id: self.opts.cluster,
            server_id: self.opts.server_id,
            address: self.addr.clone(),
            ..Default::default()
        };
        let result = async {
            let ch = Endpoint::from_shared(format!("http://{master}"))?
                .connect_timeout(self.lease)
                .timeout(self.lease)
                .connect()
                .await?;
            ReplicaClient::new(ch).join(req).await?;
            Ok::<_, BoxError>(())
        }
        .await;
        match result {
            Ok(()) => {
                log::info!("joined master {master}");
                *lock(&self.joined) = Some(master);
            }
            Err(e) => log::warn!("cannot join master {master}: {e}"),
        }
    }

    async fn heartbeat_loop(
        self: Arc<Self>,
        mut coordinator: CoordinatorClient<Channel>,
        info: ServerInfo,
    ) {
        let mut tick = tokio::time::interval(self.opts.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut info = info.clone();
            info.role = self.role() as i32;
            let req = HeartbeatRequest {
                info: Some(info),
                epoch: self.epoch.load(Ordering::SeqCst),
                in_service_slave: 0,
            };
            match coordinator.heartbeat(req).await {
                Ok(r) => self.on_heartbeat(r.into_inner()).await,
                Err(e) => log::warn!(
                    "heartbeat to {} failed: {}",
                    self.opts.coordinator,
                    e.message()
                ),
            }
        }
    }

    /// Watches the directory so that timelines see what the synchronizer
    /// appends. The watcher lives as long as the returned value.
    fn watch_directory(self: Arc<Self>) -> Result<notify::RecommendedWatcher, BoxError> {
        use notify::Watcher;
        let node = self.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) => {
                    if ev.need_rescan() {
                        node.wake_all();
                    }
                    let users: Vec<u64> = ev
                        .paths
                        .iter()
                        .filter_map(|p| match storage::FileKind::parse(p) {
                            Some(storage::FileKind::Timeline(u)) => Some(u),
                            _ => None,
                        })
                        .collect();
                    node.wake(&users);
                }
                Err(e) => {
                    log::warn!("directory watch error: {e}; waking every timeline");
                    node.wake_all();
                }
            })?;
        watcher.watch(&self.dir, notify::RecursiveMode::NonRecursive)?;
        Ok(watcher)
    }

    async fn mirror_loop(self: Arc<Self>) {
        let mut client: Option<(String, ReplicaClient<Channel>)> = None;
        loop {
            self.mirror.kick.notified().await;
            loop {
                let batch = std::mem::take(&mut *lock(&self.mirror.queue));
                if batch.is_empty() {
                    break;
                }
                let slave = lock(&self.mirror.slave).clone();
                if let Some(addr) = slave {
                    if client.as_ref().map(|(a, _)| a) != Some(&addr) {
                        client = Endpoint::from_shared(format!("http://{addr}"))
                            .map(|e| {
                                let ch = e
                                    .connect_timeout(self.lease)
                                    .timeout(self.lease)
                                    .connect_lazy();
                                (addr.clone(), ReplicaClient::new(ch))
                            })
                            .ok();
                    }
                    if let Some((_, c)) = client.as_mut() {
                        let req = ApplyRequest {
                            cluster_id: self.opts.cluster,
                            epoch: self.epoch.load(Ordering::SeqCst),
                            ops: batch.iter().map(|(op, _)| op.clone()).collect(),
                            ..Default::default()
                        };
                        if let Err(e) = c.apply(req).await {
                            log::warn!(
                                "slave {addr} did not take a mirrored write ({}); going on alone",
                                e.message()
                            );
                            let mut s = lock(&self.mirror.slave);
                            if s.as_deref() == Some(addr.as_str()) {
                                *s = None;
                            }
                        }
                    }
                }
                for (_, done) in batch {
                    let _ = done.send(());
                }
            }
        }
    }
}

/// The ordered queue of operations for the slave.
#[derive(Default)]
struct Mirror {
    queue: Mutex<Vec<(WriteOp, oneshot::Sender<()>)>>,
    kick: Notify,
    slave: Mutex<Option<String>>,
}

impl Mirror {
    fn push(&self, op: WriteOp) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        lock(&self.queue).push((op, tx));
        self.kick.notify_one();
        rx
    }

    fn set_slave(&self, addr: &str) {
        let mut s = lock(&self.slave);
        if s.as_deref() != Some(addr) {
            log::info!("mirroring writes to slave {addr}");
            *s = Some(addr.to_string());
        }
    }

    fn set_slave_if_none(&self, addr: &str) {
        if lock(&self.slave).is_none() {
            self.set_slave(addr);
        }
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
        tokio::spawn(deliver(node.clone(), user, changes, tx.clone()));
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

/// Sends the last 20 posts of `user`'s timeline, then every new one, until
/// the client goes away.
async fn deliver(
    node: Arc<Node>,
    user: u64,
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
        // Nothing older than the earliest current follow can be shown, so
        // the backwards scan stops there.
        let horizon = f.earliest_current().unwrap_or(i64::MAX);
        let last = storage::last_posts(&path, 20, |p| shown(&f, p), |p| p.time <= horizon)
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
        let duplicate = post_id != 0 && lock(&node.recent_posts).contains(user, post_id);
        if !duplicate {
            let text = msg.msg;
            let result = node
                .write(|store, clock| {
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
            if post_id != 0 {
                lock(&node.recent_posts).insert(user, post_id);
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

// ---------------------------------------------------------------------------
// The replica API

struct ReplicaApi(Arc<Node>);

#[tonic::async_trait]
impl Replica for ReplicaApi {
    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyReply>, Status> {
        let node = &self.0;
        let req = req.into_inner();
        if req.cluster_id != node.opts.cluster {
            return Err(Status::invalid_argument(format!(
                "this server is in cluster {}, not {}",
                node.opts.cluster, req.cluster_id
            )));
        }
        let epoch = node.epoch.load(Ordering::SeqCst);
        if req.epoch < epoch {
            return Err(Status::failed_precondition(format!(
                "stale epoch {} (ours is {epoch})",
                req.epoch
            )));
        }
        let mut changed = Vec::new();
        {
            let mut store = lock(&node.store);
            for op in &req.ops {
                changed.extend(store.apply(op).map_err(storage_error)?);
            }
        }
        let mut recent = lock(&node.recent_posts);
        for op in &req.ops {
            if let Some(write_op::Op::Post(p)) = &op.op
                && p.post_id != 0
            {
                recent.insert(p.author, p.post_id);
            }
        }
        drop(recent);
        node.wake(&changed);
        Ok(Response::new(ApplyReply {}))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

    async fn snapshot(
        &self,
        _req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(Status::unimplemented("resync"))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let node = &self.0;
        let req = req.into_inner();
        node.require_master()
            .map_err(|_| Status::failed_precondition("not the master"))?;
        if req.cluster_id != node.opts.cluster {
            return Err(Status::invalid_argument("wrong cluster"));
        }
        node.mirror.set_slave(&req.address);
        Ok(Response::new(JoinReply::default()))
    }
}
