//! Operations (SPEC §7) through tools that are not ours: the standard gRPC
//! health and reflection clients, a Prometheus text parser, plain HTTP,
//! `snsctl`, and headless Chromium on the dashboard, each through a master
//! failure.

use crate::harness::ops::{
    Browser, health, http_get, http_get_with, parse_metrics, reflected_services, sample, scrape,
};
use crate::harness::*;
use std::process::Command;
use tinysns::proto::tinysns::Role;
use tonic_health::pb::health_check_response::ServingStatus;

const SERVING: Option<ServingStatus> = Some(ServingStatus::Serving);
const NOT_SERVING: Option<ServingStatus> = Some(ServingStatus::NotServing);

#[test]
fn health_follows_the_role_through_a_resync_and_a_failover() {
    let mut sys = System::one_cluster(500);
    let (master, slave) = (sys.server_url(1, 1), sys.server_url(1, 2));
    wait_until("master and in-service slave SERVING", || {
        health(&master, "") == SERVING && health(&slave, "") == SERVING
    });
    assert_eq!(health(&sys.coordinator_url(), ""), SERVING);
    // Each service by name says the same as the whole.
    assert_eq!(health(&master, "csce438.SNSService"), SERVING);

    // The slave comes back empty while its master is paused: it cannot
    // resync, so it is not in service and must say NOT_SERVING; nor can
    // the coordinator promote it.
    sys.kill("server_1_2");
    std::fs::remove_dir_all(sys.server_dir(1, 2)).expect("delete the slave's directory");
    sys.stop("server_1_1");
    sys.start_server(1, 2);
    wait_until(
        "the paused master declared failed, the new slave alive",
        || {
            sys.table().is_some_and(|t| {
                let e = |s| {
                    t.servers
                        .iter()
                        .find(|e| e.cluster_id == 1 && e.server_id == s)
                };
                e(1).is_some_and(|e| !e.alive) && e(2).is_some_and(|e| e.alive)
            })
        },
    );
    assert_eq!(health(&slave, ""), NOT_SERVING);
    assert!(
        !sys.entry(1, 2).expect("entry").in_service,
        "a slave that has not resynced is in service"
    );

    // The master goes on: the slave resyncs and serves.
    sys.signal("server_1_1", "-CONT");
    sys.wait_slave_in_service(1, 2);
    wait_until("the resynced slave SERVING", || {
        health(&slave, "") == SERVING
    });

    // The master dies: the slave is promoted and still serves, as master.
    sys.kill("server_1_1");
    sys.wait_for_role(1, 2, Role::Master);
    wait_until("the promoted slave SERVING", || {
        health(&slave, "") == SERVING
    });
    let (status, _) =
        http_get(&format!("{}/healthz", sys.http_url("server_1_2"))).expect("/healthz");
    assert_eq!(status, 200);
}

#[test]
fn reflection_lists_every_daemons_services() {
    let sys = System::full(1);
    let has = |url: &str, want: &[&str]| {
        let got = reflected_services(url);
        for w in want {
            assert!(got.iter().any(|g| g == w), "{url}: {w} not in {got:?}");
        }
    };
    let standard = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ];
    has(&sys.server_url(1, 1), &standard);
    has(&sys.server_url(1, 1), &["csce438.SNSService"]);
    has(&sys.coordinator_url(), &standard);
    has(&sys.coordinator_url(), &["tinysns.Coordinator"]);
    has(&sys.synchronizer_url(1), &standard);
    has(&sys.synchronizer_url(1), &["tinysns.Synchronizer"]);
}

#[test]
fn metrics_parse_and_count_the_posts_made() {
    let sys = System::one_cluster(500);
    let (m, s) = (sys.http_url("server_1_1"), sys.http_url("server_1_2"));
    let posts = |url: &str| scrape(url).and_then(|x| sample(&x, "sns_posts_written_total", &[]));
    let before = scrape(&m).expect("/metrics of the master");
    let batches = sample(&before, "sns_mirror_batches_total", &[]).expect("mirror batches");
    assert_eq!(
        sample(&before, "sns_role", &[("role", "master")]),
        Some(1.0)
    );
    // The slave learns it is in service from its next heartbeat's reply.
    wait_until(
        "the slave's metrics to say it is an in-service slave",
        || {
            scrape(&s).is_some_and(|x| {
                sample(&x, "sns_role", &[("role", "slave")]) == Some(1.0)
                    && sample(&x, "sns_in_service", &[]) == Some(1.0)
            })
        },
    );
    let written = posts(&m).expect("posts written");

    let mut author = Client::logged_in(sys.coord_port, 1);
    author.enter_timeline();
    author.send_all(&texts("counted ", 1..=3));
    wait_until("3 more posts counted by the master", || {
        posts(&m).is_some_and(|n| n >= written + 3.0)
    });
    let after = scrape(&m).expect("/metrics");
    assert_eq!(posts(&m), Some(written + 3.0), "counted twice or missed");
    assert!(sample(&after, "sns_mirror_batches_total", &[]) > Some(batches));
    let logins = sample(
        &after,
        "sns_rpc_requests_total",
        &[("method", "/csce438.SNSService/Login")],
    );
    assert!(logins >= Some(1.0), "no Login counted: {logins:?}");
    assert!(
        after
            .samples
            .iter()
            .any(|x| x.metric == "sns_rpc_duration_seconds_count"),
        "no latency histogram"
    );
    // Prometheus asks for OpenMetrics, and gets it, with the same counts.
    let prometheus =
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3";
    let (status, content_type, body) =
        http_get_with(&format!("{m}/metrics"), Some(prometheus)).expect("/metrics");
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(body.ends_with("# EOF\n"), "no # EOF");
    let open = parse_metrics(&body);
    assert_eq!(
        sample(&open, "sns_posts_written_total", &[]),
        Some(written + 3.0)
    );
    let (_, content_type, _) = http_get_with(&format!("{m}/metrics"), None).expect("/metrics");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    // The coordinator's readings of its table.
    let coord = scrape(&sys.http_url("coordinator")).expect("the coordinator's /metrics");
    let alive = [("kind", "server"), ("cluster", "1"), ("server", "1")];
    assert_eq!(sample(&coord, "sns_table_alive", &alive), Some(1.0));
}

