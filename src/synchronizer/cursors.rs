//! Where each peer stands in each source file, and `positions.txt`: pure
//! (the pusher reads and writes the file, this module only its text).
//!
//! Each source file has its own kind of cursor:
//!
//! * the users file: a [`UsersCursor`], how many of this cluster's users (in
//!   the order `all_users.txt` lists them, [`LocalUsers`]) the peer has
//!   acknowledged. A count works because only the cluster's servers append
//!   local users, in the same order on master and slave;
//! * a local user's follows: a [`TimeCursor`], the time of the last event
//!   handled and, once known, the byte offset just past it;
//! * a local author's posts: a [`PostsCursor`], a time cursor and the latest
//!   follow of the peer's users taken into account (see
//!   [`super::plan::Rewinds`]).
//!
//! # `positions.txt`
//! One line per cursor:
//!
//! ```text
//! following <user> <peer> <time of last event>
//! posts <author> <peer> <time of last post> <time of latest follow> <follows seen>
//! users <peer> <count>
//! ```
//!
//! `<follows seen>` (how many follow events of the peer's users were taken
//! into account, [`super::plan::Rewinds`]) is new; a `posts` line without
//! it, as the version before wrote, is read as before (every follow up to
//! its time counts as taken into account), and that version skips a line
//! with it as damaged, which costs a re-send of that author's posts.
//!
//! Times are nanoseconds; `0` is "none yet" (the file's spelling of `None`).
//! Offsets are not saved: after a start each is found again from its time.
//! A damaged line (the file is not flushed; a stray byte, text that is not
//! UTF-8) is skipped and reported, quoting at most 64 bytes of it, and the
//! synchronizer carries on: the line costs a re-send from the start for its
//! cursor, which receivers store once, where refusing to start would cost
//! the whole cluster's propagation. The same holds for the whole file: one
//! that cannot be read at all is moved aside (`positions.txt.damaged`) and
//! every cursor starts from the beginning.

use crate::model::{ClusterId, UserId};
use crate::storage::{self, FollowEvent};
use crate::timefmt::Nanos;
use std::collections::{HashMap, HashSet};

/// How many of this cluster's users a peer has acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsersCursor {
    pub sent: usize,
}

/// Where a peer stands in a file of time-ordered records (follow events,
/// posts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeCursor {
    /// The time of the last record handled; `None` before the first.
    pub last: Option<Nanos>,
    /// The byte offset just past it; `None` until found again (after a
    /// start, a rewind, or a change of the directory read from).
    pub offset: Option<u64>,
}

impl TimeCursor {
    /// After the peer acknowledged the records up to `offset` (or needed
    /// none of them), the latest of them at `through`.
    pub fn advance(&mut self, through: Option<Nanos>, offset: u64) {
        self.last = self.last.max(through);
        self.offset = Some(offset);
    }

    /// To just after `time`, wherever that is in the file.
    pub fn move_to(&mut self, time: Nanos) {
        self.last = Some(time);
        self.offset = None;
    }
}

/// Where a peer stands in a local author's posts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PostsCursor {
    pub at: TimeCursor,
    /// The latest follow event of the peer's users that has been taken into
    /// account; `None` while nobody there has followed.
    pub follows: Option<Nanos>,
    /// How many follow events of the peer's users have been taken into
    /// account (all of them at or before `follows`); `None` from a line an
    /// older version wrote. See [`super::plan::Rewinds`].
    pub seen: Option<u64>,
}

/// Every cursor, per source file and peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursors {
    users: HashMap<ClusterId, UsersCursor>,
    following: HashMap<(UserId, ClusterId), TimeCursor>,
    posts: HashMap<(UserId, ClusterId), PostsCursor>,
}

/// A line of `positions.txt` that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    /// Counted from 1.
    pub line: usize,
    /// Its first 64 bytes at most, as text (bytes that are not UTF-8 are
    /// shown as U+FFFD).
    pub text: String,
}

impl Cursors {
    /// How many local users `peer` has acknowledged.
    pub fn users_sent(&self, peer: ClusterId) -> usize {
        self.users.get(&peer).map_or(0, |c| c.sent)
    }

    pub fn users(&mut self, peer: ClusterId) -> &mut UsersCursor {
        self.users.entry(peer).or_default()
    }

