//! Talking to the coordinator from a server or a synchronizer: the client,
//! and registration (the first heartbeat), retried until the coordinator
//! answers. A status from the coordinator is read as an [`Error`] (the one
//! conversion in [`crate::error`]): what to do is decided by its variant.

use crate::error::Error;
use crate::proto::tinysns::coordinator_client::CoordinatorClient;
use crate::proto::tinysns::{HeartbeatReply, HeartbeatRequest, Kind, ServerInfo};
use crate::trust::{PeerChannel, Timing, Trust};
use std::time::Duration;

/// A client for the coordinator at `host:port`, timed by the heartbeat
/// ([`Timing::of`]): keep-alive, a connect timeout of a heartbeat, and calls
/// that give up after the failure window (by then the coordinator has judged
/// us anyway) and replace a stalled connection. A server's periodic
/// heartbeats name a shorter deadline of their own
/// ([`crate::server::role::heartbeat_deadline`]).
pub fn client(
    addr: &str,
    heartbeat: Duration,
    trust: &Trust,
) -> Result<CoordinatorClient<PeerChannel>, Error> {
    Ok(CoordinatorClient::new(
        trust.link(addr, Timing::of(heartbeat))?,
    ))
}

/// How a process describes itself in its heartbeats.
pub fn info(kind: Kind, cluster: u32, id: u32, host: &str, port: u16) -> ServerInfo {
    ServerInfo {
        cluster_id: cluster,
        server_id: id,
        hostname: host.to_string(),
        port: u32::from(port),
        kind: kind as i32,
        ..Default::default()
    }
}

/// Sends heartbeats until the coordinator answers one, backing off up to a
/// heartbeat period between tries. A refusal (bad arguments) is final.
/// `empty_directory`: a server that comes back without its data says so
/// (see the field in `coordinator.proto`).
pub async fn register(
    coordinator: &mut CoordinatorClient<PeerChannel>,
    info: &ServerInfo,
    heartbeat: Duration,
    empty_directory: bool,
) -> Result<HeartbeatReply, Error> {
    let mut backoff = Duration::from_millis(50);
    loop {
        let req = HeartbeatRequest {
            info: Some(info.clone()),
            empty_directory,
            ..Default::default()
        };
        match coordinator.heartbeat(req).await.map_err(Error::from) {
            Ok(r) => return Ok(r.into_inner()),
            Err(Error::Invalid(m)) => {
                return Err(Error::Invalid(format!(
                    "the coordinator refused to register us: {m}"
                )));
            }
            Err(e) => {
                log::warn!("cannot reach the coordinator: {}", e.message());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(heartbeat);
            }
        }
    }
}