/// The JSON `/api/table` and `snsctl status --json` give.
fn json_table(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn server(t: &serde_json::Value, c: u64, s: u64) -> &serde_json::Value {
    t["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .find(|e| e["cluster"] == c && e["server"] == s)
        .unwrap_or_else(|| panic!("no server {c}-{s} in {t}"))
}

fn snsctl(sys: &System, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_snsctl"))
        .args(args)
        .args(["-h", &sys.coord_host(), "-k", &sys.coord_port.to_string()])
        .output()
        .expect("run snsctl");
    assert!(out.status.success(), "snsctl {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn the_table_and_snsctl_show_a_failover() {
    let mut sys = System::one_cluster(500);
    sys.kill("server_1_1");
    sys.wait_for_role(1, 2, Role::Master);
    let api = format!("{}/api/table", sys.http_url("coordinator"));
    let t = wait_for("the failure and the promotion in /api/table", || {
        let (status, body) = http_get(&api).ok_or("no answer")?;
        let t = json_table(&body);
        let promoted = t["events"].as_array().is_some_and(|ev| {
            ev.iter()
                .any(|e| e["kind"] == "promoted" && e["server"] == 2)
        });
        if status == 200 && server(&t, 1, 1)["state"] == "down" && promoted {
            Ok(t)
        } else {
            Err(format!("{status} {t}"))
        }
    });
    assert_eq!(server(&t, 1, 2)["role"], "master");
    assert_eq!(server(&t, 1, 2)["state"], "master");
    assert!(server(&t, 1, 2)["http_port"].as_u64().is_some());
    let epoch = t["cluster_states"][0]["epoch"].as_u64().expect("an epoch");
    assert!(epoch >= 2, "no new epoch after the failover: {t}");

    let j = json_table(&snsctl(&sys, &["status", "--json"]));
    assert_eq!(server(&j, 1, 2)["role"], "master");
    assert_eq!(server(&j, 1, 1)["state"], "down");
    assert_eq!(j["cluster_states"][0]["epoch"], epoch);
    let text = snsctl(&sys, &["status"]);
    for want in [
        "CLUSTER",
        "EPOCH",
        "HEARTBEAT",
        "master",
        "down",
        "server 2 takes over",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
}

/// What the page draws for each server: `cluster-server role state`, sorted.
const SERVERS_DRAWN: &str = "JSON.stringify([...document.querySelectorAll('.server')]\
    .map(e => e.dataset.server + ' ' + e.dataset.role + ' ' + e.dataset.state).sort())";

#[test]
fn the_dashboard_shows_a_failover_without_a_reload() {
    let mut sys = System::full(2);
    let mut page = Browser::open(&format!("{}/", sys.http_url("coordinator")));
    let drawn = |page: &mut Browser| -> Vec<String> {
        page.eval(SERVERS_DRAWN)
            .and_then(|v| v.as_str().and_then(|s| serde_json::from_str(s).ok()))
            .unwrap_or_default()
    };
    let all_up: Vec<String> = [
        "1-1 master master",
        "1-2 slave in service",
        "2-1 master master",
        "2-2 slave in service",
    ]
    .map(String::from)
    .to_vec();
    wait_for("every server and its role on the page", || {
        let d = drawn(&mut page);
        if d == all_up {
            Ok(())
        } else {
            Err(format!("{d:?}"))
        }
    });
    let syncs = page.eval("document.querySelectorAll('.sync[data-state=alive]').length");
    assert_eq!(syncs, Some(serde_json::json!(2)));
    // A mark that a reload would wipe.
    page.eval("window.sameDocument = true");

    sys.kill("server_1_1");
    wait_for("the promotion on the page", || {
        let d = drawn(&mut page);
        let down = d
            .iter()
            .any(|x| x.starts_with("1-1 ") && x.ends_with(" down"));
        let master = d.iter().any(|x| x == "1-2 master master");
        let events = page
            .eval("[...document.querySelectorAll('#events .k-promoted')].map(e => e.textContent).join('; ')")
            .unwrap_or_default();
        let promoted = events
            .as_str()
            .is_some_and(|e| e.contains("server 2 takes over from server 1"));
        if down && master && promoted {
            Ok(())
        } else {
            Err(format!("{d:?}, events {events}"))
        }
    });
    assert_eq!(
        page.eval("window.sameDocument === true"),
        Some(serde_json::json!(true)),
        "the page was reloaded"
    );
    assert_eq!(
        page.eval("document.getElementById('status').className"),
        Some(serde_json::json!(""))
    );
}
