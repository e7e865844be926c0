//! Incremental views: a [`Tail`] folds a file's records into a state and
//! reads only what was appended since it last looked, so its cost grows with
//! what changed, not with the history. The states: [`UserSet`]
//! (`all_users.txt`), [`FollowLog`] (`_following`, `_followers`) and
//! [`AuthorClock`] (`_posts`, `_timeline`). A [`Follower`] reads a file
//! forward the same way for someone who only reads it (a timeline stream).
//!
//! Every forward read goes through a [`Scanner`]: a chunk of
//! [`READ_CHUNK`] bytes at a time, never more than one record's worth kept
//! between chunks, a record too long to be valid reported (file and offset)
//! and skipped, and the scanner's place remembered, so that an unterminated
//! tail of any size is read once, not once per look.

use super::file::{append_whole, data_metadata, open_append, open_shared, repair_locked};
use super::record::{FollowEvent, Format, Found, Post, Scanner, split_records};
use crate::timefmt::Nanos;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many files the views of one store keep open between appends.
///
/// Opening and closing a file around every append, and looking its path up
/// again before every read, were half the syscalls of a post, and their
/// path walks the largest of them (`bench post`, `perf`). A view keeps its
/// file open instead and checks it by inode before each use, since a resync
/// or a person may put a new file in its place: the open file's link count
/// (one `fstat`, no path walk, under the lock when appending) is zero once
/// another file was renamed over it or it was removed, and then the path is
/// opened again. (A file *moved away* under a running server keeps its
/// links and would go on getting the appends: data files are replaced or
/// removed, never moved while a server runs.) A resync also forgets every
/// view ([`crate::storage::store::Store::reset`]). Past this many files,
/// views open and close as before: the number of descriptors a server holds
/// stays bounded however many users it has.
pub const APPEND_HANDLES: usize = 512;

/// The open files left to the views of one store ([`APPEND_HANDLES`]).
#[derive(Debug, Clone)]
pub struct Handles(Arc<AtomicUsize>);

impl Handles {
    pub fn new(max: usize) -> Handles {
        Handles(Arc::new(AtomicUsize::new(max)))
    }

