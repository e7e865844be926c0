//! A system spread over the hosts of a [`netlab::Lab`]: the coordinator,
//! each server and each synchronizer in a network namespace of its own, at
//! its own address in 198.18.0.0/24, and the test with its clients on one
//! more host, `clients`. The processes share the file system (a cluster's
//! synchronizer writes both its servers' directories, so in a real
//! deployment one cluster is one machine); the network between them is the
//! lab's, which a test cuts and heals.
//!
//! [`LabSystem`] is a [`System`] (it derefs to one) whose `lab` is set, so
//! every part of the harness works on it: `System` starts each process
//! through [`netlab::Lab::command`] with `SNS_HOST` and every address it
//! passes (`-h`, urls, the table) its host's. The test's thread is moved
//! into the `clients` host for the system's lifetime, so its own
//! connections (the table, gRPC calls) and the clients it starts are on
//! that host; a thread of its own enters with [`LabSystem::on_clients`].
//!
//! Building a lab needs root; without it the test fails saying so.

use super::system::System;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

pub use netlab::sns::{CLIENTS, host_of};

/// Server `s` of cluster `c`'s host.
pub fn server_host(c: u32, s: u32) -> String {
    host_of(&System::server_name(c, s))
}

/// Synchronizer `c`'s host.
pub fn synchronizer_host(c: u32) -> String {
    host_of(&System::synchronizer_name(c))
}

/// Every host of a system of `clusters` clusters, plus `extra`.
pub fn hosts(clusters: u32, extra: &[&str]) -> Vec<String> {
    let mut h = vec![host_of("coordinator")];
    for c in 1..=clusters {
        h.push(server_host(c, 1));
        h.push(server_host(c, 2));
        h.push(synchronizer_host(c));
    }
    h.push(CLIENTS.into());
    h.extend(extra.iter().map(|e| e.to_string()));
    h
}

/// A [`System`] on a lab, the calling thread on its `clients` host.
pub struct LabSystem {
    /// Dropped first: the processes, then the lab's namespaces.
    pub sys: System,
    /// The thread's way back to its own namespace.
    _inside: netlab::Entered,
}

impl Deref for LabSystem {
    type Target = System;
    fn deref(&self) -> &System {
        &self.sys
    }
}

impl DerefMut for LabSystem {
    fn deref_mut(&mut self) -> &mut System {
        &mut self.sys
    }
}

impl LabSystem {
    /// The whole system (coordinator, pairs, synchronizers) on a lab with
    /// `extra` hosts besides the system's; returns once every slave is in
    /// service. Panics, saying what is needed, where labs cannot be built.
    pub fn full(clusters: u32, heartbeat_ms: u64, sync_ms: u64, extra: &[&str]) -> LabSystem {
        let names = hosts(clusters, extra);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let lab = netlab::Lab::new(&names).unwrap_or_else(|e| panic!("{e}"));
        let lab = Arc::new(lab);
        let inside = lab.enter(CLIENTS).unwrap_or_else(|e| panic!("{e}"));
        let mut sys = System::create_in(clusters, heartbeat_ms, sync_ms, false, Some(lab));
        sys.start_rest();
        LabSystem {
            sys,
            _inside: inside,
        }
    }

    pub fn lab(&self) -> &netlab::Lab {
        self.sys.lab.as_deref().expect("a lab system has a lab")
    }

    /// Runs `f` on a new thread on host `host`.
    pub fn on_host<T: Send + 'static>(
        &self,
        host: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        self.lab()
            .spawn_in(host, f)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `f` on a new thread on the clients' host.
    pub fn on_clients<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        self.on_host(CLIENTS, f)
    }

    /// Panics unless `r` is Ok, naming what was cut or healed.
    pub fn net(&self, what: &str, r: Result<(), netlab::LabError>) {
        r.unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

#[test]
fn host_names() {
    assert_eq!(host_of("coordinator"), "coord");
    assert_eq!(host_of("server_2_1"), "c2s1");
    assert_eq!(host_of("synchronizer_3"), "c3sync");
    assert_eq!(host_of("client"), CLIENTS);
    assert_eq!(
        hosts(1, &["x"]),
        ["coord", "c1s1", "c1s2", "c1sync", CLIENTS, "x"]
    );
}
