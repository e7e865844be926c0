//! The write-ahead journal: how an acknowledged write is on disk at the cost
//! of one `fdatasync` per batch.
//!
//! A batch of client writes touches many files (the author's posts file and
//! the timeline of every local follower). Flushing each of them before the
//! answer would cost one `fdatasync` per file (about 0.25 ms each here), and
//! a batch of 64 posters would wait for 64 of them. Instead, with durability
//! on (`SNS_FSYNC`, the default), a server writes the batch's operations to
//! one append-only file, `journal.txt`, and flushes that file once; the data
//! files are written as before and reach the disk in the background. Every
//! operation in the batch shares that one flush: this is the group commit.
//!
//! # Invariants
//! * An operation is acknowledged (by the master to its client, by a slave to
//!   its master) only after it is in the journal and the journal is flushed.
//! * Every operation in the journal is, or will be after replay, in the data
//!   files. The journal is emptied only after a *checkpoint*: every data file
//!   written since the last one has been flushed.
//! * Replay is [`Store::apply`](crate::storage::store::Store::apply), which is
//!   idempotent: after a process crash (the page cache survives) replay writes
//!   nothing; after a machine crash it re-appends what the disk lost.
//!
//! The journal is plain text, one operation a line, so `cat` shows it:
//!
//! ```text
//! A 4                                  a new user
//! F 4 1 1763921407123456789 + 77       user 4 follows 1 (time, request id)
//! P 1 1763921407123456790 912 hello    a post by 1 (time, post id, text)
//! C                                    everything above is decided
//! ```
//!
//! A line without its newline was cut by a crash before it was flushed, so
//! nobody was told it was stored: replay ignores it.
//!
//! # Decided and undecided operations
//! The master journals a batch *while* the slave stores it, so a master
//! killed in between leaves a whole, flushed batch in its journal that the
//! slave may never have had and no client was told of. Replaying it as if
//! it were stored would make a write visible that may be lost (the slave,
//! promoted, never had it) and stored again (the client's retry reaches the
//! new master, which gives it a new time): a doubled post on every remote
//! screen. So a batch is *decided* only once the slave took it and the
//! lease held, and the master then appends the mark `C` (not flushed; the
//! next batch's flush takes it along). A slave journals only what it took,
//! with its mark in the same write. Replay ([`Replay`]) applies what is
//! decided. What follows the last mark (at most the batch in flight) is
//! never applied at start-up: a server that comes back as slave drops it
//! (its master has everything that was acknowledged), and one that comes
//! back as master owes it, so it is mirrored and written like any write,
//! under a lease, and then decided (it may have been acknowledged: a crash
//! of the machine can lose an unflushed mark; a retry of it waits for it
//! and is answered once it is stored). An abandoned batch is taken back
//! out ([`Journal::take_back`]), and if that fails, before anything else
//! is appended, so the mark of a later batch never decides it.
//!
//! # When writing the data files fails
//! The journal is also what finishes a write whose records could not all be
//! written to the data files (disk full, an I/O error): such an operation is
//! *owed*. It stays in the journal (with durability off, [`Journal::owe`]
//! writes it there), no checkpoint empties the journal while anything is
//! owed, and replay at start-up finishes it; a running server finishes it
//! earlier, as soon as the disk takes it
//! ([`crate::server::replication::mirror`]).
//!
//! # A damaged journal
//! The journal is read as a regular file only, never through a link, and
//! line by line (a line longer than any operation is skipped unread). A
//! journal that is not a regular file is moved aside (`journal.txt.damaged`)
//! and reported, and the server starts with an empty one: refusing to start
//! would stop every user of the cluster.

use crate::proto::tinysns::{AddUser, FollowOp, PostOp, WriteOp, write_op};
use crate::storage;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The journal's file name inside a server directory.
pub const JOURNAL_FILE: &str = "journal.txt";

/// Size past which the journal is checkpointed and emptied.
pub const CHECKPOINT_BYTES: u64 = 8 << 20;

/// The longest line an operation can have (a post of 255 bytes and three
/// numbers), with room to spare: a longer line is damage, skipped unread.
const MAX_LINE: usize = 1024;

/// What a journal holds at start-up.
#[derive(Debug, Default, PartialEq)]
pub struct Replay {
    /// Up to the last mark: acknowledged, or promised (the slave has it).
    pub decided: Vec<WriteOp>,
    /// After it: the batch a crash caught in flight, if any.
    pub undecided: Vec<WriteOp>,
}

