//! Timelines end to end: the last-20 and only-after-following rules, live
//! delivery inside a cluster and across clusters, a cluster without a
//! synchronizer, master and slave holding the same records, and synchronizer
//! restarts that duplicate nothing.

use crate::harness::*;
use tinysns::proto::tinysns::Kind;

/// Posts `texts` from a client already in timeline mode and waits until the
/// author's posts file on the master holds `total` posts.
fn post_all(sys: &System, author: &mut Client, user: u64, texts: &[String], total: usize) {
    author.send_all(texts);
    let c = sys.cluster_of(user);
    let path = sys.server_dir(c, 1).join(format!("u{user}_posts.txt"));
    wait_until(&format!("{total} posts by {user}"), || {
        posts_in(&path).len() >= total
    });
}

#[test]
fn last_20_posts_and_only_after_following() {
    let sys = System::full(3);
    let mut author = Client::logged_in(sys.coord_port, 1);
    let mut local = Client::logged_in(sys.coord_port, 4); // cluster 1
    let mut remote = Client::logged_in(sys.coord_port, 2); // cluster 2
    author.enter_timeline();
    post_all(&sys, &mut author, 1, &texts("before ", 1..=5), 5);

    assert_eq!(local.command("FOLLOW 1"), SUCCESS);
    wait_until("user 1 to reach cluster 2", || sys.has_user(2, 1, 1));
    assert_eq!(remote.command("FOLLOW 1"), SUCCESS);
    post_all(&sys, &mut author, 1, &texts("after ", 1..=25), 30);

    let want: Vec<String> = texts("after ", 6..=25);
    wait_until("25 posts in the remote timeline", || {
        posts_in(&sys.server_dir(2, 1).join("u2_timeline.txt")).len() == 25
    });
    for follower in [&mut local, &mut remote] {
        follower.enter_timeline();
        let mut got = Vec::new();
        for _ in 0..20 {
            let (head, text) = follower.next_post();
            assert!(head.starts_with("1 ("), "{head} >> {text}");
            got.push(text);
        }
        assert_eq!(got, want);
    }
    // Nothing more is shown until a new post comes, and that one is next.
    author.send("fresh");
    for follower in [&mut local, &mut remote] {
        let line = follower.next_line().expect("the new post");
        assert!(line.ends_with(" >> fresh"), "{line}");
    }
    // The author's own posts are not echoed back to the author.
    let mut other = Client::logged_in(sys.coord_port, 7);
    assert_eq!(other.command("FOLLOW 1"), SUCCESS);
    assert_eq!(author.seen.iter().filter(|l| l.contains(">>")).count(), 0);
}

#[test]
fn live_delivery_and_identical_replicas() {
    let sys = System::full(3);
    let users = [1u64, 2, 3, 4];
    let mut clients: Vec<Client> = users
        .iter()
        .map(|u| Client::logged_in(sys.coord_port, *u))
        .collect();
    wait_until("every user in every cluster", || {
        (1..=3).all(|c| users.iter().all(|u| sys.has_user(c, 1, *u)))
    });
    // Everyone follows everyone.
    for (i, c) in clients.iter_mut().enumerate() {
        for u in users {
            if u != users[i] {
                assert_eq!(c.command(&format!("FOLLOW {u}")), SUCCESS);
            }
        }
    }
    let [ok, all_users, followers] = clients[0].list();
    assert_eq!(ok, SUCCESS);
    assert_eq!(all_users, "All users: 1, 2, 3, 4");
    assert!(followers.starts_with("Followers:"), "{followers}");
    // Followers of user 1 come from three clusters.
    wait_until("followers of 1 from other clusters", || {
        read(&sys.server_dir(1, 1).join("u1_followers.txt"))
            .lines()
            .count()
            == 3
    });
    clients[0].expect_list("All users: 1, 2, 3, 4", "Followers: 2, 3, 4");

    for c in clients.iter_mut() {
        c.enter_timeline();
    }
    for (i, u) in users.iter().enumerate() {
        clients[i].send(&format!("hello from {u}"));
        for (j, other) in clients.iter_mut().enumerate() {
            if i != j {
                let line = other.next_line().expect("a live post");
                assert!(line.starts_with(&format!("{u} (")), "{line}");
                assert!(line.ends_with(&format!(" >> hello from {u}")), "{line}");
            }
        }
    }
    // Master and slave hold the same records, each once.
    for c in 1..=3 {
        wait_until(
            &format!("cluster {c}'s slave to hold what the master holds"),
            || records(&sys.server_dir(c, 1)) == records(&sys.server_dir(c, 2)),
        );
        assert_no_duplicates(&sys.server_dir(c, 1));
        let tl = posts_in(&sys.server_dir(c, 2).join(format!("u{c}_timeline.txt")));
        assert_eq!(tl.len(), 3, "cluster {c}: {tl:?}");
    }
}

