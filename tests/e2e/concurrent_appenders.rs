//! Several processes append posts to one file at the same time, as the server
//! and the synchronizer do: records never interleave, none is lost, and a
//! process killed in the middle leaves at worst a torn last record that a
//! repair (or the next append) cuts off.
//!
//! The appenders are this test binary itself, re-executed to run only the
//! ignored test `child_appender`, which does its work when the environment
//! tells it what to append.

use crate::harness::*;

use std::path::Path;
use std::process::{Command, Stdio};
use tinysns::storage::{self, AuthorClock, Post, Tail};

const ENV_FILE: &str = "TINYSNS_TEST_APPEND_FILE";
const ENV_AUTHOR: &str = "TINYSNS_TEST_APPEND_AUTHOR";
const ENV_COUNT: &str = "TINYSNS_TEST_APPEND_COUNT";

/// Post times: `BASE + i`, so each author's posts are in time order.
const BASE: i64 = 1_795_457_407_000_000_000;

/// The text of post `i` of `author`: about 200 bytes that say whose and
/// which post they are, so a mixed-up record cannot pass for a good one.
fn text(author: u64, i: u64) -> String {
    let fill = char::from(b'a' + (author % 26) as u8);
    let head = format!("author {author} post {i} ");
    let mut t = head.clone();
    while t.len() < 200 {
        t.push(fill);
    }
    t
}

fn post(author: u64, i: u64) -> Post {
    Post {
        author,
        time: BASE + i as i64,
        text: text(author, i),
    }
}

/// The appender: does nothing unless started by [`spawn_appender`].
#[test]
#[ignore = "run by the other tests of this file as a child process"]
fn child_appender() {
    let Ok(file) = std::env::var(ENV_FILE) else {
        return;
    };
    let author: u64 = std::env::var(ENV_AUTHOR)
        .expect("author")
        .parse()
        .expect("author id");
    let count: u64 = std::env::var(ENV_COUNT)
        .expect("count")
        .parse()
        .expect("post count");
    let mut tail = Tail::<AuthorClock>::new(file.into());
    for i in 0..count {
        let p = post(author, i);
        let wrote = tail
            .append_with(|_| Some(p.encode()))
            .unwrap_or_else(|e| panic!("append post {i} of {author}: {e}"));
        assert!(wrote, "post {i} of {author} not written");
    }
}

fn spawn_appender(file: &Path, author: u64, count: u64) -> Proc {
    let exe = std::env::current_exe().expect("the test binary's path");
    // The test's name as the test binary knows it: its module path without
    // the crate's name.
    let module = module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_, m)| m);
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", &format!("{module}::child_appender")])
        .args(["--nocapture", "--include-ignored"])
        .args(["--test-threads", "1"])
        .env(ENV_FILE, file)
        .env(ENV_AUTHOR, author.to_string())
        .env(ENV_COUNT, count.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    Proc::spawn(cmd, "an appender")
}

/// Waits for each appender to finish; each must succeed.
fn wait_all_succeed(authors: &[u64], children: &mut [Proc]) {
    for (a, c) in authors.iter().zip(children.iter_mut()) {
        let status = c.exit_status(&format!("appender {a}"));
        assert!(status.success(), "appender {a} failed: {status}");
    }
}

/// Parses a whole file: it must be nothing but complete, well-formed
/// records. Returns them in file order.
fn parse(path: &Path) -> Vec<Post> {
    let bytes = std::fs::read(path).expect("read the appended file");
    if bytes.is_empty() {
        return Vec::new();
    }
    assert!(
        bytes.ends_with(b"\n\n"),
        "{} does not end on a record boundary: ...{:?}",
        path.display(),
        String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(300)..])
    );
    let text = std::str::from_utf8(&bytes).expect("the file is UTF-8");
    let records: Vec<&str> = text.split("\n\n").collect();
    let (last, records) = records.split_last().expect("at least one piece");
    assert!(last.is_empty(), "text after the last record: {last:?}");
    records
        .iter()
        .enumerate()
        .map(|(n, r)| {
            Post::decode(r.as_bytes())
                .unwrap_or_else(|| panic!("record {n} of {} is malformed: {r:?}", path.display()))
        })
        .collect()
}

