//! The coordinator's HTTP pages: the live dashboard (`/`, one
//! self-contained HTML file compiled into the binary, no CDN), the table as
//! JSON (`/api/table`, what the dashboard polls), and `/metrics` with the
//! table's gauges read from the table just before they are written.

use super::Table;
use crate::ops::http::{Page, Pages};
use crate::ops::metrics::{ClusterLabels, ProcessLabels, metrics};
use crate::proto::tinysns::Kind;
use hyper::StatusCode;
use std::sync::Arc;
use tokio::sync::Mutex;

const DASHBOARD: &str = include_str!("dashboard.html");

/// The pages, on the shared table.
pub(super) fn pages(table: Arc<Mutex<Table>>) -> Pages {
    Arc::new(move |path: &str, format| {
        let table = table.clone();
        match path {
            "/" | "/index.html" => Some(Box::pin(async {
                Page::new(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD)
            })),
            "/api/table" => Some(Box::pin(async move {
                let list = super::service::view(&table).await;
                match serde_json::to_string_pretty(&crate::ops::table::json(&list)) {
                    Ok(body) => Page::new(StatusCode::OK, "application/json", body),
                    Err(e) => Page::text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                }
            })),
            "/metrics" => Some(Box::pin(async move {
                let list = super::service::view(&table).await;
                set_table_gauges(&list);
                crate::ops::http::metrics_page(format)
            })),
            _ => None,
        }
    })
}

/// The table's readings as gauges: heartbeat age and liveness per
/// process, epoch per cluster. The label sets are bounded by the table,
/// whose entries are bounded (clusters × `MAX_SERVER_ID`).
fn set_table_gauges(list: &crate::proto::tinysns::ServerList) {
    let m = metrics();
    for e in &list.servers {
        let labels = ProcessLabels {
            kind: if e.kind == Kind::Synchronizer as i32 {
                "synchronizer"
            } else {
                "server"
            }
            .to_string(),
            cluster: e.cluster_id.to_string(),
            server: e.server_id.to_string(),
        };
        m.table_heartbeat_age
            .get_or_create(&labels)
            .set(e.last_heartbeat_ms_ago as f64 / 1000.0);
        m.table_alive.get_or_create(&labels).set(i64::from(e.alive));
    }
    for c in &list.epochs {
        m.table_epoch
            .get_or_create(&ClusterLabels {
                cluster: c.cluster_id.to_string(),
            })
            .set(i64::try_from(c.epoch).unwrap_or(i64::MAX));
    }
}
