//! One server directory as a state machine of write operations.
//!
//! A [`Store`] owns the incremental views ([`Tail`]s) of the files of one
//! directory and applies the write operations of the protocol to them: a new
//! user, a follow or unfollow event, a post. The master applies each client
//! write here, then mirrors the same operation to its slave, which applies it
//! here too; a synchronizer applies what other clusters send it to each
//! directory of its cluster through the same code. So every writer of a
//! directory follows one set of rules:
//!
//! * **Idempotent.** Applying an operation that is already stored changes
//!   nothing: users are a set; a follow event is identified by
//!   `(user, time)`; a post by `(author, time)`, and since one author's posts
//!   are always appended in time order, "already stored" is "not later than the
//!   author's latest post in that file". Retries, re-sent batches and replays
//!   after a restart are therefore safe.
//! * **Deterministic.** The result depends only on the operations and the
//!   directory's contents, never on the clock or on who applies them, so master
//!   and slave end up with the same records.
//! * **Fan-out on write, local only.** A post goes to the timeline of every
//!   follower who lives in this cluster and was following the author at the
//!   post's time. Followers in other clusters get it from the synchronizers.
//!
//! # Views in memory
//! A view is the fold of one file ([`Tail`]), and each kind of per-user
//! file (following, followers, posts, timeline) keeps at most
//! [`VIEWS_PER_KIND`] of them, the most recently used. Kept for every user
//! forever, they were most of a server's growth with its users: about
//! 1.6 KB per local user and file, 108 MB per 100,000 users in `bench
//! scale`. The rules:
//!
//! * **A view with staged records is never dropped.** They are promised
//!   (journaled, mirrored) and not yet in the file, so the view is the only
//!   place that holds them until [`Store::flush`] writes them. A post to
//!   more followers than the cap stages them all and is kept whole; the
//!   limit grows meanwhile, and comes back to the cap when they are
//!   flushed.
//! * **Any other view may be dropped** (with its kept open file, whose slot
//!   goes back to the store's [`Handles`]): it holds nothing its file does
//!   not, and is read again from the file when next needed, with the same
//!   answers. Reading a user's small file again costs a few µs; a view used
//!   again soon (the author's followers, the timelines of a busy author's
//!   followers) is not dropped, so the write path of the hot set reads
//!   nothing twice. A busy author with more local followers than the cap
//!   would read their timelines again on every post: the cap is far above
//!   `bench`'s hot sets and the memory it costs is small.
//! * **Dropping comes in batches:** at the cap, the least recently used
//!   idle views go, down to three quarters of it, so the scan of the views
//!   costs a few entries per new view.
//!
//! Measured (`bench scale`, 100,000 users and 1,000,990 follows, the
//! largest master's RSS growth per 100,000 users less the 100-user
//! system's): 108 MB before, 57.7 MB after (08:10 UTC 2026-12-02), and
//! 42.1 MB once the tails were boxed in the maps and the operation log,
//! the ids file's rewrite and the sessions were slimmed (a heap profile:
//! docs/bench/README.md, "After a heap profile").
//! `bench post --levels 64`, fsync on: servers' CPU per post 170 µs
//! before, 172 µs after (one run each, noisy machine).
//!
//! # When the disk fails
//! * **Each append is whole or absent** (`file::append_whole`): a
//!   failed append is cut back, and a view folds a record only once it is
//!   written (or staged). So after any failure the views claim exactly what
//!   the files hold, plus what is staged.
//! * **A failed stage takes back its own records** and nothing else: other
//!   operations staged before it stay staged, in order.
//! * **A failed flush leaves the rest staged.** The files before the failing
//!   one hold their records; the rest stay staged, in order, and flushing
//!   what is left ([`Unflushed::left`]) finishes the operations, each record
//!   once. Should the staged records be dropped meanwhile ([`Store::reset`]),
//!   staging the operations again ([`Store::restage`]) stages exactly the
//!   records the files lack, since applying is idempotent. The server keeps
//!   such an operation in its journal until it is finished
//!   ([`crate::server::replication::mirror`]).
//! * **A damaged file is its user's problem** ([`storage::Damaged`]: not a
//!   regular file, or not ours to open). A client's write that needs one is
//!   refused with an error naming the file, and stages nothing; a timeline
//!   reached by fan-out is skipped, so one follower's damaged timeline costs
//!   the author nothing. Applying (start-up replay, a slave, the
//!   synchronizer's pushes) skips every damaged file, reporting it, so one
//!   damaged file never stops what others need.