/// Each author's posts, in file order, must be exactly its posts `0..n` in
/// order; returns `n` per author.
fn check_per_author(posts: &[Post]) -> std::collections::BTreeMap<u64, u64> {
    let mut next = std::collections::BTreeMap::new();
    for p in posts {
        let i = next.entry(p.author).or_insert(0u64);
        assert_eq!(
            *p,
            post(p.author, *i),
            "post {} of author {} is not the one expected next",
            i,
            p.author
        );
        *i += 1;
    }
    next
}

#[test]
fn concurrent_appenders_never_interleave() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("u1_timeline.txt");
    let authors = [1u64, 2, 3, 4];
    let count = 500;
    let mut children: Vec<Proc> = authors
        .iter()
        .map(|a| spawn_appender(&file, *a, count))
        .collect();
    wait_all_succeed(&authors, &mut children);
    let posts = parse(&file);
    assert_eq!(posts.len(), authors.len() * count as usize);
    let per_author = check_per_author(&posts);
    for a in authors {
        assert_eq!(per_author.get(&a), Some(&count), "posts of author {a}");
    }
}

/// Kills one appender (SIGKILL) while all are writing: the others' records
/// are all there and whole, the killed one's are a prefix of its posts, a
/// repair leaves only whole records, and appending afterwards (also after a
/// simulated torn write) yields a well-formed file.
#[test]
fn an_appender_killed_mid_run_leaves_only_whole_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("u1_timeline.txt");
    let count = 500;
    // The victim would write far more than it gets the time to (its cap only
    // bounds the disk used if the kill came late).
    let victim_author = 9;
    let mut victim = spawn_appender(&file, victim_author, 200_000);
    let authors = [1u64, 2, 3];
    let mut children: Vec<Proc> = authors
        .iter()
        .map(|a| spawn_appender(&file, *a, count))
        .collect();

    wait_until("the file to grow past 256 KiB", || {
        std::fs::metadata(&file).is_ok_and(|m| m.len() > 256 * 1024)
    });
    assert!(
        victim.child.try_wait().expect("check the victim").is_none(),
        "the victim finished before it could be killed"
    );
    victim.child.kill().expect("SIGKILL the victim");
    let status = victim.child.wait().expect("reap the victim");
    assert!(!status.success(), "the victim was not killed: {status}");

    wait_all_succeed(&authors, &mut children);

    let cut = storage::repair(&file).expect("repair the file");
    let posts = parse(&file);
    let per_author = check_per_author(&posts);
    for a in authors {
        assert_eq!(per_author.get(&a), Some(&count), "posts of author {a}");
    }
    let victims = per_author.get(&victim_author).copied().unwrap_or(0);
    assert!(victims > 0, "no post of the victim survived");
    assert_eq!(
        posts.len() as u64,
        authors.len() as u64 * count + victims,
        "records of unknown authors (repair cut {cut} bytes)"
    );

    // A further append by another process leaves a well-formed file.
    let status = spawn_appender(&file, 5, 10).exit_status("a further appender");
    assert!(status.success(), "the further appender failed: {status}");
    let after = parse(&file);
    assert_eq!(after.len(), posts.len() + 10);
    assert_eq!(after[..posts.len()], posts[..]);
    assert_eq!(check_per_author(&after).get(&5), Some(&10));

    // A torn write (what a crash in the middle of one would leave) is cut off
    // by the next appender, under its lock, before it writes.
    let torn = post(6, 0).encode();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .expect("open for a torn write");
        f.write_all(&torn.as_bytes()[..torn.len() / 2])
            .expect("write half a record");
    }
    let status = spawn_appender(&file, 7, 3).exit_status("an appender after a torn write");
    assert!(
        status.success(),
        "the appender after a torn write failed: {status}"
    );
    let last = parse(&file);
    assert_eq!(last.len(), after.len() + 3);
    assert_eq!(last[..after.len()], after[..]);
    let per_author = check_per_author(&last);
    assert_eq!(per_author.get(&7), Some(&3));
    assert_eq!(per_author.get(&6), None, "the torn record survived");
}
