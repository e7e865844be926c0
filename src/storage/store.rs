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

use crate::config::cluster_of;
use crate::model::UserId;
use crate::proto::tinysns::{FollowOp, PostOp, WriteOp, write_op};
use crate::storage::{
    self, AuthorClock, FileKind, FollowEvent, FollowLog, Post, Tail, UserSet, followers_file,
    following_file, posts_file, timeline_file, users_file,
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
    following: HashMap<u64, Tail<FollowLog>>,
    followers: HashMap<u64, Tail<FollowLog>>,
    posts: HashMap<u64, Tail<AuthorClock>>,
    timelines: HashMap<u64, Tail<AuthorClock>>,
    /// Files written since [`Store::take_dirty`] was last called.
    dirty: HashSet<FileKind>,
}

fn view<S: storage::Fold>(
    map: &mut HashMap<u64, Tail<S>>,
    user: u64,
    path: impl FnOnce() -> PathBuf,
) -> &mut Tail<S> {
    map.entry(user).or_insert_with(|| Tail::new(path()))
}

impl Store {
    /// Opens (creating if needed) the directory and repairs torn records.
    pub fn open(dir: &Path, cluster: u32, clusters: u32) -> io::Result<Store> {
        std::fs::create_dir_all(dir)?;
        for f in storage::repair_dir(dir)? {
            log::warn!("{}: cut off a torn last record", f.display());
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            cluster,
            clusters,
            users: Tail::new(users_file(dir)),
            following: HashMap::new(),
            followers: HashMap::new(),
            posts: HashMap::new(),
            timelines: HashMap::new(),
            dirty: HashSet::new(),
        })
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
        let t = view(&mut self.followers, user, || followers_file(dir, user));
        t.refresh()?;
        Ok(&t.state)
    }

    /// The follow history of the users `user` follows (current view).
    pub fn following(&mut self, user: UserId) -> io::Result<&FollowLog> {
        let user = user.get();
        let dir = &self.dir;
        let t = view(&mut self.following, user, || following_file(dir, user));
        t.refresh()?;
        Ok(&t.state)
    }

    /// Applies one operation now. Returns the users whose timeline got a
    /// post.
    pub fn apply(&mut self, op: &WriteOp) -> io::Result<Vec<u64>> {
        self.now(|s, sink| s.put(op, sink))
    }

    /// Runs `write` with its records written at once; notes the files it
    /// wrote and returns the users whose timeline got a post.
    fn now(
        &mut self,
        write: impl FnOnce(&mut Self, &mut Sink) -> io::Result<()>,
    ) -> io::Result<Vec<u64>> {
        let mut sink = Sink::Now(Vec::new(), Vec::new());
        // Files written before an error are dirty too.
        let result = write(self, &mut sink);
        let Sink::Now(changed, written) = sink else {
            return result.map(|_| Vec::new());
        };
        self.dirty.extend(written);
        result.map(|_| changed)
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
    /// its role) is dropped with [`Store::reset`].
    pub fn stage(&mut self, op: &WriteOp) -> io::Result<Vec<FileKind>> {
        let mut sink = Sink::Later(Vec::new());
        self.put(op, &mut sink)?;
        match sink {
            Sink::Later(files) => Ok(files),
            Sink::Now(..) => Ok(Vec::new()),
        }
    }

    /// Writes the staged records of operations whose files are `files` (the
    /// concatenation of what [`Store::stage`] returned for them, in order),
    /// one append per file. Returns the users whose timeline got a post.
    pub fn flush(&mut self, files: &[FileKind]) -> io::Result<Vec<u64>> {
        let mut counts: Vec<(FileKind, usize)> = Vec::new();
        for f in files {
            match counts.iter_mut().find(|(k, _)| k == f) {
                Some((_, n)) => *n += 1,
                None => counts.push((*f, 1)),
            }
        }
        let mut changed = Vec::new();
        for (kind, n) in counts {
            self.dirty.insert(kind);
            match kind {
                FileKind::Users => self.users.flush_front(n)?,
                FileKind::Following(u) => self.tail_following(u).flush_front(n)?,
                FileKind::Followers(u) => self.tail_followers(u).flush_front(n)?,
                FileKind::Posts(u) => self.tail_posts(u).flush_front(n)?,
                FileKind::Timeline(u) => {
                    self.tail_timeline(u).flush_front(n)?;
                    changed.push(u);
                }
            }
        }
        Ok(changed)
    }

    /// Forgets every view (and anything staged): they are read again from
    /// the files when next needed.
    pub fn reset(&mut self) {
        self.users = Tail::new(users_file(&self.dir));
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
        let followers = self.followers_of(p.author)?;
        let targets: Vec<u64> = followers
            .users()
            .filter(|f| followers.at(*f, p.time_ns))
            .collect();
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
        view(&mut self.following, u, || following_file(dir, u))
    }
    fn tail_followers(&mut self, u: u64) -> &mut Tail<FollowLog> {
        let dir = &self.dir;
        view(&mut self.followers, u, || followers_file(dir, u))
    }
    fn tail_posts(&mut self, u: u64) -> &mut Tail<AuthorClock> {
        let dir = &self.dir;
        view(&mut self.posts, u, || posts_file(dir, u))
    }
    fn tail_timeline(&mut self, u: u64) -> &mut Tail<AuthorClock> {
        let dir = &self.dir;
        view(&mut self.timelines, u, || timeline_file(dir, u))
    }

    /// The latest time of any post of `author` stored here (0 if none).
    pub fn latest_post(&mut self, author: UserId) -> io::Result<Nanos> {
        let author = author.get();
        let t = self.tail_posts(author);
        t.refresh()?;
        Ok(t.state.latest(author))
    }
}

/// Where an operation's records go: written now (collecting the users whose
/// timeline changed), or staged (collecting the files to flush later).
enum Sink {
    /// Users whose timeline changed, and every file written.
    Now(Vec<u64>, Vec<FileKind>),
    Later(Vec<FileKind>),
}

impl Sink {
    fn write<S: storage::Fold>(
        &mut self,
        tail: &mut Tail<S>,
        kind: FileKind,
        decide: impl FnOnce(&S) -> Option<String>,
    ) -> io::Result<()> {
        match self {
            Sink::Now(changed, written) => {
                if tail.append_with(decide)? {
                    written.push(kind);
                    if let FileKind::Timeline(u) = kind {
                        changed.push(u);
                    }
                }
            }
            Sink::Later(files) => {
                if tail.stage(decide)? {
                    files.push(kind);
                }
            }
        }
        Ok(())
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
}
