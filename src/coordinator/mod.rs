//! The coordinator: routing table, heartbeats, failure detection, promotion.
//!
//! The one promise that shapes everything here (SPEC §4): no acknowledged
//! write is ever lost. The coordinator cannot see data; it only decides who is
//! master. So it must never make a server master that may lack a write some
//! master acknowledged, and it must remember across its own restarts what it
//! needs to keep that promise.
//!
//! # Routing table
//!
//! Every server and synchronizer registers by heartbeating; there is no
//! separate registration call, so a restarted coordinator rebuilds its whole
//! table from the next round of heartbeats. An entry is keyed by
//! `(kind, cluster_id, server_id)` (a synchronizer's cluster id is its id) and
//! holds the address the process announced, its role, whether it is alive and
//! the [`Instant`] of its last heartbeat. Entries are never removed: a dead
//! entry stays visible in `GetTable` and comes back to life with its next
//! heartbeat.
//!
//! # In-service slaves
//!
//! A slave is *in service* when it holds every write its master acknowledged.
//! Only the master knows that (it mirrors every write and sees whether the
//! slave stored it), so every master heartbeat carries `in_service_slave`: the
//! id of its in-service slave, or 0. The report is believed only from the
//! cluster's current master (MASTER in the table after this heartbeat, at the
//! cluster's current epoch); a deposed master or a slave could only make us
//! promote the wrong server. The coordinator keeps one in-service id per
//! cluster, so setting it for one slave clears it for every other.
//!
//! The report is safe because of its timing: a master sends a heartbeat with
//! the slave dropped *synchronously before* it acknowledges any write without
//! that slave, and the coordinator records (and persists) the drop before it
//! replies. Hence whenever the coordinator counts a slave as in service, that
//! slave really holds every acknowledged write; its view can only lag on the
//! safe side (a slave re-admitted but not yet reported).
//!
//! A slave that registers as a fresh process (it claims role NONE) is not in
//! service, whatever was recorded: it may have lost its directory. It becomes
//! in service again when its master says so (after its resync).
//!
//! # Roles
//!
//! Invariant: per cluster at most one server entry has the role MASTER (alive
//! or not), and it is the master recorded with the epoch (below); every other
//! server entry is a SLAVE. On a heartbeat from a server:
//!
//! - if it is the recorded master (alive or not), it is master, except that a
//!   fresh process (NONE) hands over to an alive in-service slave (see
//!   *Restarted master*);
//! - else if another server of the cluster is the alive master, it is a slave;
//! - else if the cluster never had a master, it becomes master (so the first
//!   server of a cluster to register is its master);
//! - else (the recorded master is down) it becomes master only if it is the
//!   in-service slave, and otherwise waits as a slave.
//!
//! A slave that is not in service is never made master, however long its
//! master stays away: it may lack acknowledged writes. The cluster is then
//! unavailable until its master comes back, which is the honest answer
//! (SPEC §4: data on disk survives).
//!
//! # Epochs and the state file
//!
//! Each cluster has an epoch, a fencing token that servers use to tell a
//! current master from a deposed one. It starts at 0 ("never had a master") and
//! is raised by one each time the identity of the master changes: the first
//! master ever, or a promotion. A master that merely comes back (no one took
//! over meanwhile) keeps the epoch. Epochs only ever grow.
//!
//! Per cluster the coordinator persists the epoch, the master of that epoch
//! and the in-service slave: `<state_dir>/epochs.txt` holds
//! `<cluster> <epoch> <master_id> <in_service_id>` lines (0 = none).
//!
//! - The file is written (temp file + fsync + rename + fsync of the directory)
//!   *before* any reply that depends on a change: a reply announcing an epoch,
//!   and above all the reply to a master's heartbeat that dropped its slave,
//!   after which that master acknowledges writes alone. So a restarted
//!   coordinator never hands out an epoch twice and never promotes a slave
//!   that was dropped.
//! - The old `<cluster> <epoch>` form is still read: its master and in-service
//!   slave are unknown, and such a cluster follows the pre-in-service rules
//!   (the first server claiming MASTER at the epoch is believed; otherwise, after
//!   the start-up window, some server takes over) until it has a master again.
//! - A malformed file stops the coordinator at start-up rather than silently
//!   resetting the epochs to 0, which would break fencing.
//! - A heartbeat carrying a higher epoch than ours (our file was lost or
//!   rolled back) raises ours to it; what we recorded about an older epoch is
//!   then forgotten (master unknown unless one is in the table, no in-service
//!   slave).
//!
//! # Failure detection and promotion
//!
//! A background task runs every heartbeat/4 (5 ms to 100 ms). An alive entry
//! whose last heartbeat is older than the failure window (2 × heartbeat, SPEC
//! §1: two missed heartbeats) is marked dead. Then every cluster without an
//! alive master whose in-service slave is alive gets that slave promoted: it
//! becomes MASTER, the epoch is raised (and persisted) and the old master entry
//! becomes a SLAVE, which is what it will be told when it heartbeats again. A
//! cluster whose in-service slave is missing gets no master, and one warning
//! per outage. The check is one pass over the entries plus a few lookups per
//! cluster.
//!
//! # Restarted master
//!
//! A heartbeat claiming NONE from the recorded master means a new process: its
//! previous incarnation died, maybe with its directory deleted, possibly too
//! fast for the failure window to notice. If an in-service slave is alive, it
//! has every acknowledged write, so it is promoted at once (epoch + 1) and the
//! restarted server becomes its slave (and resyncs). Otherwise the restarted
//! server stays master at the same epoch: whatever it has is the best copy
//! there is.
//!
//! # Restart of the coordinator
//!
//! After a restart the table is empty but the state file tells, per cluster,
//! the epoch, its master and its in-service slave.
//!
//! - The recorded master becomes master again as soon as it heartbeats (its
//!   claim does not matter; a NONE claim follows *Restarted master*), without
//!   raising the epoch, unless another server already is the alive master. So
//!   a healthy master keeps its role and no second master is ever created.
//! - Any other server is a slave. The recorded in-service slave keeps its flag
//!   only if it claims SLAVE at the current epoch (the same process, still the
//!   slave of that master); a NONE claim means it restarted and must be
//!   re-admitted by its master.
//! - During the first failure window after start-up nobody is promoted: the
//!   master is most likely alive and about to heartbeat, and promoting would
//!   depose it for nothing. After the window, if the master has not appeared
//!   and the in-service slave is alive, the slave is promoted (epoch + 1); if
//!   there is no in-service slave, the cluster waits for its master, with a
//!   warning.
//!
//! The table logic is the plain [`Table`] struct, whose methods take `now` so
//! they can be tested without a network or a clock; the gRPC service is a thin
//! layer that locks it, calls it and persists the state before replying.

pub mod membership;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use crate::config;
use crate::proto::tinysns::coordinator_server::{Coordinator, CoordinatorServer};
use crate::proto::tinysns::{
    Empty, HeartbeatReply, HeartbeatRequest, Kind, Role, ServerInfo, ServerList, UserRequest,
};

/// Name of the state file inside the state directory (named for what it first
/// held; it now holds epoch, master and in-service slave per cluster).
pub const EPOCH_FILE: &str = "epochs.txt";

/// Longest hostname accepted from a heartbeat (the DNS limit).
const MAX_HOSTNAME: usize = 253;

/// How the coordinator is configured.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of clusters (N); users live in `config::cluster_of(id, N)`.
    pub clusters: u32,
    /// Heartbeat period of servers and synchronizers; failure window is twice
    /// that.
    pub heartbeat: Duration,
    /// Where the state is persisted (`<data_dir>/coordinator`).
    pub state_dir: PathBuf,
}

/// Key of a table entry; ordered so that `GetTable` lists servers first, by
/// cluster and id.
type Key = (Kind, u32, u32);

/// One registered process.
#[derive(Debug, Clone)]
struct Entry {
    hostname: String,
    port: u32,
    /// The process's random start number (0: unknown).
    process: u64,
    role: Role,
    alive: bool,
    last: Instant,
}

/// What is persisted per cluster (one line of the state file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// The epoch (0 = never had a master).
    pub epoch: u64,
    /// Server id of the master of `epoch`; 0 = none yet, or unknown (a file in
    /// the old two-field form, or an epoch adopted from a heartbeat).
    pub master: u32,
    /// Server id of the in-service slave; 0 = none.
    pub in_service: u32,
}

/// A snapshot of the cluster states still to be written to disk.
#[derive(Debug, Clone)]
pub struct StateSnapshot {
    dir: PathBuf,
    states: BTreeMap<u32, ClusterState>,
}

