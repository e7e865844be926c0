//! The follower synchronizer: carries users, follows and posts between
//! clusters. It never talks to a server: it reads its cluster's files and
//! writes into them.
//!
//! # Sending
//! The synchronizer of cluster `c` reads the master's directory of `c` and
//! pushes to each other cluster's synchronizer what that cluster needs:
//!
//! * every user that lives in `c` (from `all_users.txt`), to every cluster;
//! * every follow or unfollow event of a user of `c` (from
//!   `u<id>_following.txt`) to the cluster of the user followed;
//! * every post of a user of `c` (from `u<id>_posts.txt`) to each cluster that
//!   has followers of the author at the post's time, with the list of those
//!   followers (the *targets*).
//!
//! For each source file and each peer it keeps a **cursor**: how far that peer
//! has acknowledged (a count of users, or the time of the last event or post).
//! Cursors only move after the peer's acknowledgement and are saved to
//! `cluster_<c>/synchronizer/positions.txt` (written whole and renamed into
//! place), so a restart resumes where it stopped and re-sends at most what was
//! in flight, which the receiver recognises. In memory a cursor also holds the
//! byte offset it stands at, found again after a restart by reading backwards
//! from the end of the file to the saved time.
//!
//! Changes are pushed **as they happen**: a `notify` (inotify) watch on the
//! cluster's directory marks the changed file dirty, and the sender reads it
//! from its cursor. Events are only hints: the full cycle every
//! `SNS_SYNC_INTERVAL_MS` marks every file dirty, which costs a `stat` per file
//! when nothing changed, and a peer that could not be reached is retried every
//! heartbeat.
//!
//! A remote user who starts following a local author may have done so just
//! before a post of the author that was already sent without them. So when a
//! follow arrives, the author's cursor for that cluster is moved back to the
//! follow's time, and the posts since are sent again; the receiver stores only
//! what it lacks.
//!
//! # Receiving
//! What arrives is applied to every server directory of the cluster through
//! [`Store`], under `flock` and idempotently, and acknowledged only once it is
//! on disk. The servers see it through their own directory watches.

use crate::config::{cluster_dir, cluster_of, server_dir};
use crate::proto::tinysns::coordinator_client::CoordinatorClient;
use crate::proto::tinysns::synchronizer_client::SynchronizerClient;
use crate::proto::tinysns::synchronizer_server::{Synchronizer, SynchronizerServer};
use crate::proto::tinysns::{
    Empty, FollowBatch, FollowOp, HeartbeatRequest, Kind, PostBatch, PostOp, PushReply, RemotePost,
    UserBatch, UserRequest,
};
use crate::storage::store::Store;
use crate::storage::{self, FileKind, FollowEvent, FollowLog, Post, Tail};
use crate::timefmt::Nanos;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Most records in one push.
const BATCH: usize = 1000;

