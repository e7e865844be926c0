//! Failover end to end (SPEC §2 "Failover as the user sees it", §4): a master
//! killed and restarted while its users post, a server restarted without its
//! directory and then promoted, a paused (SIGSTOP) master that must be fenced,
//! coordinator and synchronizer restarts under traffic, the failover time a
//! user sees (printed, not asserted), and a follower whose timeline must
//! resume without gaps after a failover.
//!
//! Every wait polls a condition with a deadline; timings are only printed
//! (`cargo test --test e2e failover -- --nocapture`).

use crate::harness::grpc::{connect, login, login_ok};
use crate::harness::*;
use std::collections::BTreeMap;
use std::time::Instant;
use tinysns::proto::csce438::Message;
use tinysns::proto::tinysns::{Kind, Role};
use tonic::Code;

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

fn other(s: u32) -> u32 {
    3 - s
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
    wait_for(&format!("cluster {c}'s two directories to agree"), || {
        let (ra, rb) = (records(&a), records(&b));
        if ra == rb {
            return Ok(());
        }
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
        Err(format!("they differ:\n{}", diff.join("\n")))
    });
}

/// Wall-clock time (UTC), to match printed timings with the logs.
fn now() -> String {
    chrono::Utc::now().format("%H:%M:%S%.3f").to_string()
}

fn reconnects(client: &Client) -> usize {
    client
        .seen
        .iter()
        .filter(|l| l.starts_with("Reconnecting to "))
        .count()
}

// ------------------------------------------------------------------ tests