impl StateSnapshot {
    /// Writes the states durably: temp file, fsync, rename, fsync of the
    /// directory (so the rename itself survives a crash). Blocking.
    pub fn write(&self) -> io::Result<()> {
        write_states(&self.dir, &self.states)
    }
}

/// The routing table and the cluster states. All logic, no I/O except the
/// state file; every method that depends on time takes `now`.
#[derive(Debug)]
pub struct Table {
    clusters: u32,
    /// Failure window: 2 × heartbeat.
    window: Duration,
    /// When this coordinator started; see the restart rule in the module docs.
    started: Instant,
    state_dir: PathBuf,
    entries: BTreeMap<Key, Entry>,
    /// State per cluster; a missing cluster is all zeros. May hold clusters
    /// beyond `clusters` read from the file (kept so that a later start with
    /// more clusters does not reuse their epochs).
    states: BTreeMap<u32, ClusterState>,
    /// The states changed since they were last written.
    dirty: bool,
    /// Clusters for which "no master, nobody to promote" was already logged
    /// (one warning per outage, not one per check).
    waiting: BTreeSet<u32>,
}

impl Table {
    /// Creates the table, loading the cluster states from
    /// `<state_dir>/epochs.txt` (missing file = all zeros; malformed file =
    /// error).
    pub fn load(
        clusters: u32,
        heartbeat: Duration,
        state_dir: &Path,
        now: Instant,
    ) -> io::Result<Table> {
        let states = load_states(state_dir)?;
        Ok(Table {
            clusters: clusters.max(1),
            window: heartbeat.saturating_mul(2),
            started: now,
            state_dir: state_dir.to_path_buf(),
            entries: BTreeMap::new(),
            states,
            dirty: false,
            waiting: BTreeSet::new(),
        })
    }

    /// Number of clusters.
    pub fn clusters(&self) -> u32 {
        self.clusters
    }

    /// The current epoch of a cluster (0 = never had a master).
    pub fn epoch(&self, cluster: u32) -> u64 {
        self.state(cluster).epoch
    }

    /// The recorded state of a cluster (what the state file says once saved).
    pub fn state(&self, cluster: u32) -> ClusterState {
        self.states.get(&cluster).copied().unwrap_or_default()
    }

    /// Changes the state of a cluster, marking it for writing if it changed.
    fn update(&mut self, cluster: u32, change: impl FnOnce(&mut ClusterState)) {
        let st = self.states.entry(cluster).or_default();
        let before = *st;
        change(st);
        if *st != before {
            self.dirty = true;
        }
    }

    /// Records `slave` (0 = none) as the in-service slave of `cluster`,
    /// logging the change and why.
    fn set_in_service(&mut self, cluster: u32, slave: u32, why: &str) {
        let old = self.state(cluster).in_service;
        if old == slave {
            return;
        }
        if old != 0 {
            log::info!("cluster {cluster}: server {old} is out of service ({why})");
        }
        if slave != 0 {
            log::info!("cluster {cluster}: server {slave} is in service ({why})");
        }
        self.update(cluster, |st| st.in_service = slave);
    }

    /// The states to write if they changed since the last successful write.
    pub fn unsaved(&self) -> Option<StateSnapshot> {
        self.dirty.then(|| {
            // Write every configured cluster, even at 0, so `cat` shows them
            // all; plus any extra cluster the file already knew.
            let mut states = self.states.clone();
            for c in 1..=self.clusters {
                states.entry(c).or_default();
            }
            StateSnapshot {
                dir: self.state_dir.clone(),
                states,
            }
        })
    }

    /// Records that `unsaved()` was written successfully.
    pub fn mark_saved(&mut self) {
        self.dirty = false;
    }

    /// Writes the states now if needed (blocking; for tests and tools).
    pub fn save(&mut self) -> io::Result<()> {
        if let Some(snapshot) = self.unsaved() {
            snapshot.write()?;
            self.mark_saved();
        }
        Ok(())
    }