use crate::config::cluster_of;
use crate::model::UserId;
use crate::proto::tinysns::{FollowOp, PostOp, WriteOp, write_op};
use crate::storage::tail;
use crate::storage::{
    self, AuthorClock, FileKind, FollowEvent, FollowLog, Handles, Post, Tail, UserSet,
    followers_file, following_file, posts_file, timeline_file, users_file,
};
use crate::timefmt::Nanos;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

pub struct Store {
    dir: PathBuf,
    cluster: u32,
    clusters: u32,
    users: Tail<UserSet>,
    following: Views<FollowLog>,
    followers: Views<FollowLog>,
    posts: Views<AuthorClock>,
    timelines: Views<AuthorClock>,
    /// Files written since [`Store::take_dirty`] was last called.
    dirty: HashSet<FileKind>,
    /// Open files the views may keep ([`tail::APPEND_HANDLES`]).
    handles: Handles,
}

/// How many views of one kind (following, followers, posts, timelines) a
/// store keeps: see the module doc, "Views in memory".
pub const VIEWS_PER_KIND: usize = 8192;

/// The views of one kind, the most recently used kept.
struct Views<S> {
    map: HashMap<u64, View<S>>,
    /// Counts uses: a view's `used` is the count at its last use.
    clock: u64,
    cap: usize,
    /// How many views there may be before the next eviction: the cap, or
    /// more while more than three quarters of it have records staged (a
    /// post to more followers than the cap), so that each eviction still
    /// comes a quarter of the cap's new views after the last.
    limit: usize,
}

/// The tail is boxed: a map's table has up to twice the slots of its
/// entries (and more after evictions leave tombstones), and a slot of a
/// 224-byte view left 3.7 MB per kind, half of it unused, at the cap
/// (heaptrack, `bench scale`); boxed, a slot is 24 bytes.
struct View<S> {
    tail: Box<Tail<S>>,
    used: u64,
}

impl<S: storage::Fold> Views<S> {
    fn new(cap: usize) -> Views<S> {
        Views {
            map: HashMap::new(),
            clock: 0,
            cap,
            limit: cap,
        }
    }

    /// `user`'s view, made (read from its file when next refreshed) if it
    /// is not kept.
    fn get(
        &mut self,
        handles: &Handles,
        user: u64,
        path: impl FnOnce() -> PathBuf,
    ) -> &mut Tail<S> {
        self.clock += 1;
        if self.map.len() >= self.limit && !self.map.contains_key(&user) {
            self.evict();
        }
        let v = self.map.entry(user).or_insert_with(|| View {
            tail: Box::new(Tail::with_handles(path(), handles)),
            used: 0,
        });
        v.used = self.clock;
        &mut v.tail
    }

    /// Drops the least recently used views with nothing staged, down to
    /// three quarters of the cap: a scan of the views every quarter of the
    /// cap's new views, not one per new view.
    fn evict(&mut self) {
        let mut idle: Vec<u64> = self
            .map
            .values()
            .filter(|v| !v.tail.has_staged())
            .map(|v| v.used)
            .collect();
        let n = (self.map.len() + 1)
            .saturating_sub(self.cap * 3 / 4)
            .min(idle.len());
        if n > 0 {
            // Uses are distinct (one count per use, one view per use), so
            // exactly the `n` oldest idle views go.
            let (_, &mut newest_dropped, _) = idle.select_nth_unstable(n - 1);
            self.map
                .retain(|_, v| v.tail.has_staged() || v.used > newest_dropped);
        }
        self.limit = self.cap.max(self.map.len() + (self.cap / 4).max(1));
    }

    fn clear(&mut self) {
        self.map.clear();
        self.limit = self.cap;
    }
}

impl Store {
    /// Opens (creating if needed) the directory and repairs torn records.
    /// Damaged files are reported and left alone: only the requests that
    /// need them fail.
    pub fn open(dir: &Path, cluster: u32, clusters: u32) -> io::Result<Store> {
        std::fs::create_dir_all(dir)?;
        let checked = storage::repair_dir(dir)?;
        for f in checked.torn {
            log::warn!("{}: cut off a torn last record", f.display());
        }
        for (f, e) in checked.damaged {
            log::error!(
                "{}: cannot be used ({e}); the requests that need it will fail",
                f.display()
            );
        }
        let handles = Handles::new(tail::APPEND_HANDLES);
        Ok(Store {
            dir: dir.to_path_buf(),
            cluster,
            clusters,
            users: Tail::with_handles(users_file(dir), &handles),
            following: Views::new(VIEWS_PER_KIND),
            followers: Views::new(VIEWS_PER_KIND),
            posts: Views::new(VIEWS_PER_KIND),
            timelines: Views::new(VIEWS_PER_KIND),
            dirty: HashSet::new(),
            handles,
        })
    }

