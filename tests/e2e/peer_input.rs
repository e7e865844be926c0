//! Peer input (SPEC §5, "peers are checked too"): a process that holds the
//! cluster key but sends what no real peer sends (a buggy or compromised
//! server or synchronizer, here the test) is refused, and changes nothing:
//! no data file, no table entry, no in-service flag, no epoch. Afterwards the
//! system works as before: real posts arrive, and a failover keeps every
//! acknowledged post and raises the epoch.
//!
//! Two systems: three clusters with synchronizers for the pushes, and one
//! cluster for the replica service and the coordinator's heartbeats.

use crate::harness::grpc::expect_code;
use crate::harness::peer::peer;
use crate::harness::*;

use std::path::PathBuf;
use tinysns::proto::tinysns::coordinator_client::CoordinatorClient;
use tinysns::proto::tinysns::replica_client::ReplicaClient;
use tinysns::proto::tinysns::synchronizer_client::SynchronizerClient;
use tinysns::proto::tinysns::{
    AddUser, ApplyRequest, FollowBatch, FollowOp, HeartbeatRequest, JoinRequest, Kind, PostBatch,
    PostOp, RemotePost, Role, ServerInfo, SnapshotRequest, UserBatch, WriteOp, write_op,
};
use tinysns::timefmt;
use tonic::Code;

/// A long heartbeat: nothing here depends on failure detection until the
/// failover at the end, and a busy machine must not turn a slow heartbeat
/// into a change of the table between two snapshots.
const HEARTBEAT_MS: u64 = 1000;

/// An entry of the coordinator's table without its heartbeat age:
/// `(kind, cluster, id, address, role, alive, in service, run)`.
type Entry = (i32, u32, u32, String, i32, bool, bool, u64);

/// Everything a refused request must leave as it was.
#[derive(Debug, PartialEq)]
struct World {
    files: Snapshot,
    table: Vec<Entry>,
    /// The coordinator's `epochs.txt`.
    epochs: String,
}

fn epochs_file(sys: &System) -> PathBuf {
    sys.data_dir()
        .join("coordinator")
        .join(tinysns::coordinator::EPOCH_FILE)
}

/// Every server directory's files, the table and the epochs.
fn world(sys: &System) -> World {
    let table = sys.table().expect("the coordinator's table");
    World {
        files: snapshot(sys.data_dir(), &sys.server_dirs()),
        table: table
            .servers
            .into_iter()
            .map(|e| {
                let addr = format!("{}:{}", e.hostname, e.port);
                let ids = (e.kind, e.cluster_id, e.server_id);
                (
                    ids.0,
                    ids.1,
                    ids.2,
                    addr,
                    e.role,
                    e.alive,
                    e.in_service,
                    e.process,
                )
            })
            .collect(),
        epochs: read(&epochs_file(sys)),
    }
}

fn assert_unchanged(sys: &System, before: &World, what: &str) {
    let after = world(sys);
    assert_same_files(&before.files, &after.files, what);
    assert_eq!(before.table, after.table, "{what} changed the table");
    assert_eq!(
        before.epochs, after.epochs,
        "{what} changed {}",
        "epochs.txt"
    );
}

/// Cluster `c`'s epoch as `epochs.txt` has it.
fn epoch_of(sys: &System, c: u32) -> u64 {
    read(&epochs_file(sys))
        .lines()
        .find_map(|l| {
            let mut f = l.split(' ');
            (f.next()? == c.to_string()).then_some(f.next()?.parse().ok()?)
        })
        .unwrap_or_else(|| panic!("no epoch for cluster {c} in epochs.txt"))
}

fn post_op(author: u64, time_ns: i64, text: &str) -> PostOp {
    PostOp {
        author,
        time_ns,
        text: text.into(),
        post_id: 0,
    }
}

fn follow_op(follower: u64, followee: u64, time_ns: i64, follow: bool) -> FollowOp {
    FollowOp {
        follower,
        followee,
        time_ns,
        follow,
        request_id: 0,
    }
}

