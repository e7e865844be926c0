//! The sending loop: which files are dirty, which directory to read and
//! which peers to push to (asked of the coordinator), the watch, the reads
//! from each cursor and the pushes. What to push and how cursors move is
//! decided by [`super::plan`] and [`super::cursors`].
//!
//! A source file that cannot be read (damaged: not a regular file, a link,
//! not ours to open; or an I/O error) is that file's problem, not the
//! peer's: it is reported once, naming the file, retried every heartbeat,
//! and every other file still goes to that peer in the same round.

use super::cursors::{Absorbed, Cursors, LocalUsers, TimeCursor};
use super::plan::{self, Partition, Rewinds, Source};
use crate::error::{Error, Result};
use crate::model::{ClusterId, UserId};
use crate::proto::tinysns::coordinator_client::CoordinatorClient;
use crate::proto::tinysns::synchronizer_client::SynchronizerClient;
use crate::proto::tinysns::{
    Empty, FollowBatch, FollowOp, PostBatch, RemotePost, UserBatch, UserRequest,
};
use crate::storage::watch::{Change, DirWatch};
use crate::storage::{self, FileKind, FollowEvent, FollowLog, Post, Tail};
use crate::timefmt::Nanos;
use crate::trust::PeerChannel;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most records in one push.
const BATCH: usize = 1000;

/// What wakes the pusher.
pub(super) enum Event {
    /// Files that changed (the watch).
    Changed(Vec<PathBuf>),
    /// The watch lost events: look at everything.
    Rescan,
    /// A remote user started following `author`: look at the author's posts
    /// again (see [`plan::Rewinds`]).
    Rewind { author: UserId },
}

/// Records read for a push, and the offset just past them.
type Batch = (Vec<Vec<u8>>, u64);

/// How a time cursor's offset is found again from its time.
type Finder = fn(&Path, Nanos) -> std::io::Result<u64>;

/// One push to a peer.
enum Push {
    Users(UserBatch),
    Follows(FollowBatch),
    Posts(PostBatch),
}

impl Push {
    /// `None` when there is nothing to push.
    fn follows(from: ClusterId, events: Vec<FollowOp>) -> Option<Push> {
        let from_cluster = from.0;
        (!events.is_empty()).then_some(Push::Follows(FollowBatch {
            from_cluster,
            events,
        }))
    }

    /// `None` when there is nothing to push.
    fn posts(from: ClusterId, posts: Vec<RemotePost>) -> Option<Push> {
        let from_cluster = from.0;
        (!posts.is_empty()).then_some(Push::Posts(PostBatch {
            from_cluster,
            posts,
        }))
    }
}

/// What the pusher needs to know of its synchronizer.
pub(super) struct Settings {
    pub partition: Partition,
    pub data_dir: PathBuf,
    pub heartbeat: Duration,
    pub sync_interval: Duration,
    pub rpc_timeout: Duration,
    /// `positions.txt`.
    pub positions: PathBuf,
    /// How peers are reached (TLS) and proved to (the key).
    pub trust: crate::trust::Trust,
    /// SERVING once the master and every peer are known (SPEC §7).
    pub health: crate::ops::Health,
}

/// A peer synchronizer.
struct Peer {
    addr: String,
    client: SynchronizerClient<PeerChannel>,
}

pub(super) struct Pusher {
    /// Since when some change has waited for a peer's acknowledgement.
    behind_since: Option<std::time::Instant>,
    settings: Settings,
    coordinator: CoordinatorClient<PeerChannel>,
    /// The master's directory we read from.
    source: Option<PathBuf>,
    peers: BTreeMap<ClusterId, Peer>,
    cursors: Cursors,
    local_users: LocalUsers,
    /// Followers of local authors, to pick the targets of their posts.
    followers: HashMap<UserId, Tail<FollowLog>>,
    rewinds: Rewinds,
    dirty: HashSet<Source>,
    /// Sources with a push that failed, retried every heartbeat.
    failed: HashSet<Source>,
    /// Sources whose file could not be read, already reported.
    unreadable: HashSet<Source>,
    /// Pushes a peer refused (not failed to answer), already reported.
    refused: HashSet<(Source, ClusterId)>,
    /// Whether cursors moved since they were last saved.
    unsaved: bool,
    /// When the coordinator was last asked for the master and the peers.
    last_lookup: Option<Instant>,
    /// When the coordinator last confirmed the master whose directory we
    /// read ([`Pusher::confirm_master`]).
    confirmed: Option<Instant>,
    /// Where the watch's events go, and the watch on the source directory.
    events: mpsc::UnboundedSender<Event>,
    watch: Option<SourceWatch>,
    /// Full cycles done (pushes included), for the heartbeats.
    cycles: Arc<AtomicU64>,
    shutdown: CancellationToken,
}