    /// A store whose views open and close their file around every append,
    /// keeping none open: the synchronizer's, so that a server watching its
    /// directory sees each of its appends when it closes the file
    /// ([`storage::watch::Appends::Closed`]).
    pub fn closing_each_file(mut self) -> Store {
        self.handles = Handles::new(0);
        self.reset();
        self
    }

    /// A store keeping at most `cap` views of each kind, for tests of
    /// eviction.
    #[cfg(test)]
    fn with_views(mut self, cap: usize) -> Store {
        self.following = Views::new(cap);
        self.followers = Views::new(cap);
        self.posts = Views::new(cap);
        self.timelines = Views::new(cap);
        self
    }

    /// Whether `user` lives in this store's cluster.
    pub fn is_local(&self, user: u64) -> bool {
        cluster_of(user, self.clusters) == self.cluster
    }

    /// Every known user, ascending.
    pub fn users(&mut self) -> io::Result<&BTreeSet<u64>> {
        self.users.refresh()?;
        Ok(&self.users.state.0)
    }

    /// The follow history of `user`'s followers (current view).
    pub fn followers(&mut self, user: UserId) -> io::Result<&FollowLog> {
        self.followers_of(user.get())
    }

    /// [`Store::followers`], for a user id read from an operation.
    fn followers_of(&mut self, user: u64) -> io::Result<&FollowLog> {
        let dir = &self.dir;
        let t = self
            .followers
            .get(&self.handles, user, || followers_file(dir, user));
        t.refresh()?;
        Ok(&t.state)
    }

    /// The follow history of the users `user` follows (current view).
    pub fn following(&mut self, user: UserId) -> io::Result<&FollowLog> {
        let user = user.get();
        let dir = &self.dir;
        let t = self
            .following
            .get(&self.handles, user, || following_file(dir, user));
        t.refresh()?;
        Ok(&t.state)
    }

    /// Applies one operation now. Returns the users whose timeline got a
    /// post. Damaged files are skipped (and reported).
    pub fn apply(&mut self, op: &WriteOp) -> io::Result<Vec<u64>> {
        self.now(|s, sink| s.put(op, sink))
    }

    /// Runs `write` with its records written at once; notes the files it
    /// wrote and returns the users whose timeline got a post.
    fn now(
        &mut self,
        write: impl FnOnce(&mut Self, &mut Sink) -> io::Result<()>,
    ) -> io::Result<Vec<u64>> {
        let mut sink = Sink::new(false, false);
        // Files written before an error are dirty too.
        let result = write(self, &mut sink);
        self.dirty.extend(sink.files);
        result.map(|_| sink.changed)
    }

    /// The files written since the last call, to be flushed to disk by the
    /// caller (outside its lock on the store: flushing is slow).
    pub fn take_dirty(&mut self) -> Vec<PathBuf> {
        self.dirty.drain().map(|k| k.path(&self.dir)).collect()
    }

    /// Puts back files whose flush failed.
    pub fn mark_dirty(&mut self, paths: &[PathBuf]) {
        self.dirty
            .extend(paths.iter().filter_map(|p| FileKind::parse(p)));
    }

    /// Stages one operation: decides its records and folds them into the
    /// views, but writes nothing. Returns the files it will append to, for
    /// [`Store::flush`]. Operations must be flushed in the order they were
    /// staged; a staged operation that will never be flushed (the master lost
    /// its role) is dropped with [`Store::reset`]. A client's write: a
    /// damaged file it needs refuses it (except a follower's timeline, which
    /// is skipped), and on any error nothing of it stays staged.
    pub fn stage(&mut self, op: &WriteOp) -> io::Result<Vec<FileKind>> {
        self.stage_with(op, true)
    }

    /// Stages again an operation whose flush failed (after a
    /// [`Store::reset`]): only the records the files lack. Damaged files are
    /// skipped, as [`Store::apply`] does: the operation is already promised
    /// (journaled, mirrored) and must be finished for everyone else.
    pub fn restage(&mut self, op: &WriteOp) -> io::Result<Vec<FileKind>> {
        self.stage_with(op, false)
    }

