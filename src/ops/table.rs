//! The routing table for people and scripts: one JSON form (the
//! coordinator's `/api/table`, `snsctl status --json`, what the dashboard
//! draws) and one text table (`snsctl status`), both made from `GetTable`'s
//! answer, so they always agree.

use crate::proto::tinysns::{Kind, Role, ServerInfo, ServerList};
use serde::Serialize;
use std::fmt::Write as _;

/// The table as JSON.
#[derive(Debug, Serialize)]
pub struct TableJson {
    pub clusters: u32,
    pub heartbeat_ms: u64,
    pub cluster_states: Vec<ClusterJson>,
    pub servers: Vec<ServerJson>,
    pub synchronizers: Vec<SynchronizerJson>,
    /// Oldest first.
    pub events: Vec<EventJson>,
}

#[derive(Debug, Serialize)]
pub struct ClusterJson {
    pub cluster: u32,
    pub epoch: u64,
    pub master: Option<u32>,
    pub in_service_slave: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct ServerJson {
    pub cluster: u32,
    pub server: u32,
    /// `master`, `slave` or `none`.
    pub role: &'static str,
    pub alive: bool,
    /// A slave the coordinator counts as holding every write.
    pub in_service: bool,
    /// The epoch the server holds.
    pub epoch: u64,
    pub heartbeat_age_ms: u64,
    pub address: String,
    pub http_port: Option<u32>,
    /// `master`, `in service`, `not in service` or `down`: the one word a
    /// person looks for.
    pub state: &'static str,
}

#[derive(Debug, Serialize)]
pub struct SynchronizerJson {
    pub cluster: u32,
    pub alive: bool,
    pub heartbeat_age_ms: u64,
    pub address: String,
    pub http_port: Option<u32>,
    /// Source files with changes not yet acknowledged by every peer.
    pub behind: u64,
    /// How long it has had such changes (0: none).
    pub lag_ms: u64,
    pub full_cycles: u64,
}

#[derive(Debug, Serialize)]
pub struct EventJson {
    pub unix_ms: u64,
    pub ago_ms: u64,
    pub cluster: u32,
    pub server: Option<u32>,
    /// `failed`, `back`, `registered`, `promoted`, `in_service`,
    /// `out_of_service`.
    pub kind: String,
    pub text: String,
}

fn role_name(e: &ServerInfo) -> &'static str {
    match Role::try_from(e.role) {
        Ok(Role::Master) => "master",
        Ok(Role::Slave) => "slave",
        _ => "none",
    }
}

fn state_word(e: &ServerInfo) -> &'static str {
    if !e.alive {
        "down"
    } else if e.role == Role::Master as i32 {
        "master"
    } else if e.in_service {
        "in service"
    } else {
        "not in service"
    }
}

fn port(p: u32) -> Option<u32> {
    (p != 0).then_some(p)
}

/// The JSON form of `GetTable`'s answer.
pub fn json(list: &ServerList) -> TableJson {
    let is = |e: &&ServerInfo, k: Kind| e.kind == k as i32;
    TableJson {
        clusters: list.clusters,
        heartbeat_ms: list.heartbeat_ms,
        cluster_states: list
            .epochs
            .iter()
            .map(|c| ClusterJson {
                cluster: c.cluster_id,
                epoch: c.epoch,
                master: port(c.master_id),
                in_service_slave: port(c.in_service_id),
            })
            .collect(),
        servers: list
            .servers
            .iter()
            .filter(|e| is(e, Kind::Server))
            .map(|e| ServerJson {
                cluster: e.cluster_id,
                server: e.server_id,
                role: role_name(e),
                alive: e.alive,
                in_service: e.in_service,
                epoch: e.epoch,
                heartbeat_age_ms: e.last_heartbeat_ms_ago,
                address: format!("{}:{}", e.hostname, e.port),
                http_port: port(e.http_port),
                state: state_word(e),
            })
            .collect(),
        synchronizers: list
            .servers
            .iter()
            .filter(|e| is(e, Kind::Synchronizer))
            .map(|e| SynchronizerJson {
                cluster: e.cluster_id,
                alive: e.alive,
                heartbeat_age_ms: e.last_heartbeat_ms_ago,
                address: format!("{}:{}", e.hostname, e.port),
                http_port: port(e.http_port),
                behind: e.behind,
                lag_ms: e.lag_ms,
                full_cycles: e.full_cycles,
            })
            .collect(),
        events: list
            .events
            .iter()
            .map(|e| EventJson {
                unix_ms: e.unix_ms,
                ago_ms: e.ago_ms,
                cluster: e.cluster_id,
                server: port(e.server_id),
                kind: e.kind.clone(),
                text: e.text.clone(),
            })
            .collect(),
    }
}

/// Seconds with one decimal, as people read an age.
fn secs(ms: u64) -> String {
    format!("{}.{} s", ms / 1000, (ms % 1000) / 100)
}

/// Rows as columns padded to their widest cell.
fn aligned(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = width[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn strings<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|s| s.to_string()).collect()
}