/// The watch on the master's directory ([`crate::storage::watch`]): only the
/// files we send from are of interest, so the slave's directory and our own
/// state are not watched, and changes to other files are dropped in the
/// callback.
struct SourceWatch {
    watch: DirWatch,
    /// The directory's inode: a directory deleted and made again (a reset
    /// server) needs a new watch.
    ino: u64,
}

fn watch_source(
    dir: &Path,
    part: Partition,
    tx: mpsc::UnboundedSender<Event>,
) -> std::io::Result<DirWatch> {
    crate::storage::watch::watch_dir(dir, crate::storage::watch::Appends::Each, move |change| {
        let msg = match change {
            Change::Files(paths) => {
                // Only files we send from wake the pusher: the master's own
                // timeline appends (one per local follower of every post)
                // and its journal would each cost a wake-up and an empty
                // round, now that events come one by one.
                let paths: Vec<PathBuf> = paths
                    .into_iter()
                    .filter(|p| {
                        FileKind::parse(p)
                            .and_then(|k| Source::of_change(k, part))
                            .is_some()
                    })
                    .collect();
                if paths.is_empty() {
                    return;
                }
                Event::Changed(paths)
            }
            Change::Rescan => Event::Rescan,
        };
        let _ = tx.send(msg);
    })
}

/// `fut`, unless `shutdown` comes first: then it is abandoned, as if the
/// peer had not answered, so no cursor moves.
async fn unless_cancelled<T>(
    shutdown: &CancellationToken,
    fut: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    tokio::select! {
        r = fut => r.map(tonic::Response::into_inner).map_err(Error::from),
        _ = shutdown.cancelled() => Err(Error::Unavailable("shutting down".into())),
    }
}

/// Reads `positions.txt`; a missing file is no cursors yet. Nothing in it
/// stops the synchronizer ([`super::cursors`]): a damaged line is skipped,
/// and a file that cannot be read is moved aside (if it is not a regular
/// file) and costs a re-send from the start, which receivers store once.
fn load_positions(path: &Path) -> Cursors {
    let read = storage::open_read(path).and_then(|f| {
        let mut bytes = Vec::new();
        if let Some(mut f) = f {
            std::io::Read::read_to_end(&mut f, &mut bytes)?;
        }
        Ok(bytes)
    });
    let bytes = match read {
        Ok(b) => b,
        Err(e) => {
            let aside = if storage::is_damaged(&e) {
                storage::set_aside(path)
                    .map(|to| format!("; moved to {}", to.display()))
                    .unwrap_or_else(|e| format!("; cannot move it aside: {e}"))
            } else {
                String::new()
            };
            log::error!(
                "{}: {e}{aside}; every cursor starts from the beginning",
                path.display()
            );
            return Cursors::default();
        }
    };
    let (cursors, damaged) = Cursors::parse(&bytes);
    for d in damaged {
        log::warn!(
            "{}:{}: skipping a malformed line {:?}",
            path.display(),
            d.line,
            d.text
        );
    }
    cursors
}

/// The offset of the first follow event after `after` (a follow file is
/// small, so it is read whole; this only runs after a start or a rewind).
fn follow_offset_after(path: &Path, after: Nanos) -> std::io::Result<u64> {
    let (bytes, end) = storage::read_from(path, 0)?;
    Ok(super::cursors::first_follow_after(&bytes, end, after))
}