    fn stage_with(&mut self, op: &WriteOp, refuse_damaged: bool) -> io::Result<Vec<FileKind>> {
        let mut sink = Sink::new(true, refuse_damaged);
        match self.put(op, &mut sink) {
            Ok(()) => Ok(sink.files),
            Err(e) => {
                for kind in sink.files.into_iter().rev() {
                    self.unstage_last(kind);
                }
                Err(e)
            }
        }
    }

    /// Takes back the last record staged for `kind`.
    fn unstage_last(&mut self, kind: FileKind) {
        match kind {
            FileKind::Users => self.users.unstage_last(),
            FileKind::Following(u) => self.tail_following(u).unstage_last(),
            FileKind::Followers(u) => self.tail_followers(u).unstage_last(),
            FileKind::Posts(u) => self.tail_posts(u).unstage_last(),
            FileKind::Timeline(u) => self.tail_timeline(u).unstage_last(),
        }
    }

    /// Writes the staged records of operations whose files are `files` (the
    /// concatenation of what [`Store::stage`] returned for them, in order),
    /// one append per file. Returns the users whose timeline got a post.
    /// If an append fails, the files before it hold their records and the
    /// rest stay staged, in order: [`Unflushed::left`] is what to flush to
    /// finish them (see the module doc).
    pub fn flush(&mut self, files: &[FileKind]) -> Result<Vec<u64>, Unflushed> {
        let mut counts: Vec<(FileKind, usize)> = Vec::new();
        for f in files {
            match counts.iter_mut().find(|(k, _)| k == f) {
                Some((_, n)) => *n += 1,
                None => counts.push((*f, 1)),
            }
        }
        let mut changed = Vec::new();
        for (i, &(kind, n)) in counts.iter().enumerate() {
            self.dirty.insert(kind);
            let flushed = match kind {
                FileKind::Users => self.users.flush_front(n),
                FileKind::Following(u) => self.tail_following(u).flush_front(n),
                FileKind::Followers(u) => self.tail_followers(u).flush_front(n),
                FileKind::Posts(u) => self.tail_posts(u).flush_front(n),
                FileKind::Timeline(u) => {
                    changed.push(u);
                    self.tail_timeline(u).flush_front(n)
                }
            };
            if let Err(error) = flushed {
                let left = counts[i..]
                    .iter()
                    .flat_map(|&(k, n)| std::iter::repeat_n(k, n))
                    .collect();
                return Err(Unflushed { error, left });
            }
        }
        Ok(changed)
    }

    /// Forgets every view (and anything staged): they are read again from
    /// the files when next needed.
    pub fn reset(&mut self) {
        self.users = Tail::with_handles(users_file(&self.dir), &self.handles);
        self.following.clear();
        self.followers.clear();
        self.posts.clear();
        self.timelines.clear();
    }

    fn put(&mut self, op: &WriteOp, sink: &mut Sink) -> io::Result<()> {
        match &op.op {
            Some(write_op::Op::AddUser(a)) => self.add_user_to(a.user, sink),
            Some(write_op::Op::Follow(f)) => self.follow_to(f, sink),
            Some(write_op::Op::Post(p)) => self.post_to(p, sink),
            None => Ok(()),
        }
    }

    pub fn add_user(&mut self, user: UserId) -> io::Result<()> {
        self.now(|s, sink| s.add_user_to(user.get(), sink))
            .map(drop)
    }

    fn add_user_to(&mut self, user: u64, sink: &mut Sink) -> io::Result<()> {
        sink.write(&mut self.users, FileKind::Users, |s| {
            (!s.0.contains(&user)).then(|| format!("{user}\n"))
        })
    }

    /// Records a follow event on whichever sides live in this cluster: the
    /// follower's `_following` file and the followee's `_followers` file.
    pub fn follow(&mut self, f: &FollowOp) -> io::Result<()> {
        self.now(|s, sink| s.follow_to(f, sink)).map(drop)
    }

    fn follow_to(&mut self, f: &FollowOp, sink: &mut Sink) -> io::Result<()> {
        if self.is_local(f.follower) {
            let e = FollowEvent {
                user: f.followee,
                follow: f.follow,
                time: f.time_ns,
            };
            let tail = self.tail_following(f.follower);
            sink.write(tail, FileKind::Following(f.follower), |s| {
                (!s.has(e.user, e.time)).then(|| e.encode())
            })?;
        }
        if self.is_local(f.followee) {
            let e = FollowEvent {
                user: f.follower,
                follow: f.follow,
                time: f.time_ns,
            };
            let tail = self.tail_followers(f.followee);
            sink.write(tail, FileKind::Followers(f.followee), |s| {
                (!s.has(e.user, e.time)).then(|| e.encode())
            })?;
        }
        Ok(())
    }