/// The text `snsctl status` prints; `events`: how many of the latest
/// events to show. Times are the coordinator's, in UTC.
pub fn render(t: &TableJson, events: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} clusters, heartbeat {} ms (a process is declared failed after {} ms)\n",
        t.clusters,
        t.heartbeat_ms,
        2 * t.heartbeat_ms
    );
    let mut rows = vec![strings([
        "CLUSTER",
        "EPOCH",
        "SERVER",
        "ROLE",
        "STATE",
        "HEARTBEAT",
        "HELD EPOCH",
        "ADDRESS",
    ])];
    for s in &t.servers {
        let epoch = t
            .cluster_states
            .iter()
            .find(|c| c.cluster == s.cluster)
            .map_or(0, |c| c.epoch);
        rows.push(vec![
            s.cluster.to_string(),
            epoch.to_string(),
            s.server.to_string(),
            s.role.to_string(),
            s.state.to_string(),
            secs(s.heartbeat_age_ms),
            s.epoch.to_string(),
            s.address.clone(),
        ]);
    }
    out.push_str(&aligned(&rows));
    out.push('\n');
    let mut rows = vec![strings([
        "SYNCHRONIZER",
        "STATE",
        "HEARTBEAT",
        "BEHIND",
        "LAG",
        "FULL CYCLES",
        "ADDRESS",
    ])];
    for s in &t.synchronizers {
        rows.push(vec![
            s.cluster.to_string(),
            if s.alive { "alive" } else { "down" }.to_string(),
            secs(s.heartbeat_age_ms),
            s.behind.to_string(),
            secs(s.lag_ms),
            s.full_cycles.to_string(),
            s.address.clone(),
        ]);
    }
    out.push_str(&aligned(&rows));
    let shown = t.events.len().saturating_sub(events);
    if events > 0 && !t.events.is_empty() {
        out.push_str("\nRECENT EVENTS (UTC)\n");
        for e in &t.events[shown..] {
            let when =
                chrono::DateTime::from_timestamp_millis(i64::try_from(e.unix_ms).unwrap_or(0))
                    .map_or_else(|| "?".to_string(), |t| t.format("%H:%M:%S%.3f").to_string());
            let _ = writeln!(out, "  {when}  cluster {}  {}", e.cluster, e.text);
        }
    }
    out
}

/// Asks the coordinator at `host:port` for its table (`GetTable`, a
/// method open to anyone), within `deadline`.
pub async fn fetch(
    host: &str,
    port: u16,
    tls: Option<&tonic::transport::ClientTlsConfig>,
    deadline: std::time::Duration,
) -> Result<TableJson, crate::error::Error> {
    use crate::proto::tinysns::coordinator_client::CoordinatorClient;
    let addr = crate::trust::host_port(host, port);
    let ep = crate::trust::endpoint(&addr, tls)?
        .connect_timeout(deadline)
        .timeout(deadline);
    let channel = ep.connect().await.map_err(|e| {
        crate::error::Error::Unavailable(format!("cannot reach the coordinator at {addr}: {e}"))
    })?;
    let list = CoordinatorClient::new(channel)
        .get_table(crate::proto::tinysns::Empty {})
        .await
        .map_err(|s| {
            crate::error::Error::Unavailable(format!(
                "the coordinator at {addr} did not give its table: {}",
                s.message()
            ))
        })?
        .into_inner();
    Ok(json(&list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tinysns::{ClusterEpoch, TableEvent};

    fn list() -> ServerList {
        let server = |id: u32, role: Role, alive: bool, in_service: bool| ServerInfo {
            cluster_id: 1,
            server_id: id,
            hostname: "127.0.0.1".into(),
            port: 9000 + id,
            kind: Kind::Server as i32,
            role: role as i32,
            alive,
            in_service,
            epoch: 2,
            last_heartbeat_ms_ago: 1234,
            ..ServerInfo::default()
        };
        ServerList {
            servers: vec![
                server(1, Role::Slave, false, false),
                server(2, Role::Master, true, false),
                ServerInfo {
                    cluster_id: 1,
                    server_id: 1,
                    hostname: "127.0.0.1".into(),
                    port: 9100,
                    kind: Kind::Synchronizer as i32,
                    alive: true,
                    behind: 3,
                    lag_ms: 2500,
                    ..ServerInfo::default()
                },
            ],
            clusters: 1,
            epochs: vec![ClusterEpoch {
                cluster_id: 1,
                epoch: 2,
                master_id: 2,
                in_service_id: 0,
            }],
            events: vec![TableEvent {
                unix_ms: 1_000,
                ago_ms: 5,
                cluster_id: 1,
                server_id: 2,
                kind: "promoted".into(),
                text: "server 2 takes over from server 1".into(),
            }],
            heartbeat_ms: 1000,
        }
    }

    #[test]
    fn json_and_text_say_the_same() {
        let t = json(&list());
        assert_eq!(t.servers.len(), 2);
        assert_eq!(t.servers[0].state, "down");
        assert_eq!(t.servers[1].state, "master");
        assert_eq!(t.synchronizers[0].behind, 3);
        assert_eq!(t.cluster_states[0].in_service_slave, None);
        let text = render(&t, 10);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[2].starts_with("CLUSTER  EPOCH  SERVER  ROLE"),
            "{text}"
        );
        assert!(
            lines[3].contains("slave") && lines[3].contains("down"),
            "{text}"
        );
        assert!(
            lines[4].contains("master") && lines[4].contains("1.2 s"),
            "{text}"
        );
        assert!(text.contains("2.5 s"), "the synchronizer's lag: {text}");
        assert!(
            text.contains("00:00:01.000  cluster 1  server 2 takes over"),
            "{text}"
        );
        // The columns line up: the header's ADDRESS starts where the rows' do.
        let col = lines[2].find("ADDRESS").expect("header");
        assert_eq!(lines[3].find("127.0.0.1"), Some(col), "{text}");
        let value = serde_json::to_value(&t).expect("json");
        assert_eq!(value["servers"][1]["role"], "master");
        assert_eq!(value["events"][0]["kind"], "promoted");
    }
}