/// The cursor's offset and the file's length. After a start or a change
/// of source only the cursor's time is known, and the offset is found
/// again with `find`.
fn offset_of(c: &mut TimeCursor, path: &Path, find: Finder) -> Result<(u64, u64)> {
    let len = storage::data_metadata(path)?.map_or(0, |m| m.len());
    let offset = match (c.offset, c.last) {
        (Some(o), _) if o <= len => o,
        (_, None) => 0,
        (_, Some(last)) => find(path, last)?,
    };
    c.offset = Some(offset);
    Ok((offset, len))
}

/// The next records (at most [`BATCH`]) of a source file after the cursor,
/// with the offset just past them; `None` when there is nothing new.
fn next_records(c: &mut TimeCursor, path: &Path, find: Finder) -> Result<Option<Batch>> {
    let (offset, len) = offset_of(c, path, find)?;
    if offset >= len {
        // Nothing new: the quiet case costs one stat.
        return Ok(None);
    }
    // Read a bounded window: a long catch-up reads each byte once.
    let (bytes, end) = storage::read_at_most(path, offset, 1 << 20)?;
    let format = storage::Format::of(path);
    let (records, _) = storage::split_records(&bytes, format);
    if records.is_empty() {
        // Past a record too long to be valid, if that is what was there:
        // an empty batch moves the cursor on.
        return Ok((end > offset).then(|| (Vec::new(), end)));
    }
    let term = format.terminator().len() as u64;
    let taken: Vec<Vec<u8>> = records.iter().take(BATCH).map(|r| r.to_vec()).collect();
    let consumed: u64 = taken.iter().map(|r| r.len() as u64 + term).sum();
    Ok(Some((taken, (offset + consumed).min(end))))
}

impl Pusher {
    pub(super) fn new(
        settings: Settings,
        coordinator: CoordinatorClient<PeerChannel>,
        events: mpsc::UnboundedSender<Event>,
        cycles: Arc<AtomicU64>,
        shutdown: CancellationToken,
    ) -> Result<Pusher> {
        let cursors = load_positions(&settings.positions);
        Ok(Pusher {
            settings,
            coordinator,
            source: None,
            peers: BTreeMap::new(),
            cursors,
            local_users: LocalUsers::default(),
            followers: HashMap::new(),
            rewinds: Rewinds::default(),
            dirty: HashSet::new(),
            failed: HashSet::new(),
            unreadable: HashSet::new(),
            refused: HashSet::new(),
            unsaved: false,
            last_lookup: None,
            confirmed: None,
            events,
            watch: None,
            cycles,
            shutdown,
            behind_since: None,
        })
    }

    fn partition(&self) -> Partition {
        self.settings.partition
    }

    /// Runs until the shutdown token is cancelled: the push in hand is
    /// finished or abandoned (its cursor stays), then the cursors are saved.
    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        let mut cycle = tokio::time::interval(self.settings.sync_interval);
        cycle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(self.settings.heartbeat);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.shutdown.clone();
        loop {
            let mut full = false;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = cycle.tick() => {
                    self.full_cycle().await;
                    full = true;
                }
                _ = retry.tick() => {
                    // Cursors are saved once a heartbeat, not after every
                    // push: one that is saved late only makes a restarted
                    // synchronizer send again what the peer already has.
                    if self.unsaved {
                        self.save_positions();
                    }
                    // Every heartbeat: notice a failover (a new master's
                    // directory to read) and retry what failed.
                    self.refresh_topology().await;
                    let failed: Vec<Source> = self.failed.drain().collect();
                    self.dirty.extend(failed);
                }
                ev = rx.recv() => match ev {
                    Some(ev) => self.on_event(ev),
                    None => break,
                },
            }
            // Take everything else that is already waiting: bursts coalesce.
            while let Ok(ev) = rx.try_recv() {
                self.on_event(ev);
            }
            let round = std::time::Instant::now();
            self.push_dirty().await;
            self.publish_backlog(round);
            if full {
                self.cycles.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.unsaved {
            self.save_positions();
        }
        log::debug!("pusher stopped");
    }

