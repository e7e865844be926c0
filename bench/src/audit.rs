//! The end of a `chaos` run: what the files on disk (SPEC §3) hold, against
//! the history of what the posters sent and what was acknowledged. Pure:
//! [`audit`] takes the files' bytes, [`screens`] what the timeline streams
//! delivered; [`read_dirs`] is the only I/O.
//!
//! What belongs where (the posters never unfollow):
//! * every user who logged in: once in `all_users.txt` of every server;
//! * a post by A: once in A's `_posts` file on both servers of A's cluster;
//!   once in the `_timeline` of every F who followed A before the post's time
//!   (F's `_following` says since when), on both servers of F's cluster;
//! * a follow F → A: one `+ A t` in F's `_following` (F's cluster) and one
//!   `+ F t` with the same `t` in A's `_followers` (A's cluster).
//!
//! *Lost*: an acknowledged post or follow missing from a place it belongs,
//! or a stored post (acknowledged or not: it is visible) missing from a
//! timeline it belongs in. *Doubled*: a post or follow more than once in one
//! file. *Unexpected*: a record never sent, in a file it does not belong in,
//! or that does not parse. *Divergent*: a record on one server of a cluster
//! and not the other, or a follow whose two sides disagree on its time.
//! Operations that failed (no answer before the run ended) may be present
//! or absent, but once at most and everywhere or nowhere.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use tinysns::config::cluster_of;
use tinysns::storage::{FileKind, FollowEvent, Format, Post, split_records};
use tinysns::timefmt::Nanos;

/// A server directory's data files: name → bytes.
pub type Dir = BTreeMap<String, Vec<u8>>;
/// Every server directory, by (cluster, server).
pub type Dirs = BTreeMap<(u32, u32), Dir>;

/// What the posters sent: for each post and follow, whether it was
/// acknowledged.
#[derive(Debug, Default, Clone)]
pub struct Sent {
    /// (author, text) → acknowledged. Texts are unique per author.
    pub posts: HashMap<(u64, String), bool>,
    /// (follower, followee) → acknowledged.
    pub follows: HashMap<(u64, u64), bool>,
    /// Users who logged in (acknowledged).
    pub users: BTreeSet<u64>,
}

/// What the check found; each entry a line for a person.
#[derive(Debug, Default, Clone)]
pub struct Findings {
    pub lost: Vec<String>,
    pub doubled: Vec<String>,
    pub unexpected: Vec<String>,
    pub divergent: Vec<String>,
}

impl Findings {
    pub fn clean(&self) -> bool {
        self.lost.is_empty()
            && self.doubled.is_empty()
            && self.unexpected.is_empty()
            && self.divergent.is_empty()
    }
}

/// Reads the data files (those SPEC §3 names) of every server directory.
/// A missing directory is empty.
pub fn read_dirs(data: &Path, clusters: u32) -> Dirs {
    let mut out = Dirs::new();
    for c in 1..=clusters {
        for s in 1..=2 {
            let dir = tinysns::config::server_dir(data, c, s);
            let mut files = Dir::new();
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if FileKind::parse(&e.path()).is_none() {
                    continue;
                }
                if let Ok(bytes) = std::fs::read(e.path()) {
                    files.insert(e.file_name().to_string_lossy().to_string(), bytes);
                }
            }
            out.insert((c, s), files);
        }
    }
    out
}

/// The parsed records of one directory.
#[derive(Default)]
struct Parsed {
    users: Vec<u64>,
    posts: HashMap<u64, Vec<Post>>,
    timelines: HashMap<u64, Vec<Post>>,
    /// user → events (other side, time, follow).
    following: HashMap<u64, Vec<FollowEvent>>,
    followers: HashMap<u64, Vec<FollowEvent>>,
}

fn short(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(64)]).to_string();
    s.replace('\n', "\\n")
}

