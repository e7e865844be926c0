//! Sessions known to both servers of a cluster (issue 11, point 4): a
//! second client of a user cannot log in on the promoted slave while the
//! first one lives, and can once the first has logged out.
//!
//! The first client is a raw `SNSService` client that refreshes its session
//! as this project's client does (a login with its token, here every tenth
//! of a heartbeat), against whichever server answers, so it follows the
//! failover by itself.

use crate::harness::grpc::{connect, expect_code, login, request};
use crate::harness::system::System;
use crate::harness::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tinysns::proto::tinysns::Role;
use tonic::Code;

/// Long enough that a lease (two heartbeats) is far more than a busy machine
/// takes between a promotion and the first client's next refresh.
const HB: u64 = 1000;
const USER: &str = "1";
const FIRST: &str = "first-client";

/// What the refreshing client has seen.
#[derive(Default)]
struct Seen {
    /// Successful refreshes on each server (index 0 is server 1).
    ok: [AtomicUsize; 2],
    /// A refusal of its own session (it must never lose it).
    refused: AtomicBool,
    stop: AtomicBool,
}

/// Refreshes `FIRST`'s session on whichever of `urls` takes it, until told
/// to stop.
async fn refresher(urls: [String; 2], seen: Arc<Seen>) {
    let mut clients = [None, None];
    while !seen.stop.load(Ordering::SeqCst) {
        for (i, url) in urls.iter().enumerate() {
            if clients[i].is_none() {
                clients[i] =
                    tinysns::proto::csce438::sns_service_client::SnsServiceClient::connect(
                        url.clone(),
                    )
                    .await
                    .ok();
            }
            let Some(c) = clients[i].as_mut() else {
                continue;
            };
            match login(c, USER, FIRST).await {
                Ok(msg) if msg == "Login Successful!" => {
                    seen.ok[i].fetch_add(1, Ordering::SeqCst);
                }
                Ok(msg) => {
                    eprintln!("the first client was refused on server {}: {msg}", i + 1);
                    seen.refused.store(true, Ordering::SeqCst);
                }
                Err(s) if s.code() == Code::Unavailable => {}
                Err(_) => clients[i] = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(HB / 10)).await;
    }
}

/// Logs `USER` in with `token` on `url`, waiting out `UNAVAILABLE` (a slave
/// that has not heard of its promotion yet); the answer's message.
fn login_answer(rt: &tokio::runtime::Runtime, url: &str, token: &str) -> String {
    login_as(rt, url, USER, token)
}

fn login_as(rt: &tokio::runtime::Runtime, url: &str, user: &str, token: &str) -> String {
    rt.block_on(async {
        let mut c = connect(url).await;
        wait_for_async(&mut c, user, token).await
    })
}

async fn wait_for_async(
    c: &mut tinysns::proto::csce438::sns_service_client::SnsServiceClient<
        tonic::transport::Channel,
    >,
    user: &str,
    token: &str,
) -> String {
    let start = std::time::Instant::now();
    loop {
        match login(c, user, token).await {
            Ok(msg) => return msg,
            Err(s) if s.code() == Code::Unavailable && start.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("login of {user} with {token:?}: {s:?}"),
        }
    }
}

/// A second client's login must be refused and change nothing.
fn second_refused(rt: &tokio::runtime::Runtime, sys: &System, s: u32, what: &str) {
    let dir = sys.server_dir(1, s);
    let before = snapshot(&dir, std::slice::from_ref(&dir));
    let master = sys.master_of(1);
    let msg = login_answer(rt, &sys.server_url(1, s), "second-client");
    assert_eq!(msg, "you have already joined", "{what}");
    assert_same_files(
        &before,
        &snapshot(&dir, std::slice::from_ref(&dir)),
        "a refused second login",
    );
    assert_eq!(sys.master_of(1), master, "{what}: the table changed");
}

#[test]
fn a_second_client_is_refused_on_the_new_master_while_the_first_lives() {
    let mut sys = System::one_cluster(HB);
    let rt = runtime();
    let seen = Arc::new(Seen::default());
    let urls = [sys.server_url(1, 1), sys.server_url(1, 2)];
    let task = rt.spawn(refresher(urls, seen.clone()));
    // Logged in on the master, and refreshed there over more than a
    // heartbeat: the slave has heard of the login and of refreshes.
    wait_until("the first client to refresh on the master", || {
        seen.ok[0].load(Ordering::SeqCst) >= 12
    });
    second_refused(&rt, &sys, 1, "a second client on the master");

    // The first client has not reached the new master yet when the second
    // tries there (it is held, as a client still retrying its old master
    // is): only what the slave heard from its master can refuse it.
    seen.stop.store(true, Ordering::SeqCst);
    rt.block_on(task).expect("the refresher");
    sys.kill(&System::server_name(1, 1));
    sys.wait_for_role(1, 2, Role::Master);
    second_refused(&rt, &sys, 2, "a second client on the promoted slave");
    // The first client goes on on the new master, for longer than the
    // lease a promotion grants: its own refreshes keep it.
    seen.stop.store(false, Ordering::SeqCst);
    let urls = [sys.server_url(1, 1), sys.server_url(1, 2)];
    let task = rt.spawn(refresher(urls, seen.clone()));
    wait_until("the first client to refresh on the new master", || {
        seen.ok[1].load(Ordering::SeqCst) >= 25
    });
    second_refused(&rt, &sys, 2, "a second client while the first refreshes");
    rt.block_on(async {
        let mut c = connect(&sys.server_url(1, 2)).await;
        c.list(request(USER, FIRST, &[]))
            .await
            .expect("the first client's List on the new master");
    });
    assert!(
        !seen.refused.load(Ordering::SeqCst),
        "the first client lost its session"
    );

    // It logs out: the second client gets in at once.
    seen.stop.store(true, Ordering::SeqCst);
    rt.block_on(task).expect("the refresher");
    rt.block_on(async {
        let mut c = connect(&sys.server_url(1, 2)).await;
        c.logout(request(USER, FIRST, &[]))
            .await
            .expect("the first client's logout");
    });
    assert_eq!(
        login_answer(&rt, &sys.server_url(1, 2), "second-client"),
        "Login Successful!"
    );
}

#[test]
fn a_first_client_that_stops_frees_its_user_on_the_new_master() {
    let mut sys = System::one_cluster(HB);
    let rt = runtime();
    let seen = Arc::new(Seen::default());
    let urls = [sys.server_url(1, 1), sys.server_url(1, 2)];
    let task = rt.spawn(refresher(urls, seen.clone()));
    wait_until("the first client to refresh on the master", || {
        seen.ok[0].load(Ordering::SeqCst) >= 12
    });
    // The first client is killed (stops refreshing), then its master.
    seen.stop.store(true, Ordering::SeqCst);
    rt.block_on(task).expect("the refresher");
    sys.kill(&System::server_name(1, 1));
    sys.wait_for_role(1, 2, Role::Master);
    // Within a lease of the promotion its user is free again.
    wait_for("the second client to log in on the new master", || {
        let msg = login_answer(&rt, &sys.server_url(1, 2), "second-client");
        if msg == "Login Successful!" {
            Ok(())
        } else {
            Err(msg)
        }
    });
}

/// The coordinator's table without what changes by itself (heartbeat ages).
fn routing(sys: &System) -> Vec<(u32, u32, i32, bool)> {
    let mut v: Vec<_> = sys
        .table()
        .expect("table")
        .servers
        .into_iter()
        .map(|e| (e.cluster_id, e.server_id, e.role, e.in_service))
        .collect();
    v.sort();
    v
}

#[test]
fn sessions_not_from_the_slaves_master_are_refused_and_change_nothing() {
    use crate::harness::peer::{peer, stranger};
    use tinysns::proto::tinysns::replica_client::ReplicaClient;
    use tinysns::proto::tinysns::{SessionEntry, SessionsRequest};

    let mut sys = System::one_cluster(HB);
    let rt = runtime();
    let slave = sys.server_url(1, 2);
    let dir = sys.server_dir(1, 2);
    let before = snapshot(&dir, std::slice::from_ref(&dir));
    let table = routing(&sys);
    // Each would have the slave believe user 4 logged in: if it were taken,
    // user 4 could not log in on the slave once it is promoted.
    let forged = |epoch: u64, incarnation: u64, user: u64, left_ms: u64| SessionsRequest {
        cluster_id: 1,
        epoch,
        incarnation,
        full: false,
        sessions: vec![SessionEntry {
            user,
            token: "forged".into(),
            left_ms,
            ..Default::default()
        }],
    };
    rt.block_on(async {
        let mut s = ReplicaClient::new(stranger(&slave).await);
        expect_code(
            s.sessions(forged(1, 0, 4, 100)).await,
            Code::Unauthenticated,
            "Sessions from a stranger",
        );
        let mut p = ReplicaClient::new(peer(&sys, &slave).await);
        for (what, req, code) in [
            (
                "a stale epoch",
                forged(0, 0, 4, 100),
                Code::FailedPrecondition,
            ),
            (
                "an epoch nobody issued",
                forged(1_000_000, 0, 4, 100),
                Code::Unavailable,
            ),
            (
                "another incarnation than the master's",
                forged(1, 12345, 4, 100),
                Code::Aborted,
            ),
            (
                "another cluster",
                SessionsRequest {
                    cluster_id: 2,
                    ..forged(1, 0, 4, 100)
                },
                Code::InvalidArgument,
            ),
        ] {
            expect_code(p.sessions(req).await, code, what);
        }
    });
    assert_same_files(
        &before,
        &snapshot(&dir, std::slice::from_ref(&dir)),
        "refused sessions calls",
    );
    assert_eq!(routing(&sys), table, "refused sessions calls");
    // Promoted, the slave knows of no session of user 4.
    sys.kill(&System::server_name(1, 1));
    sys.wait_for_role(1, 2, Role::Master);
    assert_eq!(
        login_as(&rt, &sys.server_url(1, 2), "4", "real-client"),
        "Login Successful!",
    );
}