    /// Health, and the backlog the heartbeats and `/metrics` report: how
    /// many sources still have changes some peer has not acknowledged, and
    /// since when (the start of the first round that left any).
    fn publish_backlog(&mut self, round: std::time::Instant) {
        let complete =
            self.source.is_some() && self.peers.len() + 1 >= self.partition().clusters as usize;
        self.settings.health.set(complete);
        let behind = self.failed.len() + self.dirty.len();
        if behind == 0 {
            self.behind_since = None;
        } else if self.behind_since.is_none() {
            self.behind_since = Some(round);
        }
        let m = crate::ops::metrics::metrics();
        m.sync_behind.set(i64::try_from(behind).unwrap_or(i64::MAX));
        m.sync_lag
            .set(self.behind_since.map_or(0.0, |t| t.elapsed().as_secs_f64()));
    }

    fn on_event(&mut self, ev: Event) {
        let p = self.partition();
        match ev {
            Event::Changed(paths) => {
                for path in paths {
                    if self.source.as_deref() != path.parent() {
                        continue;
                    }
                    if let Some(src) = FileKind::parse(&path).and_then(|k| Source::of_change(k, p))
                    {
                        self.dirty.insert(src);
                    }
                }
            }
            Event::Rescan => self.mark_all_dirty(),
            Event::Rewind { author } => {
                self.dirty.insert(Source::Posts(author));
            }
        }
    }

    fn mark_all_dirty(&mut self) {
        let Some(src) = self.source.clone() else {
            return;
        };
        let Ok(rd) = std::fs::read_dir(&src) else {
            return;
        };
        let p = self.partition();
        for e in rd.filter_map(|e| e.ok()) {
            if let Some(s) = FileKind::parse(&e.path()).and_then(|k| Source::of_file(k, p)) {
                self.dirty.insert(s);
            }
        }
    }

    async fn full_cycle(&mut self) {
        self.refresh_topology().await;
        self.mark_all_dirty();
        log::debug!("full cycle: {} files to check", self.dirty.len());
    }

    /// Asks the coordinator which server is the cluster's master and makes
    /// its directory the source; whether the coordinator answered.
    async fn lookup_master(&mut self) -> bool {
        let me = self.partition().me;
        let master = self.coordinator.get_server(UserRequest {
            user_id: u64::from(me.0),
        });
        let found = match unless_cancelled(&self.shutdown, master).await {
            Ok(s) => {
                let dir = crate::config::server_dir(&self.settings.data_dir, me.0, s.server_id);
                if self.source.as_ref() != Some(&dir) {
                    log::info!("reading cluster {me}'s changes from {}", dir.display());
                    // Offsets belong to the old directory's files.
                    self.cursors.forget_offsets();
                    self.followers.clear();
                    self.local_users.forget();
                    self.source = Some(dir);
                }
                true
            }
            Err(e) => {
                log::debug!("no master for cluster {me}: {e}");
                false
            }
        };
        self.ensure_watch();
        found
    }

    /// Confirms the master before a push round, with one question to the
    /// coordinator per quarter heartbeat at most: asked before every round,
    /// it cost the coordinator 16 µs and the synchronizer 15 µs per post
    /// at C = 64 (`bench post`), a round being a batch of posts. So a
    /// deposed master's directory may be read for a quarter heartbeat after
    /// the coordinator has said so; it holds only what that server stored
    /// as master (a server that comes back as slave replays nothing the
    /// slave may lack, [`crate::storage::journal`]), so what is pushed from
    /// it is true, and the next confirmation moves to the new master.
    async fn confirm_master(&mut self) -> bool {
        let fresh = self
            .confirmed
            .is_some_and(|t| t.elapsed() < self.settings.heartbeat / 4);
        if fresh {
            return true;
        }
        let found = self.lookup_master().await;
        self.confirmed = found.then(Instant::now);
        found
    }

