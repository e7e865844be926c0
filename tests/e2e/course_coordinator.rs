//! The course's `csce438.CoordService/GetServer` on the coordinator's port
//! (SPEC §6), called as a course client does: a plain channel, no cluster
//! key. It names the live master of the user's cluster, follows a failover,
//! and answers UNAVAILABLE when the cluster has no live master.

use crate::harness::peer;
use crate::harness::*;

use tinysns::proto::csce438::coord_service_client::CoordServiceClient;
use tinysns::proto::csce438::{Id, ServerInfo};
use tinysns::proto::tinysns::{Role, ServerList};
use tonic::{Code, Status};

const HEARTBEAT_MS: u64 = 300;

/// The course's GetServer for user `id`, as a course client sends it.
fn get_server(sys: &System, id: i32) -> Result<ServerInfo, Status> {
    let url = format!("http://127.0.0.1:{}", sys.coord_port);
    runtime().block_on(async move {
        let mut c = CoordServiceClient::new(peer::stranger(&url).await);
        c.get_server(Id { id }).await.map(|r| r.into_inner())
    })
}

/// What the course's answer must be for a master at server `s` of cluster
/// `c`: its announced address, the port in decimal, type "master".
fn expected(sys: &System, c: u32, s: u32) -> ServerInfo {
    let e = sys.entry(c, s).expect("the master's entry");
    ServerInfo {
        server_id: i32::try_from(s).expect("small id"),
        hostname: e.hostname,
        port: e.port.to_string(),
        r#type: "master".into(),
    }
}

/// The parts of the table a request could change (not heartbeat ages).
fn routing(table: Option<ServerList>) -> Vec<(u32, u32, i32, i32, bool, bool, u64)> {
    let table = table.expect("the coordinator's table");
    table
        .servers
        .iter()
        .map(|e| {
            let (c, s, k, r) = (e.cluster_id, e.server_id, e.kind, e.role);
            (c, s, k, r, e.alive, e.in_service, e.process)
        })
        .collect()
}

#[test]
fn course_get_server_names_the_live_master_and_follows_a_failover() {
    // Three clusters; cluster 3 has no server at all.
    let mut sys = System::new(3, HEARTBEAT_MS, 30_000);
    sys.start_pair(1);
    sys.start_pair(2);
    sys.wait_for_all();

    // Users 1 and 4 live in cluster 1, 2 and 5 in cluster 2.
    for (user, c) in [(1, 1), (4, 1), (2, 2), (5, 2)] {
        let got = get_server(&sys, user).unwrap_or_else(|s| panic!("user {user}: {s:?}"));
        assert_eq!(got, expected(&sys, c, 1), "user {user}");
        let port: u16 = got.port.parse().expect("a decimal port");
        assert_eq!(sys.server_url(c, 1), format!("http://127.0.0.1:{port}"));
    }

    // Refusals change nothing in the table.
    let before = routing(sys.table());
    for user in [3, 6] {
        let s = get_server(&sys, user).expect_err("cluster 3 has no master");
        assert_eq!(s.code(), Code::Unavailable, "user {user}: {s:?}");
    }
    for id in [0, -1, i32::MIN] {
        let s = get_server(&sys, id).expect_err("not a user");
        assert_eq!(s.code(), Code::InvalidArgument, "id {id}: {s:?}");
    }
    assert_eq!(routing(sys.table()), before, "refused GetServer calls");

    // Cluster 1's master dies: the answer moves to the promoted slave;
    // cluster 2's stays.
    sys.wait_slave_in_service(1, 2);
    sys.kill(&System::server_name(1, 1));
    sys.wait_for_role(1, 2, Role::Master);
    for user in [1, 4] {
        let got = get_server(&sys, user).unwrap_or_else(|s| panic!("user {user}: {s:?}"));
        assert_eq!(got, expected(&sys, 1, 2), "user {user} after the failover");
    }
    assert_eq!(
        get_server(&sys, 2).expect("cluster 2"),
        expected(&sys, 2, 1)
    );

    // Then the promoted master dies too: cluster 1 has no live master.
    sys.kill(&System::server_name(1, 2));
    wait_until("the coordinator to see cluster 1 without a master", || {
        sys.master_of(1).is_none()
    });
    let s = get_server(&sys, 1).expect_err("no live master in cluster 1");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
}
