//! Stalled peers on loopback (issue 11): a process stopped with SIGSTOP
//! keeps its TCP connections open and answers nothing, which is what a peer
//! behind a link that drops packets looks like to the processes that talk
//! to it. Each test checks that the others notice (keep-alive, deadlines),
//! end or replace what waits on the stalled peer, and lose or double
//! nothing once it answers again. No timing is asserted.

use crate::harness::grpc::{connect, login, login_ok, open_timeline};
use crate::harness::*;
use tinysns::proto::tinysns::{Kind, Role};
use tonic::Code;

const HB: u64 = 400;
const SYNC: u64 = 5_000;

/// Reads the client's screen until every text of `want` by `author` is on
/// it, then checks that each is there once.
fn wait_screen_once(client: &mut Client, author: u64, want: &[String], who: &str) {
    client.wait_screen(author, want, who);
    assert_each_once(&client.screen_posts(author), want, who);
}

fn roles(sys: &System) -> Vec<(i32, u32, u32, i32)> {
    let t = sys.table().expect("the table");
    let mut r: Vec<_> = t
        .servers
        .iter()
        .map(|e| (e.kind, e.cluster_id, e.server_id, e.role))
        .collect();
    r.sort();
    r
}

/// The coordinator stalls (every server is cut from it at once, and nobody
/// can be promoted): a master's lease runs out, so its timeline streams end
/// with `UNAVAILABLE` (before, they stayed open and showed nothing) and a
/// write is refused without changing anything. Once the coordinator answers
/// again, the terminal clients are back on the same master and every post is
/// shown once.
#[test]
fn timelines_end_on_a_master_that_cannot_reach_the_coordinator() {
    let sys = System::full_with(3, HB, SYNC);
    let mut poster = Client::logged_in(sys.coord_port, 1);
    let mut reader = Client::logged_in(sys.coord_port, 7); // cluster 1
    sys.follow(&mut reader, 7, 1);
    reader.enter_timeline();
    poster.enter_timeline();
    let before = texts("s", 0..5);
    poster.send_all(&before);
    let m = sys.master_of(1).expect("a master");
    wait_file_posts(&sys.server_dir(1, m).join("u7_timeline.txt"), 1, &before);
    wait_screen_once(&mut reader, 1, &before, "user 7 before");
    let table = roles(&sys);

    // A raw stream of user 4 and a login probe of user 4, on the master.
    let rt = runtime();
    let url = sys.server_url(1, m);
    let mut raw = rt.block_on(connect(&url));
    rt.block_on(login_ok(&mut raw, "4", "stall-probe"));
    let (_tx, mut stream) = rt
        .block_on(open_timeline(&mut raw, "4", "stall-probe"))
        .expect("a stream on the master");

    sys.stop("coordinator");
    // The stream ends by itself: nothing is sent on it.
    let end = rt.block_on(async {
        tokio::time::timeout(DEADLINE, async {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
    });
    let status = end
        .expect("the stream on the fenced master never ended")
        .expect_err("the stream ends with an error");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // A write is refused, and changes nothing.
    let files = snapshot(sys.data_dir(), &sys.server_dirs());
    let r = rt.block_on(login(&mut raw, "4", "stall-probe"));
    assert!(
        r.as_ref().is_err_and(|s| s.code() == Code::Unavailable),
        "{r:?}"
    );
    // A new stream is refused too.
    let again = rt.block_on(open_timeline(&mut raw, "4", "stall-probe"));
    assert!(
        again.as_ref().is_err_and(|s| s.code() == Code::Unavailable),
        "a stream opened on a fenced master: {:?}",
        again.err()
    );
    assert_same_files(
        &files,
        &snapshot(sys.data_dir(), &sys.server_dirs()),
        "a refused write on a fenced master",
    );

    sys.signal("coordinator", "-CONT");
    wait_until("every process alive in the table again", || {
        sys.table()
            .is_some_and(|t| t.servers.iter().all(|e| e.alive))
    });
    assert_eq!(roles(&sys), table, "nobody was promoted");
    // The clients reconnect (the same master) and go on.
    let after = texts("s", 5..10);
    poster.send_all(&after);
    let mut all = before.clone();
    all.extend(after);
    wait_file_posts(&sys.server_dir(1, m).join("u1_posts.txt"), 1, &all);
    wait_screen_once(&mut reader, 1, &all, "user 7");
    for s in 1..=2 {
        wait_file_posts(&sys.server_dir(1, s).join("u7_timeline.txt"), 1, &all);
    }
}

/// A peer synchronizer stalls while posts for its cluster are made: the
/// pushes to it miss their deadlines (and replace the connection); once it
/// answers again every post arrives, once, in its cluster's files and on
/// its follower's screen.
#[test]
fn posts_pushed_to_a_stalled_synchronizer_arrive_once() {
    let sys = System::full_with(3, HB, 1_000);
    let mut poster = Client::logged_in(sys.coord_port, 1);
    let mut remote = Client::logged_in(sys.coord_port, 2); // cluster 2
    sys.follow(&mut remote, 2, 1);
    remote.enter_timeline();
    poster.enter_timeline();
    let before = texts("y", 0..3);
    poster.send_all(&before);
    let m2 = sys.master_of(2).expect("a master in cluster 2");
    wait_file_posts(&sys.server_dir(2, m2).join("u2_timeline.txt"), 1, &before);

    let name = System::synchronizer_name(2);
    sys.stop(&name);
    let during = texts("y", 3..8);
    poster.send_all(&during);
    let m1 = sys.master_of(1).expect("a master in cluster 1");
    wait_file_posts(&sys.server_dir(1, m1).join("u1_posts.txt"), 1, &{
        let mut v = before.clone();
        v.extend(during.iter().cloned());
        v
    });
    // Long enough for pushes to it to have been tried and missed: the
    // coordinator counts it as failed (a failure window without heartbeat).
    wait_until("the stopped synchronizer to be taken as failed", || {
        sys.table().is_some_and(|t| {
            t.servers
                .iter()
                .any(|e| e.kind == Kind::Synchronizer as i32 && e.cluster_id == 2 && !e.alive)
        })
    });
    sys.signal(&name, "-CONT");
    let mut all = before.clone();
    all.extend(during);
    for s in 1..=2 {
        wait_file_posts(&sys.server_dir(2, s).join("u2_timeline.txt"), 1, &all);
    }
    wait_screen_once(&mut remote, 1, &all, "user 2");
    assert_eq!(sys.master_of(2), Some(m2));
    assert!(
        sys.entry(2, 3 - m2)
            .is_some_and(|e| e.role == Role::Slave as i32)
    );
}