#[test]
fn master_killed_and_restarted_while_posting() {
    let mut sys = System::full_with(3, HB, SYNC);
    let mut poster = Client::logged_in(sys.coord_port, 1);
    let mut local = Client::logged_in(sys.coord_port, 4); // cluster 1
    let mut remote = Client::logged_in(sys.coord_port, 2); // cluster 2
    sys.follow(&mut local, 4, 1);
    sys.follow(&mut remote, 2, 1);
    local.enter_timeline();
    remote.enter_timeline();
    poster.enter_timeline();

    let m = sys.master_of(1).expect("a master in cluster 1");
    let s = other(m);
    let posts = texts("p", 0..30);

    // First third, then kill the master while posts may be in flight.
    poster.send_all(&posts[..10]);
    let master_posts = sys.server_dir(1, m).join("u1_posts.txt");
    wait_until("a few posts on the master", || {
        posts_in(&master_posts).len() >= 5
    });
    sys.kill(&System::server_name(1, m));
    let killed = Instant::now();
    say!("killed server {m} of cluster 1 (the master)");

    // Second third, typed during the outage.
    poster.send_all(&posts[10..20]);
    sys.wait_for_role(1, s, Role::Master);
    say!(
        "failover: table shows the new master after {:?}",
        killed.elapsed()
    );
    let line = poster.expect_prefix("Reconnecting to ");
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
    poster.send_all(&posts[20..25]);
    wait_until("the restarted server to register", || {
        sys.entry(1, m).is_some_and(|e| e.alive)
    });
    poster.send_all(&posts[25..30]);
    sys.wait_slave_in_service(1, m);
    say!("restart: in service again after {:?}", restarted.elapsed());
    assert_eq!(sys.master_of(1), Some(s), "the restarted server took over");

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
    local.wait_screen(1, &all, "user 4");
    remote.wait_screen(1, &all, "user 2");
    assert_each_once(&local.screen_posts(1), &all, "user 4's screen");
    assert_each_once(&remote.screen_posts(1), &all, "user 2's screen");
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
    let mut sys = System::full_with(3, HB, SYNC);
    // History: users 1, 4, 7 (cluster 1), 2 (cluster 2), 3 (cluster 3).
    let mut u1 = Client::logged_in(sys.coord_port, 1);
    let mut u4 = Client::logged_in(sys.coord_port, 4);
    let mut u7 = Client::logged_in(sys.coord_port, 7);
    let mut u2 = Client::logged_in(sys.coord_port, 2);
    let mut u3 = Client::logged_in(sys.coord_port, 3);
    sys.follow(&mut u4, 4, 1);
    sys.follow(&mut u7, 7, 1);
    sys.follow(&mut u2, 2, 1);
    sys.follow(&mut u1, 1, 4);
    sys.follow(&mut u1, 1, 2);
    u1.enter_timeline();
    u4.enter_timeline();
    u2.enter_timeline();
    let m = sys.master_of(1).expect("a master");
    let s = other(m);

    let p = texts("p", 1..26);
    u1.send_all(&p);
    wait_file_posts(&sys.server_dir(1, m).join("u1_posts.txt"), 1, &p);
    let a = texts("a", 1..16);
    u4.send_all(&a);
    wait_file_posts(&sys.server_dir(1, m).join("u1_timeline.txt"), 4, &a);
    let b = texts("b", 1..16);
    u2.send_all(&b);
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
    sys.wait_slave_in_service(1, m);
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
    u1.expect_list("All users: 1, 2, 3, 4, 7", "Followers: 2, 4, 7");
    u1.enter_timeline();
    let mut want: Vec<String> = a[10..].to_vec();
    want.extend(b.iter().cloned());
    let mut got = Vec::new();
    for _ in 0..20 {
        let (head, text) = u1.next_post();
        assert!(
            head.starts_with("4 (") || head.starts_with("2 ("),
            "{head} >> {text}"
        );
        got.push(text);
    }
    assert_eq!(got, want, "user 1's last 20 posts");

    // New posts work, locally and across clusters, both ways.
    let mut u4 = Client::logged_in(sys.coord_port, 4);
    let mut u2 = Client::logged_in(sys.coord_port, 2);
    u4.enter_timeline();
    u2.enter_timeline();
    let mut shown = texts("p", 6..26);
    u4.wait_screen(1, &shown, "user 4 (last 20)");
    u2.wait_screen(1, &shown, "user 2 (last 20)");
    u1.send("fresh");
    shown.push("fresh".to_string());
    u4.wait_screen(1, &shown, "user 4");
    u2.wait_screen(1, &shown, "user 2");
    assert_each_once(&u4.screen_posts(1), &shown, "user 4's screen");
    assert_each_once(&u2.screen_posts(1), &shown, "user 2's screen");
    u2.send("remote fresh");
    u4.send("local fresh");
    let mut from_2 = b.clone();
    from_2.push("remote fresh".to_string());
    u1.wait_screen(2, &from_2[15..], "user 1");
    u1.wait_screen(4, &["local fresh".to_string()], "user 1");
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
            let mut c = connect(&url).await;
            login(&mut c, &username, &session).await.expect("raw login");
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
    let sys = System::full_with(3, HB, SYNC);
    let mut poster = Client::logged_in(sys.coord_port, 1);
    let mut watcher = Client::logged_in(sys.coord_port, 7); // cluster 1
    sys.follow(&mut watcher, 7, 1);
    watcher.enter_timeline();
    poster.enter_timeline();
    let before = texts("c", 0..5);
    poster.send_all(&before);
    let m = sys.master_of(1).expect("a master");
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
    sys.signal(&name, "-STOP");
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
    poster.send_all(&after);
    let line = poster.expect_prefix("Reconnecting to ");
    say!(
        "pause: poster printed {line:?} after {:?}",
        paused.elapsed()
    );
    let mut all = before.clone();
    all.extend(after.iter().cloned());
    wait_file_posts(&sys.server_dir(1, s).join("u1_posts.txt"), 1, &all);

    // Resume the old master: it must step down and rejoin as a slave.
    sys.signal(&name, "-CONT");
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
    sys.wait_slave_in_service(1, m);
    say!(
        "pause: old master in service as slave after {:?}",
        resumed.elapsed()
    );
    assert_eq!(sys.master_of(1), Some(s));

    poster.send("end");
    all.push("end".to_string());
    watcher.wait_screen(1, &all, "user 7");
    assert_each_once(&watcher.screen_posts(1), &all, "user 7's screen");
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

#[test]
fn coordinator_and_synchronizer_restarts_mid_traffic() {
    let mut sys = System::full_with(3, HB, SYNC);
    let mut poster = Client::logged_in(sys.coord_port, 1);
    let mut remote = Client::logged_in(sys.coord_port, 2);
    sys.follow(&mut remote, 2, 1);
    remote.enter_timeline();
    poster.enter_timeline();
    let masters: Vec<u32> = (1..=3)
        .map(|c| sys.master_of(c).expect("a master"))
        .collect();
    let before = roles(&sys).expect("table");

    let mut all: Vec<String> = Vec::new();
    let mut n = 0;
    let mut batch = |poster: &mut Client, all: &mut Vec<String>| {
        let t = texts("q", n..n + 5);
        n += 5;
        poster.send_all(&t);
        all.extend(t);
    };
    let stored = |sys: &System, all: &[String]| {
        let c1 = masters[0];
        wait_file_posts(&sys.server_dir(1, c1).join("u1_posts.txt"), 1, all);
    };
    batch(&mut poster, &mut all);
    stored(&sys, &all);

    // The coordinator goes away for longer than the failure window, which
    // every master shows by refusing writes: its lease has run out. Probe
    // users 4, 5 and 6 (one per cluster, nobody else's here) log in first,
    // which registers them; during the outage the probe is the same Login
    // with the same session again, which writes nothing and is refused
    // once the lease is gone. (Slaves show no such state: only masters are
    // checked.)
    let rt = runtime();
    let mut probes = Vec::new();
    for (c, m) in (1..=3).zip(&masters) {
        let user = (u64::from(c) + 3).to_string();
        let mut client = rt.block_on(connect(&sys.server_url(c, *m)));
        rt.block_on(login_ok(&mut client, &user, "lease-probe"));
        probes.push((c, client, user));
    }
    sys.kill("coordinator");
    let killed = Instant::now();
    say!("killed the coordinator");
    batch(&mut poster, &mut all);
    wait_for("every master to lose its lease", || {
        let leased: Vec<u32> = probes
            .iter_mut()
            .filter_map(|(c, client, user)| {
                let r = rt.block_on(login(client, user, "lease-probe"));
                (!r.is_err_and(|s| s.code() == Code::Unavailable)).then_some(*c)
            })
            .collect();
        if leased.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the masters of clusters {leased:?} still accept writes"
            ))
        }
    });
    drop(probes);
    say!("coordinator down for {:?}", killed.elapsed());
    sys.start_coordinator();
    let restarted = Instant::now();
    batch(&mut poster, &mut all);

    // Every process re-registers; no master changes, ever.
    let mut seen_masters: Vec<(u32, u32)> = Vec::new();
    wait_until("every process to re-register, slaves in service", || {
        let Some(t) = sys.table() else { return false };
        for e in &t.servers {
            if e.kind == Kind::Server as i32 && e.alive && e.role == Role::Master as i32 {
                seen_masters.push((e.cluster_id, e.server_id));
            }
        }
        t.servers.iter().filter(|e| e.alive).count() == 9
            && (1..=3).all(|c| {
                t.servers.iter().any(|e| {
                    e.kind == Kind::Server as i32 && e.cluster_id == c && is_slave_in_service(e)
                })
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
        let name = System::synchronizer_name(c);
        sys.kill(&name);
        say!("killed {name}");
        batch(&mut poster, &mut all);
        sys.start_synchronizer(c);
        batch(&mut poster, &mut all);
        wait_until(&format!("{name} to re-register"), || {
            sys.table().is_some_and(|t| {
                t.servers
                    .iter()
                    .any(|e| e.kind == Kind::Synchronizer as i32 && e.cluster_id == c && e.alive)
            })
        });
    }
    poster.send("end");
    all.push("end".to_string());
    remote.wait_screen(1, &all, "user 2");
    assert_each_once(&remote.screen_posts(1), &all, "user 2's screen");
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
    let mut sys = System::full_with(3, 100, 30_000);
    let mut client = Client::logged_in(sys.coord_port, 1);
    assert_eq!(client.command("LIST"), SUCCESS);
    let m = sys.master_of(1).expect("a master");

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
        if reply == SUCCESS {
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
/// (A reopened stream used to start with the last 20 posts only, so that
/// r3..r12 were never shown.)
#[test]
fn follower_resumes_after_failover_without_gaps() {
    let mut sys = System::full_with(3, 1000, SYNC);
    let mut author = Client::logged_in(sys.coord_port, 2); // cluster 2
    let mut follower = Client::logged_in(sys.coord_port, 4); // cluster 1
    sys.follow(&mut follower, 4, 2);
    follower.enter_timeline();
    author.enter_timeline();
    let before = texts("r", 0..3);
    author.send_all(&before);
    follower.wait_screen(2, &before, "user 4");

    let m = sys.master_of(1).expect("a master");
    let s = other(m);
    sys.kill(&System::server_name(1, m));
    let killed = Instant::now();
    say!("killed server {m} of cluster 1 (the follower's master)");
    let during = texts("r", 3..33);
    author.send_all(&during);
    let path = sys.server_dir(1, s).join("u4_timeline.txt");
    wait_file_posts(&path, 2, &during);
    say!(
        "30 remote posts in the new master's timeline file after {:?}; new master in table: {}",
        killed.elapsed(),
        sys.master_of(1) == Some(s)
    );
    let mut all = before.clone();
    all.extend(during.iter().cloned());
    follower.wait_screen(2, &all, "user 4");
    assert_each_once(&follower.screen_posts(2), &all, "user 4's screen");
}

/// Issue 11's doubled post. A master SIGKILLed with a post journaled but not
/// yet taken by its slave (the slave is paused, so the batch waits on it),
/// then restarted at once with its directory, comes back as slave: it must
/// not replay that post into its files, where its synchronizer would push it
/// to the follower's cluster beside the client's retry, which the new master
/// stores under a new time. The retry is stored once, and the follower's
/// files in the other cluster hold the post once.
#[test]
fn a_master_killed_with_a_post_in_flight_comes_back_as_slave_without_it() {
    // A slow heartbeat: the master waits half a failure window (3 s) for
    // the paused slave before it would go on alone, and the coordinator
    // still counts the slave alive for a window when the master restarts.
    const SLOW_HB: u64 = 3_000;
    let mut sys = System::full_with(2, SLOW_HB, SYNC);
    let m = sys.master_of(1).expect("a master");
    let s = other(m);
    sys.wait_slave_in_service(1, s);
    let (master, slave) = (System::server_name(1, m), System::server_name(1, s));
    // User 3 (cluster 1) posts on a raw stream; user 2 (cluster 2) follows.
    let old = sys.entry(1, m).expect("the master's entry");
    let raw = RawTimeline::open(&format!("{}:{}", old.hostname, old.port), 3);
    let mut watcher = Client::logged_in(sys.coord_port, 2);
    sys.follow(&mut watcher, 2, 3);

    // The post is journaled while the paused slave holds up its batch.
    sys.signal(&slave, "-STOP");
    let slave_pid = sys.procs[&slave].pid();
    wait_until("every thread of the slave to stop", || {
        all_threads_stopped(slave_pid)
    });
    let text = "caught in flight";
    raw.post(3, text, 4242);
    let journal = sys.server_dir(1, m).join("journal.txt");
    wait_until("the post in the master's journal", || {
        read(&journal)
            .lines()
            .any(|l| l.starts_with("P 3 ") && l.ends_with(&format!(" 4242 {text}")))
    });
    sys.kill(&master);
    drop(raw);
    sys.restart_server(1, m);

    // It is serving (its directory is open and replayed) as slave...
    wait_until("the restarted server to be slave", || {
        sys.entry(1, m)
            .is_some_and(|e| e.role == Role::Slave as i32)
    });
    let url = sys.server_url(1, m);
    let rt = runtime();
    wait_until("the restarted server to answer", || {
        rt.block_on(async {
            let mut c = connect(&url).await;
            login(&mut c, "3", "probe")
                .await
                .is_err_and(|s| s.code() == Code::Unavailable)
        })
    });
    // ...and the post it never had acknowledged is not in its files.
    let posts = sys.server_dir(1, m).join("u3_posts.txt");
    assert!(
        !read(&posts).contains(text),
        "the restarted slave replayed a post nobody acknowledged:\n{}",
        read(&posts)
    );
    sys.signal(&slave, "-CONT");
    sys.wait_for_role(1, s, Role::Master);

    // The client's retry, same post id, on the new master: stored once.
    let new = sys.entry(1, s).expect("the new master's entry");
    let mut retry = RawTimeline::open(&format!("{}:{}", new.hostname, new.port), 3);
    retry.post(3, text, 4242);
    while !retry.acked(4242) {
        assert!(retry.next(), "no ack for the retry: {:?}", retry.end);
    }
    sys.wait_slave_in_service(1, m);
    let want = vec![text.to_string()];
    wait_file_posts(&sys.server_dir(1, s).join("u3_posts.txt"), 3, &want);
    wait_file_posts(&posts, 3, &want);
    wait_same_records(&sys, 1);
    for w in 1..=2 {
        wait_file_posts(&sys.server_dir(2, w).join("u2_timeline.txt"), 3, &want);
    }
    assert_no_duplicates_anywhere(&sys);
}

/// A retry that reaches a server restarted since the original was stored is
/// recognised by its client id and stored once (issue 11): after restarts
/// with the directory (the second one finds the journal emptied by the
/// first), and on a server rebuilt from its peer without its directory and
/// then promoted.
#[test]
fn a_retry_is_recognised_by_a_server_restarted_since_with_or_without_its_directory() {
    let mut sys = System::new(3, HB, SYNC);
    sys.start_server(1, 1);
    sys.wait_for_role(1, 1, Role::Master);
    let addr = |sys: &System, s: u32| {
        let e = sys.entry(1, s).expect("the server's entry");
        format!("{}:{}", e.hostname, e.port)
    };
    let post_acked = |sys: &System, s: u32, id: u64| {
        let mut raw = RawTimeline::open(&addr(sys, s), 4);
        raw.post(4, "said once", id);
        while !raw.acked(id) {
            assert!(raw.next(), "no ack for post {id}: {:?}", raw.end);
        }
    };
    let want = vec!["said once".to_string()];
    post_acked(&sys, 1, 77);
    let journal = sys.server_dir(1, 1).join("journal.txt");
    for _ in 0..2 {
        let run = sys.entry(1, 1).expect("the master's entry").process;
        sys.kill(&System::server_name(1, 1));
        sys.restart_server(1, 1);
        // The new run replayed the journal and emptied it: what it knows
        // of post 77 from now on is not in the journal.
        wait_until("the new run master, its journal emptied", || {
            sys.entry(1, 1)
                .is_some_and(|e| e.process != run && e.role == Role::Master as i32)
                && std::fs::metadata(&journal).is_ok_and(|m| m.len() == 0)
        });
    }
    post_acked(&sys, 1, 77);
    let posts = |sys: &System, s: u32| sys.server_dir(1, s).join("u4_posts.txt");
    wait_file_posts(&posts(&sys, 1), 4, &want);

    // A slave rebuilt from nothing learns the ids with the files.
    sys.start_server(1, 2);
    sys.wait_slave_in_service(1, 2);
    let run = sys.entry(1, 2).expect("the slave's entry").process;
    sys.kill(&System::server_name(1, 2));
    std::fs::remove_dir_all(sys.server_dir(1, 2)).expect("delete the slave's directory");
    sys.restart_server(1, 2);
    wait_until("the slave's new run in service", || {
        sys.entry(1, 2)
            .is_some_and(|e| e.process != run && is_slave_in_service(&e))
    });
    sys.kill(&System::server_name(1, 1));
    sys.wait_for_role(1, 2, Role::Master);
    post_acked(&sys, 2, 77);
    wait_file_posts(&posts(&sys, 2), 4, &want);
}