    /// Stores a post by a local author and fans it out to the local users
    /// who were following the author at the post's time.
    fn post_to(&mut self, p: &PostOp, sink: &mut Sink) -> io::Result<()> {
        let post = Post {
            author: p.author,
            time: p.time_ns,
            text: p.text.clone(),
        };
        let tail = self.tail_posts(p.author);
        sink.write(tail, FileKind::Posts(p.author), |s| {
            (!s.has(post.author, post.time)).then(|| post.encode())
        })?;
        let targets: Vec<u64> = match self.followers_of(p.author) {
            Ok(followers) => followers
                .users()
                .filter(|f| followers.at(*f, p.time_ns))
                .collect(),
            Err(e) => {
                // Without the author's followers there is nobody to fan out
                // to: refused, or (applying) the post is stored alone.
                sink.damaged(e, false)?;
                Vec::new()
            }
        };
        let targets: Vec<u64> = targets.into_iter().filter(|f| self.is_local(*f)).collect();
        self.deliver_to(&post, &targets, sink)
    }

    /// Appends `post` to the timelines of `targets` that do not have it yet.
    /// Returns the users whose timeline changed.
    pub fn deliver(&mut self, post: &Post, targets: &[u64]) -> io::Result<Vec<u64>> {
        self.now(|s, sink| s.deliver_to(post, targets, sink))
    }

    fn deliver_to(&mut self, post: &Post, targets: &[u64], sink: &mut Sink) -> io::Result<()> {
        for &t in targets {
            let tail = self.tail_timeline(t);
            sink.write(tail, FileKind::Timeline(t), |s| {
                (!s.has(post.author, post.time)).then(|| post.encode())
            })?;
        }
        Ok(())
    }

    fn tail_following(&mut self, u: u64) -> &mut Tail<FollowLog> {
        let dir = &self.dir;
        self.following
            .get(&self.handles, u, || following_file(dir, u))
    }
    fn tail_followers(&mut self, u: u64) -> &mut Tail<FollowLog> {
        let dir = &self.dir;
        self.followers
            .get(&self.handles, u, || followers_file(dir, u))
    }
    fn tail_posts(&mut self, u: u64) -> &mut Tail<AuthorClock> {
        let dir = &self.dir;
        self.posts.get(&self.handles, u, || posts_file(dir, u))
    }
    fn tail_timeline(&mut self, u: u64) -> &mut Tail<AuthorClock> {
        let dir = &self.dir;
        self.timelines
            .get(&self.handles, u, || timeline_file(dir, u))
    }

    /// The latest time of any post of `author` stored here (0 if none).
    pub fn latest_post(&mut self, author: UserId) -> io::Result<Nanos> {
        let author = author.get();
        let t = self.tail_posts(author);
        t.refresh()?;
        Ok(t.state.latest(author))
    }
}

/// A [`Store::flush`] that failed part-way.
#[derive(Debug)]
pub struct Unflushed {
    pub error: io::Error,
    /// The files whose staged records are still to be written, in order:
    /// flushing them finishes what was asked.
    pub left: Vec<FileKind>,
}

/// Where an operation's records go: written now (collecting the users whose
/// timeline changed), or staged (collecting the files to flush later); and
/// what a damaged file does to it.
struct Sink {
    /// Staged, not written.
    later: bool,
    /// A damaged file the operation needs refuses it (a client's write);
    /// otherwise it is skipped and reported. Timelines are always skipped.
    refuse_damaged: bool,
    /// Written now: users whose timeline changed.
    changed: Vec<u64>,
    /// The files written, or staged to, in order.
    files: Vec<FileKind>,
}

impl Sink {
    fn new(later: bool, refuse_damaged: bool) -> Sink {
        Sink {
            later,
            refuse_damaged,
            changed: Vec::new(),
            files: Vec::new(),
        }
    }

