//! Record formats and file names: what a data file holds and how its
//! records are spelt. Pure: nothing here touches the disk.
//!
//! A post record is `T <rfc3339>\nU <author>\nW <text>\n\n` (SPEC §3); a
//! follow event is one line, `+ <user> <rfc3339>` or `- <user> <rfc3339>`;
//! `all_users.txt` has one user id a line. A file's name says which of the
//! two [`Format`]s its records have.
//!
//! # Bounds
//! Every field has a longest valid spelling, so every record has a longest
//! valid length ([`Format::max_record`]): a time is `T` and 30 bytes
//! (`2026-11-23T18:10:07.123456789Z`), a user id at most 20 digits, a text
//! at most [`MAX_POST_BYTES`]. A record longer than that is damage, not
//! data: a [`Scanner`] reports it and skips to the next terminator holding
//! at most that many bytes, so the cost of a damaged file is one pass over
//! it, whatever its size. A record that fits is still checked field by
//! field before anyone sees it ([`Post::parse`], [`FollowEvent::parse`]).

use crate::model::{MAX_POST_BYTES, validate_post};
use crate::timefmt::{self, Nanos};
use std::path::{Path, PathBuf};

/// Bytes of a time as records spell it: `2026-11-23T18:10:07.123456789Z`.
const TIME_BYTES: usize = 30;
/// Digits of the largest user id (`u64::MAX`).
const USER_DIGITS: usize = 20;

/// Longest valid post record, its blank line included: `T <time>\n`,
/// `U <author>\n`, `W <text>\n` and `\n` (315 bytes).
pub const MAX_POST_RECORD: usize =
    (2 + TIME_BYTES + 1) + (2 + USER_DIGITS + 1) + (2 + MAX_POST_BYTES + 1) + 1;
/// Longest valid line record: a follow event `+ <user> <time>\n` (54 bytes;
/// a user line of `all_users.txt` is shorter).
pub const MAX_LINE_RECORD: usize = 2 + USER_DIGITS + 1 + TIME_BYTES + 1;

/// The times a record may carry: after the epoch and before 2200. A time near
/// the end of the 64-bit range would drag the master's clock, which never goes
/// below the latest time stored, to the end of the range.
pub const SANE_TIMES: std::ops::Range<Nanos> = 1..7_258_118_400_000_000_000;

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

    /// Longest valid record of this format, its terminator included.
    pub fn max_record(self) -> usize {
        match self {
            Format::Lines => MAX_LINE_RECORD,
            Format::Records => MAX_POST_RECORD,
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
        Post::parse(record).ok()
    }

    /// Parses and checks one record (without its terminator): a time that
    /// parses and is sane, a user id, a text that is a valid post (SPEC
    /// §2). The error says what is wrong, for a log.
    pub fn parse(record: &[u8]) -> Result<Post, String> {
        let text = std::str::from_utf8(record).map_err(|_| "not UTF-8".to_string())?;
        let mut lines = text.split('\n');
        let mut field = |tag: &str| {
            lines
                .next()
                .and_then(|l| l.strip_prefix(tag))
                .ok_or_else(|| format!("no {}line", tag))
        };
        let time = parse_time(field("T ")?)?;
        let author =
            crate::config::parse_user(field("U ")?).ok_or_else(|| "not a user id".to_string())?;
        let w = field("W ")?;
        validate_post(w)?;
        if lines.next().is_some() {
            return Err("more than three lines".into());
        }
        Ok(Post {
            author,
            time,
            text: w.to_string(),
        })
    }
}

