//! The data on disk: plain, append-only text files that a person can `cat`.
//!
//! # Files
//! A server's directory holds, per SPEC §3:
//!
//! | file | format | written by |
//! |---|---|---|
//! | `all_users.txt` | one user id a line | server (local users), synchronizer (remote) |
//! | `u<id>_posts.txt` | post records | server (the user's own posts) |
//! | `u<id>_timeline.txt` | post records | server (local authors), synchronizer (remote) |
//! | `u<id>_following.txt` | follow events | server |
//! | `u<id>_followers.txt` | follow events | server (local followers), synchronizer (remote) |
//!
//! A post record is `T <rfc3339>\nU <author>\nW <text>\n\n`. A follow event is
//! one line, `+ <user> <rfc3339>` (started following) or `- <user> <rfc3339>`
//! (stopped); the current set is the fold of the events, and `(user, time)`
//! identifies an event. Nothing is ever rewritten: an unfollow is an event.
//!
//! # Invariants
//! * **Whole records.** Every append is one `write` of whole records, made while
//!   holding an exclusive `flock` on the file. Before writing, the appender
//!   checks that the file ends on a record boundary and cuts off a torn tail (a
//!   record cut short by a crash), so a torn record is never followed by a good
//!   one. Start-up repairs every file the same way ([`repair_dir`]).
//! * **Readers never see half a record.** They take a shared lock, and a reader
//!   that runs into an incomplete last record stops before it.
//! * **Check and append are atomic across processes.** [`Tail::append_with`]
//!   refreshes its view of the file and decides what to write while holding the
//!   exclusive lock, so the server and the synchronizer, which both append to
//!   some files, can never both add the same record.
//! * **Incremental.** A [`Tail`] remembers the offset it has read up to and only
//!   ever reads what was appended since: its cost grows with what changed, not
//!   with history. A file that shrank (deleted and rebuilt) is read again from
//!   the start.

pub mod journal;
pub mod store;
pub mod watch;

use crate::timefmt::{self, Nanos};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// How records end in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One record a line.
    Lines,
    /// Multi-line records, each followed by an empty line.
    Records,
}

impl Format {
    pub fn terminator(self) -> &'static [u8] {
        match self {
            Format::Lines => b"\n",
            Format::Records => b"\n\n",
        }
    }

    /// The format of a file, from its name.
    pub fn of(path: &Path) -> Format {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with("_timeline.txt") || name.ends_with("_posts.txt") {
            Format::Records
        } else {
            Format::Lines
        }
    }
}

pub const USERS_FILE: &str = "all_users.txt";

pub fn users_file(dir: &Path) -> PathBuf {
    dir.join(USERS_FILE)
}
pub fn timeline_file(dir: &Path, user: u64) -> PathBuf {
    dir.join(format!("u{user}_timeline.txt"))
}
pub fn posts_file(dir: &Path, user: u64) -> PathBuf {
    dir.join(format!("u{user}_posts.txt"))
}
pub fn followers_file(dir: &Path, user: u64) -> PathBuf {
    dir.join(format!("u{user}_followers.txt"))
}
pub fn following_file(dir: &Path, user: u64) -> PathBuf {
    dir.join(format!("u{user}_following.txt"))
}

/// What a data file holds, parsed from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    Users,
    Posts(u64),
    Timeline(u64),
    Following(u64),
    Followers(u64),
}

impl FileKind {
    pub fn parse(path: &Path) -> Option<FileKind> {
        let name = path.file_name()?.to_str()?;
        if name == USERS_FILE {
            return Some(FileKind::Users);
        }
        let rest = name.strip_prefix('u')?.strip_suffix(".txt")?;
        let (id, kind) = rest.split_once('_')?;
        let id = crate::config::parse_user(id)?;
        match kind {
            "posts" => Some(FileKind::Posts(id)),
            "timeline" => Some(FileKind::Timeline(id)),
            "following" => Some(FileKind::Following(id)),
            "followers" => Some(FileKind::Followers(id)),
            _ => None,
        }
    }

