//! Incremental views: a [`Tail`] folds a file's records into a state and
//! reads only what was appended since it last looked, so its cost grows with
//! what changed, not with the history. The states: [`UserSet`]
//! (`all_users.txt`), [`FollowLog`] (`_following`, `_followers`) and
//! [`AuthorClock`] (`_posts`, `_timeline`).

use super::file::{append_whole, data_metadata, open_append, open_shared, repair_locked};
use super::record::{FollowEvent, Format, Post, split_records};
use crate::timefmt::Nanos;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

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
        // Not following a link: what is not a regular file is damaged.
        let (len, ino) = match data_metadata(&self.path)? {
            Some(m) => (m.len(), m.ino()),
            None => (0, 0),
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
        // Whole or absent: a failed append is cut back to `offset`, where
        // the file ended (the caller holds the lock and has read it all).
        append_whole(f, self.offset, bytes, &self.path)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }
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