fn parse_dir(c: u32, s: u32, dir: &Dir, clusters: u32, sent: &Sent, f: &mut Findings) -> Parsed {
    let mut p = Parsed::default();
    for (name, bytes) in dir {
        let Some(kind) = FileKind::parse(Path::new(name)) else {
            continue;
        };
        let format = Format::of(Path::new(name));
        let (records, end) = split_records(bytes, format);
        let at = format!("cluster {c} server {s} {name}");
        if end < bytes.len() {
            f.unexpected.push(format!(
                "{at}: a torn record at its end: {}",
                short(&bytes[end..])
            ));
        }
        let owner = match kind {
            FileKind::Users => None,
            FileKind::Posts(u)
            | FileKind::Timeline(u)
            | FileKind::Following(u)
            | FileKind::Followers(u) => Some(u),
        };
        if let Some(u) = owner
            && (cluster_of(u, clusters) != c || !sent.users.contains(&u))
        {
            f.unexpected.push(format!(
                "{at}: a file of user {u}, who is not a poster of this cluster ({} records)",
                records.len()
            ));
            continue;
        }
        for r in records {
            match kind {
                FileKind::Users => match std::str::from_utf8(r).ok().and_then(|t| t.parse().ok()) {
                    Some(u) => p.users.push(u),
                    None => f.unexpected.push(format!("{at}: not a user: {}", short(r))),
                },
                FileKind::Posts(u) | FileKind::Timeline(u) => match Post::parse(r) {
                    Ok(post) => {
                        let map = if matches!(kind, FileKind::Posts(_)) {
                            &mut p.posts
                        } else {
                            &mut p.timelines
                        };
                        map.entry(u).or_default().push(post);
                    }
                    Err(e) => f
                        .unexpected
                        .push(format!("{at}: a bad post ({e}): {}", short(r))),
                },
                FileKind::Following(u) | FileKind::Followers(u) => match FollowEvent::parse(r) {
                    Ok(ev) => {
                        let map = if matches!(kind, FileKind::Following(_)) {
                            &mut p.following
                        } else {
                            &mut p.followers
                        };
                        map.entry(u).or_default().push(ev);
                    }
                    Err(e) => f
                        .unexpected
                        .push(format!("{at}: a bad follow event ({e}): {}", short(r))),
                },
            }
        }
    }
    p
}

/// Every record of a directory as a sorted list per file, for comparing
/// replicas.
fn record_lists(dir: &Dir) -> BTreeMap<&str, Vec<&[u8]>> {
    let mut out = BTreeMap::new();
    for (name, bytes) in dir {
        let (mut recs, _) = split_records(bytes, Format::of(Path::new(name)));
        recs.sort();
        out.insert(name.as_str(), recs);
    }
    out
}