    /// Asks the coordinator for the cluster's master and for the peers.
    async fn refresh_topology(&mut self) {
        self.last_lookup = Some(Instant::now());
        self.lookup_master().await;
        let me = self.partition().me;
        let listed = self.coordinator.get_all_synchronizers(Empty {});
        match unless_cancelled(&self.shutdown, listed).await {
            Ok(r) => {
                let servers = r.servers;
                // A peer the coordinator no longer lists is down: stop
                // pushing to it (its cursors stay; it gets everything when it
                // is back).
                self.peers
                    .retain(|c, _| servers.iter().any(|s| s.cluster_id == c.0));
                for s in servers {
                    let cluster = ClusterId(s.cluster_id);
                    if cluster == me {
                        continue;
                    }
                    let addr = format!("{}:{}", s.hostname, s.port);
                    if self.peers.get(&cluster).is_some_and(|p| p.addr == addr) {
                        continue;
                    }
                    // Keep-alive and a connect timeout of a heartbeat; a push
                    // that misses its deadline replaces the connection, so
                    // one cut off by a dropping link is not reused after the
                    // heal (TCP's back-off held it for seconds, growing with
                    // the cut).
                    let timing = crate::trust::Timing::of(self.settings.heartbeat)
                        .with_deadline(self.settings.rpc_timeout);
                    match self.settings.trust.link(&addr, timing) {
                        Ok(ch) => {
                            log::info!("peer synchronizer of cluster {cluster} at {addr}");
                            let client = SynchronizerClient::new(ch);
                            self.peers.insert(cluster, Peer { addr, client });
                            // A new peer may need everything: look again.
                            self.mark_all_dirty();
                        }
                        Err(e) => log::warn!("bad peer address {addr}: {e}"),
                    }
                }
            }
            Err(e) => log::debug!("cannot list synchronizers: {e}"),
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
        match watch_source(&src, self.partition(), self.events.clone()) {
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
            self.source.is_none() || self.peers.len() + 1 < self.partition().clusters as usize;
        if incomplete
            && self
                .last_lookup
                .is_none_or(|t| t.elapsed() > Duration::from_millis(100))
        {
            self.refresh_topology().await;
        }
        if self.source.is_none() || self.dirty.is_empty() {
            return;
        }
        // Only the master of the current epoch's directory is read: a server
        // that is no longer master is not read from once the coordinator
        // has said so (within a quarter heartbeat, see `confirm_master`).
        // A server learns its role at registration, before it opens (and
        // replays into) its directory. Without an answer nothing is pushed
        // this round; it is retried at the next heartbeat.
        if !self.confirm_master().await {
            self.failed.extend(self.dirty.drain());
            return;
        }
        let dirty: Vec<Source> = self.dirty.drain().collect();
        // A peer that failed once this round is skipped for the rest of it,
        // so one hung peer costs one timeout per round, not one per file.
        let mut down: HashSet<ClusterId> = HashSet::new();
        for src in dirty {
            let peers: Vec<ClusterId> = self.peers.keys().copied().collect();
            for peer in peers {
                if down.contains(&peer) || self.shutdown.is_cancelled() {
                    self.failed.insert(src);
                    continue;
                }
                let result = match src {
                    Source::Users => self.push_users(peer).await,
                    src @ Source::Following(_) => self.push_records(src, peer).await,
                    Source::Posts(u) => self.push_posts(u, peer).await,
                };
                // Only our own reads fail with a storage error: the file is
                // the problem, not the peer.
                if let Err(Error::Storage(e)) = &result {
                    if self.unreadable.insert(src) {
                        let path = self.source_path(src.file()).unwrap_or_default();
                        log::error!(
                            "{}: cannot be read ({e}); its changes wait until it can",
                            path.display()
                        );
                    }
                    self.failed.insert(src);
                    continue;
                }
                if result.is_ok() && self.unreadable.remove(&src) {
                    log::info!("{src:?} can be read again");
                }
                match result {
                    Ok(()) => {
                        self.refused.remove(&(src, peer));
                    }
                    // The peer answered and refused this push: the records
                    // are the problem, not the peer, so the other sources
                    // still go to it this round. Said once, retried at each
                    // round (a time ahead of the peer's clock passes).
                    Err(e) if !e.is_unavailable() && !self.shutdown.is_cancelled() => {
                        if self.refused.insert((src, peer)) {
                            log::error!(
                                "cluster {peer} refuses the push of {src:?}: {e}; retried each round"
                            );
                        }
                        self.failed.insert(src);
                    }
                    Err(e) => {
                        if self.shutdown.is_cancelled() {
                            log::debug!("push of {src:?} to cluster {peer} abandoned: {e}");
                        } else {
                            log::warn!("push of {src:?} to cluster {peer} failed: {e}; will retry");
                        }
                        self.failed.insert(src);
                        down.insert(peer);
                    }
                }
            }
        }
    }

    fn source_path(&self, kind: FileKind) -> Option<PathBuf> {
        Some(kind.path(self.source.as_deref()?))
    }

    /// Sends one push to `peer`.
    async fn send(&self, peer: ClusterId, push: Push) -> Result<()> {
        let mut client = self
            .peers
            .get(&peer)
            .map(|p| p.client.clone())
            .ok_or_else(|| Error::Unavailable(format!("no synchronizer for cluster {peer}")))?;
        let call = async move {
            match push {
                Push::Users(b) => client.push_users(b).await,
                Push::Follows(b) => client.push_follows(b).await,
                Push::Posts(b) => client.push_posts(b).await,
            }
        };
        unless_cancelled(&self.shutdown, call).await?;
        crate::ops::metrics::metrics().sync_pushes.inc();
        Ok(())
    }

    async fn push_users(&mut self, peer: ClusterId) -> Result<()> {
        let Some(path) = self.source_path(FileKind::Users) else {
            return Ok(());
        };
        let p = self.partition();
        loop {
            let (bytes, end) = storage::read_from(&path, self.local_users.offset())?;
            match self
                .local_users
                .absorb(&bytes, end, |u| p.is_local(u.get()))
            {
                Absorbed::Read => break,
                Absorbed::Shrank => continue,
            }
        }
        let unsent: Vec<u64> = self
            .local_users
            .after(self.cursors.users_sent(peer))
            .iter()
            .map(|u| u.get())
            .collect();
        for chunk in unsent.chunks(BATCH) {
            let batch = UserBatch {
                from_cluster: p.me.0,
                users: chunk.to_vec(),
            };
            self.send(peer, Push::Users(batch)).await?;
            self.cursors.users(peer).sent += chunk.len();
            self.unsaved = true;
        }
        Ok(())
    }

    /// The author's followers file, read up to now.
    fn followers_of(&mut self, author: UserId) -> Result<&FollowLog> {
        let Some(path) = self.source_path(FileKind::Followers(author.get())) else {
            return Err(Error::Unavailable("no master's directory to read".into()));
        };
        let followers = self
            .followers
            .entry(author)
            .or_insert_with(|| Tail::new(path));
        followers.refresh()?;
        Ok(&followers.state)
    }

    /// Pushes the author's posts that `peer` needs, batch by batch. Before
    /// each batch the followers file is read again and taken into account
    /// ([`plan::Rewinds::next_posts`]), from it and a saved mark, so that
    /// neither a restart nor the order of events can lose a rewind, and no
    /// batch goes to a follower whose rewind is still to come.
    async fn push_posts(&mut self, author: UserId, peer: ClusterId) -> Result<()> {
        let Some(path) = self.source_path(FileKind::Posts(author.get())) else {
            return Ok(());
        };
        let p = self.partition();
        loop {
            self.followers_of(author)?;
            let Some(followers) = self.followers.get(&author).map(|t| &t.state) else {
                return Ok(());
            };
            let cursor = self.cursors.posts(author, peer);
            let before = *cursor;
            let next = self
                .rewinds
                .next_posts(author, peer, followers, p, cursor, |at| {
                    let Some((records, next)) = next_records(at, &path, storage::offset_after)?
                    else {
                        return Ok(None);
                    };
                    let batch = records.iter().filter_map(|r| Post::decode(r)).collect();
                    Ok::<_, Error>(Some((batch, next)))
                });
            if cursor.at.last < before.at.last {
                log::debug!(
                    "re-sending posts of {author} since {:?} to cluster {peer}",
                    cursor.at.last
                );
            }
            // A rewind moves the cursor back without touching its follows
            // mark: it must be saved too, or a restart would take the
            // rewound posts as sent.
            if *cursor != before {
                self.unsaved = true;
            }
            let Some((plan, next)) = next? else {
                return Ok(());
            };
            if let Some(push) = Push::posts(p.me, plan.items) {
                self.send(peer, push).await?;
            }
            self.cursors
                .posts(author, peer)
                .at
                .advance(plan.through, next);
            self.unsaved = true;
        }
    }

    /// The time cursor of `peer` in a follows file, and how to find its
    /// offset again. Posts have their own loop ([`Pusher::push_posts`]).
    fn time_cursor(&mut self, src: Source, peer: ClusterId) -> Option<(&mut TimeCursor, Finder)> {
        match src {
            Source::Users | Source::Posts(_) => None,
            Source::Following(u) => Some((self.cursors.following(u, peer), follow_offset_after)),
        }
    }

    /// Reads a follows file from `peer`'s cursor and pushes what the plan
    /// says the peer needs, batch by batch; the cursor moves past each batch
    /// once the peer has it.
    async fn push_records(&mut self, src: Source, peer: ClusterId) -> Result<()> {
        let Some(path) = self.source_path(src.file()) else {
            return Ok(());
        };
        let p = self.partition();
        loop {
            let Some((cursor, find)) = self.time_cursor(src, peer) else {
                return Ok(());
            };
            let Some((records, next)) = next_records(cursor, &path, find)? else {
                return Ok(());
            };
            let (push, through) = match src {
                Source::Users | Source::Posts(_) => return Ok(()),
                Source::Following(user) => {
                    let events: Vec<FollowEvent> = records
                        .iter()
                        .filter_map(|r| FollowEvent::decode(r))
                        .collect();
                    let plan = plan::follows(user, peer, &events, p);
                    (Push::follows(p.me, plan.items), plan.through)
                }
            };
            if let Some(push) = push {
                self.send(peer, push).await?;
            }
            if let Some((cursor, _)) = self.time_cursor(src, peer) {
                cursor.advance(through, next);
            }
            self.unsaved = true;
        }
    }

    /// Saves the cursors: written whole to a temporary file, flushed, then
    /// renamed over the old one and the directory flushed, so a crash or a
    /// power loss leaves one or the other ([`storage::replace_whole`]). A
    /// failure (disk full) leaves the old file and is retried at the next
    /// heartbeat.
    fn save_positions(&mut self) {
        let path = &self.settings.positions;
        let result = storage::replace_whole(path, self.cursors.format().as_bytes());
        match result {
            Ok(()) => self.unsaved = false,
            Err(e) => log::error!("cannot save {}: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_that_cannot_be_read_cost_a_resend_not_the_synchronizer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("positions.txt");
        assert_eq!(load_positions(&path), Cursors::default(), "none yet");
        // A stray byte costs its line only.
        std::fs::write(&path, b"users 2 3\nusers 3 \xff4\nusers 4 1\n").unwrap();
        let c = load_positions(&path);
        assert_eq!(c.users_sent(ClusterId(2)), 3);
        assert_eq!(c.users_sent(ClusterId(3)), 0);
        assert_eq!(c.users_sent(ClusterId(4)), 1);
        // Not a file at all: moved aside, and every cursor starts afresh.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        assert_eq!(load_positions(&path), Cursors::default());
        assert!(std::fs::symlink_metadata(dir.path().join("positions.txt.damaged")).is_ok());
        assert!(!path.exists());
    }

    #[test]
    fn a_damaged_source_file_is_an_error_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u4_posts.txt");
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        let mut c = TimeCursor::default();
        let e = next_records(&mut c, &path, storage::offset_after)
            .map(drop)
            .unwrap_err();
        // What the pusher tells from a peer's failure.
        assert!(
            matches!(&e, Error::Storage(m) if m.contains("u4_posts.txt")),
            "{e:?}"
        );
    }
}