fn op(o: write_op::Op) -> WriteOp {
    WriteOp { op: Some(o) }
}

/// Waits until `path` (a posts or timeline file) holds exactly `want`.
fn wait_texts(path: &std::path::Path, want: &[&str]) {
    wait_for(&format!("{want:?} in {}", path.display()), || {
        let got = post_texts(path);
        if got == want {
            Ok(())
        } else {
            Err(format!("got {got:?}"))
        }
    });
}

/// `PushUsers`, `PushFollows` and `PushPosts` that no synchronizer sends:
/// other clusters' users, our own users made to follow, followees and
/// targets elsewhere, bad texts, times at the ends of the range. Each is
/// refused whole and writes nothing; real posts and follows carry on.
#[test]
fn synchronizer_pushes_no_peer_sends_are_refused() {
    let sys = System::full_with(3, HEARTBEAT_MS, 30_000);
    // Users 1 and 4 live in cluster 1, 2 in cluster 2, 3 in cluster 3.
    let mut u1 = Client::logged_in(sys.coord_port, 1);
    let mut u2 = Client::logged_in(sys.coord_port, 2);
    let _u3 = Client::logged_in(sys.coord_port, 3);
    let _u4 = Client::logged_in(sys.coord_port, 4);
    wait_until("every user known in every server directory", || {
        (1..=3).all(|c| (1..=2).all(|s| (1..=4).all(|u| sys.has_user(c, s, u))))
    });
    assert_eq!(u1.command("FOLLOW 2"), SUCCESS);
    wait_until("user 1's follow in cluster 2", || {
        (1..=2).all(|s| sys.has_follower(2, s, 2, 1))
    });
    u2.enter_timeline();
    u2.send("before");
    let timelines: Vec<PathBuf> = (1..=2)
        .map(|s| sys.server_dir(1, s).join("u1_timeline.txt"))
        .collect();
    for t in &timelines {
        wait_texts(t, &["before"]);
    }

    let url = format!("http://127.0.0.1:{}", sys.ports["synchronizer_1"]);
    let now = timefmt::now();
    let users = |from_cluster, users: &[u64]| UserBatch {
        from_cluster,
        users: users.to_vec(),
    };
    let follows = |from_cluster, events: Vec<FollowOp>| FollowBatch {
        from_cluster,
        events,
    };
    let posts = |from_cluster, posts: Vec<(PostOp, Vec<u64>)>| PostBatch {
        from_cluster,
        posts: posts
            .into_iter()
            .map(|(p, targets)| RemotePost {
                post: Some(p),
                targets,
            })
            .collect(),
    };
    let user_pushes = [
        ("a user of cluster 3 from cluster 2", users(2, &[2, 3])),
        ("user 0", users(2, &[0])),
        ("our own user 4 from cluster 2", users(2, &[4])),
        ("a push from our own cluster", users(1, &[2])),
        ("a push from cluster 7 of 3", users(7, &[2])),
    ];
    let follow_pushes = [
        (
            "our user 4 made to follow our user 1",
            follows(2, vec![follow_op(4, 1, now, true)]),
        ),
        (
            "cluster 3's user 3 unfollowing 1, sent by cluster 2",
            follows(2, vec![follow_op(3, 1, now, false)]),
        ),
        (
            "a followee in cluster 2",
            follows(2, vec![follow_op(2, 5, now, true)]),
        ),
        (
            "a follow dated i64::MAX",
            follows(2, vec![follow_op(2, 4, i64::MAX, true)]),
        ),
        (
            "an unfollow dated 1970",
            follows(2, vec![follow_op(2, 4, 0, false)]),
        ),
        (
            "a good event and a bad one",
            follows(
                2,
                vec![follow_op(2, 4, now, true), follow_op(2, 4, i64::MIN, false)],
            ),
        ),
    ];
    let post_pushes = [
        (
            "a post by cluster 3's user from cluster 2",
            posts(2, vec![(post_op(3, now, "I am 3"), vec![1])]),
        ),
        (
            "a post dated i64::MAX",
            posts(
                2,
                vec![(post_op(2, i64::MAX, "from the end of time"), vec![1])],
            ),
        ),
        (
            "a target in cluster 2",
            posts(2, vec![(post_op(2, now, "to 5"), vec![1, 5])]),
        ),
        (
            "a post of two lines",
            posts(2, vec![(post_op(2, now, "two\nlines"), vec![1])]),
        ),
        (
            "a post of 300 bytes",
            posts(2, vec![(post_op(2, now, &"x".repeat(300)), vec![1])]),
        ),
        (
            "a good post and a bad one",
            posts(
                2,
                vec![
                    (post_op(2, now, "forged but fine"), vec![1]),
                    (post_op(2, now + 1, "to user 0"), vec![0]),
                ],
            ),
        ),
    ];

    let before = world(&sys);
    let rt = runtime();
    let mut push = rt.block_on(async { SynchronizerClient::new(peer(&sys, &url).await) });
    for (what, batch) in user_pushes {
        let r = rt.block_on(push.push_users(batch));
        expect_code(r, Code::InvalidArgument, what);
        assert_unchanged(&sys, &before, what);
    }
    for (what, batch) in follow_pushes {
        let r = rt.block_on(push.push_follows(batch));
        expect_code(r, Code::InvalidArgument, what);
        assert_unchanged(&sys, &before, what);
    }
    for (what, batch) in post_pushes {
        let r = rt.block_on(push.push_posts(batch));
        expect_code(r, Code::InvalidArgument, what);
        assert_unchanged(&sys, &before, what);
    }

    // The system carries on: a real post reaches user 1 in cluster 1, after
    // a post dated at the end of time was offered for its author...
    u2.send("after");
    for t in &timelines {
        wait_texts(t, &["before", "after"]);
    }
    // ...and user 1's follows still fold by their real times: an unfollow
    // ends the follow, and following again is a new follow.
    assert_eq!(u1.command("UNFOLLOW 2"), SUCCESS);
    assert_eq!(u1.command("FOLLOW 2"), SUCCESS);
    assert_eq!(
        u1.command("FOLLOW 2"),
        "Input username already exists, command failed"
    );
}