/// The line that decides everything above it.
const MARK: &str = "C\n";

/// Where the journal stood before an append: [`Journal::take_back`] cuts
/// back to it, unless the journal was emptied since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    generation: u64,
    len: u64,
}

pub struct Journal {
    path: PathBuf,
    /// Counts the times it was emptied: a [`Mark`] from before is void.
    generation: u64,
    /// A take-back that failed: cut back to this before anything else is
    /// appended, so that an abandoned batch is never decided by the mark
    /// of a later one.
    cut_back: Option<u64>,
    /// The length up to the last mark ([`Journal::drop_undecided`]).
    decided_len: u64,
    /// Durability on: every batch is journaled and flushed.
    durable: bool,
    /// Open for appending; with durability off, only once something is owed.
    file: Option<File>,
    len: u64,
}

impl Journal {
    /// Every change of the journal's length goes through here, so that
    /// `sns_journal_bytes` always says it.
    fn set_len(&mut self, len: u64) {
        self.len = len;
        crate::ops::metrics::metrics()
            .journal_bytes
            .set(i64::try_from(len).unwrap_or(i64::MAX));
    }

    /// Opens the journal of `dir` and returns the operations to replay. With
    /// `enabled` false, returns a journal that records only what is owed
    /// (and still replays what an earlier run left).
    pub fn open(dir: &Path, enabled: bool) -> io::Result<(Journal, Replay)> {
        let path = dir.join(JOURNAL_FILE);
        let (ops, len, decided_len) = match storage::open_read(&path) {
            Ok(Some(f)) => {
                let read = decode_from(f, &path)?;
                if read.whole < read.len {
                    // Cut the torn line off: what is appended next (an owed
                    // operation kept across this run) must start a line.
                    storage::open_append(&path)?.set_len(read.whole)?;
                }
                (read.replay, read.whole, read.decided_len)
            }
            Ok(None) => (Replay::default(), 0, 0),
            Err(e) if storage::is_damaged(&e) => {
                let aside = storage::set_aside(&path)?;
                log::error!(
                    "{}: {e}; moved to {} and starting with an empty journal \
                     (what it held is not replayed)",
                    path.display(),
                    aside.display()
                );
                (Replay::default(), 0, 0)
            }
            Err(e) => return Err(e),
        };
        let file = if enabled {
            Some(storage::open_append(&path)?)
        } else {
            None
        };
        let mut journal = Journal {
            generation: 0,
            cut_back: None,
            len: 0,
            decided_len,
            path,
            durable: enabled,
            file,
        };
        journal.set_len(len);
        Ok((journal, ops))
    }

    pub fn enabled(&self) -> bool {
        self.durable
    }

    /// Appends `ops` in one write and flushes the journal: a master's
    /// batch, undecided until [`Journal::decide`].
    pub fn append(&mut self, ops: &[WriteOp]) -> io::Result<()> {
        if !self.durable {
            return Ok(());
        }
        self.write(ops, false, true)
    }

    /// Appends `ops` decided, in one write, and flushes the journal: what a
    /// slave took from its master.
    pub fn append_decided(&mut self, ops: &[WriteOp]) -> io::Result<()> {
        if !self.durable || ops.is_empty() {
            return Ok(());
        }
        self.write(ops, true, true)
    }

    /// Marks everything journaled so far as decided (the slave took it and
    /// the lease held), without a flush of its own: the next batch's flush
    /// takes the mark to disk. Before it is there, a crash of the machine
    /// may lose it, and replay treats the batch as undecided.
    pub fn decide(&mut self) -> io::Result<()> {
        if !self.durable || self.decided_len == self.len {
            return Ok(());
        }
        self.write(&[], true, false)
    }

    /// Takes what follows the last mark out of the journal: a server that
    /// came back as slave does not replay it (see the module doc).
    pub fn drop_undecided(&mut self) -> io::Result<()> {
        self.truncate_to(self.decided_len)
    }

    /// Records operations whose records could not all be written to the
    /// data files, so that a restart finishes them. With durability on,
    /// their batch is in the journal already; with it off they are written
    /// now, not flushed (like every write then: they survive a crash of
    /// the process, not of the machine).
    pub fn owe(&mut self, ops: &[WriteOp]) -> io::Result<()> {
        if self.durable || ops.is_empty() {
            return Ok(());
        }
        self.write(ops, true, false)
    }