    fn write<S: storage::Fold>(
        &mut self,
        tail: &mut Tail<S>,
        kind: FileKind,
        decide: impl FnOnce(&S) -> Option<String>,
    ) -> io::Result<()> {
        let wrote = if self.later {
            tail.stage(decide)
        } else {
            tail.append_with(decide)
        };
        match wrote {
            Ok(true) => {
                self.files.push(kind);
                if let (false, FileKind::Timeline(u)) = (self.later, kind) {
                    self.changed.push(u);
                }
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => self.damaged(e, matches!(kind, FileKind::Timeline(_))),
        }
    }

    /// Decides what an error does to the operation: `Ok` when it is a
    /// damaged file to skip (reported here, naming it), the error otherwise.
    fn damaged(&self, e: io::Error, fan_out: bool) -> io::Result<()> {
        match storage::damaged_of(&e) {
            Some(d) if fan_out || !self.refuse_damaged => {
                log::error!("{}: skipped, {}", d.path.display(), d.why);
                Ok(())
            }
            _ => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tinysns::AddUser;

    fn op(o: write_op::Op) -> WriteOp {
        WriteOp { op: Some(o) }
    }

    #[test]
    fn fan_out_respects_follow_time_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), 1, 3).unwrap();
        let ops = vec![
            op(write_op::Op::AddUser(AddUser { user: 1 })),
            op(write_op::Op::AddUser(AddUser { user: 4 })),
            op(write_op::Op::Post(PostOp {
                author: 1,
                time_ns: 5,
                text: "before".into(),
                post_id: 0,
            })),
            op(write_op::Op::Follow(FollowOp {
                follower: 4,
                followee: 1,
                time_ns: 10,
                follow: true,
                request_id: 0,
            })),
            // a remote follower (cluster 2): recorded, but not fanned out to
            op(write_op::Op::Follow(FollowOp {
                follower: 2,
                followee: 1,
                time_ns: 11,
                follow: true,
                request_id: 0,
            })),
            op(write_op::Op::Post(PostOp {
                author: 1,
                time_ns: 20,
                text: "after".into(),
                post_id: 0,
            })),
        ];
        for round in 0..2 {
            for o in &ops {
                s.apply(o).unwrap();
            }
            let tl = std::fs::read_to_string(timeline_file(dir.path(), 4)).unwrap();
            assert_eq!(tl.matches("W after").count(), 1, "round {round}");
            assert!(!tl.contains("before"));
            assert!(!timeline_file(dir.path(), 2).exists());
            let users = std::fs::read_to_string(users_file(dir.path())).unwrap();
            assert_eq!(users, "1\n4\n");
        }
        assert_eq!(
            s.followers(UserId::new(1).unwrap())
                .unwrap()
                .current()
                .into_iter()
                .collect::<Vec<_>>(),
            vec![2, 4]
        );
        assert!(!following_file(dir.path(), 2).exists());
    }