    /// The file of this kind in `dir`.
    pub fn path(self, dir: &Path) -> PathBuf {
        match self {
            FileKind::Users => users_file(dir),
            FileKind::Posts(u) => posts_file(dir, u),
            FileKind::Timeline(u) => timeline_file(dir, u),
            FileKind::Following(u) => following_file(dir, u),
            FileKind::Followers(u) => followers_file(dir, u),
        }
    }
}

/// Flushes a directory's entries (new, renamed and removed files) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Every data file of a directory (not the journal or the gate).
pub fn data_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        if FileKind::parse(&path).is_some() {
            out.push(path);
        }
    }
    Ok(out)
}

/// Flushes the data of each file to disk (`fdatasync`). A file that is gone
/// (its directory was reset) has nothing left to flush.
pub fn sync_files(paths: &[PathBuf]) -> io::Result<()> {
    for p in paths {
        match File::open(p) {
            Ok(f) => f.sync_data()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Records

/// One post; `(author, time)` identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    pub author: u64,
    pub time: Nanos,
    pub text: String,
}

impl Post {
    pub fn encode(&self) -> String {
        format!(
            "T {}\nU {}\nW {}\n\n",
            timefmt::to_rfc3339(self.time),
            self.author,
            self.text
        )
    }

    /// Parses one record (without its terminator). `None` for a malformed one.
    pub fn decode(record: &[u8]) -> Option<Post> {
        let text = std::str::from_utf8(record).ok()?;
        let mut lines = text.split('\n');
        let t = timefmt::from_rfc3339(lines.next()?.strip_prefix("T ")?)?;
        let u = crate::config::parse_user(lines.next()?.strip_prefix("U ")?)?;
        let w = lines.next()?.strip_prefix("W ")?;
        if lines.next().is_some() {
            return None;
        }
        Some(Post {
            author: u,
            time: t,
            text: w.to_string(),
        })
    }
}

/// One follow or unfollow event in a `_following` or `_followers` file: `user`
/// is the other side of the relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowEvent {
    pub user: u64,
    pub follow: bool,
    pub time: Nanos,
}

impl FollowEvent {
    pub fn encode(&self) -> String {
        format!(
            "{} {} {}\n",
            if self.follow { '+' } else { '-' },
            self.user,
            timefmt::to_rfc3339(self.time)
        )
    }

    pub fn decode(record: &[u8]) -> Option<FollowEvent> {
        let text = std::str::from_utf8(record).ok()?;
        let mut parts = text.split(' ');
        let follow = match parts.next()? {
            "+" => true,
            "-" => false,
            _ => return None,
        };
        let user = crate::config::parse_user(parts.next()?)?;
        let time = timefmt::from_rfc3339(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(FollowEvent { user, follow, time })
    }
}

/// Splits `bytes` into complete records (without terminators); returns them
/// and the number of bytes they span. An incomplete tail is not returned.
pub fn split_records(bytes: &[u8], format: Format) -> (Vec<&[u8]>, usize) {
    let term = format.terminator();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + term.len() <= bytes.len() {
        if &bytes[i..i + term.len()] == term {
            out.push(&bytes[start..i]);
            i += term.len();
            start = i;
        } else {
            i += 1;
        }
    }
    (out, start)
}

// ---------------------------------------------------------------------------
// Locked file access

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
}

/// Opens `path` for reading with a shared lock held; `None` if it does not exist.
fn open_shared(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => {
            f.lock_shared()?;
            Ok(Some(f))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Offset just past the last complete record of a file of length `len`,
/// scanning backwards from the end.
fn last_boundary(f: &mut File, len: u64, format: Format) -> io::Result<u64> {
    let term = format.terminator();
    let mut end = len;
    let mut carry: Vec<u8> = Vec::new();
    while end > 0 {
        let start = end.saturating_sub(4096);
        let mut buf = vec![0u8; (end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf)?;
        buf.extend_from_slice(&carry);
        // Search from the end of this window (which includes the carried
        // prefix of the previous window) for the last terminator.
        if let Some(pos) = buf
            .windows(term.len())
            .rposition(|w| w == term)
            .map(|p| start + (p + term.len()) as u64)
            && pos <= len
        {
            return Ok(pos);
        }
        carry = buf[..term.len().saturating_sub(1).min(buf.len())].to_vec();
        end = start;
    }
    Ok(0)
}

/// The end of the last whole record of `path` within `[from, to)` (`from`
/// if there is none), found by reading backwards from `to`.
pub fn records_end(path: &Path, from: u64, to: u64) -> io::Result<u64> {
    if to <= from {
        return Ok(from);
    }
    let mut f = File::open(path)?;
    Ok(last_boundary(&mut f, to, Format::of(path))?.max(from))
}

/// Cuts a torn last record off `path`; returns how many bytes were cut.
pub fn repair(path: &Path) -> io::Result<u64> {
    let format = Format::of(path);
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    f.lock()?;
    let cut = repair_locked(&mut f, format)?;
    f.unlock()?;
    Ok(cut)
}

fn repair_locked(f: &mut File, format: Format) -> io::Result<u64> {
    let len = f.metadata()?.len();
    if len == 0 || ends_with(f, len, format.terminator())? {
        return Ok(0);
    }
    let keep = last_boundary(f, len, format)?;
    f.set_len(keep)?;
    Ok(len - keep)
}

fn ends_with(f: &mut File, len: u64, term: &[u8]) -> io::Result<bool> {
    let n = term.len() as u64;
    if len < n {
        return Ok(false);
    }
    let mut buf = vec![0u8; term.len()];
    f.seek(SeekFrom::Start(len - n))?;
    f.read_exact(&mut buf)?;
    Ok(buf == term)
}

/// Repairs every data file in `dir` (start-up). Returns the files that had a
/// torn record.
pub fn repair_dir(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut repaired = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        // Data files only: the journal has a format and a repair of its own.
        if FileKind::parse(&path).is_some() && path.is_file() && repair(&path)? > 0 {
            repaired.push(path);
        }
    }
    Ok(repaired)
}

/// Reads the complete records from `offset` to the end under a shared lock.
/// Returns the bytes and the offset just past the last complete record.
pub fn read_from(path: &Path, offset: u64) -> io::Result<(Vec<u8>, u64)> {
    read_at_most(path, offset, u64::MAX)
}

/// Like [`read_from`], but reads at most about `limit` bytes (always at least
/// one whole record if there is one).
pub fn read_at_most(path: &Path, offset: u64, limit: u64) -> io::Result<(Vec<u8>, u64)> {
    let Some(mut f) = open_shared(path)? else {
        return Ok((Vec::new(), 0));
    };
    let len = f.metadata()?.len();
    let len = if len.saturating_sub(offset) > limit {
        // Extend the window until it holds a whole record.
        let mut end = offset.saturating_add(limit);
        loop {
            let (bytes, _) = read_window(&mut f, offset, end)?;
            if split_records(&bytes, Format::of(path)).1 > 0 || end >= len {
                break end.min(len);
            }
            end = end.saturating_add(limit).min(len);
        }
    } else {
        len
    };
    if len <= offset {
        return Ok((Vec::new(), len.min(offset)));
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity((len - offset) as usize);
    (&mut f).take(len - offset).read_to_end(&mut buf)?;
    let (_, used) = split_records(&buf, Format::of(path));
    buf.truncate(used);
    Ok((buf, offset + used as u64))
}

/// The last records of a file, oldest first, reading backwards from its end so
/// that the cost does not depend on the file's length. Records for which
/// `keep` returns false are skipped and not counted. `stop` ends the scan at
/// the first record (from the end) for which it returns true, without
/// counting it.
pub fn last_posts(
    path: &Path,
    n: usize,
    mut keep: impl FnMut(&Post) -> bool,
    mut stop: impl FnMut(&Post) -> bool,
) -> io::Result<LastPosts> {
    let Some(mut f) = open_shared(path)? else {
        return Ok(LastPosts::default());
    };
    let len = f.metadata()?.len();
    let end = last_boundary(&mut f, len, Format::Records)?;
    let mut out = Vec::new();
    let mut hi = end; // records in [.., hi) not yet parsed
    let mut window: Vec<u8> = Vec::new(); // bytes [lo, hi)
    let mut lo = hi;
    'scan: while out.len() < n && hi > 0 {
        // Grow the window backwards until it holds at least one whole record
        // before `hi` (or reaches the start of the file).
        let new_lo = lo.saturating_sub(8192);
        let mut buf = vec![0u8; (lo - new_lo) as usize];
        f.seek(SeekFrom::Start(new_lo))?;
        f.read_exact(&mut buf)?;
        buf.extend_from_slice(&window);
        window = buf;
        lo = new_lo;
        loop {
            // The record ending at `hi` starts after the previous terminator.
            let rel_hi = (hi - lo) as usize;
            if rel_hi < 2 {
                break;
            }
            let body_end = rel_hi - 2; // strip "\n\n"
            let start = window[..body_end]
                .windows(2)
                .rposition(|w| w == b"\n\n")
                .map(|p| p + 2);
            let start = match start {
                Some(s) => s,
                None if lo == 0 => 0,
                None => break, // need more bytes
            };
            match Post::decode(&window[start..body_end]) {
                Some(p) => {
                    if stop(&p) {
                        break 'scan;
                    }
                    if keep(&p) {
                        out.push(p);
                    }
                }
                None => log::warn!("{}: skipping a malformed record", path.display()),
            }
            hi = lo + start as u64;
            window.truncate(start);
            if out.len() >= n || hi == 0 {
                break 'scan;
            }
        }
    }
    out.reverse();
    Ok(LastPosts {
        posts: out,
        start: hi,
        end,
    })
}

/// What [`last_posts`] found.
#[derive(Debug, Default)]
pub struct LastPosts {
    /// The posts kept, oldest first.
    pub posts: Vec<Post>,
    /// Offset of the earliest record scanned (kept or not); the record that
    /// stopped the scan ends here.
    pub start: u64,
    /// Offset just past the last complete record.
    pub end: u64,
}

/// The offset of the first post in `path` whose time is after `after`,
/// scanning back from the end (cheap when `after` is recent).
pub fn offset_after(path: &Path, after: Nanos) -> io::Result<u64> {
    Ok(last_posts(path, usize::MAX, |_| false, |p| p.time <= after)?.start)
}

fn read_window(f: &mut File, from: u64, to: u64) -> io::Result<(Vec<u8>, u64)> {
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::with_capacity((to - from) as usize);
    (&mut *f).take(to - from).read_to_end(&mut buf)?;
    Ok((buf, to))
}

// ---------------------------------------------------------------------------
// Incremental views

/// A state folded from a file's records.
pub trait Fold: Default {
    fn apply(&mut self, record: &[u8]);
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
    offset: u64,
    /// The file's inode when last read: a file replaced by a resync is a new
    /// file, to be read from the start.
    ino: Option<u64>,
    pending: VecDeque<String>,
    pub state: S,
}

impl<S: Fold> Tail<S> {
    pub fn new(path: PathBuf) -> Self {
        let format = Format::of(&path);
        Tail {
            path,
            format,
            offset: 0,
            ino: None,
            pending: VecDeque::new(),
            state: S::default(),
        }
    }

    /// Whether the file changed identity or shrank since we read it.
    fn replaced(&self, len: u64, ino: u64) -> bool {
        len < self.offset || self.ino.is_some_and(|i| i != ino)
    }

    /// Reads what was appended since the last call.
    pub fn refresh(&mut self) -> io::Result<()> {
        let (len, ino) = match std::fs::metadata(&self.path) {
            Ok(m) => (m.len(), m.ino()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (0, 0),
            Err(e) => return Err(e),
        };
        if self.replaced(len, ino) {
            self.reset();
        }
        if len == self.offset {
            return Ok(());
        }
        let Some(mut f) = open_shared(&self.path)? else {
            return Ok(());
        };
        let meta = f.metadata()?;
        if self.replaced(meta.len(), meta.ino()) {
            self.reset();
        }
        self.ino = Some(meta.ino());
        self.read_rest(&mut f, meta.len(), false)?;
        Ok(())
    }

    /// Reads `[offset, len)` from `f` and folds its complete records; with
    /// `all`, the caller holds the exclusive lock and the range is whole.
    fn read_rest(&mut self, f: &mut File, len: u64, all: bool) -> io::Result<()> {
        if len <= self.offset {
            return Ok(());
        }
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::with_capacity((len - self.offset) as usize);
        (&mut *f).take(len - self.offset).read_to_end(&mut buf)?;
        let used = if all {
            buf.len()
        } else {
            split_records(&buf, self.format).1
        };
        self.fold_bytes(&buf[..used]);
        self.offset += used as u64;
        Ok(())
    }

    /// Forgets what was read (the file was replaced); staged records stay
    /// staged and folded.
    fn reset(&mut self) {
        self.offset = 0;
        self.ino = None;
        self.state = S::default();
        let pending: Vec<String> = self.pending.iter().cloned().collect();
        for r in pending {
            self.fold_bytes(r.as_bytes());
        }
    }

    fn fold_bytes(&mut self, bytes: &[u8]) {
        let (records, _) = split_records(bytes, self.format);
        for r in records {
            self.state.apply(r);
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

    /// Writes the first `n` staged records, in one append.
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
        let mut f = open_append(&self.path)?;
        f.lock()?;
        let result = (|| {
            let meta = f.metadata()?;
            // The common case: the file is the one we know and ends where we
            // last read or wrote, at a record boundary. Otherwise someone
            // else appended (or a writer crashed), and since nobody else can
            // be writing now, an incomplete tail is torn: cut it.
            let known = self.ino == Some(meta.ino()) && meta.len() == self.offset;
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
        let value = result?;
        unlocked?;
        Ok(value)
    }

    fn write_locked(&mut self, f: &mut File, bytes: &[u8]) -> io::Result<()> {
        debug_assert!(bytes.ends_with(self.format.terminator()));
        f.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The directory gate

/// Name of the lock file that gates writers of a server directory.
pub const GATE_FILE: &str = "writers.lock";

/// Takes the directory's gate shared, without waiting: writers other than the
/// server itself (the synchronizer) hold it while they write. `None` when the
/// server holds it exclusively (it is being rebuilt by a resync) or the
/// directory is gone.
pub fn try_enter_dir(dir: &Path) -> io::Result<Option<File>> {
    let f = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(GATE_FILE))
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match f.try_lock_shared() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Takes the directory's gate exclusively, waiting for writers inside to
/// finish. Held by a server while it rebuilds its directory; released when
/// the returned file is dropped.
pub fn close_dir(dir: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(GATE_FILE))?;
    f.lock()?;
    Ok(f)
}

/// A hash of the first `len` bytes of a file (resync compares a slave's copy
/// with a prefix of the master's). Not cryptographic: it detects divergence
/// caused by crashes, not malice.
pub fn content_hash(path: &Path, len: u64) -> io::Result<u64> {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    let mut f = File::open(path)?;
    let mut left = len;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than expected",
            ));
        }
        h.write(&buf[..n]);
        left -= n as u64;
    }
    Ok(h.finish())
}

/// `all_users.txt`: the set of users.
#[derive(Debug, Default)]
pub struct UserSet(pub BTreeSet<u64>);

impl Fold for UserSet {
    fn apply(&mut self, record: &[u8]) {
        match std::str::from_utf8(record)
            .ok()
            .and_then(crate::config::parse_user)
        {
            Some(u) => {
                self.0.insert(u);
            }
            None => log::warn!("skipping a malformed user line"),
        }
    }
}

/// A `_following` or `_followers` file: every event per other user, in time
/// order.
#[derive(Debug, Default, Clone)]
pub struct FollowLog {
    events: HashMap<u64, Vec<(Nanos, bool)>>,
}

impl Fold for FollowLog {
    fn apply(&mut self, record: &[u8]) {
        match FollowEvent::decode(record) {
            Some(e) => {
                let v = self.events.entry(e.user).or_default();
                // Events arrive in time order per user; keep it sorted anyway
                // so that a late one (from another cluster) folds correctly.
                let pos = v.partition_point(|(t, _)| *t <= e.time);
                if pos == 0 || v[pos - 1] != (e.time, e.follow) {
                    v.insert(pos, (e.time, e.follow));
                }
            }
            None => log::warn!("skipping a malformed follow line"),
        }
    }
}

impl FollowLog {
    /// The users currently in the relation, ascending.
    pub fn current(&self) -> BTreeSet<u64> {
        self.events
            .iter()
            .filter(|(_, v)| v.last().is_some_and(|(_, f)| *f))
            .map(|(u, _)| *u)
            .collect()
    }

    pub fn contains(&self, user: u64) -> bool {
        self.since(user).is_some()
    }

    /// When the current follow of `user` started, if it is current.
    pub fn since(&self, user: u64) -> Option<Nanos> {
        match self.events.get(&user)?.last()? {
            (t, true) => Some(*t),
            _ => None,
        }
    }

    /// Whether `user` was in the relation at time `t`.
    pub fn at(&self, user: u64, t: Nanos) -> bool {
        let Some(v) = self.events.get(&user) else {
            return false;
        };
        let pos = v.partition_point(|(et, _)| *et < t);
        pos > 0 && v[pos - 1].1
    }

    /// Whether this exact event is already recorded.
    pub fn has(&self, user: u64, time: Nanos) -> bool {
        self.events
            .get(&user)
            .is_some_and(|v| v.iter().any(|(t, _)| *t == time))
    }

    /// Every event: `(user, time, follow)`.
    pub fn events(&self) -> impl Iterator<Item = (u64, Nanos, bool)> + '_ {
        self.events
            .iter()
            .flat_map(|(u, v)| v.iter().map(move |(t, f)| (*u, *t, *f)))
    }

    /// Every user with at least one event.
    pub fn users(&self) -> impl Iterator<Item = u64> + '_ {
        self.events.keys().copied()
    }

    /// The latest event time, over all users.
    pub fn max_time(&self) -> Nanos {
        self.events
            .values()
            .filter_map(|v| v.last().map(|(t, _)| *t))
            .max()
            .unwrap_or(0)
    }
}

/// A posts or timeline file: the latest post time per author. Posts of one
/// author are appended in time order, so a post is already present exactly
/// when its time is not after its author's latest.
#[derive(Debug, Default)]
pub struct AuthorClock(pub HashMap<u64, Nanos>);

impl Fold for AuthorClock {
    fn apply(&mut self, record: &[u8]) {
        match Post::decode(record) {
            Some(p) => {
                let t = self.0.entry(p.author).or_insert(p.time);
                *t = (*t).max(p.time);
            }
            None => log::warn!("skipping a malformed post record"),
        }
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

    fn post(author: u64, time: Nanos, text: &str) -> Post {
        Post {
            author,
            time,
            text: text.into(),
        }
    }

    #[test]
    fn records_round_trip() {
        let p = post(2, 1_795_457_407_123_456_789, "hello world");
        let enc = p.encode();
        assert_eq!(
            enc,
            "T 2026-11-23T18:10:07.123456789Z\nU 2\nW hello world\n\n"
        );
        assert_eq!(Post::decode(&enc.as_bytes()[..enc.len() - 2]), Some(p));
        let e = FollowEvent {
            user: 3,
            follow: false,
            time: 5,
        };
        let enc = e.encode();
        assert_eq!(
            FollowEvent::decode(&enc.as_bytes()[..enc.len() - 1]),
            Some(e)
        );
        assert_eq!(Post::decode(b"garbage"), None);
        assert_eq!(FollowEvent::decode(b"* 1 x"), None);
    }

    #[test]
    fn file_kinds() {
        assert_eq!(
            FileKind::parse(Path::new("/a/u12_timeline.txt")),
            Some(FileKind::Timeline(12))
        );
        assert_eq!(
            FileKind::parse(Path::new("all_users.txt")),
            Some(FileKind::Users)
        );
        assert_eq!(FileKind::parse(Path::new("u0_posts.txt")), None);
        assert_eq!(FileKind::parse(Path::new("u1_other.txt")), None);
    }

    /// Truncates a file of three posts at every byte: a repair keeps exactly
    /// the whole records before the cut, and appending afterwards yields a
    /// well-formed file.
    #[test]
    fn torn_record_cut_at_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u1_timeline.txt");
        let posts: Vec<Post> = (1..=3)
            .map(|i| post(i, i as i64 * 1000, "text é"))
            .collect();
        let full: String = posts.iter().map(Post::encode).collect();
        let bounds: Vec<usize> = posts
            .iter()
            .scan(0, |acc, p| {
                *acc += p.encode().len();
                Some(*acc)
            })
            .collect();
        for cut in 0..=full.len() {
            std::fs::write(&path, &full.as_bytes()[..cut]).unwrap();
            repair(&path).unwrap();
            let kept = bounds.iter().filter(|b| **b <= cut).count();
            let data = std::fs::read(&path).unwrap();
            assert_eq!(
                data.len(),
                if kept == 0 { 0 } else { bounds[kept - 1] },
                "cut {cut}"
            );
            let mut tail: Tail<AuthorClock> = Tail::new(path.clone());
            tail.append_with(|_| Some(post(9, 9, "after").encode()))
                .unwrap();
            let last = last_posts(&path, 10, |_| true, |_| false).unwrap().posts;
            assert_eq!(last.len(), kept + 1, "cut {cut}");
            assert_eq!(last[..kept], posts[..kept]);
        }
    }

    #[test]
    fn lines_repair_and_users() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("all_users.txt");
        std::fs::write(&path, "1\n2\n3").unwrap();
        assert_eq!(repair(&path).unwrap(), 1);
        let mut t: Tail<UserSet> = Tail::new(path.clone());
        t.refresh().unwrap();
        assert_eq!(t.state.0.iter().copied().collect::<Vec<_>>(), vec![1, 2]);
    }

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

    #[test]
    fn last_posts_reads_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u1_timeline.txt");
        let mut t: Tail<AuthorClock> = Tail::new(path.clone());
        for i in 1..=1000 {
            let p = post(1 + i % 3, i as i64, &format!("post number {i}"));
            t.append_with(|_| Some(p.encode())).unwrap();
        }
        // a torn tail is ignored by readers
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"T 2026")
            .unwrap();
        let last = last_posts(&path, 20, |_| true, |_| false).unwrap().posts;
        assert_eq!(last.len(), 20);
        assert_eq!(last[0].time, 981);
        assert_eq!(last[19].time, 1000);
        let only2 = last_posts(&path, 5, |p| p.author == 2, |_| false)
            .unwrap()
            .posts;
        assert!(only2.iter().all(|p| p.author == 2));
        assert_eq!(only2.len(), 5);
        repair(&path).unwrap();
        let off = offset_after(&path, 990).unwrap();
        let (rest, _) = read_from(&path, off).unwrap();
        let (recs, _) = split_records(&rest, Format::Records);
        assert_eq!(recs.len(), 10);
        assert_eq!(
            offset_after(&path, 5000).unwrap(),
            std::fs::metadata(&path).unwrap().len()
        );
    }

    #[test]
    fn follow_log_history() {
        let mut log = FollowLog::default();
        for e in [(2, true, 10), (2, false, 20), (2, true, 30), (3, true, 5)] {
            log.apply(
                FollowEvent {
                    user: e.0,
                    follow: e.1,
                    time: e.2,
                }
                .encode()
                .trim_end()
                .as_bytes(),
            );
        }
        assert!(log.at(2, 15));
        assert!(!log.at(2, 25));
        assert!(log.at(2, 31));
        assert!(!log.at(2, 10));
        assert_eq!(log.since(2), Some(30));
        assert_eq!(log.current().into_iter().collect::<Vec<_>>(), vec![2, 3]);
    }
}