    pub fn following(&mut self, user: UserId, peer: ClusterId) -> &mut TimeCursor {
        self.following.entry((user, peer)).or_default()
    }

    pub fn posts(&mut self, author: UserId, peer: ClusterId) -> &mut PostsCursor {
        self.posts.entry((author, peer)).or_default()
    }

    /// Offsets belong to one directory's files: after a change of the
    /// directory read from, each is found again from its time.
    pub fn forget_offsets(&mut self) {
        for c in self.following.values_mut() {
            c.offset = None;
        }
        for c in self.posts.values_mut() {
            c.at.offset = None;
        }
    }

    /// Reads `positions.txt`'s bytes; the lines that could not be read
    /// (including lines that are not UTF-8) are returned beside the cursors.
    pub fn parse(bytes: &[u8]) -> (Cursors, Vec<Damaged>) {
        let mut cursors = Cursors::default();
        let mut damaged = Vec::new();
        let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        // The newline ends the last line; it does not start another.
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        for (n, line) in lines.into_iter().enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let parsed = std::str::from_utf8(line)
                .ok()
                .and_then(|l| cursors.parse_line(l));
            if parsed.is_none() {
                damaged.push(Damaged {
                    line: n + 1,
                    text: String::from_utf8_lossy(&line[..line.len().min(64)]).into_owned(),
                });
            }
        }
        (cursors, damaged)
    }

    fn parse_line(&mut self, line: &str) -> Option<()> {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["users", peer, count] => {
                let peer = ClusterId(peer.parse().ok()?);
                let count: i64 = count.parse().ok()?;
                self.users.insert(
                    peer,
                    UsersCursor {
                        sent: usize::try_from(count).unwrap_or(0),
                    },
                );
            }
            ["following", user, peer, last] => {
                let key = (UserId::parse(user)?, ClusterId(peer.parse().ok()?));
                let last = parse_time(last)?;
                self.following
                    .insert(key, TimeCursor { last, offset: None });
            }
            ["posts", author, peer, last, follows, seen @ ..] if seen.len() <= 1 => {
                let key = (UserId::parse(author)?, ClusterId(peer.parse().ok()?));
                let at = TimeCursor {
                    last: parse_time(last)?,
                    offset: None,
                };
                let follows = parse_time(follows)?;
                let seen = match seen {
                    [n] => Some(n.parse().ok()?),
                    _ => None,
                };
                self.posts.insert(key, PostsCursor { at, follows, seen });
            }
            _ => return None,
        }
        Some(())
    }

    /// The text of `positions.txt`. The lines come in the order the version
    /// before this one wrote them (sorted by its keys' names as text), so
    /// the same cursors give the same bytes.
    pub fn format(&self) -> String {
        let mut lines: Vec<(String, u32, String)> = Vec::new();
        for ((user, peer), c) in &self.following {
            lines.push((
                format!("Following({user})"),
                peer.0,
                format!("following {user} {peer} {}\n", time_text(c.last)),
            ));
        }
        for ((author, peer), c) in &self.posts {
            lines.push((
                format!("Posts({author})"),
                peer.0,
                match c.seen {
                    Some(n) => format!(
                        "posts {author} {peer} {} {} {n}\n",
                        time_text(c.at.last),
                        time_text(c.follows)
                    ),
                    None => format!(
                        "posts {author} {peer} {} {}\n",
                        time_text(c.at.last),
                        time_text(c.follows)
                    ),
                },
            ));
        }
        for (peer, c) in &self.users {
            lines.push((
                "Users".to_string(),
                peer.0,
                format!("users {peer} {}\n", c.sent),
            ));
        }
        lines.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        lines.into_iter().map(|(_, _, line)| line).collect()
    }
}

/// A time as the file spells it: `0` is none.
fn parse_time(s: &str) -> Option<Option<Nanos>> {
    let t: Nanos = s.parse().ok()?;
    Some((t > 0).then_some(t))
}

fn time_text(t: Option<Nanos>) -> Nanos {
    t.unwrap_or(0)
}

