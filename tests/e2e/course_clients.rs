//! Clients written for the course against Tiny SNS (SPEC §6): the course's
//! MP2.2 test sheets 1–3 (`/work/shared/COURSE.md`) played with the course
//! client emulator (`harness::course`), which speaks only the course's
//! messages — `CoordService.GetServer`, then one channel, a token-less
//! Login, `Reply.msg` strings, `Set Stream` stamped with the current time,
//! posts with `fgets`'s newline — and checked screen by screen; the
//! course's reply strings and their refusals; and this project's own client
//! and course clients sharing timelines.
//!
//! Where a sheet's next step needs data another cluster must first receive,
//! the test waits for it in the data files (the sheets wait 60 s instead),
//! so each history is complete and in order when it is shown.

use crate::harness::course::{self, CONNECTION_FAILED, CourseClient};
use crate::harness::*;
use tinysns::proto::tinysns::Role;
use tonic::Code;

const HEARTBEAT_MS: u64 = 500;

/// Waits until user `user`'s timeline file on server `s` of cluster `c`
/// holds `n` posts; `poster` (who just posted) is shown if it never does.
fn wait_timeline(sys: &System, c: u32, s: u32, user: u64, n: usize, poster: &CourseClient) {
    let path = sys.server_dir(c, s).join(format!("u{user}_timeline.txt"));
    wait_for(&format!("{n} posts in user {user}'s timeline"), || {
        let got = post_texts(&path);
        if got.len() >= n {
            Ok(())
        } else {
            Err(format!("{got:?}; the poster: {}", poster.transcript()))
        }
    });
}

/// Waits until server 1 of every cluster lists every one of `users`.
fn wait_users_everywhere(sys: &System, masters: &[(u32, u32)], users: &[u64]) {
    wait_until(&format!("users {users:?} in every cluster"), || {
        masters
            .iter()
            .all(|(c, s)| users.iter().all(|u| sys.has_user(*c, *s, *u)))
    });
}

/// Waits until `followee`'s followers file (on its cluster's server `s`)
/// holds each of `followers`.
fn wait_followers(sys: &System, s: u32, followee: u64, followers: &[u64]) {
    let c = sys.cluster_of(followee);
    wait_until(&format!("followers {followers:?} of {followee}"), || {
        followers
            .iter()
            .all(|f| sys.has_follower(c, s, followee, *f))
    });
}

/// Who is what in the coordinator's table, without the heartbeat ages.
fn roles(sys: &System) -> Vec<(i32, u32, u32, i32, bool)> {
    let mut v: Vec<_> = sys
        .table()
        .expect("the coordinator's table")
        .servers
        .into_iter()
        .map(|e| (e.kind, e.cluster_id, e.server_id, e.role, e.alive))
        .collect();
    v.sort();
    v
}

fn follow_all(c: &mut CourseClient, users: &[u64]) {
    for u in users {
        c.check(&format!("FOLLOW {u}"), &[SUCCESS]);
    }
}

/// Sheet 1: the coordinator and cluster 1's two servers, no synchronizers;
/// users 1 and 4.
#[test]
fn sheet_1_one_cluster() {
    let sys = System::one_cluster(HEARTBEAT_MS);
    let mut u1 = CourseClient::logged_in(sys.coord_port, 1);
    let mut u4 = CourseClient::logged_in(sys.coord_port, 4);
    u1.expect_list("1, 4", "");
    u4.expect_list("1, 4", "");
    u1.check("FOLLOW 4", &[SUCCESS]);
    u4.check("FOLLOW 1", &[SUCCESS]);
    u1.expect_list("1, 4", "4");
    u4.expect_list("1, 4", "1");

    u1.enter_timeline();
    u1.post_all(&["p11", "p12"]);
    wait_timeline(&sys, 1, 1, 4, 2, &u1);
    u4.enter_timeline();
    u4.expect_posts(&[(1, "p11"), (1, "p12")]);
    u4.post_all(&["p41", "p42"]);
    u1.expect_posts(&[(4, "p41"), (4, "p42")]);
    u1.expect_nothing_more();
    u4.expect_nothing_more();

    // Stored without fgets's newline, and `Set Stream` is no post.
    for s in 1..=2 {
        let dir = sys.server_dir(1, s);
        wait_until("the slave to hold every post", || {
            post_texts(&dir.join("u4_posts.txt")).len() == 2
        });
        assert_eq!(post_texts(&dir.join("u1_posts.txt")), ["p11", "p12"]);
        assert_eq!(post_texts(&dir.join("u4_posts.txt")), ["p41", "p42"]);
    }
}