    /// Whether `now` is still within the first failure window after start-up.
    fn in_grace(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started) <= self.window
    }

    /// Handles a heartbeat (which is also registration) and returns the reply.
    /// `info.hostname` must already be filled in; `epoch` and
    /// `in_service_slave` are the request's. The caller must persist
    /// [`Table::unsaved`] before sending the reply.
    pub fn heartbeat(
        &mut self,
        info: &ServerInfo,
        epoch: u64,
        in_service_slave: u32,
        in_service_process: u64,
        now: Instant,
    ) -> Result<HeartbeatReply, Status> {
        let kind = Kind::try_from(info.kind)
            .map_err(|_| Status::invalid_argument(format!("unknown kind {}", info.kind)))?;
        let claimed = Role::try_from(info.role)
            .map_err(|_| Status::invalid_argument(format!("unknown role {}", info.role)))?;
        let cluster = info.cluster_id;
        if cluster == 0 || cluster > self.clusters {
            return Err(Status::invalid_argument(format!(
                "cluster_id {cluster} is outside 1..={}",
                self.clusters
            )));
        }
        if info.port == 0 || info.port > u32::from(u16::MAX) {
            return Err(Status::invalid_argument(format!(
                "port must be in 1..=65535, got {}",
                info.port
            )));
        }
        let hostname = info.hostname.trim();
        if hostname.is_empty()
            || hostname.len() > MAX_HOSTNAME
            || hostname
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control())
        {
            return Err(Status::invalid_argument(format!(
                "invalid hostname {:?}",
                info.hostname
            )));
        }

        let id = info.server_id;
        let key = (kind, cluster, id);
        let what = describe(kind, cluster, id);
        let previous = self.entries.get(&key).cloned();
        let was_alive = previous.as_ref().is_some_and(|e| e.alive);
        let old_role = previous.as_ref().map_or(Role::None, |e| e.role);
        let moved = previous
            .as_ref()
            .is_some_and(|e| e.hostname != hostname || e.port != info.port);
        // Registrations, returns and address changes are logged at info;
        // plain heartbeats only at debug.
        let verb = match (&previous, moved) {
            (None, _) => "registered",
            (Some(_), true) => "moved",
            (Some(_), false) => "is back",
        };
        self.entries.insert(
            key,
            Entry {
                hostname: hostname.to_string(),
                port: info.port,
                process: info.process,
                role: old_role,
                alive: true,
                last: now,
            },
        );

        if kind == Kind::Synchronizer {
            if !was_alive || moved {
                log::info!("{what} {} at {hostname}:{}", verb, info.port);
            } else {
                log::debug!("heartbeat from {what}");
            }
            return Ok(HeartbeatReply {
                role: Role::None as i32,
                epoch: 0,
                peer: None,
                in_service: false,
                clusters: self.clusters,
            });
        }

        // A process has seen a higher epoch than ours: our state file was
        // lost or rolled back. Adopt it so epochs keep growing; what we
        // recorded about older epochs no longer says anything.
        if epoch > self.epoch(cluster) {
            let master = self
                .servers_of(cluster)
                .find(|(_, e)| e.role == Role::Master)
                .map_or(0, |(k, _)| k.2);
            log::warn!(
                "{what} reports epoch {epoch}, ahead of our {}; adopting it \
                 (master of the epoch unknown, no in-service slave)",
                self.epoch(cluster)
            );
            self.update(cluster, |st| {
                *st = ClusterState {
                    epoch,
                    master,
                    in_service: 0,
                }
            });
        }

        // A fresh process is not in service, whatever was recorded; after a
        // restart of the coordinator the recorded in-service slave must show
        // it is the same process, still the slave of the current epoch.
        let current = self.epoch(cluster);
        if self.state(cluster).in_service == id {
            if claimed == Role::None {
                self.set_in_service(cluster, 0, &format!("server {id} restarted"));
            } else if previous.is_none() && !(claimed == Role::Slave && epoch == current) {
                self.set_in_service(
                    cluster,
                    0,
                    &format!(
                        "server {id} claims {} at epoch {epoch}, not SLAVE at epoch {current}",
                        claimed.as_str_name()
                    ),
                );
            }
        }

        let role = self.decide_role(key, claimed, epoch, now);

        // The master's report of its in-service slave, believed only from the
        // master of the current epoch.
        if role == Role::Master && epoch == self.epoch(cluster) {
            let slave = if in_service_slave == id {
                log::warn!("{what} reports itself as its in-service slave; ignored");
                0
            } else {
                in_service_slave
            };
            // The master took in an earlier run of that slave, which has
            // restarted since (maybe with an empty directory) and not yet
            // joined again: it is not in service.
            let registered = self
                .entries
                .get(&(Kind::Server, cluster, slave))
                .map_or(0, |e| e.process);
            let slave = if slave != 0
                && in_service_process != 0
                && registered != 0
                && registered != in_service_process
            {
                log::debug!("{what} reports an earlier run of server {slave} in service; ignored");
                0
            } else {
                slave
            };
            self.set_in_service(cluster, slave, &format!("reported by master {id}"));
        } else if in_service_slave != 0 {
            log::debug!(
                "{what} ({} at epoch {epoch}, current {}) reports in-service slave \
                 {in_service_slave}: ignored, not the current master",
                role.as_str_name(),
                self.epoch(cluster)
            );
        }

        if !was_alive || moved {
            log::info!(
                "{what} {} at {hostname}:{} as {} (epoch {})",
                verb,
                info.port,
                role.as_str_name(),
                self.epoch(cluster)
            );
        } else if old_role != role {
            log::info!(
                "{what}: {} -> {} (epoch {})",
                old_role.as_str_name(),
                role.as_str_name(),
                self.epoch(cluster)
            );
        } else {
            log::debug!("heartbeat from {what} ({})", role.as_str_name());
        }

        Ok(HeartbeatReply {
            in_service: role == Role::Slave && self.state(cluster).in_service == id,
            role: role as i32,
            epoch: self.epoch(cluster),
            peer: self.peer_of(key, role),
            clusters: self.clusters,
        })
    }

    /// Applies the role rules of the module docs to the server `key`, which
    /// has just heartbeated (its entry is already alive).
    fn decide_role(&mut self, key: Key, claimed: Role, claimed_epoch: u64, now: Instant) -> Role {
        let (_, cluster, id) = key;
        let st = self.state(cluster);
        let me_master = self
            .entries
            .get(&key)
            .is_some_and(|e| e.role == Role::Master);
        let other_alive_master = self
            .servers_of(cluster)
            .any(|(k, e)| k != key && e.alive && e.role == Role::Master);
        let role = if me_master || (!other_alive_master && st.master == id) {
            // The master of the cluster (in the table, or recorded before a
            // restart of the coordinator).
            let heir = if claimed == Role::None {
                self.alive_in_service_slave(cluster)
                    .filter(|&(_, _, s)| s != id)
            } else {
                None
            };
            if let Some(slave) = heir {
                log::info!(
                    "cluster {cluster}: master server {id} restarted; promoting its \
                     in-service slave server {}",
                    slave.2
                );
                self.make_master(slave, false);
                Role::Slave
            } else {
                if claimed == Role::None && st.epoch > 0 {
                    log::info!(
                        "cluster {cluster}: master server {id} restarted; it stays master \
                         (no alive in-service slave)"
                    );
                }
                self.make_master(key, true);
                Role::Master
            }
        } else if other_alive_master {
            Role::Slave
        } else if st.master == 0 {
            self.decide_unknown_master(key, claimed, claimed_epoch, now)
        } else if st.in_service == id && !self.in_grace(now) {
            log::info!(
                "cluster {cluster}: master server {} is down; promoting in-service slave \
                 server {id}",
                st.master
            );
            self.make_master(key, false);
            Role::Master
        } else {
            // The master is down (or has not heartbeated since our restart)
            // and this server may lack acknowledged writes: wait for it.
            Role::Slave
        };
        if let Some(e) = self.entries.get_mut(&key) {
            e.role = role;
        }
        role
    }

    /// Roles in a cluster whose master is not recorded: it never had one
    /// (epoch 0), or the state file was in the old form or lost.
    fn decide_unknown_master(
        &mut self,
        key: Key,
        claimed: Role,
        claimed_epoch: u64,
        now: Instant,
    ) -> Role {
        let (_, cluster, id) = key;
        let current = self.epoch(cluster);
        if claimed == Role::Slave && current > 0 && claimed_epoch == current && self.in_grace(now) {
            // Just restarted: this slave's master has probably not
            // heartbeated yet. Wait for it.
            return Role::Slave;
        }
        let claim_ok = claimed == Role::Master && current > 0 && claimed_epoch == current;
        if current > 0 && !claim_ok {
            log::warn!(
                "cluster {cluster}: the master of epoch {current} is not recorded; server {id} \
                 takes over (writes acknowledged by that master may be missing)"
            );
        }
        self.make_master(key, claim_ok);
        Role::Master
    }

    /// The in-service slave of a cluster if it is alive (and a slave).
    fn alive_in_service_slave(&self, cluster: u32) -> Option<Key> {
        let id = self.state(cluster).in_service;
        if id == 0 {
            return None;
        }
        let key = (Kind::Server, cluster, id);
        self.entries
            .get(&key)
            .filter(|e| e.alive && e.role == Role::Slave)
            .map(|_| key)
    }

    /// Makes `key` the master of its cluster, demoting any other MASTER entry
    /// and recording it as the master. `keep_epoch`: it already is the master
    /// of the current epoch (it comes back, or it claims so after a restart of
    /// the coordinator); otherwise the epoch is raised.
    fn make_master(&mut self, key: Key, keep_epoch: bool) {
        let (_, cluster, id) = key;
        let me_master = self
            .entries
            .get(&key)
            .is_some_and(|e| e.role == Role::Master);
        if me_master {
            // It was the master, was declared dead and nobody took over: it
            // is still the master of the current epoch.
            return;
        }
        let old = self.state(cluster).master;
        if keep_epoch {
            if old == id {
                log::info!(
                    "cluster {cluster}: server {id} is master again, epoch {}",
                    self.epoch(cluster)
                );
            } else {
                log::info!(
                    "cluster {cluster}: server {id} accepted as master of epoch {} (as it claims)",
                    self.epoch(cluster)
                );
            }
        } else {
            let epoch = self.epoch(cluster).saturating_add(1);
            self.update(cluster, |st| st.epoch = epoch);
            if old != 0 && old != id {
                log::info!(
                    "cluster {cluster}: server {id} takes over from server {old} as master, \
                     epoch {epoch}"
                );
            } else {
                log::info!("cluster {cluster}: server {id} is master, epoch {epoch}");
            }
        }
        let demoted: Vec<Key> = self
            .servers_of(cluster)
            .filter(|(k, e)| *k != key && e.role == Role::Master)
            .map(|(k, _)| k)
            .collect();
        for k in demoted {
            if let Some(e) = self.entries.get_mut(&k) {
                e.role = Role::Slave;
            }
        }
        if let Some(e) = self.entries.get_mut(&key) {
            e.role = Role::Master;
        }
        if old != id {
            // A new master has no in-service slave until it reports one (the
            // promoted slave was the in-service one; the old master is not).
            self.update(cluster, |st| {
                st.master = id;
                st.in_service = 0;
            });
        }
        self.waiting.remove(&cluster);
    }

    /// Periodic failure detection: marks silent entries dead and promotes the
    /// in-service slave in every cluster left without an alive master. The
    /// caller must persist [`Table::unsaved`] afterwards.
    pub fn check(&mut self, now: Instant) {
        for (&(kind, cluster, server), e) in self.entries.iter_mut() {
            if e.alive && now.saturating_duration_since(e.last) > self.window {
                e.alive = false;
                log::info!("{} declared failed", describe(kind, cluster, server));
            }
        }
        if self.in_grace(now) {
            // Masters of a just-restarted coordinator may not have
            // heartbeated yet (see the module docs).
            return;
        }
        for cluster in 1..=self.clusters {
            let has_master = self
                .servers_of(cluster)
                .any(|(_, e)| e.alive && e.role == Role::Master);
            if has_master {
                self.waiting.remove(&cluster);
                continue;
            }
            let st = self.state(cluster);
            if let Some(key) = self.alive_in_service_slave(cluster) {
                log::info!(
                    "cluster {cluster} has no alive master: promoting in-service slave server {}",
                    key.2
                );
                self.make_master(key, false);
                continue;
            }
            if st.master == 0 {
                // Master not recorded (old state file, or lost): the rules
                // from before in-service slaves, promote the freshest slave.
                let candidate = self
                    .servers_of(cluster)
                    .filter(|(_, e)| e.alive && e.role == Role::Slave)
                    .max_by_key(|(k, e)| (e.last, std::cmp::Reverse(k.2)))
                    .map(|(k, _)| k);
                if let Some(key) = candidate {
                    log::warn!(
                        "cluster {cluster} has no alive master and none is recorded: promoting \
                         slave server {} (writes acknowledged by the lost master may be missing)",
                        key.2
                    );
                    self.make_master(key, false);
                }
                continue;
            }
            if self.waiting.insert(cluster) {
                let slaves: Vec<u32> = self
                    .servers_of(cluster)
                    .filter(|(_, e)| e.alive)
                    .map(|(k, _)| k.2)
                    .collect();
                log::warn!(
                    "cluster {cluster} has no master until server {} comes back: it is down \
                     and no alive slave is in service (alive slaves {slaves:?} may lack \
                     acknowledged writes; not promoting)",
                    st.master
                );
            }
        }
    }

    /// "1: epoch 3, master 2, in service 1; ..." for the start-up log.
    fn describe_states(&self) -> String {
        let mut text = String::new();
        for (c, st) in &self.states {
            if !text.is_empty() {
                text.push_str("; ");
            }
            let _ = write!(text, "{c}: epoch {}", st.epoch);
            if st.master != 0 {
                let _ = write!(text, ", master {}", st.master);
            }
            if st.in_service != 0 {
                let _ = write!(text, ", in service {}", st.in_service);
            }
        }
        if text.is_empty() {
            text.push_str("all new");
        }
        text
    }

    /// Server entries of one cluster.
    fn servers_of(&self, cluster: u32) -> impl Iterator<Item = (Key, &Entry)> {
        self.entries
            .range((Kind::Server, cluster, 0)..=(Kind::Server, cluster, u32::MAX))
            .map(|(k, e)| (*k, e))
    }

    /// Whether `key` is the in-service slave of its cluster.
    fn is_in_service(&self, key: Key) -> bool {
        let (kind, cluster, id) = key;
        kind == Kind::Server && id != 0 && self.state(cluster).in_service == id
    }

    /// The wire form of an entry; `now` fills in the heartbeat age (GetTable).
    fn info_of(&self, key: Key, e: &Entry, now: Option<Instant>) -> ServerInfo {
        let (kind, cluster_id, server_id) = key;
        let age = now.map_or(0, |now| {
            u64::try_from(now.saturating_duration_since(e.last).as_millis()).unwrap_or(u64::MAX)
        });
        ServerInfo {
            cluster_id,
            server_id,
            hostname: e.hostname.clone(),
            port: e.port,
            kind: kind as i32,
            role: e.role as i32,
            alive: e.alive,
            last_heartbeat_ms_ago: age,
            in_service: self.is_in_service(key),
            process: e.process,
        }
    }

    /// The server a heartbeat reply names as peer: for a slave its alive
    /// master (else any other alive server), for a master its freshest alive
    /// slave.
    fn peer_of(&self, key: Key, role: Role) -> Option<ServerInfo> {
        let (_, cluster, _) = key;
        let others = || {
            self.servers_of(cluster)
                .filter(|(k, e)| *k != key && e.alive)
        };
        let chosen = if role == Role::Master {
            others().max_by_key(|(_, e)| e.last)
        } else {
            others()
                .find(|(_, e)| e.role == Role::Master)
                .or_else(|| others().max_by_key(|(_, e)| e.last))
        };
        chosen.map(|(k, e)| self.info_of(k, e, None))
    }

    /// The alive master of a cluster.
    pub fn master_of(&self, cluster: u32) -> Option<ServerInfo> {
        self.servers_of(cluster)
            .find(|(_, e)| e.alive && e.role == Role::Master)
            .map(|(k, e)| self.info_of(k, e, None))
    }

    /// The alive synchronizer of a cluster (the freshest if several).
    pub fn synchronizer_of(&self, cluster: u32) -> Option<ServerInfo> {
        self.entries
            .range((Kind::Synchronizer, cluster, 0)..=(Kind::Synchronizer, cluster, u32::MAX))
            .filter(|(_, e)| e.alive)
            .max_by_key(|(_, e)| e.last)
            .map(|(k, e)| self.info_of(*k, e, None))
    }

    /// Every alive synchronizer, by cluster.
    pub fn synchronizers(&self) -> Vec<ServerInfo> {
        self.entries
            .iter()
            .filter(|(k, e)| k.0 == Kind::Synchronizer && e.alive)
            .map(|(k, e)| self.info_of(*k, e, None))
            .collect()
    }

    /// Every entry, alive or not, with the age of its last heartbeat.
    pub fn all(&self, now: Instant) -> Vec<ServerInfo> {
        self.entries
            .iter()
            .map(|(k, e)| self.info_of(*k, e, Some(now)))
            .collect()
    }
}