/// The offset of the first follow event after `after` in a follow file's
/// complete lines (`bytes`, read from offset 0; `end` is where they stop).
pub fn first_follow_after(bytes: &[u8], end: u64, after: Nanos) -> u64 {
    let (records, _) = storage::split_records(bytes, storage::Format::Lines);
    let mut off = 0u64;
    for r in records {
        if FollowEvent::decode(r).is_some_and(|e| e.time > after) {
            return off;
        }
        off += r.len() as u64 + 1;
    }
    end
}

/// This cluster's users in the order `all_users.txt` lists them, read
/// incrementally: what a [`UsersCursor`] counts.
#[derive(Debug, Default)]
pub struct LocalUsers {
    order: Vec<UserId>,
    known: HashSet<UserId>,
    /// How far the file has been read.
    offset: u64,
}

/// What reading the users file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absorbed {
    /// The lines were taken.
    Read,
    /// The file ends before where it was read up to: it was made again (a
    /// server's directory rebuilt). Everything was forgotten; read it again
    /// from the start.
    Shrank,
}

impl LocalUsers {
    /// Where to read the file from next.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Takes the complete lines read from [`Self::offset`] (`bytes`), which
    /// end at `end`; `is_local` says which users are this cluster's.
    pub fn absorb(
        &mut self,
        bytes: &[u8],
        end: u64,
        is_local: impl Fn(UserId) -> bool,
    ) -> Absorbed {
        if end < self.offset {
            self.forget();
            return Absorbed::Shrank;
        }
        self.offset = end;
        let (lines, _) = storage::split_records(bytes, storage::Format::Lines);
        for line in lines {
            if let Some(u) = std::str::from_utf8(line).ok().and_then(UserId::parse)
                && is_local(u)
                && self.known.insert(u)
            {
                self.order.push(u);
            }
        }
        Absorbed::Read
    }

    /// The users after the first `sent`.
    pub fn after(&self, sent: usize) -> &[UserId] {
        self.order.get(sent..).unwrap_or(&[])
    }

    /// Forgets the file (a change of the directory read from).
    pub fn forget(&mut self) {
        *self = LocalUsers::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: u64) -> UserId {
        UserId::new(id).unwrap()
    }

    fn sample() -> Cursors {
        let mut c = Cursors::default();
        c.users(ClusterId(2)).sent = 3;
        c.users(ClusterId(3)).sent = 0;
        c.following(user(12), ClusterId(2)).last = Some(1_795_457_407_123_456_789);
        c.following(user(2), ClusterId(3)); // looked at, nothing handled
        let p = c.posts(user(3), ClusterId(2));
        p.at.last = Some(500);
        p.follows = Some(400);
        p.seen = Some(2);
        c.posts(user(3), ClusterId(1)).follows = Some(7);
        c
    }

    #[test]
    fn positions_round_trip() {
        let c = sample();
        let (back, damaged) = Cursors::parse(c.format().as_bytes());
        assert!(damaged.is_empty());
        assert_eq!(back, c);
        // Offsets are not saved.
        let mut moved = c.clone();
        moved.following(user(12), ClusterId(2)).offset = Some(77);
        assert_eq!(Cursors::parse(moved.format().as_bytes()).0, c);
    }

    #[test]
    fn positions_are_written_as_before() {
        assert_eq!(
            sample().format(),
            "following 12 2 1795457407123456789\n\
             following 2 3 0\n\
             posts 3 1 0 7\n\
             posts 3 2 500 400 2\n\
             users 2 3\n\
             users 3 0\n"
        );
    }

    #[test]
    fn a_damaged_positions_line_is_skipped() {
        let text = "users 2 3\n\
                    posts 4 2 10\n\
                    following x 2 5\n\
                    following 4 2 5\n\
                    posts 4 2 10 9\n\
                    posts 5 2 10 9 x\n\
                    posts 6 2 10 9 1 2\n\
                    posts 7 2 10 9 3\n\
                    garbage\n\
                    users 3";
        let (c, damaged) = Cursors::parse(text.as_bytes());
        let lines: Vec<usize> = damaged.iter().map(|d| d.line).collect();
        assert_eq!(lines, vec![2, 3, 6, 7, 9, 10]);
        assert_eq!(damaged[0].text, "posts 4 2 10");
        let mut want = Cursors::default();
        want.users(ClusterId(2)).sent = 3;
        want.following(user(4), ClusterId(2)).last = Some(5);
        let p = want.posts(user(4), ClusterId(2));
        p.at.last = Some(10);
        p.follows = Some(9);
        let p = want.posts(user(7), ClusterId(2));
        p.at.last = Some(10);
        p.follows = Some(9);
        p.seen = Some(3);
        assert_eq!(c, want);
        assert_eq!(c.users_sent(ClusterId(3)), 0);
    }

