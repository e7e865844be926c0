//! Operations: what lets people and their standard tools look inside a
//! running system (SPEC §7).
//!
//! | what | where | for |
//! |---|---|---|
//! | `grpc.health.v1.Health` | every gRPC port | `grpc_health_probe`, grpcurl, load balancers |
//! | gRPC server reflection (v1 and v1alpha) | every gRPC port | `grpcurl list`, `grpcurl describe` |
//! | `/metrics` | `--http-port` | Prometheus, Grafana |
//! | `/healthz` | `--http-port` | `curl -f`, an orchestrator's probe |
//! | `/`, `/api/table` | the coordinator's `--http-port` | the live dashboard; the table as JSON |
//! | `snsctl status` / `watch` | the coordinator's gRPC port (`GetTable`) | a person at a terminal, scripts (`--json`) |
//!
//! # Health
//! One rule per daemon, kept current where the daemon decides it
//! ([`Health::set`]):
//! * a **server** is SERVING as master, or as a slave the coordinator
//!   counts in service (so a slave that is resyncing, or fresh, is
//!   NOT_SERVING); a master whose lease ran out because the coordinator does
//!   not answer is NOT_SERVING until it does. Set on every heartbeat reply
//!   (and unanswered heartbeat), so a change shows within one heartbeat.
//! * a **synchronizer** is SERVING once it knows its cluster's master and
//!   the synchronizer of every other cluster.
//! * the **coordinator** is always SERVING.
//!
//! The same status is the overall service `""` and each service the daemon
//! serves by name, `/healthz` (200 or 503) and the gauge `sns_serving`.
//! Health and reflection are open to anyone, like a client's calls
//! ([`crate::trust`]): they tell nothing a client could not learn.
//!
//! # Metrics
//! One registry per process ([`metrics::metrics`]), on the Prometheus
//! project's own client crate, every name prefixed `sns_`. Counts are
//! bumped where the work is done, at the cost of an atomic add; readings of
//! state (ages, the coordinator's table) are taken when `/metrics` is
//! read. Per-RPC requests, errors (by status code) and latency come from
//! one tower layer in front of every gRPC service ([`rpc::RpcMetrics`]),
//! labelled only with this program's own method names. The text is
//! OpenMetrics when the scraper's `Accept` asks for it (Prometheus does),
//! the classic 0.0.4 form otherwise ([`metrics::Format`]). The full list, with
//! what each means, is in `docs/operations.md`.
//!
//! # The HTTP port
//! Off unless `--http-port` / `SNS_HTTP_PORT` is given; HTTP/1.1 on hyper
//! (already under tonic), with bounded connections ([`http`]). A port that
//! cannot be bound stops the daemon at start-up, like its gRPC port.
//!
//! # Where the code is
//!
//! | file | what |
//! |---|---|
//! | `metrics.rs` | the registry, every metric, the text form |
//! | `rpc.rs` | the per-RPC layer |
//! | `health.rs` | [`Health`], and the health and reflection services ([`Standard`]) |
//! | `http.rs` | the HTTP server and its routes |
//! | `table.rs` | the routing table as JSON and as a text table: `/api/table`, `snsctl status` |

pub mod health;
pub mod http;
pub mod metrics;
pub mod rpc;
pub mod table;

pub use health::{Health, Standard};

use crate::error::Error;
use tokio_util::sync::CancellationToken;

/// Binds the HTTP port (if one is set) and serves it until `stop`; the
/// handle ends once every connection is closed.
pub async fn start_http(
    port: Option<u16>,
    health: Health,
    pages: Option<http::Pages>,
    stop: CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, Error> {
    let Some(port) = port else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen on HTTP port {port}: {e}")))?;
    log::info!("HTTP (/metrics, /healthz) on port {port}");
    Ok(Some(tokio::spawn(http::serve(
        listener, health, pages, stop,
    ))))
}
