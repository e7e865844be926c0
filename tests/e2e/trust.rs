//! The trust boundary from outside (SPEC §5): a stranger with a plain gRPC
//! client and no key tries every peer call a real attacker would; each is
//! refused with `UNAUTHENTICATED` and changes nothing anywhere (no file of
//! any server or synchronizer, no table entry, no epoch), and the system
//! goes on working. Also: the key file (made once, private, never shown) and
//! what a bad one does.

use crate::harness::peer::{peer, stranger};
use crate::harness::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tinysns::proto::tinysns::coordinator_client::CoordinatorClient;
use tinysns::proto::tinysns::replica_client::ReplicaClient;
use tinysns::proto::tinysns::synchronizer_client::SynchronizerClient;
use tinysns::proto::tinysns::{
    AddUser, ApplyRequest, Empty, FollowBatch, FollowOp, HeartbeatRequest, JoinRequest, Kind,
    PostBatch, PostOp, RemotePost, Role, ServerInfo, SnapshotRequest, UserBatch, UserRequest,
    WriteOp, write_op,
};
use tonic::{Code, Status};

/// What may not change: every file of the system (all servers, the
/// synchronizers' and the coordinator's state, the key).
fn all_files(sys: &System) -> Snapshot {
    let root = sys.data_dir();
    let mut dirs: Vec<PathBuf> = (1..=sys.clusters)
        .map(|c| tinysns::config::cluster_dir(root, c))
        .collect();
    dirs.push(root.join("coordinator"));
    let mut s = snapshot(root, &dirs);
    s.insert(
        PathBuf::from("cluster.key"),
        std::fs::read(sys.key_file()).expect("key file"),
    );
    s
}

/// The table as far as a forged heartbeat could change it: who is where,
/// in which role, in service, in which run (not the heartbeat ages).
fn routing(sys: &System) -> Vec<ServerInfo> {
    let mut v: Vec<ServerInfo> = sys
        .table()
        .expect("table")
        .servers
        .into_iter()
        .map(|e| ServerInfo {
            last_heartbeat_ms_ago: 0,
            alive: false,
            full_cycles: 0,
            ..e
        })
        .collect();
    v.sort_by_key(|e| (e.kind, e.cluster_id, e.server_id));
    v
}