    #[test]
    fn bytes_that_are_not_utf8_cost_only_their_line() {
        let mut text = b"users 2 3\n".to_vec();
        text.extend_from_slice(b"following 4 2 \xff\xfe5\n");
        text.extend_from_slice(b"\x80garbage \xc3\x28\n");
        text.extend_from_slice(b"posts 4 2 10 9\r\n");
        text.extend_from_slice(&[b'x'; 200]);
        let (c, damaged) = Cursors::parse(&text);
        let lines: Vec<usize> = damaged.iter().map(|d| d.line).collect();
        assert_eq!(lines, vec![2, 3, 5]);
        assert_eq!(damaged[0].text, "following 4 2 \u{fffd}\u{fffd}5");
        assert_eq!(damaged[2].text.len(), 64, "a damaged line is quoted short");
        let mut want = Cursors::default();
        want.users(ClusterId(2)).sent = 3;
        let p = want.posts(user(4), ClusterId(2));
        p.at.last = Some(10);
        p.follows = Some(9);
        assert_eq!(c, want);
    }

    #[test]
    fn a_time_cursor_advances_to_the_latest_and_moves_back_on_request() {
        let mut c = TimeCursor::default();
        c.advance(None, 10);
        assert_eq!(
            c,
            TimeCursor {
                last: None,
                offset: Some(10)
            }
        );
        c.advance(Some(50), 20);
        // A batch of older records (after a rewind) does not take it back.
        c.advance(Some(40), 30);
        assert_eq!(
            c,
            TimeCursor {
                last: Some(50),
                offset: Some(30)
            }
        );
        c.move_to(20);
        assert_eq!(
            c,
            TimeCursor {
                last: Some(20),
                offset: None
            }
        );
    }

    #[test]
    fn the_users_cursor_after_a_file_that_shrank() {
        let local = |u: UserId| u.cluster(3) == ClusterId(1);
        let mut users = LocalUsers::default();
        let file = b"1\n2\n4\n3\n7\n";
        assert_eq!(users.absorb(file, file.len() as u64, local), Absorbed::Read);
        assert_eq!(users.after(0), &[user(1), user(4), user(7)]);
        let sent = 3;
        // The directory was rebuilt and its file is shorter for now.
        assert_eq!(users.absorb(b"", 4, local), Absorbed::Shrank);
        assert_eq!(users.offset(), 0);
        assert_eq!(users.after(0), &[] as &[UserId]);
        let rebuilt = b"1\n2\n";
        assert_eq!(users.absorb(rebuilt, 4, local), Absorbed::Read);
        // The peer keeps its count: nothing is sent again.
        assert_eq!(users.after(sent), &[] as &[UserId]);
        // The rebuilt file catches up and grows: only the new user goes.
        let more = b"4\n3\n7\n10\n";
        assert_eq!(
            users.absorb(more, 4 + more.len() as u64, local),
            Absorbed::Read
        );
        assert_eq!(users.after(sent), &[user(10)]);
        // A user listed twice counts once.
        assert_eq!(users.absorb(b"10\n", 17, local), Absorbed::Read);
        assert_eq!(users.after(sent), &[user(10)]);
    }

    #[test]
    fn the_first_follow_after_a_time() {
        let e = |user, follow, time| FollowEvent { user, follow, time }.encode();
        let text = format!("{}{}{}", e(2, true, 100), e(3, true, 200), e(2, false, 300));
        let line = e(2, true, 100).len() as u64;
        let end = text.len() as u64;
        assert_eq!(first_follow_after(text.as_bytes(), end, 0), 0);
        assert_eq!(first_follow_after(text.as_bytes(), end, 100), line);
        assert_eq!(first_follow_after(text.as_bytes(), end, 250), 2 * line);
        assert_eq!(first_follow_after(text.as_bytes(), end, 300), end);
    }
}
