//! Failover end to end (SPEC §2 "Failover as the user sees it", §4): a master
//! killed and restarted while its users post, a server restarted without its
//! directory and then promoted, a paused (SIGSTOP) master that must be fenced,
//! coordinator and synchronizer restarts under traffic, the failover time a
//! user sees (printed, not asserted), and (ignored while the bug stands) a
//! follower whose timeline must resume without gaps after a failover.
//!
//! Every wait polls a condition with a deadline; timings are only printed
//! (`cargo test --test failover -- --nocapture`).

mod common;
use common::*;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;
use tinysns::proto::csce438::sns_service_client::SnsServiceClient;
use tinysns::proto::csce438::{Message, Request};
use tinysns::proto::tinysns::{Role, ServerInfo};

/// Heartbeat period of these tests: the failure window is twice that.
const HB: u64 = 400;
/// The synchronizers' full cycle (failovers are noticed every heartbeat).
const SYNC: u64 = 5_000;

// ---------------------------------------------------------------- helpers

/// `println!` with the wall-clock time, to find the moment in the logs.
macro_rules! say {
    ($($a:tt)*) => {
        println!("[{}] {}", now(), format!($($a)*))
    };
}

/// Coordinator, master + slave per cluster, a synchronizer per cluster.
fn full(clusters: u32, heartbeat_ms: u64, sync_ms: u64) -> System {
    let s = System::full_with(clusters, heartbeat_ms, sync_ms);
    for c in 1..=clusters {
        wait_until(&format!("cluster {c}'s slave in service"), || {
            s.entry(c, 2).is_some_and(|e| e.alive && e.in_service)
        });
    }
    s
}

/// The live master of cluster `c`, per the table.
fn master_of(sys: &System, c: u32) -> Option<u32> {
    let t = sys.table()?;
    t.servers
        .iter()
        .find(|e| e.kind == 0 && e.cluster_id == c && e.alive && e.role == Role::Master as i32)
        .map(|e| e.server_id)
}

fn other(s: u32) -> u32 {
    3 - s
}

fn is_slave_in_service(e: &ServerInfo) -> bool {
    e.alive && e.role == Role::Slave as i32 && e.in_service
}

fn wait_slave_in_service(sys: &System, c: u32, s: u32) {
    wait_until(
        &format!("server {s} of cluster {c} to be an in-service slave"),
        || sys.entry(c, s).is_some_and(|e| is_slave_in_service(&e)),
    );
}

fn cluster_of(user: u64, clusters: u32) -> u32 {
    ((user - 1) % u64::from(clusters)) as u32 + 1
}

fn has_user(sys: &System, c: u32, s: u32, user: u64) -> bool {
    read(&sys.server_dir(c, s).join("all_users.txt"))
        .lines()
        .any(|l| l == user.to_string())
}

/// Whether `follower`'s follow of `followee` is in the followee's
/// `_followers` file of that server.
fn has_follower(sys: &System, c: u32, s: u32, followee: u64, follower: u64) -> bool {
    read(
        &sys.server_dir(c, s)
            .join(format!("u{followee}_followers.txt")),
    )
    .lines()
    .any(|l| l.starts_with(&format!("+ {follower} ")))
}

/// The texts of `author`'s posts on a client's screen, in order.
fn screen_posts(client: &Client, author: u64) -> Vec<String> {
    let head = format!("{author} (");
    client
        .seen
        .iter()
        .filter(|l| l.starts_with(&head))
        .filter_map(|l| l.split_once(") >> ").map(|(_, t)| t.to_string()))
        .collect()
}

/// Reads the client's output until every text of `want` by `author` was on
/// its screen.
fn wait_screen(client: &mut Client, author: u64, want: &[String], who: &str) {
    loop {
        let shown = screen_posts(client, author);
        if want.iter().all(|w| shown.contains(w)) {
            return;
        }
        if client.next_line().is_none() {
            let missing: Vec<&String> = want.iter().filter(|w| !shown.contains(w)).collect();
            panic!("{who}: never saw {missing:?}; screen: {:#?}", client.seen);
        }
    }
}

