//! Disk faults (SPEC §5): a write is whole or absent, and one damaged file is
//! one user's problem.
//!
//! A full disk is real here: a small tmpfs mounted on a server's directory
//! (the tests run as root). Where mounting is not allowed the disk tests say
//! so on stderr and stop; the unit tests inject the same faults
//! (`storage::store::tests`, `server::replication::mirror::tests`).
//! Damaged files are planted by hand in a stopped server's directory: a
//! directory, links (to `/dev/zero`, to a file elsewhere), a FIFO, bytes that
//! are not UTF-8; and in a synchronizer's `positions.txt`.

use crate::harness::grpc::{connect, login_ok, request};
use crate::harness::peer;
use crate::harness::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use tinysns::proto::csce438::Message;
use tinysns::proto::csce438::sns_service_client::SnsServiceClient;
use tinysns::proto::tinysns::synchronizer_client::SynchronizerClient;
use tinysns::proto::tinysns::{PostBatch, PostOp, RemotePost, Role};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// Sessions live two periods without a refresh; every call here logs in
/// again first, and a long period keeps that true on a busy machine.
const HEARTBEAT_MS: u64 = 500;

// ---------------------------------------------------------------------------
// A small disk

/// A tmpfs mounted on a directory, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` on `dir`; `None`, said on stderr, when this
    /// machine does not let us.
    fn mount(dir: &Path, size: &str, test: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        let why = match out {
            Ok(o) if o.status.success() => {
                return Some(Tmpfs {
                    dir: dir.to_path_buf(),
                });
            }
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        };
        // Past the test harness's capture: a skipped test must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "\ndisk_faults::{test}: SKIPPED, cannot mount a tmpfs here ({why}); \
             a full disk is covered only by the unit tests with injected faults \
             (cargo test --lib storage::store server::replication::mirror)"
        );
        None
    }

    /// Fills the disk with a file of its own; returns it (remove it to free
    /// the space).
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 64 << 10];
        for size in [chunk.len(), 4096, 1] {
            loop {
                match f.write(&chunk[..size]) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => panic!("filling {}: {e}", path.display()),
                }
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: the processes may still hold files open.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

// ---------------------------------------------------------------------------
// Calls

fn token(user: &str) -> String {
    format!("token-{user}")
}

/// A FOLLOW that must be done (or fail with a status): an OK reply that
/// names another outcome (SPEC §6) is returned as ALREADY_EXISTS, the only one
/// these tests meet.
async fn follow(c: &mut SnsServiceClient<Channel>, user: &str, whom: &str) -> Result<(), Status> {
    login_ok(c, user, &token(user)).await;
    let msg = c
        .follow(request(user, &token(user), &[whom]))
        .await?
        .into_inner()
        .msg;
    match msg.as_str() {
        "Follow Successful" => Ok(()),
        "you have already joined" => Err(Status::already_exists(msg)),
        other => panic!("{user} follows {whom}: unexpected reply {other:?}"),
    }
}

/// `user`'s followers, as LIST shows them.
async fn followers(c: &mut SnsServiceClient<Channel>, user: &str) -> Result<Vec<String>, Status> {
    login_ok(c, user, &token(user)).await;
    let r = c.list(request(user, &token(user), &[])).await?;
    Ok(r.into_inner().followers)
}

/// Opens `user`'s timeline (logged in first).
async fn open_timeline(
    c: &mut SnsServiceClient<Channel>,
    user: &str,
) -> (mpsc::Sender<Message>, Streaming<Message>) {
    login_ok(c, user, &token(user)).await;
    grpc::open_timeline(c, user, &token(user))
        .await
        .expect("timeline")
}

/// Posts `text` as `user` on a timeline stream of its own with `post_id`;
/// the acknowledgement, or the error that ended the stream.
async fn post(
    c: &mut SnsServiceClient<Channel>,
    user: &str,
    text: &str,
    post_id: u64,
) -> Result<(), Status> {
    let (tx, mut stream) = open_timeline(c, user).await;
    tx.send(Message {
        username: user.to_string(),
        session: token(user),
        msg: text.to_string(),
        post_id,
        ..Default::default()
    })
    .await
    .expect("queue the post");
    let wait = async {
        loop {
            match stream.message().await {
                Ok(Some(m)) if m.ack_id == post_id => return Ok(()),
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without an answer"),
                Err(s) => return Err(s),
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .expect("an answer to the post")
}

/// The first message of `user`'s timeline stream that is a post with
/// `text`, or the error that ended the stream.
async fn shown(c: &mut SnsServiceClient<Channel>, user: &str, text: &str) -> Result<(), Status> {
    let (_tx, mut stream) = open_timeline(c, user).await;
    let wait = async {
        loop {
            match stream.message().await {
                Ok(Some(m)) if m.msg == text => return Ok(()),
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the timeline of {user} ended"),
                Err(s) => return Err(s),
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("{text:?} never shown to {user}"))
}

fn expect_internal<T: std::fmt::Debug>(r: Result<T, Status>, names: &str, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected INTERNAL, got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), Code::Internal, "{what}: {s:?}");
            assert!(s.message().contains(names), "{what}: {:?}", s.message());
        }
    }
}

// ---------------------------------------------------------------------------
// Files

/// The lines of `path` that start with `prefix`.
fn lines_with(path: &Path, prefix: &str) -> usize {
    read(path).lines().filter(|l| l.starts_with(prefix)).count()
}

/// How many posts with `text` `path` holds.
fn posts_with(path: &Path, text: &str) -> usize {
    post_texts(path).iter().filter(|t| *t == text).count()
}

/// Every file of a server directory (the journal and the gate too).
fn dir_files(dir: &Path) -> Snapshot {
    snapshot(dir, &[dir.to_path_buf()])
}

/// What of the coordinator's table a refused write must not change.
fn roles(sys: &System) -> Vec<(i32, u32, u32, i32, bool, bool, u64)> {
    let mut t: Vec<_> = sys
        .table()
        .expect("table")
        .servers
        .into_iter()
        .map(|e| {
            let (k, c, s, r) = (e.kind, e.cluster_id, e.server_id, e.role);
            (k, c, s, r, e.alive, e.in_service, e.process)
        })
        .collect();
    t.sort();
    t
}

/// Waits until server 1 of cluster 1 is master and serves: the table says
/// master as soon as it registers, before it has opened its directory; it
/// answers a login only once it has.
fn wait_serving(sys: &System, rt: &tokio::runtime::Runtime) {
    sys.wait_for_role(1, 1, Role::Master);
    let url = sys.server_url(1, 1);
    rt.block_on(async {
        let mut c = connect(&url).await;
        login_ok(&mut c, "1", &token("1")).await;
    });
}

/// A single server (cluster 1 of 3, no slave) whose directory is a tmpfs.
fn lone_server_on_tmpfs(test: &str, rt: &tokio::runtime::Runtime) -> Option<(System, Tmpfs)> {
    let mut sys = System::new(3, HEARTBEAT_MS, 30_000);
    let disk = Tmpfs::mount(&sys.server_dir(1, 1), "4m", test)?;
    sys.start_server(1, 1);
    wait_serving(&sys, rt);
    Some((sys, disk))
}

fn assert_alive(sys: &mut System, name: &str) {
    let proc = sys.procs.get_mut(name).expect("started");
    let status = proc.child.try_wait().expect("wait for a child");
    assert!(status.is_none(), "{name} exited: {status:?}");
}

// ---------------------------------------------------------------------------
// A write is whole or absent

/// The journal takes the follow but the followee's file does not: the
/// follow is owed, shown whole (listed and "already following" together)
/// and finished, each record once, when space is freed; a post likewise,
/// with its fan-out, and its retry is not stored twice. The slave ends with
/// the same files.
#[test]
fn a_follow_on_a_full_disk_is_never_half_recorded() {
    let test = "a_follow_on_a_full_disk_is_never_half_recorded";
    let mut sys = System::new(3, HEARTBEAT_MS, 30_000);
    let dir = sys.server_dir(1, 1);
    let Some(disk) = Tmpfs::mount(&dir, "4m", test) else {
        return;
    };
    sys.start_pair(1);
    sys.wait_for_all();
    let url = sys.server_url(1, 1);
    let rt = runtime();
    let mut c = rt.block_on(async {
        let mut c = connect(&url).await;
        for u in ["1", "4", "7"] {
            login_ok(&mut c, u, &token(u)).await;
        }
        for (user, whom) in [("1", "7"), ("4", "1"), ("7", "1")] {
            follow(&mut c, user, whom).await.expect("a follow");
        }
        c
    });
    let before = records(&dir);

    // 1 follows 4 on a full disk: the journal has room in its last page and
    // 1's following file in its own, 4's followers file has none.
    let filler = disk.fill();
    rt.block_on(async {
        // Answered yes: the journal has it, and the server finishes it.
        follow(&mut c, "1", "4")
            .await
            .expect("a follow on a full disk, kept in the journal");
        // Shown whole, never half: listed, and "already following".
        assert_eq!(followers(&mut c, "4").await.expect("LIST"), ["1"]);
        let again = follow(&mut c, "1", "4").await.expect_err("a second follow");
        assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    });
    assert!(read(&dir.join("journal.txt")).contains("F 1 4 "));

    std::fs::remove_file(&filler).expect("free the disk");
    wait_until("the owed follow finished", || {
        lines_with(&dir.join("u4_followers.txt"), "+ 1 ") == 1
    });
    assert_eq!(lines_with(&dir.join("u1_following.txt"), "+ 4 "), 1);
    rt.block_on(async {
        assert_eq!(followers(&mut c, "4").await.expect("LIST"), ["1"]);
        let again = follow(&mut c, "1", "4").await.expect_err("a second follow");
        assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    });
    // Exactly the two records of the follow were added.
    let after = records(&dir);
    let mut want = before.clone();
    for (file, prefix) in [("u1_following.txt", "+ 4 "), ("u4_followers.txt", "+ 1 ")] {
        let added = after[file].iter().find(|r| r.starts_with(prefix)).cloned();
        let recs = want.entry(file.to_string()).or_default();
        recs.push(added.expect("the follow's record"));
        recs.sort();
    }
    assert_eq!(after, want, "what the owed follow wrote");

    // A post on a full disk: nothing of it fits; owed, then written to the
    // author's file and both followers' timelines once, retry included.
    let filler = disk.fill();
    rt.block_on(async {
        post(&mut c, "1", "on a full disk", 99)
            .await
            .expect("a post on a full disk, kept in the journal");
        post(&mut c, "1", "on a full disk", 99)
            .await
            .expect("the retry is answered as done");
    });
    std::fs::remove_file(&filler).expect("free the disk");
    let files = ["u1_posts.txt", "u4_timeline.txt", "u7_timeline.txt"].map(|f| dir.join(f));
    wait_until("the owed post finished", || {
        files.iter().all(|f| posts_with(f, "on a full disk") == 1)
    });
    rt.block_on(async {
        shown(&mut c, "4", "on a full disk").await.expect("shown");
    });

    // The slave, which stored both writes when they were mirrored, holds the
    // same records.
    let slave = sys.server_dir(1, 2);
    wait_for("the slave in service with the master's records", || {
        let e = sys.entry(1, 2).ok_or("no entry for the slave")?;
        if !is_slave_in_service(&e) {
            return Err(format!("slave not in service: {e:?}"));
        }
        let (m, s) = (records(&dir), records(&slave));
        if m != s {
            return Err(format!("master {m:?}\nslave {s:?}"));
        }
        Ok(())
    });
    for d in [&dir, &slave] {
        assert_no_duplicates(d);
    }
    assert_alive(&mut sys, "server_1_1");
}

/// The journal itself has no room: the write is refused and every file is
/// as it was (the journal too), the table too; once space is freed the same
/// follow is stored.
#[test]
fn a_write_the_journal_cannot_take_changes_nothing() {
    let test = "a_write_the_journal_cannot_take_changes_nothing";
    let rt = runtime();
    let Some((mut sys, disk)) = lone_server_on_tmpfs(test, &rt) else {
        return;
    };
    let dir = sys.server_dir(1, 1);
    let url = sys.server_url(1, 1);
    rt.block_on(async {
        let mut c = connect(&url).await;
        login_ok(&mut c, "4", &token("4")).await;
    });
    // A start empties the journal: its next line needs a page of its own.
    sys.kill("server_1_1");
    sys.restart_server(1, 1);
    wait_serving(&sys, &rt);
    let filler = disk.fill();
    let mut c = rt.block_on(async {
        let mut c = connect(&url).await;
        login_ok(&mut c, "1", &token("1")).await;
        login_ok(&mut c, "4", &token("4")).await;
        c
    });
    let (files, table) = (dir_files(&dir), roles(&sys));
    assert_eq!(
        read(&dir.join("journal.txt")),
        "",
        "a start empties the journal"
    );
    for what in ["a follow on a full disk", "the same follow again"] {
        let (e, listed) = rt.block_on(async {
            let e = follow(&mut c, "1", "4").await.expect_err(what);
            (e, followers(&mut c, "4").await.expect("LIST"))
        });
        assert_eq!(e.code(), Code::Internal, "{what}: {e:?}");
        assert!(e.message().contains("space"), "{what}: {e:?}");
        assert!(listed.is_empty(), "{what}: listed {listed:?}");
        assert_same_files(&files, &dir_files(&dir), what);
        assert_eq!(roles(&sys), table, "{what}: the table changed");
    }
    std::fs::remove_file(&filler).expect("free the disk");
    rt.block_on(async {
        follow(&mut c, "1", "4")
            .await
            .expect("the follow, with room");
        assert_eq!(followers(&mut c, "4").await.expect("LIST"), ["1"]);
    });
    assert_eq!(lines_with(&dir.join("u1_following.txt"), "+ 4 "), 1);
    assert_eq!(lines_with(&dir.join("u4_followers.txt"), "+ 1 "), 1);
    assert_alive(&mut sys, "server_1_1");
}

/// A follow owed when the server is killed is finished by the journal at
/// the next start, each record once.
#[test]
fn an_owed_follow_is_finished_by_the_journal_at_restart() {
    let test = "an_owed_follow_is_finished_by_the_journal_at_restart";
    let rt = runtime();
    let Some((mut sys, disk)) = lone_server_on_tmpfs(test, &rt) else {
        return;
    };
    let dir = sys.server_dir(1, 1);
    let url = sys.server_url(1, 1);
    rt.block_on(async {
        let mut c = connect(&url).await;
        for u in ["1", "4", "7"] {
            login_ok(&mut c, u, &token(u)).await;
        }
        follow(&mut c, "1", "7").await.expect("1 follows 7");
    });
    let filler = disk.fill();
    rt.block_on(async {
        let mut c = connect(&url).await;
        follow(&mut c, "1", "4")
            .await
            .expect("a follow on a full disk, kept in the journal");
    });
    // Killed while the disk is still full: the journal holds the follow,
    // the followee's file does not.
    sys.kill("server_1_1");
    assert!(read(&dir.join("journal.txt")).contains("F 1 4 "));
    assert_eq!(lines_with(&dir.join("u4_followers.txt"), "+ 1 "), 0);
    std::fs::remove_file(&filler).expect("free the disk");
    sys.restart_server(1, 1);
    wait_serving(&sys, &rt);
    wait_until("the journal replayed and emptied", || {
        read(&dir.join("journal.txt")).is_empty()
    });
    assert_eq!(lines_with(&dir.join("u1_following.txt"), "+ 4 "), 1);
    assert_eq!(lines_with(&dir.join("u4_followers.txt"), "+ 1 "), 1);
    rt.block_on(async {
        let mut c = connect(&url).await;
        assert_eq!(followers(&mut c, "4").await.expect("LIST"), ["1"]);
        let again = follow(&mut c, "1", "4").await.expect_err("a second follow");
        assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    });
    assert_no_duplicates(&dir);
    assert_alive(&mut sys, "server_1_1");
}

// ---------------------------------------------------------------------------
// One damaged file is one user's problem

/// What [`plant`] put where.
struct Planted {
    /// A file outside the data directory that a link points to.
    outside: PathBuf,
    _keep: tempfile::TempDir,
}

/// Damages, in a stopped server's directory, one file of each of users 7,
/// 10, 13, 16 and 19, each a different way.
fn plant(dir: &Path) -> Planted {
    let keep = tempfile::tempdir().expect("tempdir");
    let outside = keep.path().join("elsewhere.txt");
    std::fs::write(&outside, "+ 4 2026-11-23T18:10:07.123456789Z\n").expect("outside file");
    let replace = |name: &str| {
        let p = dir.join(name);
        let _ = std::fs::remove_file(&p);
        p
    };
    std::fs::create_dir(replace("u7_timeline.txt")).expect("a directory");
    std::os::unix::fs::symlink("/dev/zero", replace("u10_followers.txt")).expect("a link");
    std::os::unix::fs::symlink(&outside, replace("u13_following.txt")).expect("a link");
    let fifo = replace("u16_posts.txt");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success(), "mkfifo");
    // Not UTF-8, but whole records: a start keeps it as it is.
    let mut garbage = b"T \xff\xfe2026\nU \xc3\x28\nW \x80\x81 not text\n\n".to_vec();
    garbage.extend_from_slice(b"\xf0\x28\x8c\x28 more\n\n");
    std::fs::write(replace("u19_timeline.txt"), garbage).expect("garbage");
    Planted {
        outside,
        _keep: keep,
    }
}

/// A server started over damaged files of five users registers, names each
/// file in its log, serves everyone else (login, follow, post, timelines),
/// answers each damaged user's requests that need the file with a clear
/// error that changes nothing, and does not exit.
#[test]
fn a_damaged_file_is_one_users_problem() {
    let mut sys = System::new(3, HEARTBEAT_MS, 30_000);
    sys.start_server(1, 1);
    sys.wait_for_role(1, 1, Role::Master);
    let dir = sys.server_dir(1, 1);
    let url = sys.server_url(1, 1);
    let rt = runtime();
    rt.block_on(async {
        let mut c = connect(&url).await;
        for u in ["1", "4", "7", "10", "13", "16", "19"] {
            login_ok(&mut c, u, &token(u)).await;
        }
        for (user, whom) in [
            ("4", "1"),
            ("7", "1"),
            ("19", "1"),
            ("13", "1"),
            ("1", "10"),
        ] {
            follow(&mut c, user, whom).await.expect("a follow");
        }
        post(&mut c, "16", "before", 1).await.expect("a post by 16");
    });
    sys.kill("server_1_1");
    let planted = plant(&dir);
    sys.restart_server(1, 1);
    wait_serving(&sys, &rt);
    let log = sys.log("server_1_1");
    for name in [
        "u7_timeline.txt",
        "u10_followers.txt",
        "u13_following.txt",
        "u16_posts.txt",
    ] {
        assert!(
            log.contains(&format!("{}", dir.join(name).display())),
            "{name} not named:\n{log}"
        );
    }

    rt.block_on(async {
        let mut c = connect(&url).await;
        // Everyone logs in, the damaged users too.
        for u in ["1", "4", "7", "10", "13", "16", "19"] {
            login_ok(&mut c, u, &token(u)).await;
        }
        // Users the damage does not concern: follow, post, timelines.
        follow(&mut c, "4", "19").await.expect("4 follows 19");
        post(&mut c, "1", "after the damage", 2)
            .await
            .expect("1 posts");
        shown(&mut c, "4", "after the damage")
            .await
            .expect("4 sees it");
        let listed = followers(&mut c, "1").await.expect("LIST of 1");
        assert_eq!(listed, ["4", "7", "13", "19"]);
        // Text that is not UTF-8 costs only its records.
        shown(&mut c, "19", "after the damage")
            .await
            .expect("19 sees it");
    });
    assert!(
        sys.log("server_1_1")
            .contains(&format!("{}", dir.join("u19_timeline.txt").display())),
        "the garbage is not reported"
    );

    // The damaged users' requests that need their file: a clear error, and
    // nothing changes.
    let mut c = rt.block_on(connect(&url));
    let refusals = [
        ("u7_timeline.txt", "the timeline of 7"),
        ("u10_followers.txt", "LIST of 10"),
        ("u10_followers.txt", "4 follows 10"),
        ("u13_following.txt", "13 follows 4"),
        ("u16_posts.txt", "a post by 16"),
    ];
    for (file, what) in refusals {
        let (files, table) = (dir_files(&dir), roles(&sys));
        let r = rt.block_on(async {
            match what {
                "the timeline of 7" => shown(&mut c, "7", "anything").await,
                "LIST of 10" => followers(&mut c, "10").await.map(drop),
                "4 follows 10" => follow(&mut c, "4", "10").await,
                "13 follows 4" => follow(&mut c, "13", "4").await,
                _ => post(&mut c, "16", "refused", 3).await,
            }
        });
        expect_internal(r, file, what);
        assert_same_files(&files, &dir_files(&dir), what);
        assert_eq!(roles(&sys), table, "{what}: the table changed");
    }
    assert_eq!(
        read(&planted.outside),
        "+ 4 2026-11-23T18:10:07.123456789Z\n",
        "a link was followed"
    );
    assert!(
        dir.join("u7_timeline.txt").is_dir(),
        "the damage is left for a person"
    );
    assert_alive(&mut sys, "server_1_1");
}

/// A slave that restarts over damaged files, beside a master with a damaged
/// file of its own, resyncs: the snapshot carries everything else, never
/// the damaged entries; the slave's are set aside and replaced by the
/// master's copies, and the slave keeps its own copy of the file the master
/// cannot read. Writes go on to both.
#[test]
fn damaged_files_neither_stop_nor_travel_in_a_resync() {
    let mut sys = System::one_cluster(HEARTBEAT_MS);
    let (master, slave) = (sys.server_dir(1, 1), sys.server_dir(1, 2));
    let url = sys.server_url(1, 1);
    let rt = runtime();
    rt.block_on(async {
        let mut c = connect(&url).await;
        for u in ["1", "4", "7"] {
            login_ok(&mut c, u, &token(u)).await;
        }
        follow(&mut c, "4", "1").await.expect("4 follows 1");
        follow(&mut c, "7", "1").await.expect("7 follows 1");
        post(&mut c, "1", "first", 1).await.expect("a post");
    });
    sys.kill("server_1_2");
    // A write while it is down: the master goes on without it, so that
    // "in service" below is about the restarted run.
    rt.block_on(async {
        let mut c = connect(&url).await;
        post(&mut c, "1", "while down", 3).await.expect("a post");
    });
    wait_until("the slave out of service", || {
        sys.entry(1, 2).is_some_and(|e| !e.in_service)
    });
    let keep = tempfile::tempdir().expect("tempdir");
    let outside = keep.path().join("elsewhere.txt");
    std::fs::write(&outside, "leave me\n").expect("outside file");
    // The slave's damage: a link out of the directory, a directory, a FIFO
    // where the master has no file.
    let slave_copy = read(&slave.join("u7_timeline.txt"));
    std::fs::remove_file(slave.join("u1_posts.txt")).expect("remove");
    std::os::unix::fs::symlink(&outside, slave.join("u1_posts.txt")).expect("a link");
    std::fs::remove_file(slave.join("u4_timeline.txt")).expect("remove");
    std::fs::create_dir(slave.join("u4_timeline.txt")).expect("a directory");
    let made = Command::new("mkfifo")
        .arg(slave.join("u7_posts.txt"))
        .status()
        .expect("mkfifo");
    assert!(made.success());
    // The master's: a directory where 7's timeline was.
    std::fs::remove_file(master.join("u7_timeline.txt")).expect("remove");
    std::fs::create_dir(master.join("u7_timeline.txt")).expect("a directory");

    sys.restart_server(1, 2);
    sys.wait_slave_in_service(1, 2);
    for name in ["u1_posts.txt", "u4_timeline.txt"] {
        let (m, s) = (master.join(name), slave.join(name));
        assert!(
            std::fs::symlink_metadata(&s).expect(name).is_file(),
            "{name}"
        );
        assert_eq!(read(&s), read(&m), "{name}");
    }
    assert_eq!(read(&outside), "leave me\n", "a link was followed");
    assert!(std::fs::symlink_metadata(slave.join("u7_posts.txt")).is_err());
    assert!(std::fs::symlink_metadata(slave.join("u7_posts.txt.damaged")).is_ok());
    assert_eq!(
        read(&slave.join("u7_timeline.txt")),
        slave_copy,
        "the slave's copy"
    );
    assert!(
        sys.log("server_1_1")
            .contains(&format!("{}", master.join("u7_timeline.txt").display())),
        "the master does not name its damaged file"
    );
    // Writes go on, to both.
    rt.block_on(async {
        let mut c = connect(&url).await;
        post(&mut c, "1", "second", 2).await.expect("a post");
    });
    for d in [&master, &slave] {
        assert_eq!(posts_with(&d.join("u1_posts.txt"), "second"), 1);
        assert_eq!(posts_with(&d.join("u4_timeline.txt"), "second"), 1);
    }
    assert_alive(&mut sys, "server_1_1");
    assert_alive(&mut sys, "server_1_2");
}

/// A synchronizer restarted over a `positions.txt` with bytes that are not
/// UTF-8, reading a master's directory with a damaged file, skips and
/// reports both, keeps running and keeps propagating users, follows and
/// posts.
#[test]
fn a_damaged_positions_line_or_source_file_does_not_stop_a_synchronizer() {
    let mut sys = System::full_with(2, HEARTBEAT_MS, 30_000);
    let url1 = sys.server_url(1, 1);
    let url2 = sys.server_url(2, 1);
    let rt = runtime();
    rt.block_on(async {
        let mut c = connect(&url1).await;
        login_ok(&mut c, "1", &token("1")).await;
        login_ok(&mut c, "3", &token("3")).await;
        let mut c2 = connect(&url2).await;
        login_ok(&mut c2, "2", &token("2")).await;
    });
    wait_until("user 1 known in cluster 2", || sys.has_user(2, 1, 1));
    let master = sys.server_dir(1, 1);
    let positions = sys
        .data_dir()
        .join("cluster_1")
        .join("synchronizer")
        .join("positions.txt");
    wait_until("positions saved", || positions.exists());
    sys.kill("synchronizer_1");
    let mut bytes = std::fs::read(&positions).expect("positions.txt");
    bytes.extend_from_slice(b"users 2 \xff\xfe\n\x80\x81 garbage\nposts 1 2 \xc3\x28 0\n");
    std::fs::write(&positions, bytes).expect("damage positions.txt");
    // A source file of the master that cannot be read: user 3's follows.
    std::os::unix::fs::symlink("/dev/zero", master.join("u3_following.txt")).expect("a link");
    sys.start_synchronizer(1);

    rt.block_on(async {
        let mut c = connect(&url1).await;
        login_ok(&mut c, "5", &token("5")).await;
        let mut c2 = connect(&url2).await;
        follow(&mut c2, "2", "1").await.expect("2 follows 1");
        follow(&mut c, "1", "2").await.expect("1 follows 2");
    });
    wait_until("user 5 known in cluster 2", || sys.has_user(2, 1, 5));
    wait_until("1's follow of 2 in cluster 2", || {
        sys.has_follower(2, 1, 2, 1)
    });
    wait_until("2's follow of 1 in cluster 1", || {
        sys.has_follower(1, 1, 1, 2)
    });
    rt.block_on(async {
        let mut c = connect(&url1).await;
        post(&mut c, "1", "carried", 1).await.expect("a post");
    });
    wait_until("1's post in 2's timeline", || {
        posts_with(&sys.server_dir(2, 1).join("u2_timeline.txt"), "carried") == 1
    });
    let log = sys.log("synchronizer_1");
    assert!(
        log.contains(&format!("{}:", positions.display())) && log.contains("malformed"),
        "the damaged lines are not reported:\n{log}"
    );
    assert!(
        log.contains(&format!("{}", master.join("u3_following.txt").display())),
        "the damaged source file is not named:\n{log}"
    );

    // A push whose target has a damaged timeline is stored for the other
    // target, on both servers, and acknowledged.
    std::fs::create_dir(master.join("u5_timeline.txt")).expect("a directory");
    let sync1 = format!("http://127.0.0.1:{}", sys.ports["synchronizer_1"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let batch = PostBatch {
        from_cluster: 2,
        posts: vec![RemotePost {
            post: Some(PostOp {
                author: 2,
                time_ns: i64::try_from(now).expect("time in i64"),
                text: "pushed".into(),
                post_id: 0,
            }),
            targets: vec![3, 5],
        }],
    };
    rt.block_on(async {
        let mut peer = SynchronizerClient::new(peer::peer(&sys, &sync1).await);
        peer.push_posts(batch)
            .await
            .expect("the push is acknowledged");
    });
    for s in [1, 2] {
        let tl = sys.server_dir(1, s).join("u3_timeline.txt");
        assert_eq!(posts_with(&tl, "pushed"), 1, "{}", tl.display());
    }
    assert!(master.join("u5_timeline.txt").is_dir());
    assert!(
        sys.log("synchronizer_1")
            .contains(&format!("{}", master.join("u5_timeline.txt").display())),
        "the damaged timeline is not named"
    );

    assert_alive(&mut sys, "synchronizer_1");
    let alive = sys.table().expect("table").servers.into_iter().any(|e| {
        e.kind == tinysns::proto::tinysns::Kind::Synchronizer as i32 && e.cluster_id == 1 && e.alive
    });
    assert!(alive, "synchronizer 1 is not alive in the table");
}

/// One author's damaged record (a valid record shape, an invalid post: a
/// tab in its text) is refused by the peer cluster's receiver; that
/// refusal holds up that author's pushes only, never other authors' posts
/// to the same peer, also when every source is retried in one round after
/// the peer was down.
#[test]
fn a_refused_record_holds_up_its_author_only() {
    let mut sys = System::full_with(2, HEARTBEAT_MS, 30_000);
    // Cluster 1 holds the odd users, cluster 2 the even ones; user 2
    // follows four authors of cluster 1.
    let authors = [1u64, 3, 5, 7];
    let mut writers: Vec<Client> = authors
        .iter()
        .map(|&a| Client::logged_in(sys.coord_port, a))
        .collect();
    wait_until("cluster 2 to know the authors", || {
        authors.iter().all(|&a| sys.has_user(2, 1, a))
    });
    let mut reader = Client::logged_in(sys.coord_port, 2);
    for a in authors {
        assert_eq!(reader.command(&format!("FOLLOW {a}")), SUCCESS);
    }
    wait_until("cluster 1 to see the follows", || {
        authors.iter().all(|&a| sys.has_follower(1, 1, a, 2))
    });
    for w in writers.iter_mut() {
        w.enter_timeline();
    }
    writers[0].send("good by 1");
    let timeline = sys.server_dir(2, 1).join("u2_timeline.txt");
    wait_until("author 1's post in cluster 2", || {
        post_texts(&timeline) == ["good by 1"]
    });
    // Author 1's posts file gets one record that is no valid post, on both
    // servers of cluster 1.
    let t = tinysns::timefmt::to_rfc3339(tinysns::timefmt::now());
    for s in 1..=2 {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(sys.server_dir(1, s).join("u1_posts.txt"))
            .expect("posts file");
        write!(f, "T {t}\nU 1\nW bad\there\n\n").expect("append");
    }
    // The peer is away while the others post: every push to it fails, and
    // all are retried in one round when it is back.
    sys.kill(&System::synchronizer_name(2));
    for (w, a) in writers.iter_mut().zip(authors).skip(1) {
        w.send(&format!("post by {a}"));
    }
    wait_until("the posts to be stored in cluster 1", || {
        authors.iter().skip(1).all(|a| {
            posts_with(
                &sys.server_dir(1, 1).join(format!("u{a}_posts.txt")),
                &format!("post by {a}"),
            ) == 1
        })
    });
    sys.start_synchronizer(2);
    wait_for("every other author's post in cluster 2", || {
        let got = post_texts(&timeline);
        let missing: Vec<u64> = authors
            .iter()
            .skip(1)
            .copied()
            .filter(|a| !got.contains(&format!("post by {a}")))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "missing the posts of {missing:?}; timeline {got:?}"
            ))
        }
    });
    assert!(
        !read(&timeline).contains("bad\there"),
        "the invalid record was delivered"
    );
}