    fn take(&self) -> Option<Slot> {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

/// One of [`Handles`], given back when the file is closed.
#[derive(Debug)]
struct Slot(Handles);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A view's file kept open, read and append.
#[derive(Debug)]
struct Handle {
    file: File,
    _slot: Slot,
}

/// How much a forward read takes from a file at a time.
pub const READ_CHUNK: usize = 64 << 10;

/// A state folded from a file's records.
pub trait Fold: Default {
    /// Folds one record (without its terminator) in; the error says why a
    /// malformed one is skipped.
    fn apply(&mut self, record: &[u8]) -> Result<(), String>;
}

/// Feeds `scan` the bytes of `f` from the scanner's position up to `len`, a
/// chunk at a time, until about `budget` bytes were read; calls `record`
/// with the offset and bytes of each record of a valid length, and logs
/// each record too long to be valid.
pub(super) fn scan_file(
    f: &mut (impl Read + Seek),
    scan: &mut Scanner,
    len: u64,
    budget: u64,
    path: &Path,
    mut record: impl FnMut(u64, &[u8]),
) -> io::Result<()> {
    if scan.position() >= len {
        return Ok(());
    }
    f.seek(SeekFrom::Start(scan.position()))?;
    let mut buf = vec![0u8; (len - scan.position()).min(READ_CHUNK as u64) as usize];
    let mut read = 0u64;
    while scan.position() < len && read < budget {
        let want = (len - scan.position()).min(buf.len() as u64) as usize;
        let got = f.read(&mut buf[..want])?;
        if got == 0 {
            break;
        }
        read += got as u64;
        scan.feed(&buf[..got], |found| match found {
            Found::Record { at, bytes } => record(at, bytes),
            Found::Oversized { at } => log::warn!(
                "{}: the record at byte {at} is longer than any valid one ({} bytes); skipped",
                path.display(),
                Format::of(path).max_record()
            ),
        });
    }
    Ok(())
}

/// Logs a record that [`Fold::apply`] or a reader skipped.
pub(super) fn report_malformed(path: &Path, at: u64, why: &str) {
    log::warn!(
        "{}: skipping the record at byte {at}: {why}",
        path.display()
    );
}

/// An incrementally maintained view of one file: the offset read so far and
/// the fold of every record before it.
///
/// A view can also hold *staged* records: decided and folded into the state,
/// but not yet written. The master stages a client's write, mirrors it to its
/// slave, and writes it ([`Tail::flush_front`]) only once the slave has it, so
/// that nothing a reader can see (a timeline on screen, a synchronizer) can
/// vanish in a failover.
#[derive(Debug)]
pub struct Tail<S> {
    path: PathBuf,
    format: Format,
    /// How far the file has been read, and whether it is inside a record too
    /// long to be valid.
    scan: Scanner,
    /// The file's inode when last read: a file replaced by a resync is a new
    /// file, to be read from the start.
    ino: Option<u64>,
    pending: VecDeque<String>,
    pub state: S,
    /// Where to get an open file from, if this view may keep one.
    handles: Option<Handles>,
    handle: Option<Handle>,
}

impl<S: Fold> Tail<S> {
    pub fn new(path: PathBuf) -> Self {
        let format = Format::of(&path);
        Tail {
            path,
            format,
            scan: Scanner::new(format, 0),
            ino: None,
            pending: VecDeque::new(),
            state: S::default(),
            handles: None,
            handle: None,
        }
    }

    /// A view that keeps its file open between appends while `handles`
    /// has room ([`APPEND_HANDLES`]).
    pub fn with_handles(path: PathBuf, handles: &Handles) -> Self {
        Tail {
            handles: Some(handles.clone()),
            ..Tail::new(path)
        }
    }

    /// The file, open for appending and exclusively locked: the kept one if
    /// it still has a name (checked under the lock, so that nobody can
    /// rename a new file into place between the check and the append), or
    /// the one at our path, never following a link.
    fn open_locked(&mut self) -> io::Result<(File, Option<Slot>, std::fs::Metadata)> {
        if let Some(h) = self.handle.take() {
            h.file.lock()?;
            let meta = h.file.metadata()?;
            if meta.nlink() > 0 {
                return Ok((h.file, Some(h._slot), meta));
            }
            // Replaced or removed since: closing it lets go of its lock.
        }
        let f = open_append(&self.path)?;
        f.lock()?;
        let meta = f.metadata()?;
        Ok((f, None, meta))
    }

    /// Keeps `file` open for the next use, if there is room.
    fn keep_handle(&mut self, file: File, slot: Option<Slot>) {
        let slot = slot.or_else(|| self.handles.as_ref().and_then(Handles::take));
        if let Some(_slot) = slot {
            self.handle = Some(Handle { file, _slot });
        }
    }

    /// Whether the file changed identity or shrank since we read it.
    fn replaced(&self, len: u64, ino: u64) -> bool {
        len < self.scan.boundary() || self.ino.is_some_and(|i| i != ino)
    }

    /// Reads what was appended since the last call.
    pub fn refresh(&mut self) -> io::Result<()> {
        // A kept file tells its length without a walk of its path; one
        // with no links left was replaced (a resync renames a new file into
        // place) or removed, and the path is looked at instead.
        if let Some(m) = self.kept_metadata()? {
            if self.replaced(m.len(), m.ino()) {
                self.reset();
            }
            if m.len() == self.scan.position() {
                return Ok(());
            }
            if let Some(h) = self.handle.take() {
                h.file.lock_shared()?;
                let read = self.read_locked(&h.file);
                let unlocked = h.file.unlock();
                self.handle = Some(h);
                read?;
                return unlocked;
            }
        }
        // Not following a link: what is not a regular file is damaged.
        let (len, ino) = match data_metadata(&self.path)? {
            Some(m) => (m.len(), m.ino()),
            None => (0, 0),
        };
        if self.replaced(len, ino) {
            self.reset();
        }
        if len == self.scan.position() {
            return Ok(());
        }
        let Some(f) = open_shared(&self.path)? else {
            return Ok(());
        };
        self.read_locked(&f)
    }

    /// The kept file's metadata, if it is kept and still has a name; a kept
    /// file that has none is closed.
    fn kept_metadata(&mut self) -> io::Result<Option<std::fs::Metadata>> {
        let Some(h) = &self.handle else {
            return Ok(None);
        };
        let m = h.file.metadata()?;
        if m.nlink() == 0 {
            self.handle = None;
            return Ok(None);
        }
        Ok(Some(m))
    }

    /// Reads what was appended to `f`, locked shared or exclusive.
    fn read_locked(&mut self, mut f: &File) -> io::Result<()> {
        let meta = f.metadata()?;
        if self.replaced(meta.len(), meta.ino()) {
            self.reset();
        }
        self.ino = Some(meta.ino());
        self.read_rest(&mut f, meta.len(), false)
    }

    /// Reads what follows the scanner's position up to `len` from `f` and
    /// folds its complete records; with `all`, the caller holds the
    /// exclusive lock and the range is whole.
    fn read_rest(&mut self, f: &mut (impl Read + Seek), len: u64, all: bool) -> io::Result<()> {
        if !self.scan.truncate(len) {
            self.reset();
        }
        let (state, path) = (&mut self.state, &self.path);
        scan_file(f, &mut self.scan, len, u64::MAX, path, |at, r| {
            if let Err(why) = state.apply(r) {
                report_malformed(path, at, &why);
            }
        })?;
        if all {
            self.scan.consume_rest();
        }
        Ok(())
    }

    /// Forgets what was read (the file was replaced); staged records stay
    /// staged and folded.
    fn reset(&mut self) {
        self.scan = Scanner::new(self.format, 0);
        self.ino = None;
        self.state = S::default();
        let pending: Vec<String> = self.pending.iter().cloned().collect();
        for r in pending {
            self.fold_bytes(r.as_bytes());
        }
    }

    /// Folds records of our own making (staged or just written).
    fn fold_bytes(&mut self, bytes: &[u8]) {
        let (records, _) = split_records(bytes, self.format);
        for r in records {
            if let Err(why) = self.state.apply(r) {
                log::warn!(
                    "{}: a record of our own is malformed: {why}",
                    self.path.display()
                );
            }
        }
    }

    /// Appends what `decide` returns, deciding with the view brought up to
    /// date while the exclusive lock is held. Returns whether it wrote.
    pub fn append_with(&mut self, decide: impl FnOnce(&S) -> Option<String>) -> io::Result<bool> {
        self.locked(|t, f| {
            let Some(record) = decide(&t.state) else {
                return Ok(false);
            };
            t.write_locked(f, record.as_bytes())?;
            t.fold_bytes(record.as_bytes());
            Ok(true)
        })
    }

    /// Decides and folds a record without writing it (see the type's doc).
    /// Returns whether a record was staged.
    pub fn stage(&mut self, decide: impl FnOnce(&S) -> Option<String>) -> io::Result<bool> {
        self.refresh()?;
        let Some(record) = decide(&self.state) else {
            return Ok(false);
        };
        self.fold_bytes(record.as_bytes());
        self.pending.push_back(record);
        Ok(true)
    }

    /// Whether records are staged: a view that has none holds nothing its
    /// file does not, and may be dropped and read again later.
    pub fn has_staged(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Takes back the last staged record (the operation that staged it
    /// failed before it was queued). The view is read again from the file
    /// when next needed, since a fold cannot be undone.
    pub fn unstage_last(&mut self) {
        if self.pending.pop_back().is_some() {
            self.reset();
        }
    }

    /// Writes the first `n` staged records, in one append. If it fails,
    /// nothing of them is written and they stay staged.
    pub fn flush_front(&mut self, n: usize) -> io::Result<()> {
        let n = n.min(self.pending.len());
        if n == 0 {
            return Ok(());
        }
        self.locked(|t, f| {
            let bytes: String = t.pending.iter().take(n).map(String::as_str).collect();
            t.write_locked(f, bytes.as_bytes())?;
            t.pending.drain(..n);
            Ok(())
        })
    }

    /// Runs `body` with the file open for appending, exclusively locked, and
    /// the view brought up to date.
    fn locked<T>(
        &mut self,
        body: impl FnOnce(&mut Self, &mut File) -> io::Result<T>,
    ) -> io::Result<T> {
        let (mut f, slot, meta) = self.open_locked()?;
        let result = (|| {
            // The common case: the file is the one we know and ends where we
            // last read or wrote, at a record boundary. Otherwise someone
            // else appended (or a writer crashed), and since nobody else can
            // be writing now, an incomplete tail is torn: cut it.
            let known = self.ino == Some(meta.ino())
                && meta.len() == self.scan.position()
                && self.scan.at_boundary();
            let len = if known || repair_locked(&mut f, self.format)? == 0 {
                meta.len()
            } else {
                f.metadata()?.len()
            };
            if self.replaced(len, meta.ino()) {
                self.reset();
            }
            self.ino = Some(meta.ino());
            self.read_rest(&mut f, len, true)?;
            body(self, &mut f)
        })();
        let unlocked = f.unlock();
        self.keep_handle(f, slot);
        let value = result?;
        unlocked?;
        Ok(value)
    }

    fn write_locked(&mut self, f: &mut File, bytes: &[u8]) -> io::Result<()> {
        debug_assert!(bytes.ends_with(self.format.terminator()));
        // Whole or absent: a failed append is cut back to where the file
        // ended (the caller holds the lock and has read it all).
        append_whole(f, self.scan.position(), bytes, &self.path)?;
        self.scan.advance(bytes.len() as u64);
        Ok(())
    }
}

/// One file followed as it grows by a reader that does not write it (a
/// timeline stream): the whole records appended since the last look, a
/// bounded amount at a time.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    scan: Scanner,
    ino: Option<u64>,
}

/// What [`Follower::read`] found.
#[derive(Debug, Default)]
pub struct Appended {
    /// Records of a valid length, with their offsets.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Whether there is more to read already.
    pub more: bool,
}

impl Follower {
    /// Follows `path` from `at`, a record boundary.
    pub fn new(path: PathBuf, at: u64) -> Follower {
        let scan = Scanner::new(Format::of(&path), at);
        Follower {
            path,
            scan,
            ino: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The records appended since the last call, from about `budget` bytes
    /// at most; `None` when the file was replaced or cut shorter than what
    /// was read (the reader starts over).
    pub fn read(&mut self, budget: u64) -> io::Result<Option<Appended>> {
        let Some(mut f) = open_shared(&self.path)? else {
            return Ok((self.scan.boundary() == 0).then(Appended::default));
        };
        let meta = f.metadata()?;
        if self.ino.is_some_and(|i| i != meta.ino()) || !self.scan.truncate(meta.len()) {
            return Ok(None);
        }
        self.ino = Some(meta.ino());
        let mut records = Vec::new();
        scan_file(
            &mut f,
            &mut self.scan,
            meta.len(),
            budget,
            &self.path,
            |at, r| records.push((at, r.to_vec())),
        )?;
        Ok(Some(Appended {
            records,
            more: self.scan.position() < meta.len(),
        }))
    }
}

/// `all_users.txt`: the set of users.
#[derive(Debug, Default)]
pub struct UserSet(pub BTreeSet<u64>);

impl Fold for UserSet {
    fn apply(&mut self, record: &[u8]) -> Result<(), String> {
        let user = std::str::from_utf8(record)
            .ok()
            .and_then(crate::config::parse_user)
            .ok_or_else(|| "not a user id".to_string())?;
        self.0.insert(user);
        Ok(())
    }
}

/// A `_following` or `_followers` file: every event per other user, in time
/// order.
///
/// A store holds one of these per local user and file it has looked at,
/// and nearly every one holds a few events (`bench scale`: ten), so a
/// small log is one sorted `Vec` of 24-byte events, grown by an eighth at a
/// time: a map and its spare room cost several times that. Past
/// [`FollowLog::SMALL`] events (a popular user's followers), inserting
/// into the middle of one `Vec` would cost its length per event, and the
/// log becomes a map per other user instead.
#[derive(Debug, Default, Clone)]
pub struct FollowLog(Log);

#[derive(Debug, Clone)]
enum Log {
    /// Sorted by (user, time); events of equal (user, time) in the order
    /// they were folded.
    Small(Vec<Event>),
    Large(HashMap<u64, Events>),
}

impl Default for Log {
    fn default() -> Log {
        Log::Small(Vec::new())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Event {
    user: u64,
    time: Nanos,
    follow: bool,
}

/// One other user's events in one file, in time order. Nearly every user
/// has one (a follow never undone): it is kept inline, because a `Vec` of
/// its own (an allocation of four events) made these logs most of a
/// master's memory: 154 MB at 100,000 users and 1,000,000 follows
/// (`bench scale`).
#[derive(Debug, Clone)]
enum Events {
    One([(Nanos, bool); 1]),
    Many(Vec<(Nanos, bool)>),
}

impl Events {
    fn as_slice(&self) -> &[(Nanos, bool)] {
        match self {
            Events::One(e) => e,
            Events::Many(v) => v,
        }
    }

    fn insert(&mut self, pos: usize, e: (Nanos, bool)) {
        match self {
            Events::One(one) => {
                let mut v = Vec::with_capacity(2);
                v.extend_from_slice(one);
                v.insert(pos, e);
                *self = Events::Many(v);
            }
            Events::Many(v) => v.insert(pos, e),
        }
    }

    /// Folds `e` in: events arrive in time order per user, but a late one
    /// (from another cluster) is put in its place, and a repeat of the
    /// event just before its place is dropped.
    fn fold(map: &mut HashMap<u64, Events>, e: Event) {
        use std::collections::hash_map::Entry;
        match map.entry(e.user) {
            Entry::Vacant(v) => {
                v.insert(Events::One([(e.time, e.follow)]));
            }
            Entry::Occupied(mut o) => {
                let v = o.get().as_slice();
                let pos = v.partition_point(|(t, _)| *t <= e.time);
                if pos == 0 || v[pos - 1] != (e.time, e.follow) {
                    o.get_mut().insert(pos, (e.time, e.follow));
                }
            }
        }
    }
}

impl Fold for FollowLog {
    fn apply(&mut self, record: &[u8]) -> Result<(), String> {
        let e = FollowEvent::parse(record)?;
        self.fold(Event {
            user: e.user,
            time: e.time,
            follow: e.follow,
        });
        Ok(())
    }
}

impl FollowLog {
    /// The most events a log keeps in one sorted `Vec`.
    pub const SMALL: usize = 128;

    fn fold(&mut self, e: Event) {
        match &mut self.0 {
            Log::Small(v) => {
                // The same rule as a large log's (`Events::fold`): after
                // every event of this user not later than it, unless it
                // repeats the one before.
                let pos = v.partition_point(|x| (x.user, x.time) <= (e.user, e.time));
                if pos > 0 && v[pos - 1] == e {
                    return;
                }
                if v.len() < Self::SMALL {
                    if v.len() == v.capacity() {
                        v.reserve_exact(v.len() / 8 + 1);
                    }
                    v.insert(pos, e);
                    return;
                }
                let mut map: HashMap<u64, Events> = HashMap::new();
                for &x in v.iter() {
                    Events::fold(&mut map, x);
                }
                Events::fold(&mut map, e);
                self.0 = Log::Large(map);
            }
            Log::Large(map) => Events::fold(map, e),
        }
    }

    /// A small log's events of `user`.
    fn of(v: &[Event], user: u64) -> &[Event] {
        let from = v.partition_point(|x| x.user < user);
        let to = from + v[from..].partition_point(|x| x.user == user);
        &v[from..to]
    }

    /// The last event of every user, ascending by user in a small log.
    fn lasts(&self) -> impl Iterator<Item = (u64, Nanos, bool)> + '_ {
        let (small, large) = match &self.0 {
            Log::Small(v) => (Some(v), None),
            Log::Large(m) => (None, Some(m)),
        };
        let small = small.into_iter().flat_map(|v| {
            v.chunk_by(|a, b| a.user == b.user)
                .filter_map(|c| c.last().map(|e| (e.user, e.time, e.follow)))
        });
        let large = large.into_iter().flat_map(|m| {
            m.iter()
                .filter_map(|(u, v)| v.as_slice().last().map(|(t, f)| (*u, *t, *f)))
        });
        small.chain(large)
    }

    /// The users currently in the relation, ascending.
    pub fn current(&self) -> BTreeSet<u64> {
        self.lasts().filter(|e| e.2).map(|e| e.0).collect()
    }

    pub fn contains(&self, user: u64) -> bool {
        self.since(user).is_some()
    }

    /// When the current follow of `user` started, if it is current.
    pub fn since(&self, user: u64) -> Option<Nanos> {
        let last = match &self.0 {
            Log::Small(v) => Self::of(v, user).last().map(|e| (e.time, e.follow)),
            Log::Large(m) => m.get(&user)?.as_slice().last().copied(),
        };
        match last? {
            (t, true) => Some(t),
            _ => None,
        }
    }

    /// Whether `user` was in the relation at time `t`.
    pub fn at(&self, user: u64, t: Nanos) -> bool {
        match &self.0 {
            Log::Small(v) => {
                let v = Self::of(v, user);
                let pos = v.partition_point(|e| e.time < t);
                pos > 0 && v[pos - 1].follow
            }
            Log::Large(m) => {
                let Some(v) = m.get(&user).map(Events::as_slice) else {
                    return false;
                };
                let pos = v.partition_point(|(et, _)| *et < t);
                pos > 0 && v[pos - 1].1
            }
        }
    }

    /// Whether this exact event is already recorded.
    pub fn has(&self, user: u64, time: Nanos) -> bool {
        match &self.0 {
            Log::Small(v) => Self::of(v, user).iter().any(|e| e.time == time),
            Log::Large(m) => m
                .get(&user)
                .is_some_and(|v| v.as_slice().iter().any(|(t, _)| *t == time)),
        }
    }

    /// Every event: `(user, time, follow)`.
    pub fn events(&self) -> impl Iterator<Item = (u64, Nanos, bool)> + '_ {
        let (small, large) = match &self.0 {
            Log::Small(v) => (Some(v), None),
            Log::Large(m) => (None, Some(m)),
        };
        let small = small
            .into_iter()
            .flat_map(|v| v.iter().map(|e| (e.user, e.time, e.follow)));
        let large = large.into_iter().flat_map(|m| {
            m.iter()
                .flat_map(|(u, v)| v.as_slice().iter().map(move |(t, f)| (*u, *t, *f)))
        });
        small.chain(large)
    }

    /// Every user with at least one event.
    pub fn users(&self) -> impl Iterator<Item = u64> + '_ {
        self.lasts().map(|e| e.0)
    }

    /// The latest event time, over all users.
    pub fn max_time(&self) -> Nanos {
        self.lasts().map(|e| e.1).max().unwrap_or(0)
    }
}

/// A posts or timeline file: the latest post time per author. Posts of one
/// author are appended in time order, so a post is already present exactly
/// when its time is not after its author's latest.
#[derive(Debug, Default)]
pub struct AuthorClock(pub HashMap<u64, Nanos>);

impl Fold for AuthorClock {
    fn apply(&mut self, record: &[u8]) -> Result<(), String> {
        let p = Post::parse(record)?;
        let t = self.0.entry(p.author).or_insert(p.time);
        *t = (*t).max(p.time);
        Ok(())
    }
}

impl AuthorClock {
    pub fn has(&self, author: u64, time: Nanos) -> bool {
        self.0.get(&author).is_some_and(|t| time <= *t)
    }
    pub fn latest(&self, author: u64) -> Nanos {
        self.0.get(&author).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::last_posts;
    use crate::storage::record::post;

    #[test]
    fn append_with_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u1_timeline.txt");
        let mut a: Tail<AuthorClock> = Tail::new(path.clone());
        let mut b: Tail<AuthorClock> = Tail::new(path.clone());
        let p = post(2, 100, "x");
        for i in 0..3 {
            let t = if i == 1 { &mut b } else { &mut a };
            t.append_with(|s| (!s.has(p.author, p.time)).then(|| p.encode()))
                .unwrap();
        }
        let all = last_posts(&path, 100, |_| true, |_| false).unwrap().posts;
        assert_eq!(all, vec![p]);
    }

    use crate::storage::{read_at_most, read_from};
    use std::io::Write;

    fn append_raw(path: &Path, bytes: &[u8]) {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }

    fn texts(posts: &[Post]) -> Vec<&str> {
        posts.iter().map(|p| p.text.as_str()).collect()
    }

    fn followed(f: &mut Follower) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let got = f.read(1 << 20).unwrap().expect("not replaced");
            out.extend(
                got.records
                    .iter()
                    .filter_map(|(_, r)| Post::decode(r))
                    .map(|p| p.text),
            );
            if !got.more {
                return out;
            }
        }
    }

    /// A record with a 5 MiB text: too long to be valid, so every reader
    /// reports and skips it and goes on with the next record.
    #[test]
    fn a_five_mib_text_is_skipped_by_every_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u1_timeline.txt");
        let huge = post(2, 2000, &"x".repeat(5 << 20)).encode();
        let body = format!(
            "{}{huge}{}",
            post(2, 1000, "before").encode(),
            post(3, 3000, "after").encode()
        );
        std::fs::write(&path, &body).unwrap();

        let mut t: Tail<AuthorClock> = Tail::new(path.clone());
        t.refresh().unwrap();
        assert_eq!(t.state.latest(2), 1000, "the long post is not counted");
        assert_eq!(t.state.latest(3), 3000);

        let mut f = Follower::new(path.clone(), 0);
        assert_eq!(followed(&mut f), ["before", "after"]);

        // Backwards, the scan skips it: every valid post is shown.
        let last = last_posts(&path, 20, |_| true, |_| false).unwrap();
        assert_eq!(texts(&last.posts), ["before", "after"]);
        assert_eq!(last.end, body.len() as u64);

        // The synchronizer's reads: whole records up to it, past it, after it.
        let (bytes, end) = read_from(&path, 0).unwrap();
        assert_eq!(bytes, post(2, 1000, "before").encode().as_bytes());
        let (bytes, end) = read_at_most(&path, end, 1 << 20).unwrap();
        assert!(bytes.is_empty());
        let (bytes, end) = read_from(&path, end).unwrap();
        assert_eq!(bytes, post(3, 3000, "after").encode().as_bytes());
        assert_eq!(end, body.len() as u64);
    }

    /// 50 MiB without a terminator at the end of a timeline: read once, in
    /// chunks, never held; cut by the next appender; what follows it, if it
    /// ends after all, is read.
    #[test]
    fn a_fifty_mib_unterminated_tail_is_read_once_and_cut_by_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u1_timeline.txt");
        let first = post(2, 1000, "before").encode();
        std::fs::write(&path, &first).unwrap();
        let junk = vec![b'j'; 50 << 20];
        append_raw(&path, &junk);
        let len = std::fs::metadata(&path).unwrap().len();

        let mut t: Tail<AuthorClock> = Tail::new(path.clone());
        t.refresh().unwrap();
        assert_eq!(t.state.latest(2), 1000);
        assert_eq!(t.scan.position(), len, "read to the end");
        assert!(t.scan.skipping());
        assert_eq!(t.scan.boundary(), first.len() as u64);
        // Nothing new: not read again.
        t.refresh().unwrap();

        let mut f = Follower::new(path.clone(), 0);
        assert_eq!(followed(&mut f), ["before"]);
        assert!(
            followed(&mut f).is_empty(),
            "nothing new, nothing read again"
        );

        // The backward scan passes it once to the post before it; a stream
        // follows from the end of that post (its scanner skips the tail).
        let last = last_posts(&path, 20, |_| true, |_| false).unwrap();
        assert_eq!(texts(&last.posts), ["before"]);
        assert_eq!(last.end, first.len() as u64);
        // Nor do the synchronizer's reads take it (it may be a torn tail).
        let at = first.len() as u64;
        assert_eq!(read_at_most(&path, at, 1 << 20).unwrap(), (Vec::new(), at));

        // It ends after all, and a post follows: every reader goes on.
        let mut g = Follower::new(path.clone(), len);
        append_raw(
            &path,
            format!("\n\n{}", post(3, 3000, "after").encode()).as_bytes(),
        );
        assert_eq!(followed(&mut f), ["after"]);
        t.refresh().unwrap();
        assert_eq!(t.state.latest(3), 3000);
        // (A follower that started at the end sees the end of the long record
        // first, and skips it as malformed.)
        assert_eq!(followed(&mut g), ["after"]);
        assert_eq!(
            read_at_most(&path, at, 1 << 20).unwrap().0,
            Vec::<u8>::new()
        );
        let (_, past) = read_at_most(&path, at, 1 << 20).unwrap();
        assert_eq!(
            read_from(&path, past).unwrap().0,
            post(3, 3000, "after").encode().as_bytes()
        );
    }