#[test]
fn a_cluster_works_without_a_synchronizer() {
    let sys = System::one_cluster(500);
    let mut a = Client::logged_in(sys.coord_port, 1);
    let mut b = Client::logged_in(sys.coord_port, 4);
    assert_eq!(b.command("FOLLOW 1"), SUCCESS);
    b.enter_timeline();
    a.enter_timeline();
    a.send("no synchronizer needed");
    let line = b.next_line().expect("live post");
    assert!(line.ends_with(" >> no synchronizer needed"), "{line}");
    // The slave has it too: at once if it was in service, or through its
    // join if it was still catching up when the post was mirrored.
    let slave = sys.server_dir(1, 2).join("u4_timeline.txt");
    wait_until("the post in the slave's timeline", || {
        !posts_in(&slave).is_empty()
    });
    assert_eq!(posts_in(&slave).len(), 1);
}

#[test]
fn synchronizer_restarts_duplicate_nothing() {
    let mut sys = System::full_with(3, 500, 300);
    let mut a = Client::logged_in(sys.coord_port, 1);
    let mut b = Client::logged_in(sys.coord_port, 2);
    wait_until("user 1 in cluster 2", || sys.has_user(2, 1, 1));
    assert_eq!(b.command("FOLLOW 1"), SUCCESS);
    wait_until("the follow to reach cluster 1", || {
        sys.has_follower(1, 1, 1, 2)
    });
    a.enter_timeline();
    post_all(&sys, &mut a, 1, &texts("round one ", 1..=3), 3);
    let tl = sys.server_dir(2, 1).join("u2_timeline.txt");
    wait_until("round one delivered", || posts_in(&tl).len() == 3);

    for round in 0..2 {
        for c in 1..=3 {
            sys.kill(&System::synchronizer_name(c));
        }
        // Written while no synchronizer runs: carried after the restart.
        post_all(
            &sys,
            &mut a,
            1,
            &[format!("while down {round}")],
            4 + round * 2,
        );
        for c in 1..=3 {
            sys.start_synchronizer(c);
        }
        post_all(
            &sys,
            &mut a,
            1,
            &[format!("after restart {round}")],
            5 + round * 2,
        );
        wait_until("everything delivered once", || {
            posts_in(&tl).len() == 5 + round * 2
        });
    }
    // Let several full cycles run over the same history: a cycle that finds
    // nothing new changes no file, so count them in the coordinator's table
    // (each synchronizer's heartbeats say how many it has done).
    let cycles = || {
        sys.table()
            .and_then(|t| {
                t.servers
                    .iter()
                    .find(|e| e.kind == Kind::Synchronizer as i32 && e.cluster_id == 1)
                    .map(|e| e.full_cycles)
            })
            .unwrap_or(0)
    };
    let before = cycles();
    wait_until("three more full cycles", || cycles() >= before + 3);
    for c in 1..=3 {
        for s in 1..=2 {
            assert_no_duplicates(&sys.server_dir(c, s));
        }
    }
    assert_eq!(
        post_texts(&tl),
        vec![
            "round one 1",
            "round one 2",
            "round one 3",
            "while down 0",
            "after restart 0",
            "while down 1",
            "after restart 1"
        ]
    );
    assert_eq!(
        posts_in(&sys.server_dir(2, 2).join("u2_timeline.txt")).len(),
        7
    );
}
