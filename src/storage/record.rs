//! Record formats and file names: what a data file holds and how its
//! records are spelt. Pure: nothing here touches the disk.
//!
//! A post record is `T <rfc3339>\nU <author>\nW <text>\n\n` (SPEC §3); a
//! follow event is one line, `+ <user> <rfc3339>` or `- <user> <rfc3339>`;
//! `all_users.txt` has one user id a line. A file's name says which of the
//! two [`Format`]s its records have.

use crate::timefmt::{self, Nanos};
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

/// A post for the tests of this folder.
#[cfg(test)]
pub(super) fn post(author: u64, time: Nanos, text: &str) -> Post {
    Post {
        author,
        time,
        text: text.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn split_records_keeps_only_whole_records() {
        let (recs, used) = split_records(b"1\n22\n3", Format::Lines);
        assert_eq!(recs, [&b"1"[..], &b"22"[..]]);
        assert_eq!(used, 5);
        let (recs, used) = split_records(b"a\nb\n\nc\n\nd\n", Format::Records);
        assert_eq!(recs, [&b"a\nb"[..], &b"c"[..]]);
        assert_eq!(used, 8);
        assert_eq!(split_records(b"", Format::Records), (vec![], 0));
    }

    #[test]
    fn format_follows_the_file_name() {
        assert_eq!(Format::of(Path::new("/d/u1_timeline.txt")), Format::Records);
        assert_eq!(Format::of(Path::new("u1_posts.txt")), Format::Records);
        assert_eq!(Format::of(Path::new("u1_followers.txt")), Format::Lines);
        assert_eq!(Format::of(Path::new("all_users.txt")), Format::Lines);
    }
}