    fn write(&mut self, ops: &[WriteOp], decided: bool, flush: bool) -> io::Result<()> {
        let mut text = String::new();
        for op in ops {
            encode(op, &mut text);
        }
        if decided {
            text.push_str(MARK);
        }
        if text.is_empty() {
            return Ok(());
        }
        if let Some(len) = self.cut_back {
            self.truncate_to(len)?;
            self.cut_back = None;
        }
        let f = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(storage::open_append(&self.path)?),
        };
        #[cfg(test)]
        let written = storage::faults::append(&self.path, f, text.as_bytes())
            .unwrap_or_else(|| f.write_all(text.as_bytes()));
        #[cfg(not(test))]
        let written = f.write_all(text.as_bytes());
        if let Err(e) = written.and_then(|_| if flush { f.sync_data() } else { Ok(()) }) {
            // A partial write would run into the next batch's first line
            // and make one bogus line of two: cut it off.
            let _ = f.set_len(self.len);
            return Err(e);
        }
        if flush {
            crate::ops::metrics::metrics().fsyncs.inc();
        }
        self.set_len(self.len + text.len() as u64);
        if decided {
            self.decided_len = self.len;
        }
        Ok(())
    }

    /// The journal's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Where it stands now, to take back what is appended next.
    pub fn mark(&self) -> Mark {
        Mark {
            generation: self.generation,
            len: self.len,
        }
    }

    /// Takes back what was appended since `mark` (a batch that was
    /// abandoned: never written to the files nor acknowledged, so it must
    /// not be replayed). A journal emptied since holds nothing of it (a
    /// resync's checkpoint, say; what was appended after that is not the
    /// batch's). Should the cut fail, it is made before the next append.
    pub fn take_back(&mut self, mark: Mark) -> io::Result<()> {
        if mark.generation != self.generation {
            return Ok(());
        }
        self.truncate_to(mark.len).inspect_err(|_| {
            self.cut_back = Some(mark.len);
        })
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn truncate_to(&mut self, len: u64) -> io::Result<()> {
        if len >= self.len {
            return Ok(());
        }
        let f = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(storage::open_append(&self.path)?),
        };
        f.set_len(len)?;
        f.sync_data()?;
        self.set_len(len);
        self.decided_len = self.decided_len.min(len);
        Ok(())
    }

    /// Whether the journal has grown enough to be checkpointed.
    pub fn wants_checkpoint(&self) -> bool {
        self.len >= CHECKPOINT_BYTES
    }

    /// Ends a checkpoint: the caller has flushed every data file written
    /// since the last one, so the journal's operations are on disk twice.
    pub fn clear(&mut self) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        match self.file.as_mut() {
            Some(f) => {
                f.set_len(0)?;
                f.sync_all()?;
            }
            // Durability is off and nothing was owed in this run, but an
            // earlier run left a journal.
            None => match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
        }
        self.set_len(0);
        self.decided_len = 0;
        self.generation += 1;
        self.cut_back = None;
        Ok(())
    }
}

fn encode(op: &WriteOp, out: &mut String) {
    use std::fmt::Write as _;
    let _ = match &op.op {
        Some(write_op::Op::AddUser(a)) => writeln!(out, "A {}", a.user),
        Some(write_op::Op::Follow(f)) => writeln!(
            out,
            "F {} {} {} {} {}",
            f.follower,
            f.followee,
            f.time_ns,
            if f.follow { '+' } else { '-' },
            f.request_id
        ),
        // A post's text has no control characters (model::validate_post),
        // so it cannot break the line.
        Some(write_op::Op::Post(p)) => {
            writeln!(out, "P {} {} {} {}", p.author, p.time_ns, p.post_id, p.text)
        }
        None => Ok(()),
    };
}

fn decode(line: &str) -> Option<WriteOp> {
    let (kind, rest) = line.split_once(' ')?;
    let op = match kind {
        "A" => write_op::Op::AddUser(AddUser {
            user: rest.parse().ok()?,
        }),
        "F" => {
            let fields: Vec<&str> = rest.split(' ').collect();
            let [follower, followee, time, sign, id] = fields[..] else {
                return None;
            };
            write_op::Op::Follow(FollowOp {
                follower: follower.parse().ok()?,
                followee: followee.parse().ok()?,
                time_ns: time.parse().ok()?,
                follow: match sign {
                    "+" => true,
                    "-" => false,
                    _ => return None,
                },
                request_id: id.parse().ok()?,
            })
        }
        "P" => {
            let mut fields = rest.splitn(4, ' ');
            write_op::Op::Post(PostOp {
                author: fields.next()?.parse().ok()?,
                time_ns: fields.next()?.parse().ok()?,
                post_id: fields.next()?.parse().ok()?,
                text: fields.next()?.to_string(),
            })
        }
        _ => return None,
    };
    let op = WriteOp { op: Some(op) };
    crate::model::validate_op(&op).ok()?;
    Some(op)
}

