//! A whole system with TLS on every channel (SPEC §5), as `./startup.sh
//! --tls` runs it: servers mirror, synchronizers carry posts, the
//! coordinator promotes, a restarted server resyncs, all over TLS; a client
//! with the CA works end to end, one without TLS cannot even log in.

use crate::harness::*;
use tinysns::proto::tinysns::Role;

#[test]
fn a_system_with_tls_works_end_to_end_through_failover_and_resync() {
    // Every slave in service: mirroring and registration run over TLS.
    let mut sys = System::full_tls(3);
    let ca = sys.tls.as_ref().expect("tls").ca.display().to_string();
    let tls = [("SNS_TLS_CA", ca.as_str())];

    // Without TLS a client cannot talk to the system at all.
    let mut plain = Client::start(sys.coord_port, 1, &[]);
    plain.expect("connection failed: -1");
    assert_eq!(plain.wait_exit(), Some(1));

    let mut u1 = Client::start(sys.coord_port, 1, &tls);
    u1.expect(TITLE_END);
    wait_until("cluster 2 to know user 1", || sys.has_user(2, 1, 1));
    let mut u2 = Client::start(sys.coord_port, 2, &tls);
    u2.expect(TITLE_END);
    assert_eq!(u2.command("FOLLOW 1"), SUCCESS);
    wait_until("cluster 1 to see the follow", || {
        sys.has_follower(1, 1, 1, 2)
    });
    u1.enter_timeline();
    u2.enter_timeline();
    u1.send("over tls");
    let (_, text) = u2.next_post();
    assert_eq!(text, "over tls");

    // Failover: the slave is promoted; the client reconnects over TLS.
    sys.kill(&System::server_name(1, 1));
    sys.wait_for_role(1, 2, Role::Master);
    u1.send("after failover");
    let (_, text) = u2.next_post();
    assert_eq!(text, "after failover");

    // Resync: the old master comes back as a slave and catches up over TLS.
    sys.restart_server(1, 1);
    sys.wait_slave_in_service(1, 1);
    assert!(
        post_texts(&sys.server_dir(1, 1).join("u1_posts.txt"))
            .contains(&"after failover".to_string()),
        "the resynced server lacks the post made while it was down"
    );
}