    #[test]
    fn an_appender_cuts_an_unterminated_tail_and_readers_start_over_where_needed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u1_timeline.txt");
        let first = post(2, 1000, "before").encode();
        std::fs::write(&path, &first).unwrap();
        append_raw(&path, &vec![b'j'; 4 << 20]);
        let len = std::fs::metadata(&path).unwrap().len();
        let mut f = Follower::new(path.clone(), 0);
        assert_eq!(followed(&mut f), ["before"]);
        // A stream that opened now starts at the end (last_posts).
        let mut late = Follower::new(path.clone(), len);

        let mut t: Tail<AuthorClock> = Tail::new(path.clone());
        let p = post(3, 3000, "after");
        t.append_with(|_| Some(p.encode())).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            format!("{first}{}", p.encode()).as_bytes(),
            "the long tail was cut"
        );
        assert_eq!(t.state.latest(2), 1000);
        // The follower that was before it reads on; the one past it is told
        // to start over.
        assert_eq!(followed(&mut f), ["after"]);
        assert!(late.read(1 << 20).unwrap().is_none());
    }

    #[test]
    fn malformed_lines_are_skipped_and_the_rest_folded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("all_users.txt");
        let long = "9".repeat(100);
        std::fs::write(&path, format!("1\n+2\n 3\n4 \n0\n05\n{long}\n6\n")).unwrap();
        let mut t: Tail<UserSet> = Tail::new(path.clone());
        t.refresh().unwrap();
        assert_eq!(t.state.0.iter().copied().collect::<Vec<_>>(), vec![1, 6]);
    }

    /// The same events folded into a small log and into one made large
    /// from the start answer every question alike.
    #[test]
    fn small_and_large_follow_logs_agree() {
        let mut small = FollowLog::default();
        let mut large = FollowLog(Log::Large(HashMap::new()));
        // A deterministic shuffle of users 1..=9 and times, with repeats,
        // late events and the same time twice.
        let mut x: u64 = 7;
        for _ in 0..60 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let e = Event {
                user: 1 + (x >> 60) % 9,
                time: ((x >> 20) % 40) as Nanos,
                follow: !(x >> 33).is_multiple_of(3),
            };
            small.fold(e);
            large.fold(e);
        }
        assert!(matches!(small.0, Log::Small(_)));
        let sorted = |l: &FollowLog| {
            let mut v: Vec<_> = l.events().collect();
            v.sort_by_key(|e| (e.0, e.1));
            v
        };
        assert_eq!(sorted(&small), sorted(&large));
        assert_eq!(small.current(), large.current());
        assert_eq!(small.max_time(), large.max_time());
        let users = |l: &FollowLog| l.users().collect::<BTreeSet<_>>();
        assert_eq!(users(&small), users(&large));
        for u in 0..11 {
            assert_eq!(small.since(u), large.since(u), "user {u}");
            for t in -1..42 {
                assert_eq!(small.at(u, t), large.at(u, t), "user {u} at {t}");
                assert_eq!(small.has(u, t), large.has(u, t), "user {u} has {t}");
            }
        }
        // Past SMALL events a log becomes a map, and keeps them all.
        let mut log = FollowLog::default();
        for u in 0..(FollowLog::SMALL as u64 + 10) {
            log.fold(Event {
                user: u,
                time: 1,
                follow: true,
            });
        }
        assert!(matches!(log.0, Log::Large(_)));
        assert_eq!(log.current().len(), FollowLog::SMALL + 10);
    }

    #[test]
    fn follow_log_history() {
        let mut log = FollowLog::default();
        // 4: a late event before the first, and the first again (a
        // duplicate): one inline event becomes two, in time order.
        for e in [
            (2, true, 10),
            (2, false, 20),
            (2, true, 30),
            (3, true, 5),
            (4, true, 50),
            (4, false, 40),
            (4, true, 50),
        ] {
            log.apply(
                FollowEvent {
                    user: e.0,
                    follow: e.1,
                    time: e.2,
                }
                .encode()
                .trim_end()
                .as_bytes(),
            )
            .unwrap();
        }
        assert!(log.at(2, 15));
        assert!(!log.at(2, 25));
        assert!(log.at(2, 31));
        assert!(!log.at(2, 10));
        assert_eq!(log.since(2), Some(30));
        assert!(log.has(4, 40) && !log.at(4, 45) && log.at(4, 51));
        assert_eq!(log.since(4), Some(50));
        assert_eq!(log.events().filter(|e| e.0 == 4).count(), 2);
        assert_eq!(log.max_time(), 50);
        assert_eq!(log.current().into_iter().collect::<Vec<_>>(), vec![2, 3, 4]);
    }
}