/// Each text of `want` occurs exactly once in `got`, and nothing in `got`
/// occurs twice.
fn assert_each_once(got: &[String], want: &[String], what: &str) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for g in got {
        *counts.entry(g.as_str()).or_default() += 1;
    }
    let dups: Vec<(&str, usize)> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(t, n)| (*t, *n))
        .collect();
    assert!(dups.is_empty(), "{what}: shown more than once: {dups:?}");
    let missing: Vec<&String> = want
        .iter()
        .filter(|w| !counts.contains_key(w.as_str()))
        .collect();
    assert!(missing.is_empty(), "{what}: missing {missing:?}");
}

/// Polls until every text of `want` by `author` is in the post file, then
/// asserts that each is there exactly once. On the deadline, panics naming
/// the missing texts.
fn wait_file_posts(path: &Path, author: u64, want: &[String]) {
    let texts = || -> Vec<String> {
        posts_in(path)
            .into_iter()
            .filter(|(u, _)| *u == author)
            .map(|(_, t)| t)
            .collect()
    };
    let start = Instant::now();
    loop {
        let got = texts();
        let missing: Vec<&String> = want.iter().filter(|w| !got.contains(w)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{}: posts of {author} missing: {missing:?} (has {} of them)",
            path.display(),
            got.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_each_once(&texts(), want, &path.display().to_string());
}

fn assert_no_duplicates_anywhere(sys: &System) {
    for c in 1..=sys.clusters {
        for s in 1..=2 {
            let dir = sys.server_dir(c, s);
            if dir.exists() {
                assert_no_duplicates(&dir);
            }
        }
    }
}

/// Polls until both server directories of cluster `c` hold the same records;
/// on the deadline, panics naming the files that differ.
fn wait_same_records(sys: &System, c: u32) {
    let (a, b) = (sys.server_dir(c, 1), sys.server_dir(c, 2));
    let start = Instant::now();
    loop {
        let (ra, rb) = (records(&a), records(&b));
        if ra == rb {
            return;
        }
        if start.elapsed() > DEADLINE {
            let mut diff = Vec::new();
            let names: std::collections::BTreeSet<&String> = ra.keys().chain(rb.keys()).collect();
            for n in names {
                let (x, y) = (ra.get(n), rb.get(n));
                if x != y {
                    let only_a: Vec<&String> = x
                        .into_iter()
                        .flatten()
                        .filter(|r| !y.is_some_and(|y| y.contains(r)))
                        .collect();
                    let only_b: Vec<&String> = y
                        .into_iter()
                        .flatten()
                        .filter(|r| !x.is_some_and(|x| x.contains(r)))
                        .collect();
                    diff.push(format!(
                        "{n}: {} vs {} records; only in server_1: {only_a:?}; only in server_2: {only_b:?}",
                        x.map_or(0, Vec::len),
                        y.map_or(0, Vec::len)
                    ));
                }
            }
            panic!(
                "cluster {c}: the two directories differ:\n{}",
                diff.join("\n")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Reads the client's output until a line starts with `prefix`; returns it.
fn expect_prefix(client: &mut Client, prefix: &str) -> String {
    loop {
        match client.next_line() {
            Some(l) if l.starts_with(prefix) => return l,
            Some(_) => {}
            None => panic!("never saw {prefix:?}; saw {:#?}", client.seen),
        }
    }
}

fn sends(client: &mut Client, texts: &[String]) {
    for t in texts {
        client.send(t);
    }
}

fn texts(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

/// Wall-clock time (UTC), to match printed timings with the logs.
fn now() -> String {
    chrono::Utc::now().format("%H:%M:%S%.3f").to_string()
}

fn signal(sys: &System, name: &str, sig: &str) {
    let pid = sys.procs[name].pid();
    let st = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill {sig} {pid} failed");
}

/// Whether every thread of a process is stopped (state `T` in
/// `/proc/<pid>/task/*/stat`): `kill -STOP` returns before that.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for t in tasks.flatten() {
        let stat = read(&t.path().join("stat"));
        // "pid (comm) S ...": the state follows the last ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if !matches!(state, Some('T') | Some('t')) {
            return false;
        }
        any = true;
    }
    any
}

fn reconnects(client: &Client) -> usize {
    client
        .seen
        .iter()
        .filter(|l| l.starts_with("Reconnecting to "))
        .count()
}

/// A user of `c` logged in (client) that follows `followee`, waiting for the
/// follow to be known in the followee's cluster.
fn follow(sys: &System, client: &mut Client, user: u64, followee: u64) {
    let fc = cluster_of(followee, sys.clusters);
    let uc = cluster_of(user, sys.clusters);
    wait_until(&format!("user {followee} known in cluster {uc}"), || {
        master_of(sys, uc).is_some_and(|m| has_user(sys, uc, m, followee))
    });
    assert_eq!(
        client.command(&format!("FOLLOW {followee}")),
        "Command completed successfully"
    );
    wait_until(
        &format!("{user}'s follow of {followee} in cluster {fc}"),
        || master_of(sys, fc).is_some_and(|m| has_follower(sys, fc, m, followee, user)),
    );
}

// ------------------------------------------------------------------ tests

#[test]
fn master_killed_and_restarted_while_posting() {
    let mut sys = full(3, HB, SYNC);
    let mut poster = Client::logged_in(sys.coord_port, 1);
    let mut local = Client::logged_in(sys.coord_port, 4); // cluster 1
    let mut remote = Client::logged_in(sys.coord_port, 2); // cluster 2
    follow(&sys, &mut local, 4, 1);
    follow(&sys, &mut remote, 2, 1);
    local.enter_timeline();
    remote.enter_timeline();
    poster.enter_timeline();

    let m = master_of(&sys, 1).expect("a master in cluster 1");
    let s = other(m);
    let posts = texts("p", 0..30);

    // First third, then kill the master while posts may be in flight.
    sends(&mut poster, &posts[..10]);
    let master_posts = sys.server_dir(1, m).join("u1_posts.txt");
    wait_until("a few posts on the master", || {
        posts_in(&master_posts).len() >= 5
    });
    sys.kill(&System::server_name(1, m));
    let killed = Instant::now();
    say!("killed server {m} of cluster 1 (the master)");

    // Second third, typed during the outage.
    sends(&mut poster, &posts[10..20]);
    sys.wait_for_role(1, s, Role::Master);
    say!(
        "failover: table shows the new master after {:?}",
        killed.elapsed()
    );
    let line = expect_prefix(&mut poster, "Reconnecting to ");
    say!(
        "failover: poster printed {line:?} after {:?}",
        killed.elapsed()
    );
    let port = sys.ports[&System::server_name(1, s)];
    assert!(line.ends_with(&format!(":{port}...")), "{line}");
    wait_file_posts(&sys.server_dir(1, s).join("u1_posts.txt"), 1, &posts[..20]);
    say!("failover: 20 posts stored after {:?}", killed.elapsed());

    // Restart the killed server (same port, same directory) while posting.
    sys.restart_server(1, m);
    let restarted = Instant::now();
    sends(&mut poster, &posts[20..25]);
    wait_until("the restarted server to register", || {
        sys.entry(1, m).is_some_and(|e| e.alive)
    });
    sends(&mut poster, &posts[25..30]);
    wait_slave_in_service(&sys, 1, m);
    say!("restart: in service again after {:?}", restarted.elapsed());
    assert_eq!(
        master_of(&sys, 1),
        Some(s),
        "the restarted server took over"
    );

    // A last post marks the end: everything before it was delivered first.
    let mut all = posts.clone();
    all.push("end".to_string());
    poster.send("end");
    // Files first: a post missing there is the worse failure. The master's
    // directory, then the resynced server's, then cluster 2's.
    for (c, sv) in [(1, s), (1, m), (2, 1), (2, 2)] {
        let dir = sys.server_dir(c, sv);
        if c == 1 {
            wait_file_posts(&dir.join("u1_posts.txt"), 1, &all);
            wait_file_posts(&dir.join("u4_timeline.txt"), 1, &all);
        } else {
            wait_file_posts(&dir.join("u2_timeline.txt"), 1, &all);
        }
    }
    wait_screen(&mut local, 1, &all, "user 4");
    wait_screen(&mut remote, 1, &all, "user 2");
    assert_each_once(&screen_posts(&local, 1), &all, "user 4's screen");
    assert_each_once(&screen_posts(&remote, 1), &all, "user 2's screen");
    for f in [&local, &remote] {
        for l in f.seen.iter().filter(|l| l.starts_with("1 (")) {
            assert!(l.contains(") >> p") || l.ends_with(") >> end"), "{l}");
        }
    }
    assert_eq!(reconnects(&poster), 1, "poster saw {:#?}", poster.seen);
    wait_same_records(&sys, 1);
    wait_same_records(&sys, 2);
    assert_no_duplicates_anywhere(&sys);
}

#[test]
fn deleted_directory_resync_then_promoted_server_killed() {
    let mut sys = full(3, HB, SYNC);
    // History: users 1, 4, 7 (cluster 1), 2 (cluster 2), 3 (cluster 3).
    let mut u1 = Client::logged_in(sys.coord_port, 1);
    let mut u4 = Client::logged_in(sys.coord_port, 4);
    let mut u7 = Client::logged_in(sys.coord_port, 7);
    let mut u2 = Client::logged_in(sys.coord_port, 2);
    let mut u3 = Client::logged_in(sys.coord_port, 3);
    follow(&sys, &mut u4, 4, 1);
    follow(&sys, &mut u7, 7, 1);
    follow(&sys, &mut u2, 2, 1);
    follow(&sys, &mut u1, 1, 4);
    follow(&sys, &mut u1, 1, 2);
    u1.enter_timeline();
    u4.enter_timeline();
    u2.enter_timeline();
    let m = master_of(&sys, 1).expect("a master");
    let s = other(m);

    let p = texts("p", 1..26);
    sends(&mut u1, &p);
    wait_file_posts(&sys.server_dir(1, m).join("u1_posts.txt"), 1, &p);
    let a = texts("a", 1..16);
    sends(&mut u4, &a);
    wait_file_posts(&sys.server_dir(1, m).join("u1_timeline.txt"), 4, &a);
    let b = texts("b", 1..16);
    sends(&mut u2, &b);
    wait_file_posts(&sys.server_dir(1, m).join("u1_timeline.txt"), 2, &b);
    wait_file_posts(&sys.server_dir(2, 1).join("u2_timeline.txt"), 1, &p);
    // Everyone leaves (clean exit: logged out).
    for c in [&mut u1, &mut u4, &mut u7, &mut u2, &mut u3] {
        c.close_input();
        assert_eq!(c.wait_exit(), Some(0));
    }
    wait_same_records(&sys, 1);

    // Kill the master; the slave takes over; the killed one comes back
    // without its directory.
    sys.kill(&System::server_name(1, m));
    let killed = Instant::now();
    say!("killed server {m} of cluster 1 (the master)");
    sys.wait_for_role(1, s, Role::Master);
    say!(
        "failover: table shows the new master after {:?}",
        killed.elapsed()
    );
    std::fs::remove_dir_all(sys.server_dir(1, m)).expect("remove the directory");
    sys.restart_server(1, m);
    let restarted = Instant::now();
    wait_slave_in_service(&sys, 1, m);
    say!(
        "resync: the emptied server is in service after {:?}",
        restarted.elapsed()
    );
    wait_same_records(&sys, 1);
    let rebuilt = records(&sys.server_dir(1, m));
    assert!(
        rebuilt.get("u1_posts.txt").is_some_and(|r| r.len() == 25),
        "u1_posts.txt rebuilt: {:?}",
        rebuilt.get("u1_posts.txt").map(Vec::len)
    );

    // Now the promoted server dies: the rebuilt one must serve everything.
    sys.kill(&System::server_name(1, s));
    let killed = Instant::now();
    say!("killed server {s} of cluster 1 (the promoted master)");
    sys.wait_for_role(1, m, Role::Master);
    say!(
        "second failover: table shows the rebuilt server as master after {:?}",
        killed.elapsed()
    );
    let mut u1 = Client::logged_in(sys.coord_port, 1);
    say!(
        "second failover: a client logged in after {:?}",
        killed.elapsed()
    );
    assert_eq!(u1.command("LIST"), "Command completed successfully");
    u1.expect_next("All users: 1, 2, 3, 4, 7");
    u1.expect_next("Followers: 2, 4, 7");
    u1.enter_timeline();
    let mut want: Vec<String> = a[10..].to_vec();
    want.extend(b.iter().cloned());
    let mut got = Vec::new();
    for _ in 0..20 {
        let line = u1.next_line().expect("a post of the last 20");
        let (head, text) = line.split_once(") >> ").expect("post format");
        assert!(head.starts_with("4 (") || head.starts_with("2 ("), "{line}");
        got.push(text.to_string());
    }
    assert_eq!(got, want, "user 1's last 20 posts");

    // New posts work, locally and across clusters, both ways.
    let mut u4 = Client::logged_in(sys.coord_port, 4);
    let mut u2 = Client::logged_in(sys.coord_port, 2);
    u4.enter_timeline();
    u2.enter_timeline();
    let mut shown = texts("p", 6..26);
    wait_screen(&mut u4, 1, &shown, "user 4 (last 20)");
    wait_screen(&mut u2, 1, &shown, "user 2 (last 20)");
    u1.send("fresh");
    shown.push("fresh".to_string());
    wait_screen(&mut u4, 1, &shown, "user 4");
    wait_screen(&mut u2, 1, &shown, "user 2");
    assert_each_once(&screen_posts(&u4, 1), &shown, "user 4's screen");
    assert_each_once(&screen_posts(&u2, 1), &shown, "user 2's screen");
    u2.send("remote fresh");
    u4.send("local fresh");
    let mut from_2 = b.clone();
    from_2.push("remote fresh".to_string());
    wait_screen(&mut u1, 2, &from_2[15..], "user 1");
    wait_screen(&mut u1, 4, &["local fresh".to_string()], "user 1");
    let mut all_p = p.clone();
    all_p.push("fresh".to_string());
    wait_file_posts(&sys.server_dir(1, m).join("u1_posts.txt"), 1, &all_p);
    wait_file_posts(&sys.server_dir(2, 1).join("u2_timeline.txt"), 1, &all_p);
    wait_file_posts(&sys.server_dir(1, m).join("u1_timeline.txt"), 2, &from_2);
    assert_no_duplicates_anywhere(&sys);
}

/// A raw gRPC timeline stream, its messages forwarded to a std channel.
struct RawTimeline {
    /// Runs the stream's reader task.
    _rt: tokio::runtime::Runtime,
    out: tokio::sync::mpsc::UnboundedSender<Message>,
    events: std::sync::mpsc::Receiver<Result<Message, tonic::Status>>,
    /// Everything received so far (messages only).
    got: Vec<Message>,
    /// How the stream ended, once it did: `Some(Ok)` cleanly, `Some(Err)` with
    /// an error.
    end: Option<Result<(), tonic::Status>>,
}

impl RawTimeline {
    fn open(addr: &str, user: u64) -> RawTimeline {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let session = format!("{:016x}", 0x5eed_0000_u64 + user);
        let username = user.to_string();
        let (out, rx) = tokio::sync::mpsc::unbounded_channel::<Message>();
        let (ev_tx, events) = std::sync::mpsc::channel();
        let url = format!("http://{addr}");
        let first = Message {
            username: username.clone(),
            session: session.clone(),
            ..Default::default()
        };
        out.send(first).expect("queue the first message");
        rt.block_on(async move {
            let mut c = SnsServiceClient::connect(url).await.expect("connect");
            c.login(Request {
                username,
                session,
                ..Default::default()
            })
            .await
            .expect("raw login");
            let mut inbound = c
                .timeline(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
                .await
                .expect("open the timeline")
                .into_inner();
            tokio::spawn(async move {
                loop {
                    match inbound.message().await {
                        Ok(Some(m)) => {
                            if ev_tx.send(Ok(m)).is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            let _ = ev_tx.send(Err(tonic::Status::ok("clean end")));
                            return;
                        }
                        Err(s) => {
                            let _ = ev_tx.send(Err(s));
                            return;
                        }
                    }
                }
            });
        });
        RawTimeline {
            _rt: rt,
            out,
            events,
            got: Vec::new(),
            end: None,
        }
    }

    fn post(&self, user: u64, text: &str, post_id: u64) {
        self.out
            .send(Message {
                username: user.to_string(),
                msg: text.to_string(),
                post_id,
                ..Default::default()
            })
            .expect("stream open");
    }

    /// Takes the next event; false when the stream ended or the deadline passed.
    fn next(&mut self) -> bool {
        if self.end.is_some() {
            return false;
        }
        match self.events.recv_timeout(DEADLINE) {
            Ok(Ok(m)) => {
                self.got.push(m);
                true
            }
            Ok(Err(s)) if s.code() == tonic::Code::Ok => {
                self.end = Some(Ok(()));
                false
            }
            Ok(Err(s)) => {
                self.end = Some(Err(s));
                false
            }
            Err(_) => false,
        }
    }

    fn acked(&self, id: u64) -> bool {
        self.got.iter().any(|m| m.ack_id == id)
    }
}

#[test]
fn paused_master_is_fenced() {
    let sys = full(3, HB, SYNC);
    let mut poster = Client::logged_in(sys.coord_port, 1);
    let mut watcher = Client::logged_in(sys.coord_port, 7); // cluster 1
    follow(&sys, &mut watcher, 7, 1);
    watcher.enter_timeline();
    poster.enter_timeline();
    let before = texts("c", 0..5);
    sends(&mut poster, &before);
    let m = master_of(&sys, 1).expect("a master");
    let s = other(m);
    wait_file_posts(&sys.server_dir(1, m).join("u1_posts.txt"), 1, &before);

    // A raw stream of user 4 to the master, working.
    let old = sys.entry(1, m).expect("the master's entry");
    let mut raw = RawTimeline::open(&format!("{}:{}", old.hostname, old.port), 4);
    raw.post(4, "raw before", 1);
    while !raw.acked(1) {
        assert!(raw.next(), "no ack for the first raw post: {:?}", raw.end);
    }

    // Pause the master past the failure window.
    let name = System::server_name(1, m);
    signal(&sys, &name, "-STOP");
    let paused = Instant::now();
    let pid = sys.procs[&name].pid();
    wait_until("every thread of the master to stop", || {
        all_threads_stopped(pid)
    });
    say!("paused server {m} of cluster 1 (the master)");
    raw.post(4, "raw while paused", 2);
    sys.wait_for_role(1, s, Role::Master);
    say!(
        "pause: table shows the slave as master after {:?}",
        paused.elapsed()
    );

    // The client fails over and posts on the new master.
    let after = texts("c", 5..10);
    sends(&mut poster, &after);
    let line = expect_prefix(&mut poster, "Reconnecting to ");
    say!(
        "pause: poster printed {line:?} after {:?}",
        paused.elapsed()
    );
    let mut all = before.clone();
    all.extend(after.iter().cloned());
    wait_file_posts(&sys.server_dir(1, s).join("u1_posts.txt"), 1, &all);

    // Resume the old master: it must step down and rejoin as a slave.
    signal(&sys, &name, "-CONT");
    let resumed = Instant::now();
    say!("resumed server {m} of cluster 1");
    while raw.next() {}
    say!(
        "pause: the raw stream on the old master ended after {:?}: {:?}",
        resumed.elapsed(),
        raw.end
    );
    assert!(!raw.acked(2), "the paused master acknowledged a post");
    assert!(
        matches!(raw.end, Some(Err(_))),
        "the raw stream should end with an error: {:?}; got {:?}",
        raw.end,
        raw.got
    );
    wait_slave_in_service(&sys, 1, m);
    say!(
        "pause: old master in service as slave after {:?}",
        resumed.elapsed()
    );
    assert_eq!(master_of(&sys, 1), Some(s));

    poster.send("end");
    all.push("end".to_string());
    wait_screen(&mut watcher, 1, &all, "user 7");
    assert_each_once(&screen_posts(&watcher, 1), &all, "user 7's screen");
    for sv in 1..=2 {
        wait_file_posts(&sys.server_dir(1, sv).join("u1_posts.txt"), 1, &all);
        wait_file_posts(&sys.server_dir(1, sv).join("u7_timeline.txt"), 1, &all);
    }
    wait_same_records(&sys, 1);
    assert_no_duplicates_anywhere(&sys);
    for c in 1..=3 {
        for sv in 1..=2 {
            let dir = sys.server_dir(c, sv);
            for (file, recs) in records(&dir) {
                assert!(
                    !recs.iter().any(|r| r.contains("W raw while paused")),
                    "the post sent to the paused master is in {}/{file}",
                    dir.display()
                );
            }
        }
    }
    assert!(
        records(&sys.server_dir(1, s))
            .get("u4_posts.txt")
            .is_some_and(|r| r.iter().any(|r| r.contains("W raw before"))),
        "the acknowledged raw post is on the new master"
    );
}

/// Every server's and synchronizer's role per (kind, cluster, id), from a
/// table where all are alive.
fn roles(sys: &System) -> Option<BTreeMap<(i32, u32, u32), i32>> {
    let t = sys.table()?;
    Some(
        t.servers
            .iter()
            .map(|e| ((e.kind, e.cluster_id, e.server_id), e.role))
            .collect(),
    )
}

fn heartbeat_failures(sys: &System, name: &str) -> usize {
    read(&sys.data_dir().join(format!("{name}.log")))
        .lines()
        .filter(|l| l.contains("heartbeat to") && l.contains("failed"))
        .count()
}

#[test]
fn coordinator_and_synchronizer_restarts_mid_traffic() {
    let mut sys = full(3, HB, SYNC);
    let mut poster = Client::logged_in(sys.coord_port, 1);
    let mut remote = Client::logged_in(sys.coord_port, 2);
    follow(&sys, &mut remote, 2, 1);
    remote.enter_timeline();
    poster.enter_timeline();
    let masters: Vec<u32> = (1..=3)
        .map(|c| master_of(&sys, c).expect("a master"))
        .collect();
    let before = roles(&sys).expect("table");

    let mut all: Vec<String> = Vec::new();
    let mut n = 0;
    let mut batch = |poster: &mut Client, all: &mut Vec<String>| {
        let t = texts("q", n..n + 5);
        n += 5;
        sends(poster, &t);
        all.extend(t);
    };
    let stored = |sys: &System, all: &[String]| {
        let c1 = masters[0];
        wait_file_posts(&sys.server_dir(1, c1).join("u1_posts.txt"), 1, all);
    };
    batch(&mut poster, &mut all);
    stored(&sys, &all);

    // The coordinator goes away for longer than the failure window.
    let servers: Vec<String> = (1..=3)
        .flat_map(|c| (1..=2).map(move |s| System::server_name(c, s)))
        .collect();
    let failures: Vec<usize> = servers
        .iter()
        .map(|n| heartbeat_failures(&sys, n))
        .collect();
    sys.kill("coordinator");
    let killed = Instant::now();
    say!("killed the coordinator");
    batch(&mut poster, &mut all);
    wait_until("every server to miss 3 heartbeats", || {
        servers
            .iter()
            .zip(&failures)
            .all(|(n, f)| heartbeat_failures(&sys, n) >= f + 3)
    });
    say!("coordinator down for {:?}", killed.elapsed());
    sys.start_coordinator();
    let restarted = Instant::now();
    batch(&mut poster, &mut all);

    // Every process re-registers; no master changes, ever.
    let mut seen_masters: Vec<(u32, u32)> = Vec::new();
    wait_until("every process to re-register, slaves in service", || {
        let Some(t) = sys.table() else { return false };
        for e in &t.servers {
            if e.kind == 0 && e.alive && e.role == Role::Master as i32 {
                seen_masters.push((e.cluster_id, e.server_id));
            }
        }
        t.servers.iter().filter(|e| e.alive).count() == 9
            && (1..=3).all(|c| {
                t.servers
                    .iter()
                    .any(|e| e.kind == 0 && e.cluster_id == c && is_slave_in_service(e))
            })
    });
    say!(
        "coordinator: table complete again after {:?}",
        restarted.elapsed()
    );
    for (c, s) in &seen_masters {
        assert_eq!(
            *s,
            masters[*c as usize - 1],
            "cluster {c}: server {s} was shown as master after the coordinator restart"
        );
    }
    assert_eq!(roles(&sys).expect("table"), before, "roles changed");
    stored(&sys, &all);
    say!(
        "coordinator: posting resumed after {:?}",
        restarted.elapsed()
    );
    batch(&mut poster, &mut all);

    // The synchronizers of clusters 1 and 2 restart under traffic.
    for c in [1, 2] {
        let name = format!("synchronizer_{c}");
        sys.kill(&name);
        say!("killed {name}");
        batch(&mut poster, &mut all);
        sys.start_synchronizer(c);
        batch(&mut poster, &mut all);
        wait_until(&format!("{name} to re-register"), || {
            sys.table().is_some_and(|t| {
                t.servers
                    .iter()
                    .any(|e| e.kind == 1 && e.cluster_id == c && e.alive)
            })
        });
    }
    poster.send("end");
    all.push("end".to_string());
    wait_screen(&mut remote, 1, &all, "user 2");
    assert_each_once(&screen_posts(&remote, 1), &all, "user 2's screen");
    for sv in 1..=2 {
        wait_file_posts(&sys.server_dir(1, sv).join("u1_posts.txt"), 1, &all);
        wait_file_posts(&sys.server_dir(2, sv).join("u2_timeline.txt"), 1, &all);
    }
    assert_eq!(
        reconnects(&poster),
        0,
        "the master never changed; poster saw {:#?}",
        poster.seen
    );
    assert_eq!(roles(&sys).expect("table"), before, "roles changed");
    assert_no_duplicates_anywhere(&sys);
}

#[test]
fn failover_time_is_printed() {
    let mut sys = System::new(3, 100, 30_000);
    for c in 1..=3 {
        sys.start_server(c, 1);
        sys.wait_for_role(c, 1, Role::Master);
        sys.start_server(c, 2);
    }
    for c in 1..=3 {
        sys.start_synchronizer(c);
    }
    sys.wait_for_all();
    wait_slave_in_service(&sys, 1, 2);
    let mut client = Client::logged_in(sys.coord_port, 1);
    assert_eq!(client.command("LIST"), "Command completed successfully");
    let m = master_of(&sys, 1).expect("a master");

    sys.kill(&System::server_name(1, m));
    let killed = Instant::now();
    say!("killed server {m} of cluster 1 (the master)");
    let mut reconnected = None;
    loop {
        assert!(
            killed.elapsed() < DEADLINE,
            "no successful LIST: {:#?}",
            client.seen
        );
        client.send("LIST");
        let reply = loop {
            let l = client
                .next_line()
                .unwrap_or_else(|| panic!("no reply to LIST: {:#?}", client.seen));
            if l.starts_with("Reconnecting to ") {
                reconnected.get_or_insert(killed.elapsed());
                continue;
            }
            if l.starts_with("Command") {
                break l;
            }
        };
        if reply == "Command completed successfully" {
            break;
        }
        say!("during failover LIST answered {reply:?}");
    }
    let ms = killed.elapsed().as_millis();
    say!("failover: {ms} ms (reconnect message after {reconnected:?})");
    sys.wait_for_role(1, other(m), Role::Master);
}

/// A follower whose cluster fails over while a remote author posts more than
/// 20 posts: when its timeline resumes on the new master it must show every
/// post it has not shown yet, not only the last 20 (SPEC §2: the stream
/// "resumes"). A long heartbeat makes the follower's outage long enough for
/// all the posts to arrive first.
///
/// Ignored while the product has this bug: a reopened stream starts with the
/// last 20 posts only, so r3..r12 are never shown. Run with `--ignored`.
#[test]
fn follower_resumes_after_failover_without_gaps() {
    let mut sys = full(3, 1000, SYNC);
    let mut author = Client::logged_in(sys.coord_port, 2); // cluster 2
    let mut follower = Client::logged_in(sys.coord_port, 4); // cluster 1
    follow(&sys, &mut follower, 4, 2);
    follower.enter_timeline();
    author.enter_timeline();
    let before = texts("r", 0..3);
    sends(&mut author, &before);
    wait_screen(&mut follower, 2, &before, "user 4");

    let m = master_of(&sys, 1).expect("a master");
    let s = other(m);
    sys.kill(&System::server_name(1, m));
    let killed = Instant::now();
    say!("killed server {m} of cluster 1 (the follower's master)");
    let during = texts("r", 3..33);
    sends(&mut author, &during);
    let path = sys.server_dir(1, s).join("u4_timeline.txt");
    wait_file_posts(&path, 2, &during);
    say!(
        "30 remote posts in the new master's timeline file after {:?}; new master in table: {}",
        killed.elapsed(),
        master_of(&sys, 1) == Some(s)
    );
    let mut all = before.clone();
    all.extend(during.iter().cloned());
    wait_screen(&mut follower, 2, &all, "user 4");
    assert_each_once(&screen_posts(&follower, 2), &all, "user 4's screen");
}