fn refused<T: std::fmt::Debug>(what: &str, r: Result<T, Status>) {
    match r {
        Ok(v) => panic!("{what}: accepted without the key: {v:?}"),
        Err(s) => assert_eq!(
            s.code(),
            Code::Unauthenticated,
            "{what}: {:?} {:?}",
            s.code(),
            s.message()
        ),
    }
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

fn post_op(author: u64, text: &str) -> PostOp {
    PostOp {
        author,
        time_ns: i64::MAX,
        text: text.into(),
        post_id: 1,
    }
}

fn forged_heartbeat(
    kind: Kind,
    cluster: u32,
    id: u32,
    role: Role,
    port: u32,
    epoch: u64,
) -> HeartbeatRequest {
    HeartbeatRequest {
        info: Some(ServerInfo {
            cluster_id: cluster,
            server_id: id,
            hostname: "attacker.example".into(),
            port,
            kind: kind as i32,
            role: role as i32,
            ..Default::default()
        }),
        epoch,
        in_service_slave: 0,
        in_service_process: 0,
        empty_directory: false,
    }
}

/// Every attack of the table, from a stranger, against one running
/// system; then the same system still carries a post across clusters.
#[test]
fn a_stranger_without_the_key_can_change_or_learn_nothing_of_the_peers() {
    let sys = System::full(3);
    let master = url(sys.ports[&System::server_name(1, 1)]);
    let slave = url(sys.ports[&System::server_name(1, 2)]);
    let sync = url(sys.ports[&System::synchronizer_name(2)]);
    let coord = url(sys.coord_port);
    let before_files = all_files(&sys);
    let before_table = routing(&sys);
    let run = sys.entry(1, 1).expect("master entry").process;

    runtime().block_on(async {
        let mut m = ReplicaClient::new(stranger(&master).await);
        refused(
            "Join naming an attacker's address",
            m.join(JoinRequest {
                cluster_id: 1,
                server_id: 2,
                address: "127.0.0.1:1".into(),
                from_seq: 0,
                incarnation: run,
                process: 7,
            })
            .await,
        );
        refused(
            "Snapshot",
            m.snapshot(SnapshotRequest {
                cluster_id: 1,
                epoch: 1,
                files: vec![],
                server_id: 2,
            })
            .await
            .map(|_| ()),
        );
        let mut s = ReplicaClient::new(stranger(&slave).await);
        for epoch in [1, u64::MAX] {
            refused(
                &format!("Apply at epoch {epoch}"),
                s.apply(ApplyRequest {
                    cluster_id: 1,
                    epoch,
                    ops: vec![
                        WriteOp {
                            op: Some(write_op::Op::AddUser(AddUser { user: 1000 })),
                        },
                        WriteOp {
                            op: Some(write_op::Op::Post(post_op(1, "forged"))),
                        },
                    ],
                    first_seq: 1,
                    incarnation: run,
                })
                .await,
            );
        }

        let mut y = SynchronizerClient::new(stranger(&sync).await);
        refused(
            "PushPosts",
            y.push_posts(PostBatch {
                from_cluster: 1,
                posts: vec![RemotePost {
                    post: Some(post_op(1, "forged")),
                    targets: vec![2],
                }],
            })
            .await,
        );
        refused(
            "PushFollows",
            y.push_follows(FollowBatch {
                from_cluster: 1,
                events: vec![FollowOp {
                    follower: 1,
                    followee: 2,
                    time_ns: i64::MAX,
                    follow: true,
                    request_id: 1,
                }],
            })
            .await,
        );
        refused(
            "PushUsers",
            y.push_users(UserBatch {
                from_cluster: 1,
                users: (1..=1000).map(|i| 3 * i + 1).collect(),
            })
            .await,
        );

        let mut c = CoordinatorClient::new(stranger(&coord).await);
        for (what, hb) in [
            (
                "Heartbeat as cluster 1's master",
                forged_heartbeat(Kind::Server, 1, 1, Role::Master, 1, 1),
            ),
            (
                "Heartbeat as a new master of cluster 2",
                forged_heartbeat(Kind::Server, 2, 9, Role::Master, 1, 1),
            ),
            (
                "Heartbeat as synchronizer 3",
                forged_heartbeat(Kind::Synchronizer, 3, 3, Role::None, 1, 0),
            ),
            (
                "Heartbeat with role NONE",
                forged_heartbeat(Kind::Server, 1, 1, Role::None, 1, 0),
            ),
            (
                "Heartbeat with a huge epoch",
                forged_heartbeat(Kind::Server, 1, 1, Role::Master, 1, u64::MAX),
            ),
        ] {
            refused(what, c.heartbeat(hb).await);
        }
        refused(
            "GetAllSynchronizers",
            c.get_all_synchronizers(Empty {}).await,
        );
        refused(
            "GetSynchronizer",
            c.get_synchronizer(UserRequest { user_id: 1 }).await,
        );
        // The lookups a client needs stay open.
        let at = c
            .get_server(UserRequest { user_id: 1 })
            .await
            .expect("GetServer is open");
        assert_eq!(
            at.into_inner().port,
            u32::from(sys.ports[&System::server_name(1, 1)])
        );
        c.get_table(Empty {}).await.expect("GetTable is open");

        // A wrong key is no key.
        let other = tinysns::trust::Trust::new(tinysns::trust::ClusterKey::generate(), None);
        let mut w = SynchronizerClient::new(other.peer(stranger(&sync).await));
        refused(
            "PushUsers with a wrong key",
            w.push_users(UserBatch {
                from_cluster: 1,
                users: vec![4],
            })
            .await,
        );
    });

    assert_same_files(&before_files, &all_files(&sys), "the stranger's calls");
    assert_eq!(
        routing(&sys),
        before_table,
        "the stranger's calls changed the table"
    );

    // The system still works: a follow and a post cross clusters.
    let mut u1 = Client::logged_in(sys.coord_port, 1);
    wait_until("cluster 2 to know user 1", || sys.has_user(2, 1, 1));
    let mut u2 = Client::logged_in(sys.coord_port, 2);
    assert_eq!(u2.command("FOLLOW 1"), "Command completed successfully");
    u1.enter_timeline();
    u2.enter_timeline();
    wait_until("user 1 to see user 2 as a follower", || {
        sys.has_follower(1, 1, 1, 2)
    });
    u1.send("after the attacks");
    let (author, text) = u2.next_post();
    assert!(author.starts_with("1 ("), "{author}");
    assert_eq!(text, "after the attacks");
    drop((u1, u2));

    // The key is in no log and no table.
    let key = std::fs::read_to_string(sys.key_file()).expect("key");
    let key = key.trim();
    let mut names: Vec<String> = sys.procs.keys().cloned().collect();
    names.push("coordinator".into());
    for name in names {
        assert!(!sys.log(&name).contains(key), "the key is in {name}'s log");
    }
    assert!(
        !format!("{:?}", sys.table()).contains(key),
        "the key is in the table"
    );
}

/// A peer with the key is let through the layer (what it sends is checked
/// by the receiver: see `peer_input`).
#[test]
fn a_peer_with_the_key_is_let_through() {
    let sys = System::one_cluster(1000);
    let coord = url(sys.coord_port);
    runtime().block_on(async {
        let mut c = CoordinatorClient::new(peer(&sys, &coord).await);
        c.get_all_synchronizers(Empty {})
            .await
            .expect("a peer may list synchronizers");
    });
}

/// The key file: made once by the first process, 64 hex digits, mode 0600;
/// every process of the system uses that one.
#[test]
fn the_first_process_makes_a_private_key_file() {
    use std::os::unix::fs::PermissionsExt;
    let sys = System::one_cluster(1000);
    let meta = std::fs::metadata(sys.key_file()).expect("key file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(sys.key_file()).expect("key");
    let key = text.trim();
    assert_eq!(key.len(), 64);
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    // The servers took the coordinator's key: they registered with it.
    assert!(sys.entry(1, 2).is_some_and(|e| is_slave_in_service(&e)));
}

/// Runs `bin` with `args` and the key file `key`; returns its status and
/// stderr.
fn run_with_key(bin: &str, args: &[&str], data: &Path, key: &Path) -> (Option<i32>, String) {
    let err = data.join(format!(
        "err-{}",
        Path::new(bin)
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
    ));
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("SNS_DATA_DIR", data)
        .env("SNS_CLUSTER_KEY_FILE", key)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).expect("stderr file"));
    let status = Proc::spawn(cmd, bin).exit_status(&format!("{bin} {args:?}"));
    (status.code(), read(&err))
}

