//! `client_ids.txt`: the client ids of the latest writes, so that a retry
//! that reaches a restarted server is still recognised.
//!
//! A client that did not hear back resends its write with the same id
//! (`post_id`, `request_id`), perhaps to a server that has restarted since,
//! with its directory or rebuilt from its peer. The journal holds the ids of
//! what it holds only until a checkpoint empties it, and memory not at all;
//! so every server also appends the ids of the writes it stores to this file,
//! one a line, and reads it back at start-up:
//!
//! ```text
//! P 4 912      post 912 of user 4
//! R 4 77       follow or unfollow request 77 of user 4
//! ```
//!
//! It is a data file like the others: flushed by the checkpoint before the
//! journal is emptied, and sent with a snapshot, so a server rebuilt from
//! its peer knows its peer's ids. It is not one of SPEC §3's files and
//! nobody else reads it.
//!
//! **Bounded.** A server remembers at most
//! [`RECENT_TOTAL`](crate::server::client_ids::RECENT_TOTAL) ids; once the
//! file passes [`COMPACT_BYTES`] the append that took it there rewrites it
//! with just those
//! (a temporary file, flushed, renamed into place). Start-up reads at most
//! its last [`LOAD_BYTES`]. A line that does not parse is skipped and
//! reported; a torn last line (a crash in the middle of an append) is cut
//! off. A damaged file (not a regular file) is reported and costs only the
//! ids it held: the server starts without them.

use super::file::{append_whole, open_append, open_read, replace_whole_with};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub const IDS_FILE: &str = "client_ids.txt";

/// Past this size the file is rewritten with the ids still remembered.
pub const COMPACT_BYTES: u64 = 4 << 20;

/// Start-up reads at most this much of the end of the file.
pub const LOAD_BYTES: u64 = 16 << 20;

/// One line of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdLine {
    Post { author: u64, id: u64 },
    Request { user: u64, id: u64 },
}

impl IdLine {
    fn encode(self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = match self {
            IdLine::Post { author, id } => writeln!(out, "P {author} {id}"),
            IdLine::Request { user, id } => writeln!(out, "R {user} {id}"),
        };
    }

    fn decode(line: &str) -> Option<IdLine> {
        let mut f = line.split(' ');
        let (kind, user, id) = (f.next()?, f.next()?, f.next()?);
        if f.next().is_some() {
            return None;
        }
        let user = crate::config::parse_user(user)?;
        let id: u64 = id.parse().ok().filter(|&n| n != 0)?;
        match kind {
            "P" => Some(IdLine::Post { author: user, id }),
            "R" => Some(IdLine::Request { user, id }),
            _ => None,
        }
    }
}

/// Whether `path` names the ids file: a data file of the directory, but
/// not a [`super::FileKind`] (no view, no synchronizer source).
pub fn is_ids_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == IDS_FILE)
}

pub fn ids_file(dir: &Path) -> PathBuf {
    dir.join(IDS_FILE)
}

/// Appends `ids` in one write, whole or not at all, under the file's lock;
/// returns the file's new length.
pub fn append(dir: &Path, ids: &[IdLine]) -> io::Result<u64> {
    if ids.is_empty() {
        return len(dir);
    }
    let mut text = String::new();
    for id in ids {
        id.encode(&mut text);
    }
    let path = ids_file(dir);
    let mut f = open_append(&path)?;
    f.lock()?;
    let at = f.metadata()?.len();
    append_whole(&mut f, at, text.as_bytes(), &path)?;
    Ok(at + text.len() as u64)
}

/// The ids of the file, oldest first (at most its last [`LOAD_BYTES`]); a
/// torn last line is cut off, so that the next append starts a line.
pub fn load(dir: &Path) -> io::Result<Vec<IdLine>> {
    let path = ids_file(dir);
    let Some(mut f) = open_read(&path)? else {
        return Ok(Vec::new());
    };
    let len = f.metadata()?.len();
    let from = len.saturating_sub(LOAD_BYTES);
    f.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    f.take(len - from).read_to_end(&mut bytes)?;
    // Reading from the middle: the first line is a piece of one.
    let start = if from > 0 {
        bytes
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| i + 1)
    } else {
        0
    };
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if (end as u64) + from < len {
        log::warn!("{}: cutting off a torn last line", path.display());
        let f = open_append(&path)?;
        f.lock()?;
        f.set_len(from + end as u64)?;
    }
    let mut ids = Vec::new();
    let mut bad = 0usize;
    for line in bytes.get(start..end).unwrap_or(&[]).split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        match std::str::from_utf8(line).ok().and_then(IdLine::decode) {
            Some(id) => ids.push(id),
            None => bad += 1,
        }
    }
    if bad > 0 {
        log::warn!("{}: skipped {bad} unreadable line(s)", path.display());
    }
    Ok(ids)
}

/// The file's length (0 if there is none).
pub fn len(dir: &Path) -> io::Result<u64> {
    Ok(match open_read(&ids_file(dir))? {
        Some(f) => f.metadata()?.len(),
        None => 0,
    })
}

/// Replaces the file with `ids`: written beside it, flushed, renamed into
/// place and the directory flushed, so a crash leaves the old file or the
/// new one.
///
/// The lines are written as they come, not gathered first: at the bound
/// the whole text was 3.5 MB (heaptrack, `bench scale`).
pub fn rewrite(dir: &Path, ids: impl Iterator<Item = IdLine>) -> io::Result<()> {
    replace_whole_with(&ids_file(dir), |w| {
        let mut line = String::new();
        for id in ids {
            line.clear();
            id.encode(&mut line);
            w.write_all(line.as_bytes())?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(author: u64, id: u64) -> IdLine {
        IdLine::Post { author, id }
    }

    #[test]
    fn ids_round_trip_and_bad_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
        append(
            dir.path(),
            &[p(4, 912), IdLine::Request { user: 4, id: 77 }],
        )
        .unwrap();
        let path = ids_file(dir.path());
        let mut text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "P 4 912\nR 4 77\n");
        text.push_str("P x 1\nQ 1 2\nP 1 0\nP 5 6\nP 7 8 9\nP 5 7");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(
            load(dir.path()).unwrap(),
            [p(4, 912), IdLine::Request { user: 4, id: 77 }, p(5, 6)]
        );
        // The torn line is gone, so the next append starts a line.
        append(dir.path(), &[p(9, 9)]).unwrap();
        assert_eq!(load(dir.path()).unwrap().last(), Some(&p(9, 9)));
    }

    #[test]
    fn a_rewrite_replaces_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), &[p(1, 1), p(1, 2)]).unwrap();
        rewrite(dir.path(), [p(1, 2)].into_iter()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), [p(1, 2)]);
        assert_eq!(len(dir.path()).unwrap(), 6);
        assert!(!dir.path().join("client_ids.txt.tmp").exists());
    }

    #[test]
    fn a_damaged_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(ids_file(dir.path())).unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(super::super::is_damaged(&e), "{e}");
    }
}