/// `Replica` calls and coordinator heartbeats that no server sends: a batch
/// with a gap or with other operations under numbers already applied, an
/// epoch the coordinator never issued, operations no client could have
/// asked for; a join or snapshot naming the master itself; heartbeats that
/// claim NONE for a live run, come from runs that never registered, carry
/// an epoch above the issued one. Each is refused and changes nothing; then
/// the master is killed, and the promoted slave has every acknowledged post
/// at a higher epoch.
#[test]
fn replica_calls_and_heartbeats_no_server_sends_are_refused() {
    let mut sys = System::one_cluster(HEARTBEAT_MS);
    let (master_url, slave_url) = (sys.server_url(1, 1), sys.server_url(1, 2));
    let posts: Vec<PathBuf> = (1..=2)
        .map(|s| sys.server_dir(1, s).join("u1_posts.txt"))
        .collect();
    let mut u1 = Client::logged_in(sys.coord_port, 1);
    u1.enter_timeline();
    u1.send("one");
    // On the master's files only once the slave has it.
    wait_texts(&posts[0], &["one"]);
    let epoch = epoch_of(&sys, 1);
    let master = sys.entry(1, 1).expect("the master's entry");
    let slave = sys.entry(1, 2).expect("the slave's entry");
    assert!(slave.in_service);

    let rt = runtime();
    let (mut to_master, mut to_slave, mut coordinator) = rt.block_on(async {
        let coord_url = format!("http://127.0.0.1:{}", sys.coord_port);
        (
            ReplicaClient::new(peer(&sys, &master_url).await),
            ReplicaClient::new(peer(&sys, &slave_url).await),
            CoordinatorClient::new(peer(&sys, &coord_url).await),
        )
    });
    // What a peer can learn from the master: its reign and how far it is.
    let (seq, incarnation) = rt.block_on(async {
        let req = SnapshotRequest {
            cluster_id: 1,
            epoch,
            files: Vec::new(),
            server_id: 3,
        };
        let mut stream = to_master
            .snapshot(req)
            .await
            .expect("a snapshot")
            .into_inner();
        loop {
            let chunk = stream
                .message()
                .await
                .expect("snapshot stream")
                .expect("a done chunk");
            if chunk.done {
                return (chunk.seq, chunk.incarnation);
            }
        }
    });
    // The login's new user and the post: the slave stands at operation 3.
    assert_eq!(seq, 2);
    let now = timefmt::now();
    let forged_post = op(write_op::Op::Post(post_op(1, now, "forged")));
    let forged_user = op(write_op::Op::AddUser(AddUser { user: 7 }));
    let apply = |epoch, first_seq, ops: Vec<WriteOp>| ApplyRequest {
        cluster_id: 1,
        epoch,
        ops,
        first_seq,
        incarnation,
    };
    let before = world(&sys);

    // Apply, to the slave.
    let out_of_sync = [
        (
            "a batch after a gap",
            apply(
                epoch,
                seq + 3,
                vec![forged_user.clone(), forged_post.clone()],
            ),
        ),
        (
            "other operations under numbers the slave applied",
            apply(epoch, seq, vec![forged_post.clone(), forged_user.clone()]),
        ),
    ];
    for (what, req) in out_of_sync {
        expect_code(rt.block_on(to_slave.apply(req)), Code::Aborted, what);
        assert_unchanged(&sys, &before, what);
    }
    let what = "a batch at an epoch the coordinator never issued";
    let req = apply(u64::MAX, seq + 1, vec![forged_post.clone()]);
    expect_code(rt.block_on(to_slave.apply(req)), Code::Unavailable, what);
    assert_unchanged(&sys, &before, what);
    let bad_ops = [
        (
            "a new user of cluster 2",
            op(write_op::Op::AddUser(AddUser { user: 2 })),
        ),
        (
            "a post dated i64::MAX",
            op(write_op::Op::Post(post_op(1, i64::MAX, "late"))),
        ),
        (
            "a post by user 2 of cluster 2",
            op(write_op::Op::Post(post_op(2, now, "not here"))),
        ),
        (
            "a post of two lines",
            op(write_op::Op::Post(post_op(1, now, "a\nb"))),
        ),
        (
            "user 1 following user 1",
            op(write_op::Op::Follow(follow_op(1, 1, now, true))),
        ),
        ("an empty operation", WriteOp { op: None }),
    ];
    for (what, bad) in bad_ops {
        let req = apply(epoch, seq + 1, vec![forged_post.clone(), bad]);
        expect_code(
            rt.block_on(to_slave.apply(req)),
            Code::InvalidArgument,
            what,
        );
        assert_unchanged(&sys, &before, what);
    }
    // Apply, Join and Snapshot to the master.
    let what = "a batch to the master at an epoch never issued";
    let req = apply(u64::MAX, 1, vec![forged_post.clone()]);
    expect_code(rt.block_on(to_master.apply(req)), Code::Unavailable, what);
    assert_unchanged(&sys, &before, what);
    let join = |server_id, address: &str| JoinRequest {
        cluster_id: 1,
        server_id,
        address: address.to_string(),
        from_seq: seq,
        incarnation,
        process: slave.process,
    };
    let master_addr = format!("127.0.0.1:{}", master.port);
    for (what, req) in [
        ("a join at the master's own address", join(2, &master_addr)),
        ("a join naming the master's id", join(1, "127.0.0.1:1")),
        ("a join naming server 0", join(0, "127.0.0.1:1")),
    ] {
        expect_code(
            rt.block_on(to_master.join(req)),
            Code::InvalidArgument,
            what,
        );
        assert_unchanged(&sys, &before, what);
    }
    let snapshot_req = |server_id, epoch| SnapshotRequest {
        cluster_id: 1,
        epoch,
        files: Vec::new(),
        server_id,
    };
    let what = "a snapshot for the master itself";
    let r = rt.block_on(to_master.snapshot(snapshot_req(1, epoch)));
    expect_code(r.map(drop), Code::InvalidArgument, what);
    assert_unchanged(&sys, &before, what);
    let what = "a snapshot at an epoch never issued";
    let r = rt.block_on(to_master.snapshot(snapshot_req(2, u64::MAX)));
    expect_code(r.map(drop), Code::Unavailable, what);
    assert_unchanged(&sys, &before, what);

    // Heartbeats to the coordinator, in the master's and the slave's names.
    let beat = |of: &ServerInfo, role: Role, process, epoch, in_service_slave| HeartbeatRequest {
        info: Some(ServerInfo {
            role: role as i32,
            process,
            alive: false,
            in_service: false,
            last_heartbeat_ms_ago: 0,
            ..of.clone()
        }),
        epoch,
        in_service_slave,
        in_service_process: slave.process,
        empty_directory: false,
    };
    let heartbeats = [
        (
            "NONE from the master's live run (a run claims it only before its first answer)",
            beat(&master, Role::None, master.process, 0, 0),
        ),
        (
            "the master without its run, dropping its slave",
            beat(&master, Role::Master, 0, epoch, 0),
        ),
        (
            "the master from a run that never registered, dropping its slave",
            beat(&master, Role::Master, master.process ^ 2, epoch, 0),
        ),
        (
            "the master at epoch 2^64-1",
            beat(&master, Role::Master, master.process, u64::MAX, 2),
        ),
        (
            "the slave at an epoch above the issued one",
            beat(&slave, Role::Slave, slave.process, epoch + 1, 0),
        ),
        (
            "a synchronizer claiming MASTER",
            HeartbeatRequest {
                info: Some(ServerInfo {
                    kind: Kind::Synchronizer as i32,
                    role: Role::Master as i32,
                    server_id: 1,
                    process: 0,
                    ..master.clone()
                }),
                ..Default::default()
            },
        ),
    ];
    for (what, req) in heartbeats {
        expect_code(
            rt.block_on(coordinator.heartbeat(req)),
            Code::InvalidArgument,
            what,
        );
        assert_unchanged(&sys, &before, what);
    }
    // A master's report naming a server never heard of is not refused (a
    // restarted coordinator may hear a master before its slave) but changes
    // nothing.
    let what = "the master reporting unregistered server 9 in service";
    rt.block_on(coordinator.heartbeat(beat(&master, Role::Master, master.process, epoch, 9)))
        .unwrap_or_else(|s| panic!("{what}: {s:?}"));
    assert_unchanged(&sys, &before, what);

    // The cluster carries on: posts are acknowledged (the master did not
    // step down, the slave skipped nothing), and after the master is killed
    // the slave, promoted at a higher epoch, has every one of them and
    // nothing forged.
    u1.send("two");
    u1.send("three");
    let all = ["one", "two", "three"];
    wait_texts(&posts[0], &all);
    assert_eq!(sys.master_of(1), Some(1));
    drop(u1);
    sys.kill(&System::server_name(1, 1));
    sys.wait_for_role(1, 2, Role::Master);
    wait_texts(&posts[1], &all);
    assert_eq!(epoch_of(&sys, 1), epoch + 1, "a promotion raises the epoch");
    assert!(!sys.has_user(1, 2, 7), "the forged user is nowhere");
    assert_no_duplicates(&sys.server_dir(1, 2));
}