/// "cluster 1 server 2" / "cluster 1 synchronizer 1", for logs.
fn describe(kind: Kind, cluster: u32, id: u32) -> String {
    match kind {
        Kind::Server => format!("cluster {cluster} server {id}"),
        Kind::Synchronizer => format!("cluster {cluster} synchronizer {id}"),
    }
}

/// Reads `<dir>/epochs.txt`: `<cluster> <epoch> <master> <in_service>` lines,
/// or the old `<cluster> <epoch>` form (master and in-service slave unknown).
/// A missing file means every cluster is new; anything unreadable or
/// malformed is an error, because resetting epochs would let a deposed master
/// look current again, and forgetting a master could let a slave that lacks
/// acknowledged writes take over.
fn load_states(dir: &Path) -> io::Result<BTreeMap<u32, ClusterState>> {
    let path = dir.join(EPOCH_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    };
    let mut states = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}:{}: {why} in {line:?} (expected `<cluster> <epoch> <master> \
                     <in_service>`); refusing to start rather than reset the epochs: fix or \
                     remove the file",
                    path.display(),
                    n + 1
                ),
            )
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (c, e, m, s) = match fields[..] {
            [c, e] => (c, e, "0", "0"),
            [c, e, m, s] => (c, e, m, s),
            _ => return Err(bad("wrong number of fields")),
        };
        let cluster: u32 = c.parse().map_err(|_| bad("bad cluster id"))?;
        let epoch: u64 = e.parse().map_err(|_| bad("bad epoch"))?;
        let master: u32 = m.parse().map_err(|_| bad("bad master id"))?;
        let in_service: u32 = s.parse().map_err(|_| bad("bad in-service id"))?;
        if cluster == 0 {
            return Err(bad("cluster 0"));
        }
        if master != 0 && epoch == 0 {
            return Err(bad("a master at epoch 0"));
        }
        if in_service != 0 && (master == 0 || in_service == master) {
            return Err(bad(
                "an in-service slave without a master, or that is the master",
            ));
        }
        let state = ClusterState {
            epoch,
            master,
            in_service,
        };
        if states.insert(cluster, state).is_some() {
            return Err(bad("duplicate cluster"));
        }
    }
    Ok(states)
}