/// A record's time: RFC 3339, within [`SANE_TIMES`].
fn parse_time(s: &str) -> Result<Nanos, String> {
    match timefmt::from_rfc3339(s) {
        Some(t) if SANE_TIMES.contains(&t) => Ok(t),
        Some(_) => Err("a time out of range".into()),
        None => Err("not a time".into()),
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
        FollowEvent::parse(record).ok()
    }

    /// Parses and checks one event (without its newline); the error says
    /// what is wrong, for a log.
    pub fn parse(record: &[u8]) -> Result<FollowEvent, String> {
        let text = std::str::from_utf8(record).map_err(|_| "not UTF-8".to_string())?;
        let mut parts = text.split(' ');
        let follow = match parts.next() {
            Some("+") => true,
            Some("-") => false,
            _ => return Err("neither + nor -".into()),
        };
        let user = parts
            .next()
            .and_then(crate::config::parse_user)
            .ok_or_else(|| "not a user id".to_string())?;
        let time = parse_time(parts.next().unwrap_or(""))?;
        if parts.next().is_some() {
            return Err("more than three fields".into());
        }
        Ok(FollowEvent { user, follow, time })
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

/// What a [`Scanner`] finds.
#[derive(Debug, PartialEq, Eq)]
pub enum Found<'a> {
    /// A whole record of a valid length (without its terminator), at this
    /// offset.
    Record { at: u64, bytes: &'a [u8] },
    /// A record longer than any valid one starts at this offset; it is
    /// skipped up to its terminator.
    Oversized { at: u64 },
}

/// Splits a file read forward in chunks into its records, holding at most
/// one record's worth of bytes ([`Format::max_record`]) between chunks: a
/// record longer than that is reported once and skipped, however far away
/// its terminator is (or if it has none yet). Pure: the caller reads the
/// bytes at [`Scanner::position`] and feeds them.
#[derive(Debug, Clone)]
pub struct Scanner {
    format: Format,
    /// Offset of the first byte not yet fed.
    fed: u64,
    /// The bytes fed since the last record boundary (a record not yet
    /// terminated); while skipping, only the last bytes, in case a
    /// terminator straddles two chunks.
    partial: Vec<u8>,
    /// Skipping a record too long to be valid, which starts here.
    skipping: Option<u64>,
}

impl Scanner {
    /// A scanner at offset `at`, which must be a record boundary.
    pub fn new(format: Format, at: u64) -> Scanner {
        Scanner {
            format,
            fed: at,
            partial: Vec::new(),
            skipping: None,
        }
    }

    /// Where the next bytes to feed start.
    pub fn position(&self) -> u64 {
        self.fed
    }

    /// The end of the last whole (or skipped) record: where a reader that
    /// stops now would start again.
    pub fn boundary(&self) -> u64 {
        match self.skipping {
            Some(at) => at,
            None => self.fed - self.partial.len() as u64,
        }
    }

    /// Whether everything fed ended on a record boundary.
    pub fn at_boundary(&self) -> bool {
        self.skipping.is_none() && self.partial.is_empty()
    }

    /// Whether it is skipping a record too long to be valid.
    pub fn skipping(&self) -> bool {
        self.skipping.is_some()
    }

    /// The file is `len` bytes long now. What was fed past that was cut off
    /// (a torn tail repaired): forget it and read again from the boundary.
    /// False when even the boundary is past the end: the file was replaced.
    pub fn truncate(&mut self, len: u64) -> bool {
        if len < self.boundary() {
            return false;
        }
        if len < self.fed {
            self.fed = self.boundary();
            self.partial.clear();
            self.skipping = None;
        }
        true
    }

    /// Moves past `n` bytes of whole records written at the boundary by the
    /// caller itself.
    pub fn advance(&mut self, n: u64) {
        debug_assert!(self.at_boundary());
        self.fed += n;
    }

    /// Takes whatever follows the last terminator as consumed: the caller
    /// holds the file's exclusive lock and it can never be completed.
    pub fn consume_rest(&mut self) {
        self.partial.clear();
        self.skipping = None;
    }

    /// Feeds the bytes at [`Scanner::position`]; calls `found` for each
    /// record completed and each record found too long.
    pub fn feed(&mut self, bytes: &[u8], mut found: impl FnMut(Found<'_>)) {
        let term = self.format.terminator();
        let max = self.format.max_record();
        let base = self.fed - self.partial.len() as u64;
        self.fed += bytes.len() as u64;
        let joined;
        let data: &[u8] = if self.partial.is_empty() {
            bytes
        } else {
            let mut v = std::mem::take(&mut self.partial);
            v.extend_from_slice(bytes);
            joined = v;
            &joined
        };
        let mut start = 0;
        if self.skipping.is_some() {
            match find(data, term) {
                Some(p) => {
                    start = p + term.len();
                    self.skipping = None;
                }
                None => {
                    self.partial = tail_of(data, term.len() - 1);
                    return;
                }
            }
        }
        while let Some(p) = find(&data[start..], term).map(|p| start + p) {
            let at = base + start as u64;
            if p + term.len() - start > max {
                found(Found::Oversized { at });
            } else {
                found(Found::Record {
                    at,
                    bytes: &data[start..p],
                });
            }
            start = p + term.len();
        }
        let rest = &data[start..];
        if rest.len() >= max {
            let at = base + start as u64;
            found(Found::Oversized { at });
            self.skipping = Some(at);
            self.partial = tail_of(rest, term.len() - 1);
        } else {
            self.partial = rest.to_vec();
        }
    }
}

/// The first occurrence of a terminator (`\n` or `\n\n`) in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = position_of(needle[0], &hay[from..]) {
        let at = from + p;
        if hay[at..].starts_with(needle) {
            return Some(at);
        }
        if hay.len() - at < needle.len() {
            return None;
        }
        from = at + 1;
    }
    None
}

/// The offset just past the last terminator in `bytes`, if there is one.
pub(super) fn last_end(bytes: &[u8], term: &[u8]) -> Option<usize> {
    let mut last = None;
    let mut from = 0;
    while let Some(p) = find(&bytes[from..], term) {
        last = Some(from + p + term.len());
        from += p + 1;
    }
    last
}

/// The first `byte` in `hay`. Through `BufRead::skip_until`, whose search is
/// std's `memchr`, compiled optimized even into a debug build: a damaged
/// file of 50 MiB is scanned in milliseconds, not a second, while the
/// server's state lock is held.
fn position_of(byte: u8, hay: &[u8]) -> Option<usize> {
    use std::io::BufRead;
    let mut cursor = std::io::Cursor::new(hay);
    match cursor.skip_until(byte) {
        Ok(n) if n > 0 && hay[n - 1] == byte => Some(n - 1),
        _ => None,
    }
}

/// The last `n` bytes of `bytes` (all of them if fewer).
fn tail_of(bytes: &[u8], n: usize) -> Vec<u8> {
    bytes[bytes.len().saturating_sub(n)..].to_vec()
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
    fn the_longest_valid_records_are_the_bounds() {
        let time = 7_258_118_399_999_999_999; // 2199-12-31T23:59:59.999999999Z
        let longest = post(u64::MAX, time, &"w".repeat(MAX_POST_BYTES));
        assert_eq!(longest.encode().len(), MAX_POST_RECORD);
        assert_eq!(MAX_POST_RECORD, 315);
        let e = FollowEvent {
            user: u64::MAX,
            follow: true,
            time,
        };
        assert_eq!(e.encode().len(), MAX_LINE_RECORD);
        assert!(format!("{}\n", u64::MAX).len() < MAX_LINE_RECORD);
    }

    #[test]
    fn records_are_checked_field_by_field() {
        let rec = |t: &str, u: &str, w: &str| format!("T {t}\nU {u}\nW {w}");
        let t = "2026-11-23T18:10:07.123456789Z";
        assert!(Post::parse(rec(t, "2", "hello").as_bytes()).is_ok());
        let big = "x".repeat(5 << 20);
        for (bad, why) in [
            (rec(t, "2", &big), "a 5 MiB text"),
            (rec(t, "2", &"x".repeat(256)), "a 256-byte text"),
            (rec(t, "2", "tab\there"), "a control character"),
            (rec(t, "2", ""), "an empty text"),
            (rec(t, "0", "x"), "user 0"),
            (rec(t, "+2", "x"), "a sign"),
            (rec(t, " 2", "x"), "a space"),
            (rec("1960-01-01T00:00:00Z", "2", "x"), "before the epoch"),
            (rec("2250-01-01T00:00:00Z", "2", "x"), "after 2200"),
            (rec("yesterday", "2", "x"), "not a time"),
            (rec(t, "2", "x") + "\nW y", "four lines"),
        ] {
            assert!(Post::parse(bad.as_bytes()).is_err(), "{why}");
        }
        assert!(Post::parse(b"T x\xff").is_err());
        assert!(FollowEvent::parse(format!("+ 3 {t}").as_bytes()).is_ok());
        for bad in [
            format!("+ 0 {t}"),
            format!("* 3 {t}"),
            format!("+ 3 {t} x"),
            "+ 3 2250-01-01T00:00:00Z".to_string(),
            "+ 3".to_string(),
        ] {
            assert!(FollowEvent::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    /// Feeds `bytes` to a scanner in chunks of `chunk` bytes; returns the
    /// records and the offsets of the oversized ones.
    fn scan(bytes: &[u8], format: Format, chunk: usize) -> (Vec<(u64, Vec<u8>)>, Vec<u64>) {
        let mut s = Scanner::new(format, 0);
        let (mut recs, mut big) = (Vec::new(), Vec::new());
        for c in bytes.chunks(chunk) {
            s.feed(c, |f| match f {
                Found::Record { at, bytes } => recs.push((at, bytes.to_vec())),
                Found::Oversized { at } => big.push(at),
            });
            assert!(
                s.partial.len() <= format.max_record(),
                "holds at most a record"
            );
        }
        (recs, big)
    }

    #[test]
    fn a_scanner_finds_what_split_records_finds_in_any_chunking() {
        let file: String = (1..=5)
            .map(|i| post(i, i as i64 * 1000, &"é".repeat(i as usize * 20)).encode())
            .collect();
        let (whole, used) = split_records(file.as_bytes(), Format::Records);
        assert_eq!(used, file.len());
        for chunk in [1, 2, 3, 7, 100, 1 << 20] {
            let (recs, big) = scan(file.as_bytes(), Format::Records, chunk);
            assert!(big.is_empty());
            let got: Vec<&[u8]> = recs.iter().map(|(_, r)| r.as_slice()).collect();
            assert_eq!(got, whole, "chunks of {chunk}");
        }
    }

    #[test]
    fn a_record_too_long_is_reported_once_and_skipped() {
        let a = post(1, 1000, "before").encode();
        let b = post(2, 2000, "after").encode();
        let junk = "j".repeat(MAX_POST_RECORD);
        let file = format!("{a}{junk}\n\n{b}");
        for chunk in [1, 5, 64, 4096] {
            let (recs, big) = scan(file.as_bytes(), Format::Records, chunk);
            assert_eq!(big, vec![a.len() as u64], "chunks of {chunk}");
            let texts: Vec<String> = recs
                .iter()
                .map(|(_, r)| Post::decode(r).unwrap().text)
                .collect();
            assert_eq!(texts, ["before", "after"], "chunks of {chunk}");
            assert_eq!(recs[1].0, (a.len() + junk.len() + 2) as u64);
        }
        // One byte shorter (with its terminator, exactly the bound) is a
        // record, to be checked field by field.
        let file = format!("{}\n\n", "j".repeat(MAX_POST_RECORD - 2));
        let (recs, big) = scan(file.as_bytes(), Format::Records, 7);
        assert!(big.is_empty());
        assert_eq!(recs.len(), 1);
    }

    #[test]
    fn fifty_mib_without_a_terminator_hold_one_record_of_memory() {
        let a = post(1, 1000, "before").encode();
        let mut s = Scanner::new(Format::Records, 0);
        let mut seen = Vec::new();
        s.feed(a.as_bytes(), |f| seen.push(format!("{f:?}")));
        assert_eq!(seen.len(), 1);
        let junk = vec![b'x'; 64 << 10];
        let mut reports = 0;
        for _ in 0..800 {
            s.feed(&junk, |f| {
                assert_eq!(f, Found::Oversized { at: a.len() as u64 });
                reports += 1;
            });
            assert!(s.partial.len() < 2);
        }
        assert_eq!(reports, 1, "reported once");
        assert!(s.skipping());
        assert_eq!(s.boundary(), a.len() as u64, "not consumed: it may be cut");
        assert_eq!(s.position(), a.len() as u64 + 800 * (64 << 10));
        // The tail is cut (a repair): read again from the boundary.
        assert!(s.truncate(a.len() as u64));
        assert_eq!(s.position(), a.len() as u64);
        assert!(!s.skipping());
        assert!(!s.truncate(3), "shorter than what was read: replaced");
        // Or it ends after all, and what follows is read.
        let mut s2 = Scanner::new(Format::Records, 0);
        s2.feed(&junk, |_| {});
        s2.feed(b"\n", |_| {});
        let b = post(2, 2000, "after").encode();
        let mut after = Vec::new();
        s2.feed(format!("\n{b}").as_bytes(), |f| {
            if let Found::Record { bytes, .. } = f {
                after.push(Post::decode(bytes).unwrap());
            }
        });
        assert_eq!(after, vec![post(2, 2000, "after")]);
        assert!(s2.at_boundary());
    }

    #[test]
    fn the_last_end_is_found_as_a_backward_search_would() {
        for (bytes, want) in [
            (&b"a\n\nb\n\nc"[..], Some(6)),
            (b"x\n\n\n", Some(4)),
            (b"\n\n", Some(2)),
            (b"abc\n", None),
            (b"", None),
        ] {
            let backward = bytes.windows(2).rposition(|w| w == b"\n\n").map(|p| p + 2);
            assert_eq!(last_end(bytes, b"\n\n"), want, "{bytes:?}");
            assert_eq!(backward, want);
        }
        assert_eq!(last_end(b"1\n2\n3", b"\n"), Some(4));
    }

    #[test]
    fn format_follows_the_file_name() {
        assert_eq!(Format::of(Path::new("/d/u1_timeline.txt")), Format::Records);
        assert_eq!(Format::of(Path::new("u1_posts.txt")), Format::Records);
        assert_eq!(Format::of(Path::new("u1_followers.txt")), Format::Lines);
        assert_eq!(Format::of(Path::new("all_users.txt")), Format::Lines);
    }
}