/// Records of `a` missing from `b` (multisets of sorted records).
fn only_in<'a>(a: &[&'a [u8]], b: &[&'a [u8]]) -> Vec<&'a [u8]> {
    let mut left: HashMap<&[u8], usize> = HashMap::new();
    for r in b {
        *left.entry(r).or_default() += 1;
    }
    let mut out = Vec::new();
    for r in a {
        match left.get_mut(r) {
            Some(n) if *n > 0 => *n -= 1,
            _ => out.push(*r),
        }
    }
    out
}

fn divergence(c: u32, a: &Dir, b: &Dir, f: &mut Findings) {
    let (la, lb) = (record_lists(a), record_lists(b));
    let names: BTreeSet<&str> = la.keys().chain(lb.keys()).copied().collect();
    let empty = Vec::new();
    for n in names {
        let (x, y) = (la.get(n).unwrap_or(&empty), lb.get(n).unwrap_or(&empty));
        for (s, r) in only_in(x, y)
            .into_iter()
            .map(|r| (1, r))
            .chain(only_in(y, x).into_iter().map(|r| (2, r)))
        {
            f.divergent
                .push(format!("cluster {c} {n}: only on server {s}: {}", short(r)));
        }
    }
}

/// The follow of `other` in a follow log: its time, if it is there (the
/// first `+`; a second is reported as doubled elsewhere).
fn since(events: Option<&Vec<FollowEvent>>, other: u64) -> Option<Nanos> {
    events?
        .iter()
        .filter(|e| e.user == other && e.follow)
        .map(|e| e.time)
        .min()
}

/// Checks the files of every server against what was sent.
pub fn audit(clusters: u32, dirs: &Dirs, sent: &Sent) -> Findings {
    let mut f = Findings::default();
    let mut parsed: BTreeMap<(u32, u32), Parsed> = BTreeMap::new();
    for (&(c, s), dir) in dirs {
        parsed.insert((c, s), parse_dir(c, s, dir, clusters, sent, &mut f));
    }
    for c in 1..=clusters {
        if let (Some(a), Some(b)) = (dirs.get(&(c, 1)), dirs.get(&(c, 2))) {
            divergence(c, a, b, &mut f);
        }
    }
    // The posts as their authors' files hold them, over both servers: the
    // reference for timelines. (author, text) → times.
    let mut stored: HashMap<(u64, String), BTreeSet<Nanos>> = HashMap::new();
    for p in parsed.values() {
        for (a, posts) in &p.posts {
            for post in posts {
                stored
                    .entry((*a, post.text.clone()))
                    .or_default()
                    .insert(post.time);
            }
        }
    }
    let posters_of = |c: u32| -> Vec<u64> {
        sent.users
            .iter()
            .copied()
            .filter(|u| cluster_of(*u, clusters) == c)
            .collect()
    };
    for (&(c, s), p) in &parsed {
        let at = |what: String| format!("cluster {c} server {s}: {what}");
        // Users.
        let mut seen: HashMap<u64, usize> = HashMap::new();
        for u in &p.users {
            *seen.entry(*u).or_default() += 1;
        }
        for (u, n) in &seen {
            if !sent.users.contains(u) {
                f.unexpected
                    .push(at(format!("user {u} in all_users.txt never logged in")));
            } else if *n > 1 {
                f.doubled
                    .push(at(format!("user {u} {n} times in all_users.txt")));
            }
        }
        for u in &sent.users {
            if !seen.contains_key(u) {
                f.lost
                    .push(at(format!("user {u} missing from all_users.txt")));
            }
        }
        for a in posters_of(c) {
            // The author's own posts.
            let mine = p.posts.get(&a).map(Vec::as_slice).unwrap_or_default();
            let mut count: HashMap<&str, usize> = HashMap::new();
            for post in mine {
                *count.entry(post.text.as_str()).or_default() += 1;
            }
            for (text, n) in &count {
                match sent.posts.get(&(a, text.to_string())) {
                    None => f
                        .unexpected
                        .push(at(format!("u{a}_posts.txt: never sent: {text:?}"))),
                    Some(_) if *n > 1 => f
                        .doubled
                        .push(at(format!("u{a}_posts.txt: {n} times: {text:?}"))),
                    Some(_) => {}
                }
            }
            for ((author, text), acked) in &sent.posts {
                if *author == a && *acked && !count.contains_key(text.as_str()) {
                    f.lost.push(at(format!(
                        "u{a}_posts.txt: acknowledged post missing: {text:?}"
                    )));
                }
            }
            // Both sides of each follow.
            for (file, events, mine_is_follower) in [
                ("following", p.following.get(&a), true),
                ("followers", p.followers.get(&a), false),
            ] {
                let mut count: HashMap<u64, usize> = HashMap::new();
                for e in events.into_iter().flatten() {
                    let pair = if mine_is_follower {
                        (a, e.user)
                    } else {
                        (e.user, a)
                    };
                    if !e.follow || !sent.follows.contains_key(&pair) {
                        f.unexpected.push(at(format!(
                            "u{a}_{file}.txt: never sent: {}",
                            e.encode().trim_end()
                        )));
                    } else {
                        *count.entry(e.user).or_default() += 1;
                    }
                }
                for (other, n) in &count {
                    if *n > 1 {
                        f.doubled
                            .push(at(format!("u{a}_{file}.txt: user {other} {n} times")));
                    }
                }
                for (&(fr, fe), acked) in &sent.follows {
                    let other = if mine_is_follower { fe } else { fr };
                    let mine = if mine_is_follower { fr } else { fe };
                    if mine == a && *acked && !count.contains_key(&other) {
                        f.lost.push(at(format!(
                            "u{a}_{file}.txt: acknowledged follow {fr} -> {fe} missing"
                        )));
                    }
                }
            }
            // The two sides of a follow agree on its time.
            for e in p.following.get(&a).into_iter().flatten() {
                let other = cluster_of(e.user, clusters);
                let theirs = parsed
                    .get(&(other, s))
                    .and_then(|q| since(q.followers.get(&e.user), a));
                if let Some(t) = theirs
                    && e.follow
                    && t != e.time
                {
                    f.divergent.push(at(format!(
                        "follow {a} -> {}: at {} here, at {t} in u{}_followers.txt of cluster {other}",
                        e.user, e.time, e.user
                    )));
                }
            }
            // The timeline of `a` as a follower.
            let following = p.following.get(&a);
            let timeline = p.timelines.get(&a).map(Vec::as_slice).unwrap_or_default();
            let mut shown: HashMap<(u64, &str), usize> = HashMap::new();
            for post in timeline {
                *shown.entry((post.author, post.text.as_str())).or_default() += 1;
                let key = (post.author, post.text.clone());
                let why = if !sent.posts.contains_key(&key) {
                    Some("never sent")
                } else if since(following, post.author).is_none_or(|t| post.time <= t) {
                    Some("not followed at the post's time")
                } else if !stored.get(&key).is_some_and(|ts| ts.contains(&post.time)) {
                    Some("not in its author's posts file with this time")
                } else {
                    None
                };
                if let Some(why) = why {
                    f.unexpected.push(at(format!(
                        "u{a}_timeline.txt: {why}: {} at {}: {:?}",
                        post.author, post.time, post.text
                    )));
                }
            }
            for ((author, text), n) in &shown {
                if *n > 1 {
                    f.doubled.push(at(format!(
                        "u{a}_timeline.txt: {n} times: {author}: {text:?}"
                    )));
                }
            }
            for ((author, text), times) in &stored {
                let Some(t0) = since(following, *author) else {
                    continue;
                };
                if times.iter().any(|t| *t > t0) && !shown.contains_key(&(*author, text.as_str())) {
                    let acked = sent.posts.get(&(*author, text.clone())) == Some(&true);
                    f.lost.push(at(format!(
                        "u{a}_timeline.txt: {} post of {author} missing: {text:?}",
                        if acked { "acknowledged" } else { "stored" }
                    )));
                }
            }
        }
    }
    f
}

/// What one follower's timeline streams delivered: (author, time, text),
/// once each (the client drops a post it has shown, by author and time).
pub type Screen = HashSet<(u64, Nanos, String)>;

/// What the screens found.
#[derive(Debug, Default, Clone)]
pub struct ScreenFindings {
    /// In the follower's timeline file, never shown.
    pub missing: Vec<String>,
    /// One post shown under two times.
    pub doubled: Vec<String>,
    /// Shown, and not in the follower's timeline file.
    pub unexpected: Vec<String>,
}

impl ScreenFindings {
    pub fn clean(&self) -> bool {
        self.missing.is_empty() && self.doubled.is_empty() && self.unexpected.is_empty()
    }
}

/// Checks each follower's screen against its timeline file (the union of
/// the two servers of its cluster: divergence is reported by [`audit`]).
/// Every stream asked for the whole timeline when it was first opened, so a
/// screen should have every post of the file.
pub fn screens(clusters: u32, dirs: &Dirs, screens: &BTreeMap<u64, Screen>) -> ScreenFindings {
    let mut f = ScreenFindings::default();
    for (&user, screen) in screens {
        let c = cluster_of(user, clusters);
        let name = format!("u{user}_timeline.txt");
        let mut file: HashSet<(u64, Nanos, String)> = HashSet::new();
        for s in 1..=2 {
            if let Some(bytes) = dirs.get(&(c, s)).and_then(|d| d.get(&name)) {
                for r in split_records(bytes, Format::Records).0 {
                    if let Ok(p) = Post::parse(r) {
                        file.insert((p.author, p.time, p.text));
                    }
                }
            }
        }
        let mut times: HashMap<(u64, &str), usize> = HashMap::new();
        for (a, t, text) in screen {
            *times.entry((*a, text.as_str())).or_default() += 1;
            if !file.contains(&(*a, *t, text.clone())) {
                f.unexpected.push(format!(
                    "user {user}'s screen: {a} at {t}: {text:?} is not in {name}"
                ));
            }
        }
        for ((a, text), n) in times {
            if n > 1 {
                f.doubled.push(format!(
                    "user {user}'s screen: {a}: {text:?} shown {n} times"
                ));
            }
        }
        for (a, t, text) in &file {
            if !screen.contains(&(*a, *t, text.clone())) {
                f.missing.push(format!(
                    "user {user}'s screen: {a} at {t}: {text:?} never shown"
                ));
            }
        }
    }
    f.missing.sort();
    f.unexpected.sort();
    f.doubled.sort();
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(author: u64, time: Nanos, text: &str) -> String {
        Post {
            author,
            time,
            text: text.into(),
        }
        .encode()
    }

    fn follow(user: u64, time: Nanos) -> String {
        FollowEvent {
            user,
            follow: true,
            time,
        }
        .encode()
    }

    const T: Nanos = 1_800_000_000_000_000_000;

    /// Users 1 (cluster 1) and 2 (cluster 2); 1 follows 2 at T; 2 posts
    /// "a" at T+1 (acknowledged). Both replicas of each cluster as they
    /// should be.
    fn whole() -> (Dirs, Sent) {
        let mut sent = Sent::default();
        sent.users.extend([1, 2]);
        sent.follows.insert((1, 2), true);
        sent.posts.insert((2, "a".into()), true);
        let users = b"1\n2\n".to_vec();
        let mut dirs = Dirs::new();
        for s in 1..=2 {
            let mut one = Dir::new();
            one.insert("all_users.txt".into(), users.clone());
            one.insert("u1_following.txt".into(), follow(2, T).into_bytes());
            one.insert("u1_timeline.txt".into(), post(2, T + 1, "a").into_bytes());
            dirs.insert((1, s), one);
            let mut two = Dir::new();
            two.insert("all_users.txt".into(), users.clone());
            two.insert("u2_followers.txt".into(), follow(1, T).into_bytes());
            two.insert("u2_posts.txt".into(), post(2, T + 1, "a").into_bytes());
            dirs.insert((2, s), two);
            let mut three = Dir::new();
            three.insert("all_users.txt".into(), users.clone());
            dirs.insert((3, s), three);
        }
        (dirs, sent)
    }

    #[test]
    fn a_whole_system_is_clean() {
        let (dirs, sent) = whole();
        let f = audit(3, &dirs, &sent);
        assert!(f.clean(), "{f:?}");
    }

    #[test]
    fn a_missing_timeline_copy_is_lost_on_that_server_only() {
        let (mut dirs, sent) = whole();
        dirs.get_mut(&(1, 2)).unwrap().remove("u1_timeline.txt");
        let f = audit(3, &dirs, &sent);
        assert_eq!(f.lost.len(), 1, "{f:?}");
        assert!(f.lost[0].contains("cluster 1 server 2"), "{f:?}");
        assert_eq!(f.divergent.len(), 1, "{f:?}");
        assert!(f.doubled.is_empty() && f.unexpected.is_empty(), "{f:?}");
    }

    #[test]
    fn a_post_stored_twice_is_doubled_wherever_it_is() {
        let (mut dirs, sent) = whole();
        for s in 1..=2 {
            let d = dirs.get_mut(&(2, s)).unwrap();
            let twice = format!("{}{}", post(2, T + 1, "a"), post(2, T + 5, "a"));
            d.insert("u2_posts.txt".into(), twice.into_bytes());
            let d = dirs.get_mut(&(1, s)).unwrap();
            let twice = format!("{}{}", post(2, T + 1, "a"), post(2, T + 5, "a"));
            d.insert("u1_timeline.txt".into(), twice.into_bytes());
        }
        let f = audit(3, &dirs, &sent);
        assert_eq!(f.doubled.len(), 4, "{f:?}");
        assert!(f.lost.is_empty() && f.divergent.is_empty(), "{f:?}");
    }

    #[test]
    fn never_sent_unfollowed_and_early_posts_are_unexpected() {
        let (mut dirs, mut sent) = whole();
        // A post of 2 before 1 followed, in 1's timeline; and a post never
        // sent in 2's file.
        sent.posts.insert((2, "early".into()), false);
        for s in 1..=2 {
            let d = dirs.get_mut(&(2, s)).unwrap();
            let text = format!(
                "{}{}{}",
                post(2, T - 1, "early"),
                post(2, T + 1, "a"),
                post(2, T + 2, "ghost")
            );
            d.insert("u2_posts.txt".into(), text.into_bytes());
            let d = dirs.get_mut(&(1, s)).unwrap();
            let text = format!("{}{}", post(2, T - 1, "early"), post(2, T + 1, "a"));
            d.insert("u1_timeline.txt".into(), text.into_bytes());
        }
        let f = audit(3, &dirs, &sent);
        // "ghost" twice (never sent, one per server) and "early" in 1's
        // timeline twice (not followed then).
        assert_eq!(f.unexpected.len(), 4, "{f:?}");
        // "ghost" is stored after the follow: missing from 1's timeline.
        assert_eq!(f.lost.len(), 2, "{f:?}");
    }

    #[test]
    fn an_acknowledged_follow_missing_on_one_side_is_lost() {
        let (mut dirs, sent) = whole();
        for s in 1..=2 {
            dirs.get_mut(&(2, s)).unwrap().remove("u2_followers.txt");
        }
        let f = audit(3, &dirs, &sent);
        assert_eq!(f.lost.len(), 2, "{f:?}");
    }

    #[test]
    fn screens_show_each_post_once() {
        let (dirs, _) = whole();
        let mut s = BTreeMap::new();
        s.insert(1, Screen::from([(2, T + 1, "a".to_string())]));
        assert!(screens(3, &dirs, &s).clean());
        s.insert(1, Screen::new());
        assert_eq!(screens(3, &dirs, &s).missing.len(), 1);
        s.insert(
            1,
            Screen::from([(2, T + 1, "a".to_string()), (2, T + 3, "a".to_string())]),
        );
        let f = screens(3, &dirs, &s);
        assert_eq!((f.doubled.len(), f.unexpected.len()), (1, 1), "{f:?}");
    }
}