#[derive(Debug, Clone)]
pub struct Options {
    /// Synchronizer id = the cluster it serves.
    pub id: u32,
    pub coordinator: String,
    pub host: String,
    pub port: u16,
    pub heartbeat: Duration,
    pub sync_interval: Duration,
    /// Flush what a push wrote to disk before acknowledging it.
    pub fsync: bool,
    pub data_dir: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a synchronizer on `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: tokio::net::TcpListener,
    mut opts: Options,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    let rpc_timeout = (2 * opts.heartbeat).max(Duration::from_millis(500));
    let mut coordinator =
        crate::coordinator::membership::client(&opts.coordinator, opts.heartbeat)?;
    let info = crate::coordinator::membership::info(
        Kind::Synchronizer,
        opts.id,
        opts.id,
        &opts.host,
        opts.port,
    );
    let clusters =
        crate::coordinator::membership::register(&mut coordinator, &info, opts.heartbeat)
            .await?
            .clusters;
    // inotify reports absolute paths; make ours absolute too so that they
    // compare equal (SNS_DATA_DIR is relative by default).
    std::fs::create_dir_all(cluster_dir(&opts.data_dir, opts.id).join("synchronizer"))?;
    opts.data_dir = std::fs::canonicalize(&opts.data_dir)?;
    let cluster_root = cluster_dir(&opts.data_dir, opts.id);
    let state_dir = cluster_root.join("synchronizer");
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        clusters,
        stores: Mutex::new(HashMap::new()),
        events: tx.clone(),
    });

    // Heartbeats keep us in the coordinator's table.
    {
        let mut coordinator = coordinator.clone();
        let heartbeat = opts.heartbeat;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let req = HeartbeatRequest {
                    info: Some(info.clone()),
                    ..Default::default()
                };
                if let Err(e) = coordinator.heartbeat(req).await {
                    log::warn!("heartbeat failed: {}", e.message());
                }
            }
        });
    }

    let sender = Sender::new(shared.clone(), coordinator, state_dir, rpc_timeout, tx)?;
    tokio::spawn(sender.run(rx));
    log::info!(
        "synchronizer {} serving at {}:{} ({} clusters)",
        opts.id,
        opts.host,
        opts.port,
        clusters
    );
    tonic::transport::Server::builder()
        .add_service(SynchronizerServer::new(Receiver(shared)))
        .serve_with_incoming_shutdown(
            crate::config::incoming(listener),
            shutdown.clone().cancelled_owned(),
        )
        .await?;
    log::info!("synchronizer {} stopped", opts.id);
    Ok(())
}

/// What wakes the sender.
enum Event {
    /// Files that changed (inotify).
    Changed(Vec<PathBuf>),
    /// inotify lost events: look at everything.
    Rescan,
    /// A remote user started following `author`: look at the author's posts
    /// again (see [`Sender::push_posts`]).
    Rewind { author: u64 },
}

struct Shared {
    opts: Options,
    clusters: u32,
    /// One store per server directory of this cluster, for writing.
    stores: Mutex<HashMap<PathBuf, Store>>,
    events: mpsc::UnboundedSender<Event>,
}

impl Shared {
    fn is_local(&self, user: u64) -> bool {
        cluster_of(user, self.clusters) == self.opts.id
    }

    /// Applies `f` to every server directory of the cluster that exists now.
    fn each_store(
        &self,
        mut f: impl FnMut(&mut Store) -> std::io::Result<()>,
    ) -> Result<(), Status> {
        let root = cluster_dir(&self.opts.data_dir, self.opts.id);
        let dirs: Vec<PathBuf> = match std::fs::read_dir(&root) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("server_"))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut stores = lock(&self.stores);
        stores.retain(|d, _| dirs.contains(d));
        for dir in dirs {
            // A server rebuilding its directory (resync) closes it to us: the
            // sender retries the whole push later.
            let gate = match storage::try_enter_dir(&dir) {
                Ok(Some(g)) => g,
                Ok(None) if !dir.exists() => continue,
                Ok(None) => {
                    return Err(Status::unavailable(format!(
                        "{} is being resynced",
                        dir.display()
                    )));
                }
                Err(e) => return Err(Status::internal(format!("{}: {e}", dir.display()))),
            };
            if !stores.contains_key(&dir) {
                let s = Store::open(&dir, self.opts.id, self.clusters)
                    .map_err(|e| Status::internal(format!("{}: {e}", dir.display())))?;
                stores.insert(dir.clone(), s);
            }
            let result = stores.get_mut(&dir).map(|s| -> std::io::Result<()> {
                f(s)?;
                // The sender moves its cursor past what we acknowledge, so it
                // must be on disk first.
                let dirty = s.take_dirty();
                if self.opts.fsync
                    && let Err(e) = storage::sync_files(&dirty)
                {
                    // The sender retries; these still need their flush then.
                    s.mark_dirty(&dirty);
                    return Err(e);
                }
                Ok(())
            });
            drop(gate);
            if let Some(Err(e)) = result {
                if dir.exists() {
                    log::error!("{}: {e}", dir.display());
                    return Err(Status::internal(format!("storage error: {e}")));
                }
                // The directory went away (a server being reset): its server
                // rebuilds it from its peer.
                log::warn!("{} disappeared while writing: {e}", dir.display());
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Receiving

struct Receiver(Arc<Shared>);

#[tonic::async_trait]
impl Synchronizer for Receiver {
    async fn push_users(&self, req: Request<UserBatch>) -> Result<Response<PushReply>, Status> {
        let req = req.into_inner();
        if req.users.contains(&0) {
            return Err(Status::invalid_argument("user 0 does not exist"));
        }
        self.0.each_store(|s| {
            for u in &req.users {
                s.add_user(*u)?;
            }
            Ok(())
        })?;
        Ok(Response::new(PushReply {}))
    }

    async fn push_follows(&self, req: Request<FollowBatch>) -> Result<Response<PushReply>, Status> {
        let shared = &self.0;
        let req = req.into_inner();
        let events: Vec<FollowOp> = req
            .events
            .into_iter()
            .filter(|e| e.follower != 0 && e.followee != 0 && shared.is_local(e.followee))
            .collect();
        shared.each_store(|s| {
            for e in &events {
                s.follow(e)?;
            }
            Ok(())
        })?;
        for e in events.iter().filter(|e| e.follow) {
            let _ = shared.events.send(Event::Rewind { author: e.followee });
        }
        Ok(Response::new(PushReply {}))
    }

    async fn push_posts(&self, req: Request<PostBatch>) -> Result<Response<PushReply>, Status> {
        let shared = &self.0;
        let req = req.into_inner();
        let mut posts = Vec::new();
        for rp in req.posts {
            let Some(p) = rp.post else { continue };
            if crate::model::validate_post(&p.text).is_err() || p.author == 0 {
                return Err(Status::invalid_argument("malformed post"));
            }
            let targets: Vec<u64> = rp
                .targets
                .into_iter()
                .filter(|t| shared.is_local(*t))
                .collect();
            posts.push((
                Post {
                    author: p.author,
                    time: p.time_ns,
                    text: p.text,
                },
                targets,
            ));
        }
        shared.each_store(|s| {
            for (p, targets) in &posts {
                s.deliver(p, targets)?;
            }
            Ok(())
        })?;
        Ok(Response::new(PushReply {}))
    }
}

// ---------------------------------------------------------------------------
// Sending

/// Records read for a push, and the offset just past them.
type Batch = (Vec<Vec<u8>>, u64);

/// Where one peer stands in one source file.
#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    /// Users: how many local users were sent. Events and posts: the time of
    /// the last one handled.
    mark: i64,
    /// The byte offset the mark stands at, once known.
    offset: Option<u64>,
    /// Posts: the latest follow event of the peer's users that has been
    /// taken into account (a newer follow may need posts sent again).
    follows: i64,
}

struct Sender {
    shared: Arc<Shared>,
    coordinator: CoordinatorClient<Channel>,
    rpc_timeout: Duration,
    positions: PathBuf,
    /// The master's directory we read from.
    source: Option<PathBuf>,
    peers: BTreeMap<u32, SynchronizerClient<Channel>>,
    peer_addrs: BTreeMap<u32, String>,
    cursors: HashMap<(FileKind, u32), Cursor>,
    /// Local users in the order `all_users.txt` lists them.
    local_users: Vec<u64>,
    local_user_set: HashSet<u64>,
    users_offset: u64,
    /// Followers of local authors, to pick the targets of their posts.
    followers: HashMap<u64, Tail<FollowLog>>,
    /// Per (author, peer): the follow events of the peer's users already
    /// taken into account. Events from different users can arrive out of
    /// time order, so "not later than the latest seen" would miss a late one.
    handled: HashMap<(u64, u32), HashSet<(u64, Nanos)>>,
    dirty: HashSet<FileKind>,
    /// Files with a push that failed, retried every heartbeat.
    failed: HashSet<FileKind>,
    changed: bool,
    /// When the coordinator was last asked for the master and the peers.
    last_lookup: Option<std::time::Instant>,
    /// Where inotify events go, and the watch on the source directory.
    events: mpsc::UnboundedSender<Event>,
    watch: Option<SourceWatch>,
}

/// The watch on the master's directory ([`crate::storage::watch`]): only the files we
/// send from are of interest, so the slave's directory and our own state
/// are not watched, and changes to other files are dropped in the callback.
struct SourceWatch {
    watch: crate::storage::watch::DirWatch,
    /// The directory's inode: a directory deleted and made again (a reset
    /// server) needs a new watch.
    ino: u64,
}

fn watch_source(
    dir: &Path,
    tx: mpsc::UnboundedSender<Event>,
) -> std::io::Result<crate::storage::watch::DirWatch> {
    crate::storage::watch::watch_dir(dir, move |change| {
        let msg = match change {
            crate::storage::watch::Change::Files(paths) => {
                let paths: Vec<PathBuf> = paths
                    .into_iter()
                    .filter(|p| FileKind::parse(p).is_some())
                    .collect();
                if paths.is_empty() {
                    return;
                }
                Event::Changed(paths)
            }
            crate::storage::watch::Change::Rescan => Event::Rescan,
        };
        let _ = tx.send(msg);
    })
}

impl Sender {
    fn new(
        shared: Arc<Shared>,
        coordinator: CoordinatorClient<Channel>,
        state_dir: PathBuf,
        rpc_timeout: Duration,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<Sender, BoxError> {
        let positions = state_dir.join("positions.txt");
        let cursors = load_positions(&positions)?;
        Ok(Sender {
            shared,
            coordinator,
            rpc_timeout,
            positions,
            source: None,
            peers: BTreeMap::new(),
            peer_addrs: BTreeMap::new(),
            cursors,
            local_users: Vec::new(),
            local_user_set: HashSet::new(),
            users_offset: 0,
            followers: HashMap::new(),
            handled: HashMap::new(),
            dirty: HashSet::new(),
            failed: HashSet::new(),
            changed: false,
            last_lookup: None,
            events,
            watch: None,
        })
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        let opts = self.shared.opts.clone();
        let mut cycle = tokio::time::interval(opts.sync_interval);
        cycle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(opts.heartbeat);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cycle.tick() => self.full_cycle().await,
                _ = retry.tick() => {
                    // Cursors are saved once a heartbeat, not after every
                    // push: one that is saved late only makes a restarted
                    // synchronizer send again what the peer already has.
                    if self.changed {
                        self.save_positions();
                    }
                    // Every heartbeat: notice a failover (a new master's
                    // directory to read) and retry what failed.
                    self.refresh_topology().await;
                    let failed: Vec<FileKind> = self.failed.drain().collect();
                    self.dirty.extend(failed);
                }
                ev = rx.recv() => match ev {
                    Some(ev) => self.on_event(ev),
                    None => return,
                },
            }
            // Take everything else that is already waiting: bursts coalesce.
            while let Ok(ev) = rx.try_recv() {
                self.on_event(ev);
            }
            self.push_dirty().await;
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Changed(paths) => {
                for p in paths {
                    if self.source.as_deref() != p.parent() {
                        continue;
                    }
                    match FileKind::parse(&p) {
                        // A new follower may need older posts: see push_posts.
                        Some(FileKind::Followers(u)) if self.shared.is_local(u) => {
                            self.dirty.insert(FileKind::Posts(u));
                        }
                        Some(kind) if self.is_source(kind) => {
                            self.dirty.insert(kind);
                        }
                        _ => {}
                    }
                }
            }
            Event::Rescan => self.mark_all_dirty(),
            Event::Rewind { author } => {
                self.dirty.insert(FileKind::Posts(author));
            }
        }
    }

    /// Files we send from: users, and the follows and posts of local users.
    fn is_source(&self, kind: FileKind) -> bool {
        match kind {
            FileKind::Users => true,
            FileKind::Posts(u) | FileKind::Following(u) => self.shared.is_local(u),
            _ => false,
        }
    }

    fn mark_all_dirty(&mut self) {
        let Some(src) = self.source.clone() else {
            return;
        };
        let Ok(rd) = std::fs::read_dir(&src) else {
            return;
        };
        for e in rd.filter_map(|e| e.ok()) {
            if let Some(kind) = FileKind::parse(&e.path())
                && self.is_source(kind)
            {
                self.dirty.insert(kind);
            }
        }
    }

    async fn full_cycle(&mut self) {
        self.refresh_topology().await;
        self.mark_all_dirty();
        log::debug!("full cycle: {} files to check", self.dirty.len());
    }

    /// Asks the coordinator for the cluster's master and for the peers.
    async fn refresh_topology(&mut self) {
        self.last_lookup = Some(std::time::Instant::now());
        let me = self.shared.opts.id;
        match self
            .coordinator
            .get_server(UserRequest {
                user_id: u64::from(me),
            })
            .await
        {
            Ok(r) => {
                let s = r.into_inner();
                let dir = server_dir(&self.shared.opts.data_dir, me, s.server_id);
                if self.source.as_ref() != Some(&dir) {
                    log::info!("reading cluster {me}'s changes from {}", dir.display());
                    // Offsets belong to the old directory's files.
                    for c in self.cursors.values_mut() {
                        c.offset = None;
                    }
                    self.followers.clear();
                    self.local_users.clear();
                    self.local_user_set.clear();
                    self.users_offset = 0;
                    self.source = Some(dir);
                }
            }
            Err(e) => log::debug!("no master for cluster {me}: {}", e.message()),
        }
        self.ensure_watch();
        match self.coordinator.get_all_synchronizers(Empty {}).await {
            Ok(r) => {
                let servers = r.into_inner().servers;
                // A peer the coordinator no longer lists is down: stop
                // pushing to it (its cursors stay; it gets everything when it
                // is back).
                self.peers
                    .retain(|c, _| servers.iter().any(|s| s.cluster_id == *c));
                self.peer_addrs
                    .retain(|c, _| servers.iter().any(|s| s.cluster_id == *c));
                for s in servers {
                    if s.cluster_id == me {
                        continue;
                    }
                    let addr = format!("{}:{}", s.hostname, s.port);
                    if self.peer_addrs.get(&s.cluster_id) != Some(&addr) {
                        match Endpoint::from_shared(format!("http://{addr}")) {
                            Ok(e) => {
                                let ch = e
                                    .connect_timeout(self.rpc_timeout)
                                    .timeout(self.rpc_timeout)
                                    .connect_lazy();
                                log::info!(
                                    "peer synchronizer of cluster {} at {addr}",
                                    s.cluster_id
                                );
                                self.peers.insert(s.cluster_id, SynchronizerClient::new(ch));
                                self.peer_addrs.insert(s.cluster_id, addr);
                                // A new peer may need everything: look again.
                                self.mark_all_dirty();
                            }
                            Err(e) => log::warn!("bad peer address {addr}: {e}"),
                        }
                    }
                }
            }
            Err(e) => log::debug!("cannot list synchronizers: {}", e.message()),
        }
    }

    /// Watches the source directory, anew when it changed or was made
    /// again; whatever happened before the watch began is looked at once.
    fn ensure_watch(&mut self) {
        let Some(src) = self.source.clone() else {
            return;
        };
        let ino = std::fs::metadata(&src).ok().map(|m| m.ino());
        if self
            .watch
            .as_ref()
            .is_some_and(|w| w.watch.dir() == src && Some(w.ino) == ino && !w.watch.ended())
        {
            return;
        }
        self.watch = None;
        let Some(ino) = ino else {
            return; // not there yet: next heartbeat
        };
        match watch_source(&src, self.events.clone()) {
            Ok(w) => {
                self.watch = Some(SourceWatch { watch: w, ino });
                self.mark_all_dirty();
            }
            Err(e) => log::warn!("cannot watch {}: {e}; will retry", src.display()),
        }
    }

    async fn push_dirty(&mut self) {
        // Until every cluster's synchronizer is known (they start one after
        // another), look again, but not more than every 100 ms.
        let incomplete =
            self.source.is_none() || self.peers.len() + 1 < self.shared.clusters as usize;
        if incomplete
            && self
                .last_lookup
                .is_none_or(|t| t.elapsed() > Duration::from_millis(100))
        {
            self.refresh_topology().await;
        }
        if self.source.is_none() {
            return;
        }
        let dirty: Vec<FileKind> = self.dirty.drain().collect();
        // A peer that failed once this round is skipped for the rest of it,
        // so one hung peer costs one timeout per round, not one per file.
        let mut down: HashSet<u32> = HashSet::new();
        for kind in dirty {
            let peers: Vec<u32> = self.peers.keys().copied().collect();
            for peer in peers {
                if down.contains(&peer) {
                    self.failed.insert(kind);
                    continue;
                }
                let result = match kind {
                    FileKind::Users => self.push_users(peer).await,
                    FileKind::Following(u) => self.push_follows(u, peer).await,
                    FileKind::Posts(u) => self.push_posts(u, peer).await,
                    _ => Ok(()),
                };
                if let Err(e) = result {
                    log::warn!("push of {kind:?} to cluster {peer} failed: {e}; will retry");
                    self.failed.insert(kind);
                    down.insert(peer);
                }
            }
        }
    }

    fn source_path(&self, kind: FileKind) -> Option<PathBuf> {
        let dir = self.source.as_deref()?;
        Some(match kind {
            FileKind::Users => storage::users_file(dir),
            FileKind::Posts(u) => storage::posts_file(dir, u),
            FileKind::Following(u) => storage::following_file(dir, u),
            FileKind::Followers(u) => storage::followers_file(dir, u),
            FileKind::Timeline(u) => storage::timeline_file(dir, u),
        })
    }

    fn peer(&self, peer: u32) -> Result<SynchronizerClient<Channel>, BoxError> {
        self.peers
            .get(&peer)
            .cloned()
            .ok_or_else(|| format!("no synchronizer for cluster {peer}").into())
    }

    async fn push_users(&mut self, peer: u32) -> Result<(), BoxError> {
        let Some(path) = self.source_path(FileKind::Users) else {
            return Ok(());
        };
        let (bytes, end) = storage::read_from(&path, self.users_offset)?;
        if end < self.users_offset {
            // The file shrank: read it again from the start.
            self.local_users.clear();
            self.local_user_set.clear();
            self.users_offset = 0;
            return Box::pin(self.push_users(peer)).await;
        }
        self.users_offset = end;
        let (lines, _) = storage::split_records(&bytes, storage::Format::Lines);
        for line in lines {
            if let Some(u) = std::str::from_utf8(line)
                .ok()
                .and_then(crate::config::parse_user)
                && self.shared.is_local(u)
                && self.local_user_set.insert(u)
            {
                self.local_users.push(u);
            }
        }
        let key = (FileKind::Users, peer);
        let sent = self.cursors.get(&key).map_or(0, |c| c.mark.max(0) as usize);
        if sent >= self.local_users.len() {
            return Ok(());
        }
        for chunk in self.local_users[sent..].chunks(BATCH) {
            let req = UserBatch {
                from_cluster: self.shared.opts.id,
                users: chunk.to_vec(),
            };
            self.peer(peer)?.push_users(req).await?;
            let c = self.cursors.entry(key).or_default();
            c.mark += chunk.len() as i64;
            self.changed = true;
        }
        Ok(())
    }

    /// The cursor's offset and the file's length. After a restart or a
    /// change of source only the cursor's time is known, and the offset is
    /// found again from the end of the file.
    fn offset_of(
        &mut self,
        kind: FileKind,
        peer: u32,
        path: &Path,
    ) -> Result<(u64, u64), BoxError> {
        let c = self.cursors.entry((kind, peer)).or_default();
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let offset = match c.offset {
            Some(o) if o <= len => o,
            _ => {
                let o = match kind {
                    FileKind::Posts(_) => storage::offset_after(path, c.mark)?,
                    _ => follow_offset_after(path, c.mark)?,
                };
                c.offset = Some(o);
                o
            }
        };
        Ok((offset, len))
    }

    /// The next records (at most [`BATCH`]) of a source file after the
    /// cursor of `peer`, with the offset just past them; `None` when there is
    /// nothing new.
    fn next_records(
        &mut self,
        kind: FileKind,
        peer: u32,
        path: &Path,
    ) -> Result<Option<Batch>, BoxError> {
        let (offset, len) = self.offset_of(kind, peer, path)?;
        if offset >= len {
            // Nothing new: the quiet case costs one stat.
            return Ok(None);
        }
        // Read a bounded window: a long catch-up reads each byte once.
        let (bytes, end) = storage::read_at_most(path, offset, 1 << 20)?;
        let format = storage::Format::of(path);
        let (records, _) = storage::split_records(&bytes, format);
        if records.is_empty() {
            return Ok(None);
        }
        let term = format.terminator().len() as u64;
        let taken: Vec<Vec<u8>> = records.iter().take(BATCH).map(|r| r.to_vec()).collect();
        let consumed: u64 = taken.iter().map(|r| r.len() as u64 + term).sum();
        Ok(Some((taken, (offset + consumed).min(end))))
    }

    /// Moves a cursor after the peer acknowledged (or needed nothing).
    fn advance(&mut self, kind: FileKind, peer: u32, mark: Nanos, offset: u64) {
        let c = self.cursors.entry((kind, peer)).or_default();
        c.mark = c.mark.max(mark);
        c.offset = Some(offset);
        self.changed = true;
    }

    async fn push_follows(&mut self, user: u64, peer: u32) -> Result<(), BoxError> {
        let kind = FileKind::Following(user);
        let Some(path) = self.source_path(kind) else {
            return Ok(());
        };
        let clusters = self.shared.clusters;
        while let Some((records, next)) = self.next_records(kind, peer, &path)? {
            let events: Vec<FollowEvent> = records
                .iter()
                .filter_map(|r| FollowEvent::decode(r))
                .collect();
            let last = events.iter().map(|e| e.time).max().unwrap_or(0);
            let events: Vec<FollowOp> = events
                .into_iter()
                .filter(|e| cluster_of(e.user, clusters) == peer)
                .map(|e| FollowOp {
                    follower: user,
                    followee: e.user,
                    time_ns: e.time,
                    follow: e.follow,
                    request_id: 0,
                })
                .collect();
            if !events.is_empty() {
                let req = FollowBatch {
                    from_cluster: self.shared.opts.id,
                    events,
                };
                self.peer(peer)?.push_follows(req).await?;
            }
            self.advance(kind, peer, last, next);
        }
        Ok(())
    }

    /// A user of `peer` who started following `author` after some of the
    /// author's posts were already handled for `peer` may have started before
    /// them (the follow took a while to arrive): move the cursor back to the
    /// follow's time so those posts go again, now with the new follower among
    /// the targets. The receiver stores only what a timeline lacks. Decided
    /// here, from the followers file and a persisted mark, so that neither a
    /// restart nor the order of events can lose a rewind.
    fn rewind_for_new_followers(
        &mut self,
        author: u64,
        peer: u32,
        followers_path: &Path,
    ) -> Result<(), BoxError> {
        let clusters = self.shared.clusters;
        let followers = self
            .followers
            .entry(author)
            .or_insert_with(|| Tail::new(followers_path.to_path_buf()));
        followers.refresh()?;
        let c = self
            .cursors
            .entry((FileKind::Posts(author), peer))
            .or_default();
        let peer_events = || {
            followers
                .state
                .events()
                .filter(move |(u, _, _)| cluster_of(*u, clusters) == peer)
        };
        // After a start, what the saved cursor covers counts as handled.
        let handled = self.handled.entry((author, peer)).or_insert_with(|| {
            peer_events()
                .filter(|(_, t, _)| *t <= c.follows)
                .map(|(u, t, _)| (u, t))
                .collect()
        });
        let mut earliest_new = None;
        let mut latest = c.follows;
        for (user, time, follow) in peer_events() {
            if !handled.insert((user, time)) {
                continue;
            }
            latest = latest.max(time);
            if follow {
                earliest_new = Some(earliest_new.map_or(time, |t: i64| t.min(time)));
            }
        }
        match earliest_new {
            Some(t) if t < c.mark => {
                log::debug!("re-sending posts of {author} since {t} to cluster {peer}");
                c.mark = t;
                c.offset = None;
            }
            // The first follower there: earlier posts are not for that
            // cluster, and the cursor did not move while nobody there
            // followed (see push_posts), so skip to the follow instead of
            // reading the history since.
            Some(t) if c.follows == 0 => {
                c.mark = t;
                c.offset = None;
            }
            _ => {}
        }
        if latest != c.follows {
            c.follows = latest;
            self.changed = true;
        }
        Ok(())
    }

    async fn push_posts(&mut self, author: u64, peer: u32) -> Result<(), BoxError> {
        let kind = FileKind::Posts(author);
        let Some(path) = self.source_path(kind) else {
            return Ok(());
        };
        let Some(followers_path) = self.source_path(FileKind::Followers(author)) else {
            return Ok(());
        };
        let clusters = self.shared.clusters;
        self.rewind_for_new_followers(author, peer, &followers_path)?;
        // Nobody in the peer's cluster has ever followed the author: there
        // is nothing to send, so nothing to read. The cursor stays; when
        // someone there follows, the rewind above moves it up to the follow.
        let followed_there = self
            .followers
            .get(&author)
            .is_some_and(|f| f.state.users().any(|u| cluster_of(u, clusters) == peer));
        if !followed_there {
            return Ok(());
        }
        while let Some((records, next)) = self.next_records(kind, peer, &path)? {
            let followers = self
                .followers
                .entry(author)
                .or_insert_with(|| Tail::new(followers_path.clone()));
            followers.refresh()?;
            let posts: Vec<Post> = records.iter().filter_map(|r| Post::decode(r)).collect();
            let last = posts.iter().map(|p| p.time).max().unwrap_or(0);
            // Each post goes with the peer's users who followed the author
            // at the post's time.
            let posts: Vec<RemotePost> = posts
                .into_iter()
                .filter_map(|p| {
                    let targets: Vec<u64> = followers
                        .state
                        .users()
                        .filter(|f| {
                            cluster_of(*f, clusters) == peer && followers.state.at(*f, p.time)
                        })
                        .collect();
                    (!targets.is_empty()).then_some(RemotePost {
                        post: Some(PostOp {
                            author,
                            time_ns: p.time,
                            text: p.text,
                            post_id: 0,
                        }),
                        targets,
                    })
                })
                .collect();
            if !posts.is_empty() {
                let req = PostBatch {
                    from_cluster: self.shared.opts.id,
                    posts,
                };
                self.peer(peer)?.push_posts(req).await?;
            }
            self.advance(kind, peer, last, next);
        }
        Ok(())
    }

    /// Saves the cursors: written whole to a temporary file, then renamed
    /// over the old one, so a crash leaves one or the other.
    fn save_positions(&mut self) {
        let mut out = String::new();
        let mut keys: Vec<_> = self.cursors.iter().collect();
        keys.sort_by_key(|((k, p), _)| (format!("{k:?}"), *p));
        for ((kind, peer), c) in keys {
            let line = match kind {
                FileKind::Users => format!("users {peer} {}\n", c.mark),
                FileKind::Following(u) => format!("following {u} {peer} {}\n", c.mark),
                FileKind::Posts(u) => format!("posts {u} {peer} {} {}\n", c.mark, c.follows),
                _ => continue,
            };
            out.push_str(&line);
        }
        let tmp = self.positions.with_extension("tmp");
        let result = std::fs::write(&tmp, out).and_then(|_| std::fs::rename(&tmp, &self.positions));
        match result {
            Ok(()) => self.changed = false,
            Err(e) => log::error!("cannot save {}: {e}", self.positions.display()),
        }
    }
}

/// The offset of the first follow event after `after` (a follow file is
/// small, so it is read whole; this only runs after a restart).
fn follow_offset_after(path: &Path, after: Nanos) -> std::io::Result<u64> {
    let (bytes, end) = storage::read_from(path, 0)?;
    let (records, _) = storage::split_records(&bytes, storage::Format::Lines);
    let mut off = 0u64;
    for r in records {
        if FollowEvent::decode(r).is_some_and(|e| e.time > after) {
            return Ok(off);
        }
        off += r.len() as u64 + 1;
    }
    Ok(end)
}

fn load_positions(path: &Path) -> Result<HashMap<(FileKind, u32), Cursor>, BoxError> {
    let mut cursors = HashMap::new();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(cursors),
        Err(e) => return Err(e.into()),
    };
    for (n, line) in text.lines().enumerate() {
        let parts: Vec<&str> = line.split(' ').collect();
        let parsed = match parts.as_slice() {
            ["users", peer, mark] => peer
                .parse()
                .ok()
                .zip(mark.parse().ok())
                .map(|(p, m)| ((FileKind::Users, p), m, 0)),
            ["following", user, peer, mark] => crate::config::parse_user(user)
                .zip(peer.parse().ok())
                .zip(mark.parse().ok())
                .map(|((u, p), m)| ((FileKind::Following(u), p), m, 0)),
            ["posts", user, peer, mark, follows] => crate::config::parse_user(user)
                .zip(peer.parse().ok())
                .zip(mark.parse().ok())
                .zip(follows.parse().ok())
                .map(|(((u, p), m), f)| ((FileKind::Posts(u), p), m, f)),
            _ => None,
        };
        match parsed {
            Some((key, mark, follows)) => {
                cursors.insert(
                    key,
                    Cursor {
                        mark,
                        offset: None,
                        follows,
                    },
                );
            }
            // A damaged line (the file is not flushed) costs a re-send from
            // the start for its cursor, which receivers store once; refusing
            // to start would cost the whole cluster's propagation.
            None => log::warn!(
                "{}:{}: skipping a malformed line {line:?}",
                path.display(),
                n + 1
            ),
        }
    }
    Ok(cursors)
}