/// Writes the states atomically and durably (see [`StateSnapshot::write`]).
fn write_states(dir: &Path, states: &BTreeMap<u32, ClusterState>) -> io::Result<()> {
    let mut text = String::new();
    for (c, st) in states {
        let _ = writeln!(text, "{c} {} {} {}", st.epoch, st.master, st.in_service);
    }
    let path = dir.join(EPOCH_FILE);
    let tmp = dir.join(format!("{EPOCH_FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Writes the pending state off the async threads. Called with the table
/// locked, so no other reply can depend on a change before it is on disk.
async fn persist(table: &mut Table) -> io::Result<()> {
    let Some(snapshot) = table.unsaved() else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || snapshot.write())
        .await
        .map_err(io::Error::other)??;
    table.mark_saved();
    Ok(())
}

/// The gRPC service: a lock around the [`Table`].
struct Service {
    table: Arc<Mutex<Table>>,
}

fn checked_user(req: &UserRequest) -> Result<u64, Status> {
    match req.user_id {
        0 => Err(Status::invalid_argument(
            "user_id must be a positive integer",
        )),
        id => Ok(id),
    }
}

#[tonic::async_trait]
impl Coordinator for Service {
    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let remote = request.remote_addr();
        let req = request.into_inner();
        let Some(mut info) = req.info else {
            return Err(Status::invalid_argument("heartbeat without info"));
        };
        // A process that does not know its own name is reachable at the
        // address it is calling from.
        if info.hostname.trim().is_empty()
            && let Some(addr) = remote
        {
            info.hostname = addr.ip().to_string();
        }
        // In a task of its own: a caller that gives up (its deadline) drops
        // this future, and must not cut the update and its write to disk in
        // half while the lock is released to the next writer.
        let table = self.table.clone();
        let work = tokio::spawn(async move {
            let mut table = table.lock().await;
            let reply = table.heartbeat(
                &info,
                req.epoch,
                req.in_service_slave,
                req.in_service_process,
                Instant::now(),
            )?;
            if let Err(e) = persist(&mut table).await {
                log::error!("cannot persist the cluster state: {e}");
                return Err(Status::unavailable(format!(
                    "cannot persist the cluster state: {e}"
                )));
            }
            Ok(reply)
        });
        let reply = work
            .await
            .map_err(|e| Status::internal(format!("heartbeat task failed: {e}")))??;
        Ok(Response::new(reply))
    }

    async fn get_server(
        &self,
        request: Request<UserRequest>,
    ) -> Result<Response<ServerInfo>, Status> {
        let user = checked_user(request.get_ref())?;
        let table = self.table.lock().await;
        let cluster = config::cluster_of(user, table.clusters());
        match table.master_of(cluster) {
            Some(info) => Ok(Response::new(info)),
            None => {
                log::debug!("GetServer({user}): no master in cluster {cluster}");
                Err(Status::unavailable(format!(
                    "no server available for cluster {cluster}"
                )))
            }
        }
    }

    async fn get_synchronizer(
        &self,
        request: Request<UserRequest>,
    ) -> Result<Response<ServerInfo>, Status> {
        let user = checked_user(request.get_ref())?;
        let table = self.table.lock().await;
        let cluster = config::cluster_of(user, table.clusters());
        table
            .synchronizer_of(cluster)
            .map(Response::new)
            .ok_or_else(|| {
                Status::unavailable(format!("no synchronizer available for cluster {cluster}"))
            })
    }

    async fn get_all_synchronizers(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<ServerList>, Status> {
        let table = self.table.lock().await;
        Ok(Response::new(ServerList {
            servers: table.synchronizers(),
            clusters: table.clusters(),
        }))
    }

    async fn get_table(&self, _request: Request<Empty>) -> Result<Response<ServerList>, Status> {
        let table = self.table.lock().await;
        Ok(Response::new(ServerList {
            servers: table.all(Instant::now()),
            clusters: table.clusters(),
        }))
    }
}

/// The failure checker: runs [`Table::check`] every heartbeat/4 (5 to 100
/// ms) and persists what a promotion changed. A failed write is retried on
/// the next tick; heartbeats will not reply until it succeeds.
async fn failure_checker(table: Arc<Mutex<Table>>, heartbeat: Duration) {
    // Often enough that the check adds little to the failure window (a
    // failover is promised within two heartbeats plus a second), and the
    // check is cheap: a pass over a small table.
    let period = (heartbeat / 4).clamp(Duration::from_millis(5), Duration::from_millis(100));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_check = Instant::now();
    let mut grace_until: Option<Instant> = None;
    loop {
        ticker.tick().await;
        let mut t = table.lock().await;
        let now = Instant::now();
        // If we ourselves stalled (a slow disk under the lock, an overloaded
        // machine), heartbeats piled up unanswered: everyone would look
        // failed at once. Give them a failure window to be heard first.
        if now.duration_since(last_check) > period + heartbeat / 2 {
            log::warn!(
                "the coordinator stalled for {:?}; no failure verdicts for {:?}",
                now.duration_since(last_check),
                2 * heartbeat
            );
            grace_until = Some(now + 2 * heartbeat);
        }
        last_check = now;
        if grace_until.is_some_and(|g| now < g) {
            continue;
        }
        t.check(now);
        if let Err(e) = persist(&mut t).await {
            log::error!("cannot persist the cluster state (will retry): {e}");
        }
    }
}

/// Serves the coordinator on `listener` until `shutdown` is cancelled.
///
/// Fails at start-up if the state directory cannot be created or its epoch
/// state file is unreadable or malformed.
pub async fn run(
    listener: tokio::net::TcpListener,
    opts: Options,
    shutdown: CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    std::fs::create_dir_all(&opts.state_dir).map_err(|e| {
        format!(
            "cannot create state directory {}: {e}",
            opts.state_dir.display()
        )
    })?;
    let table = match Table::load(
        opts.clusters,
        opts.heartbeat,
        &opts.state_dir,
        Instant::now(),
    ) {
        Ok(t) => t,
        Err(e) => {
            log::warn!("{e}");
            return Err(e.into());
        }
    };
    log::info!(
        "coordinator on {}: {} clusters, heartbeat {} ms, state in {}, clusters {}",
        listener
            .local_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string()),
        table.clusters(),
        opts.heartbeat.as_millis(),
        opts.state_dir.display(),
        table.describe_states()
    );
    let table = Arc::new(Mutex::new(table));
    let checker = tokio::spawn(failure_checker(table.clone(), opts.heartbeat));
    let result = tonic::transport::Server::builder()
        .add_service(CoordinatorServer::new(Service { table }))
        .serve_with_incoming_shutdown(
            crate::config::incoming(listener),
            shutdown.clone().cancelled_owned(),
        )
        .await;
    checker.abort();
    result?;
    log::info!("coordinator stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_millis(100);

    fn server(cluster: u32, id: u32, role: Role) -> ServerInfo {
        ServerInfo {
            cluster_id: cluster,
            server_id: id,
            hostname: "localhost".into(),
            port: 10_000 + cluster * 10 + id,
            kind: Kind::Server as i32,
            role: role as i32,
            ..Default::default()
        }
    }

    /// A heartbeat without an in-service report (a slave's, or a master's
    /// with no slave in service), persisted as the service does.
    fn hb(t: &mut Table, info: &ServerInfo, epoch: u64, now: Instant) -> HeartbeatReply {
        report(t, info, epoch, 0, now)
    }

    /// A heartbeat naming `slave` as in service.
    fn report(
        t: &mut Table,
        info: &ServerInfo,
        epoch: u64,
        slave: u32,
        now: Instant,
    ) -> HeartbeatReply {
        report_run(t, info, epoch, slave, 0, now)
    }

    /// A heartbeat naming run `process` of `slave` as in service.
    fn report_run(
        t: &mut Table,
        info: &ServerInfo,
        epoch: u64,
        slave: u32,
        process: u64,
        now: Instant,
    ) -> HeartbeatReply {
        let reply = t
            .heartbeat(info, epoch, slave, process, now)
            .expect("valid heartbeat");
        t.save().expect("save state");
        reply
    }

    fn role(r: &HeartbeatReply) -> Role {
        Role::try_from(r.role).expect("valid role")
    }

    fn state(epoch: u64, master: u32, in_service: u32) -> ClusterState {
        ClusterState {
            epoch,
            master,
            in_service,
        }
    }

    fn file(dir: &Path) -> String {
        std::fs::read_to_string(dir.join(EPOCH_FILE)).expect("state file")
    }

    /// `in_service` of a server as `GetTable` shows it.
    fn listed_in_service(t: &Table, cluster: u32, id: u32) -> bool {
        t.all(Instant::now())
            .iter()
            .find(|s| s.kind == Kind::Server as i32 && s.cluster_id == cluster && s.server_id == id)
            .expect("listed")
            .in_service
    }

    /// Cluster 1 with master 1 and slave 2 (in service if `in_service`),
    /// both heartbeating at `t0 + 3 HB` (past the start-up window).
    fn pair(dir: &Path, in_service: bool) -> (Table, Instant, Instant) {
        let t0 = Instant::now();
        let mut t = Table::load(3, HB, dir, t0).expect("load");
        hb(&mut t, &server(1, 1, Role::None), 0, t0);
        hb(&mut t, &server(1, 2, Role::None), 0, t0);
        let t1 = t0 + HB * 3;
        report(
            &mut t,
            &server(1, 1, Role::Master),
            1,
            if in_service { 2 } else { 0 },
            t1,
        );
        let r = hb(&mut t, &server(1, 2, Role::Slave), 1, t1);
        assert_eq!((role(&r), r.in_service), (Role::Slave, in_service));
        (t, t0, t1)
    }

    #[test]
    fn first_is_master_second_slave() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = Instant::now();
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        let r1 = hb(&mut t, &server(1, 1, Role::None), 0, t0);
        assert_eq!(role(&r1), Role::Master);
        assert_eq!(r1.epoch, 1);
        assert_eq!(r1.clusters, 3);
        assert!(r1.peer.is_none());
        let r2 = hb(&mut t, &server(1, 2, Role::None), 0, t0);
        assert_eq!(role(&r2), Role::Slave);
        assert_eq!(r2.epoch, 1);
        assert!(!r2.in_service);
        let peer = r2.peer.expect("slave sees its master");
        assert_eq!((peer.server_id, peer.role), (1, Role::Master as i32));
        let r1 = hb(&mut t, &server(1, 1, Role::Master), 1, t0 + HB);
        assert_eq!(role(&r1), Role::Master);
        assert_eq!(r1.peer.expect("master sees its slave").server_id, 2);
        assert_eq!(t.master_of(1).expect("master").server_id, 1);
        assert!(t.master_of(2).is_none());
        assert_eq!(t.state(1), state(1, 1, 0));
        // Other clusters are independent.
        assert_eq!(
            role(&hb(&mut t, &server(2, 2, Role::None), 0, t0)),
            Role::Master
        );
        assert_eq!(t.epoch(2), 1);
        assert_eq!(t.epoch(3), 0);
    }

    #[test]
    fn a_report_about_an_earlier_run_of_the_slave_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = Instant::now();
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        let run = |id, role, process| ServerInfo {
            process,
            ..server(1, id, role)
        };
        hb(&mut t, &run(1, Role::None, 11), 0, t0);
        hb(&mut t, &run(2, Role::None, 21), 0, t0);
        let t1 = t0 + HB * 3;
        // The master took in run 21 of server 2: in service.
        report_run(&mut t, &run(1, Role::Master, 11), 1, 2, 21, t1);
        assert!(listed_in_service(&t, 1, 2));
        // Server 2 restarts (run 22, maybe with an empty directory): out of
        // service, and the master, which has not noticed yet, cannot put it
        // back by reporting run 21.
        report_run(&mut t, &run(2, Role::None, 22), 1, 0, 0, t1 + HB);
        assert!(!listed_in_service(&t, 1, 2));
        report_run(&mut t, &run(1, Role::Master, 11), 1, 2, 21, t1 + HB);
        assert!(!listed_in_service(&t, 1, 2));
        assert_eq!(t.state(1).in_service, 0);
        // Once run 22 has joined, the master reports it.
        report_run(&mut t, &run(1, Role::Master, 11), 1, 2, 22, t1 + HB * 2);
        assert!(listed_in_service(&t, 1, 2));
    }

    #[test]
    fn in_service_is_set_and_cleared_by_the_current_master_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut t, _, t1) = pair(dir.path(), false);
        hb(&mut t, &server(1, 3, Role::None), 0, t1);
        assert!(!listed_in_service(&t, 1, 2));

        // The master reports slave 2: the slave is told, GetTable shows it,
        // the file records it.
        let r = report(&mut t, &server(1, 1, Role::Master), 1, 2, t1 + HB);
        assert!(!r.in_service, "only a slave's reply carries the flag");
        let r = hb(&mut t, &server(1, 2, Role::Slave), 1, t1 + HB);
        assert!(r.in_service);
        assert!(listed_in_service(&t, 1, 2));
        assert!(!listed_in_service(&t, 1, 1));
        assert!(!listed_in_service(&t, 1, 3));
        assert_eq!(t.state(1), state(1, 1, 2));
        assert_eq!(file(dir.path()), "1 1 1 2\n2 0 0 0\n3 0 0 0\n");

        // Setting one clears every other.
        report(&mut t, &server(1, 1, Role::Master), 1, 3, t1 + HB);
        assert!(!hb(&mut t, &server(1, 2, Role::Slave), 1, t1 + HB).in_service);
        assert!(hb(&mut t, &server(1, 3, Role::Slave), 1, t1 + HB).in_service);
        report(&mut t, &server(1, 1, Role::Master), 1, 2, t1 + HB);

        // Reports from a stale epoch or from a non-master are ignored.
        report(&mut t, &server(1, 1, Role::Master), 0, 0, t1 + HB);
        report(&mut t, &server(1, 2, Role::Slave), 1, 0, t1 + HB);
        report(&mut t, &server(1, 3, Role::Slave), 1, 3, t1 + HB);
        report(&mut t, &server(1, 3, Role::Master), 1, 3, t1 + HB);
        assert_eq!(t.state(1), state(1, 1, 2));

        // The master drops the slave: recorded (and written) at once.
        report(&mut t, &server(1, 1, Role::Master), 1, 0, t1 + HB * 2);
        assert!(!hb(&mut t, &server(1, 2, Role::Slave), 1, t1 + HB * 2).in_service);
        assert_eq!(file(dir.path()), "1 1 1 0\n2 0 0 0\n3 0 0 0\n");

        // A master naming itself names nobody.
        report(&mut t, &server(1, 1, Role::Master), 1, 2, t1 + HB * 2);
        report(&mut t, &server(1, 1, Role::Master), 1, 1, t1 + HB * 2);
        assert_eq!(t.state(1), state(1, 1, 0));

        // A slave that restarts (fresh process) is out of service until its
        // master says so again.
        report(&mut t, &server(1, 1, Role::Master), 1, 2, t1 + HB * 2);
        let r = hb(&mut t, &server(1, 2, Role::None), 0, t1 + HB * 2);
        assert_eq!((role(&r), r.epoch, r.in_service), (Role::Slave, 1, false));
        assert_eq!(t.state(1), state(1, 1, 0));
        report(&mut t, &server(1, 1, Role::Master), 1, 2, t1 + HB * 3);
        assert!(hb(&mut t, &server(1, 2, Role::Slave), 1, t1 + HB * 3).in_service);
    }

    #[test]
    fn master_timeout_promotes_in_service_slave_and_old_master_returns_as_slave() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut t, _, t1) = pair(dir.path(), true);
        // Only the slave keeps heartbeating.
        hb(&mut t, &server(1, 2, Role::Slave), 1, t1 + HB * 2);
        t.check(t1 + HB * 2);
        assert_eq!(t.master_of(1).expect("still master").server_id, 1);
        t.check(t1 + HB * 2 + HB / 2);
        t.save().expect("save");
        let m = t.master_of(1).expect("promoted");
        assert_eq!(m.server_id, 2);
        // The new master has no in-service slave yet.
        assert_eq!(t.state(1), state(2, 2, 0));
        assert_eq!(file(dir.path()), "1 2 2 0\n2 0 0 0\n3 0 0 0\n");
        let r2 = hb(&mut t, &server(1, 2, Role::Slave), 1, t1 + HB * 3);
        assert_eq!((role(&r2), r2.epoch), (Role::Master, 2));
        // The old master comes back: it is now a slave of the new epoch, and
        // its report (of its former slave) is ignored.
        let r1 = report(&mut t, &server(1, 1, Role::Master), 1, 2, t1 + HB * 3);
        assert_eq!((role(&r1), r1.epoch), (Role::Slave, 2));
        assert_eq!(r1.peer.expect("peer").server_id, 2);
        assert_eq!(t.master_of(1).expect("master").server_id, 2);
        assert_eq!(t.state(1), state(2, 2, 0));
        // The new master re-admits it after its resync.
        report(&mut t, &server(1, 2, Role::Master), 2, 1, t1 + HB * 3);
        assert!(hb(&mut t, &server(1, 1, Role::Slave), 2, t1 + HB * 3).in_service);
        let table = t.all(t1 + HB * 3);
        assert_eq!(table.len(), 2);
        assert!(table.iter().all(|e| e.alive));
    }

    #[test]
    fn master_timeout_without_in_service_slave_promotes_nobody() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut t, _, t1) = pair(dir.path(), false);
        hb(&mut t, &server(1, 2, Role::Slave), 1, t1 + HB * 2);
        t.check(t1 + HB * 2 + HB / 2);
        t.check(t1 + HB * 2 + HB);
        assert!(t.master_of(1).is_none());
        assert_eq!(t.state(1), state(1, 1, 0));
        // Neither the slave nor a newcomer takes over by heartbeating.
        let r = hb(&mut t, &server(1, 2, Role::Slave), 1, t1 + HB * 3);
        assert_eq!((role(&r), r.epoch), (Role::Slave, 1));
        let r = hb(&mut t, &server(1, 3, Role::None), 0, t1 + HB * 3);
        assert_eq!((role(&r), r.epoch), (Role::Slave, 1));
        t.check(t1 + HB * 4);
        assert!(t.master_of(1).is_none());
        // The master comes back: master again, same epoch.
        let r = hb(&mut t, &server(1, 1, Role::Master), 1, t1 + HB * 4);
        assert_eq!((role(&r), r.epoch), (Role::Master, 1));
        assert_eq!(t.state(1), state(1, 1, 0));
    }

    #[test]
    fn dead_in_service_slave_is_promoted_when_it_returns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut t, _, t1) = pair(dir.path(), true);
        // Both die; nobody to promote.
        t.check(t1 + HB * 3);
        assert!(t.master_of(1).is_none());
        assert_eq!(t.epoch(1), 1);
        // The in-service slave (same process) comes back first: it holds
        // every acknowledged write, so it takes over.
        let r = hb(&mut t, &server(1, 2, Role::Slave), 1, t1 + HB * 4);
        assert_eq!((role(&r), r.epoch), (Role::Master, 2));
        let r = hb(&mut t, &server(1, 1, Role::Master), 1, t1 + HB * 4);
        assert_eq!((role(&r), r.epoch), (Role::Slave, 2));
        // Had it restarted (fresh process), it would have waited instead.
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut t, _, t1) = pair(dir.path(), true);
        t.check(t1 + HB * 3);
        let r = hb(&mut t, &server(1, 2, Role::None), 0, t1 + HB * 4);
        assert_eq!((role(&r), r.epoch, r.in_service), (Role::Slave, 1, false));
        t.check(t1 + HB * 4);
        assert!(t.master_of(1).is_none());
    }

    #[test]
    fn dead_master_without_slave_keeps_its_cluster() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = Instant::now();
        let mut t = Table::load(1, HB, dir.path(), t0).expect("load");
        hb(&mut t, &server(1, 1, Role::None), 0, t0);
        t.check(t0 + HB * 3);
        assert!(t.master_of(1).is_none());
        let r = hb(&mut t, &server(1, 1, Role::None), 1, t0 + HB * 4);
        assert_eq!((role(&r), r.epoch), (Role::Master, 1));
        // A different server does not take over a dead master's cluster: it
        // may lack acknowledged writes.
        t.check(t0 + HB * 7);
        let r = hb(&mut t, &server(1, 2, Role::None), 0, t0 + HB * 8);
        assert_eq!((role(&r), r.epoch), (Role::Slave, 1));
        t.check(t0 + HB * 8);
        assert!(t.master_of(1).is_none());
        let r = hb(&mut t, &server(1, 1, Role::Master), 1, t0 + HB * 8);
        assert_eq!((role(&r), r.epoch), (Role::Master, 1));
    }

    #[test]
    fn restarted_master_hands_over_to_alive_in_service_slave() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut t, _, t1) = pair(dir.path(), true);
        // Killed and restarted within the failure window: still alive in
        // the table, but a fresh process.
        let r = hb(&mut t, &server(1, 1, Role::None), 0, t1 + HB);
        assert_eq!((role(&r), r.epoch), (Role::Slave, 2));
        assert!(!r.in_service);
        assert_eq!(r.peer.expect("peer").server_id, 2);
        assert_eq!(t.master_of(1).expect("promoted").server_id, 2);
        assert_eq!(t.state(1), state(2, 2, 0));
        assert_eq!(file(dir.path()), "1 2 2 0\n2 0 0 0\n3 0 0 0\n");
        let r = hb(&mut t, &server(1, 2, Role::Slave), 1, t1 + HB);
        assert_eq!((role(&r), r.epoch), (Role::Master, 2));
        // Same when the master had already been declared failed.
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut t, _, t1) = pair(dir.path(), true);
        hb(&mut t, &server(1, 2, Role::Slave), 1, t1 + HB * 2);
        t.check(t1 + HB * 2);
        let r = hb(&mut t, &server(1, 1, Role::None), 0, t1 + HB * 2);
        assert_eq!((role(&r), r.epoch), (Role::Slave, 2));
    }

    #[test]
    fn restarted_master_without_in_service_slave_stays_master() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut t, _, t1) = pair(dir.path(), false);
        let r = hb(&mut t, &server(1, 1, Role::None), 0, t1 + HB);
        assert_eq!((role(&r), r.epoch), (Role::Master, 1));
        assert_eq!(t.state(1), state(1, 1, 0));
        // An in-service slave that is dead does not count.
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut t, _, t1) = pair(dir.path(), true);
        hb(&mut t, &server(1, 1, Role::Master), 1, t1 + HB * 2);
        t.check(t1 + HB * 2 + HB / 2);
        assert_eq!(t.master_of(1).expect("master").server_id, 1);
        let r = hb(&mut t, &server(1, 1, Role::None), 0, t1 + HB * 3);
        assert_eq!((role(&r), r.epoch), (Role::Master, 1));
        assert_eq!(t.master_of(1).expect("master").server_id, 1);
    }

    #[test]
    fn state_survives_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut t, _, t1) = pair(dir.path(), true);
        hb(&mut t, &server(3, 1, Role::None), 0, t1);
        assert_eq!(file(dir.path()), "1 1 1 2\n2 0 0 0\n3 1 1 0\n");
        let again = Table::load(3, HB, dir.path(), Instant::now()).expect("reload");
        assert_eq!(again.state(1), state(1, 1, 2));
        assert_eq!(again.state(2), state(0, 0, 0));
        assert_eq!(again.state(3), state(1, 1, 0));
        assert!(again.all(Instant::now()).is_empty());
        // Clusters beyond N are kept, not forgotten.
        let mut fewer = Table::load(1, HB, dir.path(), Instant::now()).expect("reload");
        assert_eq!(fewer.state(3), state(1, 1, 0));
        report(
            &mut fewer,
            &server(1, 1, Role::Master),
            1,
            0,
            Instant::now(),
        );
        assert_eq!(file(dir.path()), "1 1 1 0\n2 0 0 0\n3 1 1 0\n");
    }

    #[test]
    fn old_two_field_file_is_read_and_rewritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(EPOCH_FILE), "1 4\n2 1\n").expect("write");
        let t0 = Instant::now();
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        assert_eq!(t.state(1), state(4, 0, 0));
        assert_eq!(t.state(2), state(1, 0, 0));
        // The healthy master heartbeats first: no change, no new epoch.
        let r = hb(&mut t, &server(1, 2, Role::Master), 4, t0);
        assert_eq!((role(&r), r.epoch), (Role::Master, 4));
        let r = hb(&mut t, &server(1, 1, Role::Slave), 4, t0);
        assert_eq!((role(&r), r.epoch), (Role::Slave, 4));
        // A master with a stale epoch is not believed.
        let r = hb(&mut t, &server(2, 1, Role::Master), 0, t0);
        assert_eq!((role(&r), r.epoch), (Role::Master, 2));
        assert_eq!(file(dir.path()), "1 4 2 0\n2 2 1 0\n3 0 0 0\n");
    }

    #[test]
    fn old_file_slave_waits_for_master_then_takes_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(EPOCH_FILE), "1 4\n").expect("write");
        let t0 = Instant::now();
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        // The slave heartbeats before its master: it stays slave.
        let r = hb(&mut t, &server(1, 1, Role::Slave), 4, t0);
        assert_eq!((role(&r), r.epoch), (Role::Slave, 4));
        t.check(t0 + HB);
        assert!(t.master_of(1).is_none());
        let r = hb(&mut t, &server(1, 2, Role::Master), 4, t0 + HB);
        assert_eq!((role(&r), r.epoch), (Role::Master, 4));

        // Same start, but the master never comes: with no record of who it
        // was, the slave takes over after the window (the old rule).
        assert_eq!(file(dir.path()), "1 4 2 0\n2 0 0 0\n3 0 0 0\n");
        std::fs::write(dir.path().join(EPOCH_FILE), "1 4\n").expect("write");
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        hb(&mut t, &server(1, 1, Role::Slave), 4, t0);
        hb(&mut t, &server(1, 1, Role::Slave), 4, t0 + HB * 2);
        t.check(t0 + HB * 2 + HB / 2);
        t.save().expect("save");
        assert_eq!(t.master_of(1).expect("promoted").server_id, 1);
        assert_eq!(t.state(1), state(5, 1, 0));
        // From now on the master is recorded: a fresh process waits for it.
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        let r = hb(&mut t, &server(1, 2, Role::None), 0, t0);
        assert_eq!((role(&r), r.epoch), (Role::Slave, 5));
    }

    #[test]
    fn restarted_coordinator_keeps_the_recorded_master() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(EPOCH_FILE), "1 4 2 1\n2 3 1 0\n3 5 1 2\n").expect("write");
        let t0 = Instant::now();
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        // Cluster 1: the slave first (in service again: it claims SLAVE at
        // the current epoch), then its master; nothing changes.
        let r = hb(&mut t, &server(1, 1, Role::Slave), 4, t0);
        assert_eq!((role(&r), r.epoch, r.in_service), (Role::Slave, 4, true));
        let r = report(&mut t, &server(1, 2, Role::Master), 4, 1, t0);
        assert_eq!((role(&r), r.epoch), (Role::Master, 4));
        assert_eq!(t.state(1), state(4, 2, 1));
        // Cluster 2: another server claiming MASTER is not believed; the
        // recorded master, restarted (fresh, no epoch), is master again.
        let r = hb(&mut t, &server(2, 2, Role::Master), 3, t0);
        assert_eq!((role(&r), r.epoch), (Role::Slave, 3));
        let r = hb(&mut t, &server(2, 1, Role::None), 0, t0);
        assert_eq!((role(&r), r.epoch), (Role::Master, 3));
        // Cluster 3: the in-service slave restarted (fresh): not in service;
        // the recorded master, which missed the reply making it master,
        // claims SLAVE at an older epoch: master all the same.
        let r = hb(&mut t, &server(3, 2, Role::None), 0, t0);
        assert_eq!((role(&r), r.epoch, r.in_service), (Role::Slave, 5, false));
        let r = hb(&mut t, &server(3, 1, Role::Slave), 4, t0);
        assert_eq!((role(&r), r.epoch), (Role::Master, 5));
        assert_eq!(t.state(3), state(5, 1, 0));
        // An in-service slave claiming another epoch is not restored.
        std::fs::write(dir.path().join(EPOCH_FILE), "1 4 2 1\n").expect("write");
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        let r = hb(&mut t, &server(1, 1, Role::Slave), 3, t0);
        assert_eq!((role(&r), r.in_service), (Role::Slave, false));
        assert_eq!(t.state(1), state(4, 2, 0));
    }

    #[test]
    fn restarted_coordinator_promotes_in_service_slave_if_master_stays_away() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(EPOCH_FILE), "1 4 2 1\n").expect("write");
        let t0 = Instant::now();
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        let r = hb(&mut t, &server(1, 1, Role::Slave), 4, t0);
        assert_eq!((role(&r), r.in_service), (Role::Slave, true));
        // Within the start-up window: wait for the master.
        t.check(t0 + HB);
        let r = hb(&mut t, &server(1, 1, Role::Slave), 4, t0 + HB * 2);
        assert_eq!(role(&r), Role::Slave);
        assert!(t.master_of(1).is_none());
        // After it: promoted.
        t.check(t0 + HB * 2 + HB / 2);
        t.save().expect("save");
        assert_eq!(t.master_of(1).expect("promoted").server_id, 1);
        assert_eq!(t.state(1), state(5, 1, 0));
        assert_eq!(file(dir.path()), "1 5 1 0\n2 0 0 0\n3 0 0 0\n");
        // The old master returns: it is not made a second master.
        let r = hb(&mut t, &server(1, 2, Role::Master), 4, t0 + HB * 3);
        assert_eq!((role(&r), r.epoch), (Role::Slave, 5));
        assert_eq!(t.master_of(1).expect("master").server_id, 1);
    }

    #[test]
    fn restarted_coordinator_without_in_service_slave_waits_for_master() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(EPOCH_FILE), "1 4 2 0\n2 6 1 2\n").expect("write");
        let t0 = Instant::now();
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        hb(&mut t, &server(1, 1, Role::Slave), 4, t0);
        hb(&mut t, &server(1, 3, Role::None), 0, t0);
        // Cluster 2's in-service slave restarted: no longer in service.
        hb(&mut t, &server(2, 2, Role::None), 0, t0);
        for i in 1..=4 {
            let now = t0 + HB * i;
            for (c, s) in [(1, 1), (1, 3), (2, 2)] {
                let epoch = t.epoch(c);
                let r = hb(&mut t, &server(c, s, Role::Slave), epoch, now);
                assert_eq!(role(&r), Role::Slave, "cluster {c} server {s}");
            }
            t.check(now);
        }
        t.save().expect("save");
        assert!(t.master_of(1).is_none());
        assert!(t.master_of(2).is_none());
        assert_eq!(t.state(1), state(4, 2, 0));
        assert_eq!(t.state(2), state(6, 1, 0));
        // The recorded masters come back: masters again, same epochs.
        let r = hb(&mut t, &server(1, 2, Role::Master), 4, t0 + HB * 5);
        assert_eq!((role(&r), r.epoch), (Role::Master, 4));
        let r = hb(&mut t, &server(2, 1, Role::None), 0, t0 + HB * 5);
        assert_eq!((role(&r), r.epoch), (Role::Master, 6));
    }

    #[test]
    fn restarted_coordinator_and_restarted_master_hand_over_to_in_service_slave() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(EPOCH_FILE), "1 4 2 1\n").expect("write");
        let t0 = Instant::now();
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        hb(&mut t, &server(1, 1, Role::Slave), 4, t0);
        let r = hb(&mut t, &server(1, 2, Role::None), 0, t0);
        assert_eq!((role(&r), r.epoch), (Role::Slave, 5));
        assert_eq!(t.master_of(1).expect("promoted").server_id, 1);
        assert_eq!(t.state(1), state(5, 1, 0));
    }

    #[test]
    fn higher_epoch_from_a_server_is_adopted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = Instant::now();
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        let r = hb(&mut t, &server(1, 1, Role::Master), 7, t0);
        assert_eq!((role(&r), r.epoch), (Role::Master, 7));
        let again = Table::load(3, HB, dir.path(), t0).expect("reload");
        assert_eq!(again.state(1), state(7, 1, 0));
        // What we recorded about an older epoch is forgotten.
        std::fs::write(dir.path().join(EPOCH_FILE), "1 3 2 1\n").expect("write");
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        let r = hb(&mut t, &server(1, 1, Role::Master), 4, t0);
        assert_eq!((role(&r), r.epoch), (Role::Master, 4));
        assert_eq!(t.state(1), state(4, 1, 0));
    }

    #[test]
    fn invalid_heartbeats_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = Instant::now();
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        let mut bad = vec![server(0, 1, Role::None), server(4, 1, Role::None)];
        let mut p = server(1, 1, Role::None);
        p.port = 0;
        bad.push(p.clone());
        p.port = 70_000;
        bad.push(p);
        let mut h = server(1, 1, Role::None);
        h.hostname = String::new();
        bad.push(h);
        let mut k = server(1, 1, Role::None);
        k.kind = 9;
        bad.push(k);
        let mut r = server(1, 1, Role::None);
        r.role = 9;
        bad.push(r);
        for info in bad {
            let err = t.heartbeat(&info, 0, 0, 0, t0).expect_err("rejected");
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{info:?}");
        }
        assert!(t.all(t0).is_empty());
        assert_eq!(t.epoch(1), 0);
    }

    #[test]
    fn synchronizers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = Instant::now();
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        let mut s = server(2, 2, Role::None);
        s.kind = Kind::Synchronizer as i32;
        let r = hb(&mut t, &s, 0, t0);
        assert_eq!((role(&r), r.epoch, r.clusters), (Role::None, 0, 3));
        assert_eq!(t.synchronizer_of(2).expect("sync").port, s.port);
        assert!(t.synchronizer_of(1).is_none());
        assert_eq!(t.synchronizers().len(), 1);
        // A synchronizer never takes a server's role.
        assert!(t.master_of(2).is_none());
        t.check(t0 + HB * 3);
        assert!(t.synchronizer_of(2).is_none());
        assert!(t.synchronizers().is_empty());
        let all = t.all(t0 + HB * 3);
        assert_eq!(all.len(), 1);
        assert!(!all[0].alive);
        assert!(!all[0].in_service);
        assert_eq!(all[0].last_heartbeat_ms_ago, 300);
    }

    #[test]
    fn state_file_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = Instant::now();
        assert_eq!(
            Table::load(3, HB, dir.path(), t0)
                .expect("missing")
                .epoch(1),
            0
        );
        for bad in [
            "1\n",
            "1 2 3\n",
            "1 2 3 4 5\n",
            "x 1\n",
            "1 -1\n",
            "0 1\n",
            "1 1\n1 2\n",
            "1 2 x 0\n",
            "1 2 1 -1\n",
            "1 0 1 0\n",
            "1 2 0 3\n",
            "1 2 3 3\n",
        ] {
            std::fs::write(dir.path().join(EPOCH_FILE), bad).expect("write");
            let err = Table::load(3, HB, dir.path(), t0).expect_err(bad);
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
        std::fs::write(dir.path().join(EPOCH_FILE), "\n1 3\n\n2 5 1 2\n").expect("write");
        let t = Table::load(3, HB, dir.path(), t0).expect("ok");
        assert_eq!((t.state(1), t.state(2)), (state(3, 0, 0), state(5, 1, 2)));
    }
}