/// What [`decode_from`] read.
struct Decoded {
    replay: Replay,
    /// The length of its whole lines...
    whole: u64,
    /// ...up to its last mark...
    decided_len: u64,
    /// ...and all of it.
    len: u64,
}

/// The operations of a journal, read line by line, decided and not, with
/// the lengths that say where its lines end. Each
/// line stands alone, so a line that does not parse (a damaged disk block)
/// is skipped, with a warning quoting at most 64 bytes of it, and the rest
/// is replayed; a last line without its newline was never acknowledged and
/// is ignored.
fn decode_from(mut r: impl Read, path: &Path) -> io::Result<Decoded> {
    let mut replay = Replay::default();
    let mut decided_len = 0u64;
    let mut line: Vec<u8> = Vec::new();
    // A line longer than MAX_LINE: skipped up to its newline, unread.
    let mut overlong = false;
    let mut len = 0u64;
    let mut whole = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            let (part, ends) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], true),
                None => (chunk, false),
            };
            let used = part.len() + usize::from(ends);
            chunk = &chunk[used..];
            len += used as u64;
            if !overlong && line.len() + part.len() <= MAX_LINE {
                line.extend_from_slice(part);
            } else {
                overlong = true;
                line.clear();
            }
            if !ends {
                continue;
            }
            whole = len;
            if overlong {
                log::warn!(
                    "{}: skipping a line longer than any operation",
                    path.display()
                );
            } else if line.as_slice() == MARK.trim_end().as_bytes() {
                replay.decided.append(&mut replay.undecided);
                decided_len = whole;
            } else {
                match std::str::from_utf8(&line).ok().and_then(decode) {
                    Some(op) => replay.undecided.push(op),
                    None => log::warn!(
                        "{}: skipping an unreadable line {:?}",
                        path.display(),
                        String::from_utf8_lossy(&line[..line.len().min(64)])
                    ),
                }
            }
            line.clear();
            overlong = false;
        }
    }
    if !line.is_empty() || overlong {
        log::warn!("{}: ignoring a torn last line", path.display());
    }
    Ok(Decoded {
        replay,
        whole,
        decided_len,
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<WriteOp> {
        let op = |o| WriteOp { op: Some(o) };
        vec![
            op(write_op::Op::AddUser(AddUser { user: 4 })),
            op(write_op::Op::Follow(FollowOp {
                follower: 4,
                followee: 1,
                time_ns: 1_763_921_407_123_456_789,
                follow: true,
                request_id: 77,
            })),
            op(write_op::Op::Follow(FollowOp {
                follower: 4,
                followee: 1,
                time_ns: 1_763_921_407_123_456_790,
                follow: false,
                request_id: 0,
            })),
            op(write_op::Op::Post(PostOp {
                author: 1,
                time_ns: 1_763_921_407_123_456_791,
                post_id: 912,
                text: "hello  world, with spaces ".into(),
            })),
        ]
    }

    /// Every operation the journal of `dir` replays on a master.
    fn ops_of(dir: &Path) -> Vec<WriteOp> {
        let (_, r) = Journal::open(dir, true).unwrap();
        r.decided.into_iter().chain(r.undecided).collect()
    }

    #[test]
    fn round_trips_and_replays_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, ops) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(ops, Replay::default());
        j.append(&sample()).unwrap();
        j.decide().unwrap();
        assert_eq!(ops_of(dir.path()), sample());
    }

    #[test]
    fn a_cut_at_every_byte_replays_only_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), true).unwrap();
        j.append(&sample()).unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let full = std::fs::read(&path).unwrap();
        for cut in 0..=full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let whole = full[..cut].iter().filter(|&&b| b == b'\n').count();
            assert_eq!(ops_of(dir.path()), sample()[..whole], "cut at {cut}");
        }
    }

    #[test]
    fn garbage_lines_are_skipped_and_clear_empties() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        std::fs::write(&path, "A 4\nP x y z\nA 5\n").unwrap();
        let (mut j, ops) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(
            ops.undecided.len(),
            2,
            "the bad line is skipped, the others kept"
        );
        j.clear().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn an_abandoned_batch_is_taken_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), true).unwrap();
        j.append(&sample()[..1]).unwrap();
        let mark = j.mark();
        j.append(&sample()[1..]).unwrap();
        j.take_back(mark).unwrap();
        assert_eq!(ops_of(dir.path()), sample()[..1]);
        // A mark from before the journal was emptied cuts nothing after.
        let old = j.mark();
        j.clear().unwrap();
        j.append_decided(&sample()[2..3]).unwrap();
        j.take_back(old).unwrap();
        assert_eq!(ops_of(dir.path()), sample()[2..3]);
    }

    #[test]
    fn disabled_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), false).unwrap();
        j.append(&sample()).unwrap();
        assert!(!dir.path().join(JOURNAL_FILE).exists());
    }

    #[test]
    fn a_journal_that_is_not_a_regular_file_is_set_aside() {
        for make in [
            |p: &Path| std::fs::create_dir(p).unwrap(),
            |p: &Path| std::os::unix::fs::symlink("/dev/zero", p).unwrap(),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(JOURNAL_FILE);
            make(&path);
            let (mut j, ops) = Journal::open(dir.path(), true).unwrap();
            assert_eq!(ops, Replay::default());
            assert!(
                std::fs::symlink_metadata(dir.path().join("journal.txt.damaged")).is_ok(),
                "kept for a person to look at"
            );
            j.append(&sample()).unwrap();
            assert_eq!(ops_of(dir.path()), sample());
        }
    }

    #[test]
    fn an_overlong_line_is_skipped_unread_and_a_torn_one_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let long = "P 1 5 6 ".to_string() + &"x".repeat(200_000);
        std::fs::write(&path, format!("A 4\n{long}\nA 5\nA 6")).unwrap();
        let (mut j, ops) = Journal::open(dir.path(), true).unwrap();
        let users: Vec<u64> = ops
            .undecided
            .iter()
            .filter_map(|o| match &o.op {
                Some(write_op::Op::AddUser(a)) => Some(a.user),
                _ => None,
            })
            .collect();
        assert_eq!(users, [4, 5]);
        // What is appended next starts a line of its own.
        j.append(&sample()[..1]).unwrap();
        assert_eq!(ops_of(dir.path()).len(), 3);
    }

    #[test]
    fn owed_operations_are_journaled_even_with_durability_off() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), false).unwrap();
        j.append(&sample()).unwrap();
        assert!(!dir.path().join(JOURNAL_FILE).exists());
        j.owe(&sample()[1..2]).unwrap();
        let (_, ops) = Journal::open(dir.path(), false).unwrap();
        assert_eq!(ops.decided, sample()[1..2], "owed means promised: decided");
        assert!(ops.undecided.is_empty());
        j.clear().unwrap();
        assert_eq!(
            Journal::open(dir.path(), false).unwrap().1,
            Replay::default()
        );
    }

    #[test]
    fn only_what_was_decided_is_decided_and_the_rest_can_be_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), true).unwrap();
        // A batch the slave took, a batch a slave journaled, and the master's
        // next batch caught in flight by a crash.
        j.append(&sample()[..1]).unwrap();
        j.decide().unwrap();
        j.decide().unwrap(); // nothing new: no second mark
        j.append_decided(&sample()[1..2]).unwrap();
        j.append(&sample()[2..]).unwrap();
        let text = std::fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap();
        assert_eq!(text.matches("C\n").count(), 2, "{text}");
        let (mut j, r) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(r.decided, sample()[..2]);
        assert_eq!(r.undecided, sample()[2..]);
        // Coming back as slave: the batch in flight is gone for good.
        j.drop_undecided().unwrap();
        let (_, r) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(r.decided, sample()[..2]);
        assert!(r.undecided.is_empty());
    }

    #[test]
    fn a_journal_of_an_older_version_without_marks_is_undecided() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(JOURNAL_FILE), "A 4\nA 5\n").unwrap();
        let (_, r) = Journal::open(dir.path(), true).unwrap();
        assert!(r.decided.is_empty());
        assert_eq!(r.undecided.len(), 2);
    }
}