    #[test]
    fn staged_records_are_written_only_when_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), 1, 3).unwrap();
        s.apply(&op(write_op::Op::Follow(FollowOp {
            follower: 4,
            followee: 1,
            time_ns: 1,
            follow: true,
            request_id: 0,
        })))
        .unwrap();
        let post = |t: i64| {
            op(write_op::Op::Post(PostOp {
                author: 1,
                time_ns: t,
                text: format!("post {t}"),
                post_id: 0,
            }))
        };
        let a = s.stage(&post(10)).unwrap();
        let b = s.stage(&post(20)).unwrap();
        assert_eq!(a, vec![FileKind::Posts(1), FileKind::Timeline(4)]);
        // Staged: seen by the views (a re-stage is a duplicate) but not on disk.
        assert!(s.stage(&post(10)).unwrap().is_empty());
        assert!(!timeline_file(dir.path(), 4).exists());
        assert_eq!(s.flush(&a).unwrap(), vec![4]);
        let tl = std::fs::read_to_string(timeline_file(dir.path(), 4)).unwrap();
        assert!(tl.contains("post 10") && !tl.contains("post 20"));
        s.flush(&b).unwrap();
        let tl = std::fs::read_to_string(timeline_file(dir.path(), 4)).unwrap();
        assert_eq!(tl.matches("W post").count(), 2);
        // A reset drops what is staged and reads the files again.
        s.stage(&post(30)).unwrap();
        s.reset();
        assert!(!s.stage(&post(30)).unwrap().is_empty());
    }

    fn follow(follower: u64, followee: u64, time_ns: i64) -> WriteOp {
        op(write_op::Op::Follow(FollowOp {
            follower,
            followee,
            time_ns,
            follow: true,
            request_id: 0,
        }))
    }

    fn post_op(author: u64, time_ns: i64) -> WriteOp {
        op(write_op::Op::Post(PostOp {
            author,
            time_ns,
            text: format!("post {time_ns}"),
            post_id: 0,
        }))
    }

    fn user(u: u64) -> UserId {
        UserId::new(u).unwrap()
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// What the server does after a failed flush: drop what is staged and
    /// stage the operations again.
    fn restage_all(s: &mut Store, ops: &[WriteOp]) -> Vec<FileKind> {
        s.reset();
        ops.iter().flat_map(|o| s.restage(o).unwrap()).collect()
    }

    #[test]
    fn a_follow_whose_second_file_fails_is_finished_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut s = Store::open(d, 1, 3).unwrap();
        let f = follow(4, 1, 100);
        let files = s.stage(&f).unwrap();
        assert_eq!(files, [FileKind::Following(4), FileKind::Followers(1)]);
        // The disk fills up after the first file, half-way through the
        // second file's record.
        crate::storage::faults::fail_appends(&followers_file(d, 1), 0, 5, 1);
        let e = s.flush(&files).unwrap_err();
        assert_eq!(e.error.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(e.left, [FileKind::Followers(1)]);
        assert_eq!(lines(&following_file(d, 4)).len(), 1);
        assert_eq!(
            std::fs::read(followers_file(d, 1)).unwrap(),
            b"",
            "no torn record"
        );
        // Staged again: only what the files lack, and the views show the
        // follow whole.
        let owed = restage_all(&mut s, std::slice::from_ref(&f));
        assert_eq!(owed, [FileKind::Followers(1)]);
        assert!(s.following(user(4)).unwrap().contains(1));
        assert!(s.followers(user(1)).unwrap().contains(4));
        s.flush(&owed).unwrap();
        assert_eq!(lines(&following_file(d, 4)).len(), 1);
        assert_eq!(lines(&followers_file(d, 1)).len(), 1);
        // Finished: staging it again stages nothing.
        assert!(restage_all(&mut s, &[f]).is_empty());
    }

    #[test]
    fn posts_whose_fan_out_fails_are_finished_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut s = Store::open(d, 1, 3).unwrap();
        s.apply(&follow(4, 1, 1)).unwrap();
        s.apply(&follow(7, 1, 2)).unwrap();
        let ops = [post_op(1, 10), post_op(1, 20)];
        let files: Vec<FileKind> = ops.iter().flat_map(|o| s.stage(o).unwrap()).collect();
        crate::storage::faults::fail_appends(&timeline_file(d, 7), 0, 30, 1);
        assert!(s.flush(&files).is_err());
        assert_eq!(
            std::fs::read_to_string(timeline_file(d, 7)).unwrap_or_default(),
            ""
        );
        // Staged again: 7's timeline, and 4's unless it was written before
        // 7's failed (fan-out order is the followers file's).
        let owed = restage_all(&mut s, &ops);
        let sevens = owed.iter().filter(|k| **k == FileKind::Timeline(7)).count();
        assert_eq!(sevens, 2, "{owed:?}");
        assert!(!owed.contains(&FileKind::Posts(1)), "{owed:?}");
        assert!(s.flush(&owed).unwrap().contains(&7));
        for f in [posts_file(d, 1), timeline_file(d, 4), timeline_file(d, 7)] {
            let text = std::fs::read_to_string(&f).unwrap();
            assert_eq!(text.matches("W post").count(), 2, "{}", f.display());
            assert!(text.find("post 10") < text.find("post 20"));
        }
    }

    #[test]
    fn a_failed_stage_takes_back_only_its_own_records() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut s = Store::open(d, 1, 3).unwrap();
        s.apply(&follow(4, 1, 1)).unwrap();
        let first = s.stage(&post_op(1, 10)).unwrap();
        // 4 follows 7, whose followers file is damaged: refused, and 4's
        // side is not left staged.
        std::fs::create_dir(followers_file(d, 7)).unwrap();
        let e = s.stage(&follow(4, 7, 20)).unwrap_err();
        assert!(storage::is_damaged(&e), "{e}");
        assert!(e.to_string().contains("u7_followers.txt"), "{e}");
        assert!(!s.following(user(4)).unwrap().contains(7));
        // What was staged before it is still staged, and written whole.
        s.flush(&first).unwrap();
        let tl = std::fs::read_to_string(timeline_file(d, 4)).unwrap();
        assert_eq!(tl.matches("W post 10").count(), 1);
        assert_eq!(
            lines(&following_file(d, 4)).len(),
            1,
            "only the first follow"
        );
    }

    #[test]
    fn a_damaged_timeline_costs_its_user_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut s = Store::open(d, 1, 3).unwrap();
        s.apply(&follow(4, 1, 1)).unwrap();
        s.apply(&follow(7, 1, 2)).unwrap();
        std::fs::create_dir(timeline_file(d, 7)).unwrap();
        std::os::unix::fs::symlink("/dev/zero", followers_file(d, 10)).unwrap();
        // A post reaches every follower whose timeline is sound.
        let files = s.stage(&post_op(1, 10)).unwrap();
        assert_eq!(files, [FileKind::Posts(1), FileKind::Timeline(4)]);
        s.flush(&files).unwrap();
        assert_eq!(s.apply(&post_op(1, 20)).unwrap(), vec![4]);
        // A client's write into a damaged file is refused and changes
        // nothing; applied (a replay, a slave, a push), it is skipped.
        let before = std::fs::read(following_file(d, 4)).unwrap();
        assert!(storage::is_damaged(
            &s.stage(&follow(4, 10, 30)).unwrap_err()
        ));
        assert_eq!(std::fs::read(following_file(d, 4)).unwrap(), before);
        s.apply(&follow(4, 10, 30)).unwrap();
        assert!(s.following(user(4)).unwrap().contains(10));
        // Reading a damaged file is an error for its user alone.
        assert!(s.followers(user(10)).is_err());
        assert_eq!(s.followers(user(1)).unwrap().current().len(), 2);
        // A store opens over all of it.
        drop(s);
        Store::open(d, 1, 3).unwrap();
    }

    /// A store of 4 views per kind, with 40 users (cluster 1 of 1) who each
    /// follow the next 3 and post once: their answers match those of a store
    /// that keeps every view.
    #[test]
    fn an_evicted_view_is_read_again_with_the_same_answers() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut small = Store::open(d, 1, 1).unwrap().with_views(4);
        for u in 1..=40u64 {
            for k in 1..=3 {
                let f = 1 + (u + k - 1) % 40;
                small.apply(&follow(u, f, (u * 10 + k) as i64)).unwrap();
            }
        }
        for u in 1..=40u64 {
            small.apply(&post_op(u, 1000 + u as i64)).unwrap();
        }
        assert!(small.following.map.len() <= 4 && small.timelines.map.len() <= 4);
        let mut full = Store::open(d, 1, 1).unwrap();
        for u in 1..=40u64 {
            let id = user(u);
            let a: Vec<_> = small.following(id).unwrap().events().collect();
            assert_eq!(a, full.following(id).unwrap().events().collect::<Vec<_>>());
            let a = small.followers(id).unwrap().current();
            assert_eq!(a, full.followers(id).unwrap().current());
            assert_eq!(small.latest_post(id).unwrap(), 1000 + u as i64);
            // Each post reached its 3 followers once, evicted or not.
            let tl = std::fs::read_to_string(timeline_file(d, u)).unwrap();
            assert_eq!(tl.matches("W post").count(), 3, "user {u}");
        }
        // Applied again, everything is already there: nothing is written.
        for u in 1..=40u64 {
            assert!(
                small
                    .apply(&post_op(u, 1000 + u as i64))
                    .unwrap()
                    .is_empty()
            );
            assert!(
                small
                    .stage(&follow(u, 1 + u % 40, (u * 10 + 1) as i64))
                    .unwrap()
                    .is_empty()
            );
        }
    }

    /// Views with staged records stay while others come and go, and flush
    /// what they staged, once.
    #[test]
    fn a_view_with_staged_records_is_never_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut s = Store::open(d, 1, 1).unwrap().with_views(4);
        // 1 has 6 followers: one post stages 6 timelines, past the cap.
        for f in 2..=7 {
            s.apply(&follow(f, 1, f as i64)).unwrap();
        }
        let staged = s.stage(&post_op(1, 100)).unwrap();
        assert_eq!(staged.len(), 7, "{staged:?}");
        // Other users' views come and go meanwhile.
        for u in 20..60 {
            s.apply(&follow(u, u + 1, u as i64)).unwrap();
            s.apply(&post_op(u + 1, 200 + u as i64)).unwrap();
        }
        for u in 2..=7 {
            assert!(s.timelines.map.contains_key(&u), "timeline {u} evicted");
        }
        assert!(s.posts.map.contains_key(&1));
        // Still staged: a repeat stages nothing; then written once.
        assert!(s.stage(&post_op(1, 100)).unwrap().is_empty());
        assert!(!timeline_file(d, 2).exists());
        assert_eq!(s.flush(&staged).unwrap().len(), 6);
        for u in 2..=7 {
            let tl = std::fs::read_to_string(timeline_file(d, u)).unwrap();
            assert_eq!(tl.matches("W post 100").count(), 1, "user {u}");
        }
        // Flushed, they may go: the cap holds again once others come.
        for u in 80..90 {
            s.apply(&post_op(u, 1)).unwrap();
        }
        assert!(s.posts.map.len() <= 4);
    }
}
