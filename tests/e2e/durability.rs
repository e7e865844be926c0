//! The write-ahead journal (`src/storage/journal.rs`, `SNS_FSYNC`): at
//! start-up a server replays `journal.txt` into its data files, as after a
//! machine crash that lost the page cache, ignores a torn last line, and
//! empties the journal; replaying again writes nothing. With `SNS_FSYNC=0`
//! nothing is journaled.

use crate::harness::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use tinysns::proto::tinysns::Role;

const JOURNAL: &str = "journal.txt";

fn now_ns() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(d.as_nanos()).expect("time in u64 nanoseconds")
}

fn append(path: &Path, text: &str) {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("appending to {}: {e}", path.display()));
}

/// The journal's length; `None` if there is none.
fn journal_len(dir: &Path) -> Option<u64> {
    std::fs::metadata(dir.join(JOURNAL)).ok().map(|m| m.len())
}

/// The bytes of every data file of a server directory (not the journal).
fn data_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("server dir")
        .flatten()
        .filter(|e| tinysns::storage::FileKind::parse(&e.path()).is_some())
        .map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            (name, std::fs::read(e.path()).expect("data file"))
        })
        .collect()
}

/// How many of `path`'s lines equal `line`.
fn lines_equal(path: &Path, line: &str) -> usize {
    read(path).lines().filter(|l| *l == line).count()
}

#[test]
fn journal_is_replayed_at_start_up_once_and_a_torn_line_ignored() {
    let mut sys = System::new(3, 500, 30_000);
    sys.start_server(1, 1);
    sys.wait_for_role(1, 1, Role::Master);
    let dir = sys.server_dir(1, 1);
    let journal = dir.join(JOURNAL);
    drop(Client::logged_in(sys.coord_port, 1));
    wait_until("user 1 in all_users.txt", || {
        lines_equal(&dir.join("all_users.txt"), "1") == 1
    });
    sys.kill(&System::server_name(1, 1));

    // What a machine crash leaves: operations flushed to the journal whose
    // records never reached the data files, and a last line cut short
    // (never flushed, so never acknowledged).
    let (t_follow, t_post, t_torn) = {
        let t = now_ns();
        (t, t + 1_000, t + 2_000)
    };
    assert_eq!(
        posts_in(&dir.join("u1_posts.txt")),
        vec![],
        "user 1 has posts before the test wrote any"
    );
    // The whole lines end with the mark that says the slave took them.
    let whole = format!(
        "A 4\n\
         F 4 1 {t_follow} + 77\n\
         P 1 {t_post} 912 hello from the journal\n\
         C\n"
    );
    let torn = format!("P 1 {t_torn} 913 torn line never acknowledged");
    append(&journal, &whole);
    append(&journal, &torn);
    // The journal also holds what the first run journaled (user 1's login).
    // Whole lines only, and not the marks (`C`) that decide batches.
    let journaled = read(&journal)
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n') && *l != "C\n")
        .count();

    sys.restart_server(1, 1);
    // The journal is emptied only after its operations are in the files.
    wait_until("the journal replayed and emptied", || {
        journal_len(&dir) == Some(0)
    });
    let posts = dir.join("u1_posts.txt");
    assert_eq!(
        posts_in(&posts),
        vec![(1, "hello from the journal".to_string())],
        "{}:\n{}",
        posts.display(),
        read(&posts)
    );
    assert_eq!(
        lines_equal(&dir.join("all_users.txt"), "4"),
        1,
        "all_users.txt:\n{}",
        read(&dir.join("all_users.txt"))
    );
    let following = read(&dir.join("u4_following.txt"));
    assert_eq!(
        following.lines().filter(|l| l.starts_with("+ 1 ")).count(),
        1,
        "u4_following.txt:\n{following}"
    );
    let followers = read(&dir.join("u1_followers.txt"));
    assert_eq!(
        followers.lines().filter(|l| l.starts_with("+ 4 ")).count(),
        1,
        "u1_followers.txt:\n{followers}"
    );
    // The post is fanned out to the follower the journal added before it.
    assert_eq!(
        posts_in(&dir.join("u4_timeline.txt")),
        vec![(1, "hello from the journal".to_string())],
        "u4_timeline.txt:\n{}",
        read(&dir.join("u4_timeline.txt"))
    );
    for e in std::fs::read_dir(&dir).expect("server dir").flatten() {
        let text =
            String::from_utf8_lossy(&std::fs::read(e.path()).unwrap_or_default()).to_string();
        assert!(
            !text.contains("torn line"),
            "the torn journal line reached {}:\n{text}",
            e.path().display()
        );
    }
    // No state counts the replayed operations; the server's log does.
    let log = sys.log(&System::server_name(1, 1));
    assert!(
        log.contains(&format!("replayed {journaled} journaled operation(s)")),
        "the server log does not report replaying the {journaled} whole lines:\n{log}"
    );
    assert_no_duplicates(&dir);

    // The replayed state is what clients see.
    sys.wait_for_role(1, 1, Role::Master);
    let mut reader = Client::logged_in(sys.coord_port, 4);
    reader.expect_list("All users: 1, 4", "Followers:");
    reader.enter_timeline();
    let line = reader.next_line().expect("the journaled post on screen");
    assert!(
        line.starts_with("1 (") && line.ends_with(" >> hello from the journal"),
        "{line}"
    );
    drop(reader);

    // A process crash after replay, before the journal was emptied: the
    // page cache kept every record, so replaying the same lines again must
    // write nothing.
    sys.kill(&System::server_name(1, 1));
    let before = data_files(&dir);
    append(&journal, &whole);
    sys.restart_server(1, 1);
    wait_until("the journal replayed again and emptied", || {
        journal_len(&dir) == Some(0)
    });
    let after = data_files(&dir);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "replaying again changed the set of data files"
    );
    for (name, bytes) in &before {
        assert!(
            after[name] == *bytes,
            "replaying again changed {name}:\nbefore:\n{}\nafter:\n{}",
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(&after[name])
        );
    }
    assert_no_duplicates(&dir);

    // And with durability on (the default), an acknowledged post is in the
    // journal (it is emptied only at a checkpoint or at start-up).
    sys.wait_for_role(1, 1, Role::Master);
    let mut poster = Client::logged_in(sys.coord_port, 1);
    poster.enter_timeline();
    poster.send("journaled before it is stored");
    wait_until("the new post in u1_posts.txt", || {
        posts_in(&posts)
            .iter()
            .any(|(_, t)| t == "journaled before it is stored")
    });
    let text = read(&journal);
    assert!(
        text.lines()
            .any(|l| l.starts_with("P 1 ") && l.ends_with(" journaled before it is stored")),
        "the stored post is not in the journal:\n{text}"
    );
}