/// `GetServer` names the live master of the user's cluster as a course
/// client dials it, and is UNAVAILABLE for a cluster that has none (the
/// course client then prints `connection failed: -1`).
#[test]
fn get_server_names_the_master_or_is_unavailable() {
    let sys = System::one_cluster(HEARTBEAT_MS);
    let rt = runtime();
    let master_port = sys.ports[&System::server_name(1, 1)].to_string();
    for user in [1, 4, 7] {
        let info = rt
            .block_on(course::get_server("localhost", sys.coord_port, user))
            .unwrap_or_else(|s| panic!("GetServer({user}): {s:?}"));
        assert_eq!(info.port, master_port, "{info:?}");
        assert_eq!(info.server_id, 1, "{info:?}");
        assert_eq!(info.r#type, "master", "{info:?}");
        assert!(!info.hostname.is_empty(), "{info:?}");
    }
    let before = snapshot(sys.data_dir(), &sys.server_dirs());
    let table = roles(&sys);
    for user in [2, 3] {
        let r = rt.block_on(course::get_server("localhost", sys.coord_port, user));
        grpc::expect_code(
            r,
            Code::Unavailable,
            "GetServer for a cluster without servers",
        );
        let mut c = CourseClient::start(sys.coord_port, user);
        c.expect_next(CONNECTION_FAILED);
    }
    assert_same_files(
        &before,
        &snapshot(sys.data_dir(), &sys.server_dirs()),
        "GetServer without a master",
    );
    assert_eq!(roles(&sys), table);
}

/// The course's reply strings map to SPEC §2's lines; every refusal
/// changes nothing.
#[test]
fn course_reply_strings_and_refusals() {
    let sys = System::one_cluster(HEARTBEAT_MS);
    let mut u1 = CourseClient::logged_in(sys.coord_port, 1);
    let _u4 = CourseClient::logged_in(sys.coord_port, 4);
    let _u7 = CourseClient::logged_in(sys.coord_port, 7);
    u1.check("FOLLOW 4", &[SUCCESS]);

    let before = snapshot(sys.data_dir(), &sys.server_dirs());
    let table = roles(&sys);
    let already = "Input username already exists, command failed";
    let invalid = "Command failed with invalid username";
    for (line, want) in [
        ("FOLLOW 1", already),
        ("FOLLOW 4", already),
        ("FOLLOW 99", invalid),
        ("FOLLOW abc", invalid),
        ("UNFOLLOW 1", invalid),
        ("UNFOLLOW 99", invalid),
        ("UNFOLLOW abc", invalid),
        ("UNFOLLOW 7", "Command failed with not a follower"),
    ] {
        u1.check(line, &[want]);
    }
    // A second client of a user who is logged in, with no token to tell
    // it from the first: refused, as a course client shows it.
    let mut again = CourseClient::start(sys.coord_port, 1);
    again.expect_next(CONNECTION_FAILED);
    assert_same_files(
        &before,
        &snapshot(sys.data_dir(), &sys.server_dirs()),
        "refused follows and login",
    );
    assert_eq!(roles(&sys), table);

    u1.check("UNFOLLOW 4", &[SUCCESS]);
    u1.expect_list("1, 4, 7", "");
}

/// A token-less session lives as long as its connection, with no refresh
/// (many heartbeat periods pass while the client is idle), and ends with
/// it: once the client is gone (Ctrl-C), the user logs in again.
#[test]
fn token_less_session_lives_with_its_connection() {
    let sys = System::one_cluster(HEARTBEAT_MS);
    let mut u1 = CourseClient::logged_in(sys.coord_port, 1);
    let mut u4 = CourseClient::logged_in(sys.coord_port, 4);
    u4.check("FOLLOW 1", &[SUCCESS]);
    // Idle for longer than any lease: until the coordinator's table has
    // shown ten fresh heartbeats of the master (its age starting over).
    let age = || {
        sys.entry(1, 1)
            .filter(|e| e.alive)
            .map(|e| e.last_heartbeat_ms_ago)
    };
    let (mut last, mut beats) = (age(), 0);
    wait_for("ten heartbeats while the client idles", || {
        let now = age();
        if let (Some(a), Some(b)) = (last, now)
            && b < a
        {
            beats += 1;
        }
        last = now;
        if beats >= 10 {
            Ok(())
        } else {
            Err(format!("{beats} heartbeats seen"))
        }
    });
    u1.expect_list("1, 4", "4");
    u1.enter_timeline();
    u1.post("still here");
    wait_timeline(&sys, 1, 1, 4, 1, &u1);

    drop(u1);
    let mut back = CourseClient::relaunched(sys.coord_port, 1);
    back.expect_list("1, 4", "4");
}

/// Sheet 2's screens, on a full system; returns users 1–3's clients, each
/// in timeline mode with every line checked.
fn sheet_2(sys: &System) -> [CourseClient; 3] {
    let masters = [(1, 1), (2, 1), (3, 1)];
    let mut u1 = CourseClient::logged_in(sys.coord_port, 1);
    let mut u2 = CourseClient::logged_in(sys.coord_port, 2);
    let mut u3 = CourseClient::logged_in(sys.coord_port, 3);
    wait_users_everywhere(sys, &masters, &[1, 2, 3]);
    for c in [&mut u1, &mut u2, &mut u3] {
        c.expect_list("1, 2, 3", "");
    }
    follow_all(&mut u1, &[2, 3]);
    follow_all(&mut u2, &[1, 3]);
    follow_all(&mut u3, &[1, 2]);
    wait_followers(sys, 1, 1, &[2, 3]);
    wait_followers(sys, 1, 2, &[1, 3]);
    wait_followers(sys, 1, 3, &[1, 2]);
    u1.expect_list("1, 2, 3", "2, 3");
    u2.expect_list("1, 2, 3", "1, 3");
    u3.expect_list("1, 2, 3", "1, 2");

    u1.enter_timeline();
    u1.post_all(&["p11", "p12"]);
    wait_timeline(sys, 2, 1, 2, 2, &u1);
    u2.enter_timeline();
    u2.expect_posts(&[(1, "p11"), (1, "p12")]);
    u2.post_all(&["p21", "p22"]);
    u1.expect_posts(&[(2, "p21"), (2, "p22")]);
    wait_timeline(sys, 3, 1, 3, 4, &u2);
    u3.enter_timeline();
    u3.expect_posts(&[(1, "p11"), (1, "p12"), (2, "p21"), (2, "p22")]);
    u3.post_all(&["p31", "p32"]);
    u1.expect_posts(&[(3, "p31"), (3, "p32")]);
    u2.expect_posts(&[(3, "p31"), (3, "p32")]);
    for c in [&mut u1, &mut u2, &mut u3] {
        c.expect_nothing_more();
    }
    [u1, u2, u3]
}

/// Sheet 2: three clusters, synchronizers, users 1, 2, 3.
#[test]
fn sheet_2_three_clusters() {
    let sys = System::full(3);
    let _clients = sheet_2(&sys);
}

/// Sheet 3: after sheet 2, users 1–3 end, cluster 2's master is SIGKILLed;
/// once its slave is promoted, users 1, 2, 3 come back and a new user 5
/// (cluster 2) joins, served by the promoted slave.
#[test]
fn sheet_3_master_failure() {
    let mut sys = System::full(3);
    drop(sheet_2(&sys));
    sys.kill(&System::server_name(2, 1));
    sys.wait_for_role(2, 2, Role::Master);
    let masters = [(1, 1), (2, 2), (3, 1)];
    let promoted = format!(":{}", sys.ports[&System::server_name(2, 2)]);

    let mut u1 = CourseClient::relaunched(sys.coord_port, 1);
    let mut u2 = CourseClient::relaunched(sys.coord_port, 2);
    let mut u3 = CourseClient::relaunched(sys.coord_port, 3);
    let mut u5 = CourseClient::relaunched(sys.coord_port, 5);
    for c in [&u2, &u5] {
        assert!(c.server.ends_with(&promoted), "{}", c.transcript());
    }
    u5.expect_list("1, 2, 3, 5", "");
    follow_all(&mut u5, &[1, 2, 3]);
    wait_users_everywhere(&sys, &masters, &[5]);
    follow_all(&mut u1, &[5]);
    follow_all(&mut u2, &[5]);
    follow_all(&mut u3, &[5]);
    wait_followers(&sys, 1, 1, &[2, 3, 5]);
    wait_followers(&sys, 2, 2, &[1, 3, 5]);
    wait_followers(&sys, 1, 3, &[1, 2, 5]);
    wait_followers(&sys, 2, 5, &[1, 2, 3]);
    u5.expect_list("1, 2, 3, 5", "1, 2, 3");
    u1.expect_list("1, 2, 3, 5", "2, 3, 5");
    u2.expect_list("1, 2, 3, 5", "1, 3, 5");
    u3.expect_list("1, 2, 3, 5", "1, 2, 5");

    u5.enter_timeline();
    u5.post_all(&["p51", "p52"]);
    wait_timeline(&sys, 3, 1, 3, 6, &u5);
    u3.enter_timeline();
    u3.expect_posts(&[
        (1, "p11"),
        (1, "p12"),
        (2, "p21"),
        (2, "p22"),
        (5, "p51"),
        (5, "p52"),
    ]);
    u3.post_all(&["p33", "p34"]);
    u5.expect_posts(&[(3, "p33"), (3, "p34")]);
    wait_timeline(&sys, 2, 2, 2, 8, &u3);
    u2.enter_timeline();
    u2.expect_posts(&[
        (1, "p11"),
        (1, "p12"),
        (3, "p31"),
        (3, "p32"),
        (5, "p51"),
        (5, "p52"),
        (3, "p33"),
        (3, "p34"),
    ]);
    u2.post_all(&["p23", "p24"]);
    u5.expect_posts(&[(2, "p23"), (2, "p24")]);
    u3.expect_posts(&[(2, "p23"), (2, "p24")]);
    wait_timeline(&sys, 1, 1, 1, 10, &u2);
    u1.enter_timeline();
    u1.expect_posts(&[
        (2, "p21"),
        (2, "p22"),
        (3, "p31"),
        (3, "p32"),
        (5, "p51"),
        (5, "p52"),
        (3, "p33"),
        (3, "p34"),
        (2, "p23"),
        (2, "p24"),
    ]);
    u1.post_all(&["p13", "p14"]);
    for c in [&mut u5, &mut u3, &mut u2] {
        c.expect_posts(&[(1, "p13"), (1, "p14")]);
    }
    // User 5 saw only p33 p34 p23 p24 p13 p14; nobody saw more.
    for c in [&mut u1, &mut u2, &mut u3, &mut u5] {
        c.expect_nothing_more();
    }
}

/// This project's terminal client (user 1) and course clients (user 2 in
/// another cluster, user 4 in the same one) follow each other and see each
/// other's posts both ways.
#[test]
fn own_and_course_clients_share_timelines() {
    let sys = System::full(3);
    let masters = [(1, 1), (2, 1), (3, 1)];
    let mut own = Client::logged_in(sys.coord_port, 1);
    let mut u2 = CourseClient::logged_in(sys.coord_port, 2);
    let mut u4 = CourseClient::logged_in(sys.coord_port, 4);
    wait_users_everywhere(&sys, &masters, &[1, 2, 4]);
    assert_eq!(own.command("FOLLOW 2"), SUCCESS);
    assert_eq!(own.command("FOLLOW 4"), SUCCESS);
    u2.check("FOLLOW 1", &[SUCCESS]);
    u4.check("FOLLOW 1", &[SUCCESS]);
    wait_followers(&sys, 1, 1, &[2, 4]);
    wait_followers(&sys, 1, 2, &[1]);
    wait_followers(&sys, 1, 4, &[1]);
    own.expect_list("All users: 1, 2, 4", "Followers: 2, 4");
    u2.expect_list("1, 2, 4", "1");

    own.enter_timeline();
    u2.enter_timeline();
    u4.enter_timeline();
    own.send("from the own client");
    for c in [&mut u2, &mut u4] {
        c.expect_posts(&[(1, "from the own client")]);
    }
    u2.post("from course client 2");
    u4.post("from course client 4");
    let mut got: Vec<(String, String)> = (0..2).map(|_| own.next_post()).collect();
    got.sort();
    let authors: Vec<(&str, &str)> = got
        .iter()
        .map(|(head, text)| (head.split_once(" (").map_or("", |h| h.0), text.as_str()))
        .collect();
    assert_eq!(
        authors,
        [("2", "from course client 2"), ("4", "from course client 4")],
        "{:#?}",
        own.seen
    );
    u2.expect_nothing_more();
    u4.expect_nothing_more();
}