#[test]
fn a_bad_key_file_stops_every_daemon_with_status_2_and_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let empty = data.join("empty.key");
    std::fs::write(&empty, "").expect("write");
    let short = data.join("short.key");
    std::fs::write(&short, "abcdef\n").expect("write");
    let a_dir = data.join("adir.key");
    std::fs::create_dir(&a_dir).expect("mkdir");
    let port = free_port().to_string();
    let daemons: [(&str, Vec<&str>); 3] = [
        (env!("CARGO_BIN_EXE_coordinator"), vec!["-p", &port]),
        (
            env!("CARGO_BIN_EXE_server"),
            vec![
                "-c",
                "1",
                "-s",
                "1",
                "-h",
                "127.0.0.1",
                "-k",
                "1",
                "-p",
                &port,
            ],
        ),
        (
            env!("CARGO_BIN_EXE_synchronizer"),
            vec!["-h", "127.0.0.1", "-k", "1", "-p", &port, "-i", "1"],
        ),
    ];
    for (key, mention) in [
        (&empty, "empty"),
        (&short, "64 hex"),
        (&a_dir, "cannot read"),
    ] {
        for (bin, args) in &daemons {
            let (code, err) = run_with_key(bin, args, data, key);
            assert_eq!(code, Some(2), "{bin} with {}: {err}", key.display());
            let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "{bin}: not one line: {err:?}");
            assert!(
                lines[0].starts_with("error: ") && lines[0].contains(mention),
                "{bin} with {}: {err:?}",
                key.display()
            );
        }
    }
    assert_eq!(
        std::fs::read(&short).expect("read"),
        b"abcdef\n",
        "the bad file was changed"
    );
}