#[test]
fn without_fsync_nothing_is_journaled_and_a_leftover_journal_is_replayed() {
    const NO_FSYNC: &[(&str, &str)] = &[("SNS_FSYNC", "0")];
    let mut sys = System::new(3, 500, 30_000);
    let (dir1, dir2) = (sys.server_dir(1, 1), sys.server_dir(1, 2));
    // A journal left by an earlier run with durability on: replayed, then
    // removed, even with durability off now.
    std::fs::create_dir_all(&dir1).expect("server dir");
    append(&dir1.join(JOURNAL), "A 7\nC\n");
    sys.start_server_with(1, 1, NO_FSYNC);
    sys.wait_for_role(1, 1, Role::Master);
    wait_until("the leftover journal replayed and removed", || {
        journal_len(&dir1).is_none()
    });
    assert_eq!(
        lines_equal(&dir1.join("all_users.txt"), "7"),
        1,
        "all_users.txt:\n{}",
        read(&dir1.join("all_users.txt"))
    );
    sys.start_server_with(1, 2, NO_FSYNC);
    sys.wait_for_all();

    let mut poster = Client::logged_in(sys.coord_port, 1);
    let mut reader = Client::logged_in(sys.coord_port, 4);
    poster.expect_list("All users: 1, 4, 7", "Followers:");
    assert_eq!(reader.command("FOLLOW 1"), SUCCESS);
    reader.enter_timeline();
    poster.enter_timeline();
    poster.send("written without fsync");
    let line = reader.next_line().expect("the post on screen");
    assert!(line.ends_with(" >> written without fsync"), "{line}");
    for dir in [&dir1, &dir2] {
        wait_until(&format!("the post in {}", dir.display()), || {
            posts_in(&dir.join("u1_posts.txt")) == vec![(1, "written without fsync".to_string())]
                && posts_in(&dir.join("u4_timeline.txt")).len() == 1
        });
        assert!(
            journal_len(dir).is_none_or(|n| n == 0),
            "{} has a journal with SNS_FSYNC=0:\n{}",
            dir.display(),
            read(&dir.join(JOURNAL))
        );
        assert_no_duplicates(dir);
    }
}
