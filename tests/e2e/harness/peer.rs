//! Talking to the system's peer services (replica, synchronizer, the
//! coordinator's heartbeats) directly: as a peer that holds the system's
//! cluster key, or as a stranger that does not.
//!
//! Tests build every raw peer client from these two functions, so that how
//! the key travels is decided here alone.

use super::process::DEADLINE;
use super::system::System;
use std::time::{Duration, Instant};
use tinysns::trust::PeerChannel;
use tonic::transport::{Channel, Endpoint};

/// A channel to `url` (`http://127.0.0.1:<port>`) that carries no key,
/// retrying until the deadline (the process may still be starting).
pub async fn stranger(url: &str) -> Channel {
    let start = Instant::now();
    loop {
        let connected = match Endpoint::from_shared(url.to_string()) {
            Ok(e) => e.connect().await,
            Err(e) => panic!("bad url {url}: {e}"),
        };
        match connected {
            Ok(c) => return c,
            Err(e) => {
                assert!(start.elapsed() < DEADLINE, "cannot connect to {url}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A channel to `url` that presents `system`'s cluster key, as its own
/// servers and synchronizers do.
pub async fn peer(system: &System, url: &str) -> PeerChannel {
    system.trust().peer(stranger(url).await)
}
