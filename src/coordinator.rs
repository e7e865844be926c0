//! The coordinator: routing table, heartbeats, failure detection, promotion.
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
//! # Roles
//!
//! Invariant: per cluster at most one server entry has the role MASTER (alive
//! or not); every other server entry is a SLAVE. On a heartbeat from a server:
//!
//! - the alive master stays master;
//! - if another server of the cluster is the alive master, the sender is a
//!   slave;
//! - otherwise the sender becomes master (so the first server of a cluster to
//!   register is its master).
//!
//! # Epochs
//!
//! Each cluster has an epoch, a fencing token that servers use to tell a
//! current master from a deposed one. It starts at 0 ("never had a master") and
//! is raised by one each time the identity of the master changes: the first
//! master ever, a promotion after a failure, or a different server taking over a
//! cluster whose master is gone. A master that merely comes back (no one took
//! over meanwhile) keeps the epoch. Epochs only ever grow:
//!
//! - they are written to `<state_dir>/epochs.txt` (`<cluster> <epoch>` lines,
//!   temp file + fsync + rename) *before* any reply announces them, so a
//!   restarted coordinator never hands out an epoch twice;
//! - a malformed file stops the coordinator at start-up rather than silently
//!   resetting the epochs to 0, which would break fencing;
//! - a heartbeat carrying a higher epoch than ours (our file was lost) raises
//!   ours to it.
//!
//! # Restart of the coordinator
//!
//! After a restart the table is empty but the epochs are known. A server that
//! claims MASTER with the cluster's current epoch is accepted as master
//! without raising the epoch when no other alive master exists, so a healthy
//! master keeps its role. Symmetrically, during the first failure window after
//! start-up a server claiming SLAVE at the current epoch stays a slave even if
//! no master has been seen yet: its master is most likely alive and about to
//! heartbeat, and promoting the slave would depose it for nothing. If no master
//! shows up within the window, the failure checker promotes the slave.
//!
//! # Failure detection and promotion
//!
//! A background task runs every heartbeat/4 (at least 5 ms). An alive entry
//! whose last heartbeat is older than the failure window (2 × heartbeat, SPEC
//! §1: two missed heartbeats) is marked dead. Then every cluster that has no
//! alive master but an alive slave gets that slave promoted: it becomes MASTER,
//! the epoch is raised (and persisted) and the old master entry becomes a SLAVE,
//! which is what it will be told when it heartbeats again.
//!
//! The table logic is the plain [`Table`] struct, whose methods take `now` so
//! they can be tested without a network or a clock; the gRPC service is a thin
//! layer that locks it, calls it and persists epochs before replying.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use crate::config;
use crate::proto::tinysns::coordinator_server::{Coordinator, CoordinatorServer};
use crate::proto::tinysns::{
    Empty, HeartbeatReply, HeartbeatRequest, Kind, Role, ServerInfo, ServerList, UserRequest,
};

/// Name of the epoch file inside the state directory.
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
    /// Where the epochs are persisted (`<data_dir>/coordinator`).
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
    role: Role,
    alive: bool,
    last: Instant,
}

/// A snapshot of the epochs still to be written to disk.
#[derive(Debug, Clone)]
pub struct EpochSnapshot {
    dir: PathBuf,
    epochs: BTreeMap<u32, u64>,
}

impl EpochSnapshot {
    /// Writes the epochs durably: temp file, fsync, rename, fsync of the
    /// directory (so the rename itself survives a crash). Blocking.
    pub fn write(&self) -> io::Result<()> {
        write_epochs(&self.dir, &self.epochs)
    }
}

/// The routing table and the cluster epochs. All logic, no I/O except the
/// epoch file; every method that depends on time takes `now`.
#[derive(Debug)]
pub struct Table {
    clusters: u32,
    /// Failure window: 2 × heartbeat.
    window: Duration,
    /// When this coordinator started; see the restart rule in the module docs.
    started: Instant,
    state_dir: PathBuf,
    entries: BTreeMap<Key, Entry>,
    /// Epoch per cluster; a missing cluster has epoch 0. May hold clusters
    /// beyond `clusters` read from the file (kept so that a later start with
    /// more clusters does not reuse their epochs).
    epochs: BTreeMap<u32, u64>,
    /// The epochs changed since they were last written.
    dirty: bool,
}

impl Table {
    /// Creates the table, loading the epochs from `<state_dir>/epochs.txt`
    /// (missing file = every epoch 0; malformed file = error).
    pub fn load(
        clusters: u32,
        heartbeat: Duration,
        state_dir: &Path,
        now: Instant,
    ) -> io::Result<Table> {
        let epochs = load_epochs(state_dir)?;
        Ok(Table {
            clusters: clusters.max(1),
            window: heartbeat.saturating_mul(2),
            started: now,
            state_dir: state_dir.to_path_buf(),
            entries: BTreeMap::new(),
            epochs,
            dirty: false,
        })
    }

    /// Number of clusters.
    pub fn clusters(&self) -> u32 {
        self.clusters
    }

    /// The current epoch of a cluster (0 = never had a master).
    pub fn epoch(&self, cluster: u32) -> u64 {
        self.epochs.get(&cluster).copied().unwrap_or(0)
    }

    fn set_epoch(&mut self, cluster: u32, epoch: u64) {
        self.epochs.insert(cluster, epoch);
        self.dirty = true;
    }

    /// The epochs to write if they changed since the last successful write.
    pub fn unsaved(&self) -> Option<EpochSnapshot> {
        self.dirty.then(|| {
            // Write every configured cluster, even at 0, so `cat` shows them
            // all; plus any extra cluster the file already knew.
            let mut epochs = self.epochs.clone();
            for c in 1..=self.clusters {
                epochs.entry(c).or_insert(0);
            }
            EpochSnapshot {
                dir: self.state_dir.clone(),
                epochs,
            }
        })
    }

    /// Records that `unsaved()` was written successfully.
    pub fn mark_saved(&mut self) {
        self.dirty = false;
    }

    /// Writes the epochs now if needed (blocking; for tests and tools).
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
    /// `info.hostname` must already be filled in. The caller must persist
    /// [`Table::unsaved`] before sending the reply.
    pub fn heartbeat(
        &mut self,
        info: &ServerInfo,
        epoch: u64,
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

        let key = (kind, cluster, info.server_id);
        let what = describe(kind, cluster, info.server_id);
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
        // lost or rolled back. Adopt it so epochs keep growing.
        if epoch > self.epoch(cluster) {
            log::warn!(
                "{what} reports epoch {epoch}, ahead of our {}; adopting it",
                self.epoch(cluster)
            );
            self.set_epoch(cluster, epoch);
        }

        let role = self.decide_role(key, was_alive, claimed, epoch, now);
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
            in_service: false,
            role: role as i32,
            epoch: self.epoch(cluster),
            peer: self.peer_of(key, role),
            clusters: self.clusters,
        })
    }

    /// Applies the role rules of the module docs to the server `key`, which
    /// has just heartbeated (its entry is already alive).
    fn decide_role(
        &mut self,
        key: Key,
        was_alive: bool,
        claimed: Role,
        claimed_epoch: u64,
        now: Instant,
    ) -> Role {
        let (_, cluster, _) = key;
        let current = self.epoch(cluster);
        let me_master = self
            .entries
            .get(&key)
            .is_some_and(|e| e.role == Role::Master);
        if was_alive && me_master {
            return Role::Master;
        }
        let other_alive_master = self
            .servers_of(cluster)
            .any(|(k, e)| k != key && e.alive && e.role == Role::Master);
        let role = if other_alive_master {
            Role::Slave
        } else if claimed == Role::Slave
            && current > 0
            && claimed_epoch == current
            && self.in_grace(now)
        {
            // Just restarted: this slave's master has probably not
            // heartbeated yet. Wait for it; the checker promotes later.
            Role::Slave
        } else {
            let claim_ok = claimed == Role::Master && current > 0 && claimed_epoch == current;
            self.make_master(key, claim_ok);
            Role::Master
        };
        if let Some(e) = self.entries.get_mut(&key) {
            e.role = role;
        }
        role
    }

    /// Makes `key` the master of its cluster, demoting any recorded (dead)
    /// master and raising the epoch when the identity of the master changes.
    /// `claim_ok`: the server claims MASTER at the current epoch, which after a
    /// restart of the coordinator means it already is the master.
    fn make_master(&mut self, key: Key, claim_ok: bool) {
        let (_, cluster, server) = key;
        let me_master = self
            .entries
            .get(&key)
            .is_some_and(|e| e.role == Role::Master);
        let recorded: Option<Key> = self
            .servers_of(cluster)
            .find(|(k, e)| *k != key && e.role == Role::Master)
            .map(|(k, _)| k);
        if me_master {
            // It was the master, was declared dead and nobody took over: it
            // is still the master of the current epoch.
            return;
        }
        if recorded.is_none() && claim_ok {
            log::info!(
                "cluster {cluster} server {server} accepted as master of epoch {} (as it claims)",
                self.epoch(cluster)
            );
        } else {
            let epoch = self.epoch(cluster).saturating_add(1);
            self.set_epoch(cluster, epoch);
            match recorded {
                Some(old) => log::info!(
                    "cluster {cluster}: server {server} takes over from server {} as master, epoch {epoch}",
                    old.2
                ),
                None => log::info!("cluster {cluster}: server {server} is master, epoch {epoch}"),
            }
        }
        if let Some(old) = recorded.and_then(|k| self.entries.get_mut(&k)) {
            old.role = Role::Slave;
        }
        if let Some(e) = self.entries.get_mut(&key) {
            e.role = Role::Master;
        }
    }

    /// Periodic failure detection: marks silent entries dead and promotes a
    /// slave in every cluster left without an alive master. The caller must
    /// persist [`Table::unsaved`] afterwards.
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
                continue;
            }
            // The freshest slave is the most likely to still be alive.
            let candidate = self
                .servers_of(cluster)
                .filter(|(_, e)| e.alive && e.role == Role::Slave)
                .max_by_key(|(k, e)| (e.last, std::cmp::Reverse(k.2)))
                .map(|(k, _)| k);
            if let Some(key) = candidate {
                log::info!(
                    "cluster {cluster} has no alive master: promoting slave server {}",
                    key.2
                );
                self.make_master(key, false);
            }
        }
    }

    /// Server entries of one cluster.
    fn servers_of(&self, cluster: u32) -> impl Iterator<Item = (Key, &Entry)> {
        self.entries
            .range((Kind::Server, cluster, 0)..=(Kind::Server, cluster, u32::MAX))
            .map(|(k, e)| (*k, e))
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
        chosen.map(|(k, e)| info_of(k, e, None))
    }

    /// The alive master of a cluster.
    pub fn master_of(&self, cluster: u32) -> Option<ServerInfo> {
        self.servers_of(cluster)
            .find(|(_, e)| e.alive && e.role == Role::Master)
            .map(|(k, e)| info_of(k, e, None))
    }

    /// The alive synchronizer of a cluster (the freshest if several).
    pub fn synchronizer_of(&self, cluster: u32) -> Option<ServerInfo> {
        self.entries
            .range((Kind::Synchronizer, cluster, 0)..=(Kind::Synchronizer, cluster, u32::MAX))
            .filter(|(_, e)| e.alive)
            .max_by_key(|(_, e)| e.last)
            .map(|(k, e)| info_of(*k, e, None))
    }

    /// Every alive synchronizer, by cluster.
    pub fn synchronizers(&self) -> Vec<ServerInfo> {
        self.entries
            .iter()
            .filter(|(k, e)| k.0 == Kind::Synchronizer && e.alive)
            .map(|(k, e)| info_of(*k, e, None))
            .collect()
    }

    /// Every entry, alive or not, with the age of its last heartbeat.
    pub fn all(&self, now: Instant) -> Vec<ServerInfo> {
        self.entries
            .iter()
            .map(|(k, e)| info_of(*k, e, Some(now)))
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

/// The wire form of an entry; `now` fills in the heartbeat age (GetTable).
fn info_of(key: Key, e: &Entry, now: Option<Instant>) -> ServerInfo {
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
        in_service: false,
    }
}

/// Reads `<dir>/epochs.txt`. A missing file means every epoch is 0; anything
/// unreadable or malformed is an error, because resetting epochs would let a
/// deposed master look current again.
fn load_epochs(dir: &Path) -> io::Result<BTreeMap<u32, u64>> {
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
    let mut epochs = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}:{}: {why} in {line:?} (expected `<cluster> <epoch>`); \
                     refusing to start rather than reset the epochs: fix or remove the file",
                    path.display(),
                    n + 1
                ),
            )
        };
        let mut fields = line.split_whitespace();
        let (Some(c), Some(e), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(bad("wrong number of fields"));
        };
        let cluster: u32 = c.parse().map_err(|_| bad("bad cluster id"))?;
        let epoch: u64 = e.parse().map_err(|_| bad("bad epoch"))?;
        if cluster == 0 {
            return Err(bad("cluster 0"));
        }
        if epochs.insert(cluster, epoch).is_some() {
            return Err(bad("duplicate cluster"));
        }
    }
    Ok(epochs)
}

/// Writes the epochs atomically and durably (see [`EpochSnapshot::write`]).
fn write_epochs(dir: &Path, epochs: &BTreeMap<u32, u64>) -> io::Result<()> {
    let mut text = String::new();
    for (c, e) in epochs {
        let _ = writeln!(text, "{c} {e}");
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

/// Writes pending epochs off the async threads. Called with the table locked,
/// so no other reply can announce an epoch before it is on disk.
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
        let mut table = self.table.lock().await;
        let reply = table.heartbeat(&info, req.epoch, Instant::now())?;
        if let Err(e) = persist(&mut table).await {
            log::error!("cannot persist epochs: {e}");
            return Err(Status::unavailable(format!("cannot persist epochs: {e}")));
        }
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

/// The failure checker: runs [`Table::check`] every heartbeat/4 (at least
/// 5 ms) and persists any epoch a promotion raised. A failed write is retried
/// on the next tick; heartbeats will not announce the epoch until it succeeds.
async fn failure_checker(table: Arc<Mutex<Table>>, heartbeat: Duration) {
    let period = (heartbeat / 4).clamp(Duration::from_millis(5), Duration::from_secs(3600));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut t = table.lock().await;
        t.check(Instant::now());
        if let Err(e) = persist(&mut t).await {
            log::error!("cannot persist epochs (will retry): {e}");
        }
    }
}

/// Serves the coordinator on `listener` until `shutdown` completes.
///
/// Fails at start-up if the state directory cannot be created or its epoch
/// file is unreadable or malformed.
pub async fn run(
    listener: tokio::net::TcpListener,
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
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
        "coordinator on {}: {} clusters, heartbeat {} ms, state in {}, epochs {:?}",
        listener
            .local_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string()),
        table.clusters(),
        opts.heartbeat.as_millis(),
        opts.state_dir.display(),
        table.epochs
    );
    let table = Arc::new(Mutex::new(table));
    let checker = tokio::spawn(failure_checker(table.clone(), opts.heartbeat));
    let result = tonic::transport::Server::builder()
        .add_service(CoordinatorServer::new(Service { table }))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
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

    fn hb(t: &mut Table, info: &ServerInfo, epoch: u64, now: Instant) -> HeartbeatReply {
        let reply = t.heartbeat(info, epoch, now).expect("valid heartbeat");
        t.save().expect("save epochs");
        reply
    }

    fn role(r: &HeartbeatReply) -> Role {
        Role::try_from(r.role).expect("valid role")
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
        let peer = r2.peer.expect("slave sees its master");
        assert_eq!((peer.server_id, peer.role), (1, Role::Master as i32));
        let r1 = hb(&mut t, &server(1, 1, Role::Master), 1, t0 + HB);
        assert_eq!(role(&r1), Role::Master);
        assert_eq!(r1.peer.expect("master sees its slave").server_id, 2);
        assert_eq!(t.master_of(1).expect("master").server_id, 1);
        assert!(t.master_of(2).is_none());
        // Other clusters are independent.
        assert_eq!(
            role(&hb(&mut t, &server(2, 2, Role::None), 0, t0)),
            Role::Master
        );
        assert_eq!(t.epoch(2), 1);
        assert_eq!(t.epoch(3), 0);
    }

    #[test]
    fn master_timeout_promotes_slave_and_old_master_returns_as_slave() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = Instant::now();
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        hb(&mut t, &server(1, 1, Role::None), 0, t0);
        hb(&mut t, &server(1, 2, Role::None), 0, t0);
        // Past the start-up grace window both are alive; then only the slave
        // keeps heartbeating.
        let t1 = t0 + HB * 3;
        hb(&mut t, &server(1, 1, Role::Master), 1, t1);
        hb(&mut t, &server(1, 2, Role::Slave), 1, t1);
        hb(&mut t, &server(1, 2, Role::Slave), 1, t1 + HB * 2);
        t.check(t1 + HB * 2);
        assert_eq!(t.master_of(1).expect("still master").server_id, 1);
        t.check(t1 + HB * 2 + HB / 2);
        t.save().expect("save");
        let m = t.master_of(1).expect("promoted");
        assert_eq!(m.server_id, 2);
        assert_eq!(t.epoch(1), 2);
        let r2 = hb(&mut t, &server(1, 2, Role::Slave), 1, t1 + HB * 3);
        assert_eq!((role(&r2), r2.epoch), (Role::Master, 2));
        // The old master comes back: it is now a slave of the new epoch.
        let r1 = hb(&mut t, &server(1, 1, Role::Master), 1, t1 + HB * 3);
        assert_eq!((role(&r1), r1.epoch), (Role::Slave, 2));
        assert_eq!(r1.peer.expect("peer").server_id, 2);
        assert_eq!(t.master_of(1).expect("master").server_id, 2);
        let table = t.all(t1 + HB * 3);
        assert_eq!(table.len(), 2);
        assert!(table.iter().all(|e| e.alive));
    }

    #[test]
    fn dead_master_without_slave_keeps_epoch_when_it_returns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = Instant::now();
        let mut t = Table::load(1, HB, dir.path(), t0).expect("load");
        hb(&mut t, &server(1, 1, Role::None), 0, t0);
        t.check(t0 + HB * 3);
        assert!(t.master_of(1).is_none());
        let r = hb(&mut t, &server(1, 1, Role::None), 1, t0 + HB * 4);
        assert_eq!((role(&r), r.epoch), (Role::Master, 1));
        // But a different server taking over a dead master's cluster raises it.
        t.check(t0 + HB * 7);
        let r = hb(&mut t, &server(1, 2, Role::None), 0, t0 + HB * 8);
        assert_eq!((role(&r), r.epoch), (Role::Master, 2));
        let r = hb(&mut t, &server(1, 1, Role::Master), 1, t0 + HB * 8);
        assert_eq!((role(&r), r.epoch), (Role::Slave, 2));
    }

    #[test]
    fn epochs_survive_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = Instant::now();
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        hb(&mut t, &server(1, 1, Role::None), 0, t0);
        hb(&mut t, &server(1, 2, Role::None), 0, t0);
        hb(&mut t, &server(3, 1, Role::None), 0, t0);
        let t1 = t0 + HB * 3;
        hb(&mut t, &server(1, 2, Role::Slave), 1, t1);
        t.check(t1 + HB);
        t.save().expect("save");
        assert_eq!(t.epoch(1), 2);

        let text = std::fs::read_to_string(dir.path().join(EPOCH_FILE)).expect("epoch file");
        assert_eq!(text, "1 2\n2 0\n3 1\n");
        let again = Table::load(3, HB, dir.path(), Instant::now()).expect("reload");
        assert_eq!((again.epoch(1), again.epoch(2), again.epoch(3)), (2, 0, 1));
        assert!(again.all(Instant::now()).is_empty());
        // Clusters beyond N are kept, not forgotten.
        let mut fewer = Table::load(1, HB, dir.path(), Instant::now()).expect("reload");
        assert_eq!(fewer.epoch(3), 1);
        hb(&mut fewer, &server(1, 5, Role::None), 0, Instant::now());
        let again = Table::load(3, HB, dir.path(), Instant::now()).expect("reload");
        assert_eq!((again.epoch(1), again.epoch(3)), (3, 1));
    }

    #[test]
    fn restarted_coordinator_accepts_claimed_master() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(EPOCH_FILE), "1 4\n2 1\n").expect("write");
        let t0 = Instant::now();
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        // The healthy master heartbeats first: no change, no new epoch.
        let r = hb(&mut t, &server(1, 2, Role::Master), 4, t0);
        assert_eq!((role(&r), r.epoch), (Role::Master, 4));
        let r = hb(&mut t, &server(1, 1, Role::Slave), 4, t0);
        assert_eq!((role(&r), r.epoch), (Role::Slave, 4));
        // A master with a stale epoch is not believed.
        let r = hb(&mut t, &server(2, 1, Role::Master), 0, t0);
        assert_eq!((role(&r), r.epoch), (Role::Master, 2));
    }

    #[test]
    fn restarted_coordinator_waits_for_master_before_promoting_slave() {
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

        // Same start, but the master never comes: promoted after the window.
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        hb(&mut t, &server(1, 1, Role::Slave), 4, t0);
        hb(&mut t, &server(1, 1, Role::Slave), 4, t0 + HB * 2);
        t.check(t0 + HB * 2 + HB / 2);
        t.save().expect("save");
        assert_eq!(t.master_of(1).expect("promoted").server_id, 1);
        assert_eq!(t.epoch(1), 5);
        // A fresh process (no role) is not held back.
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        let r = hb(&mut t, &server(1, 2, Role::None), 0, t0);
        assert_eq!((role(&r), r.epoch), (Role::Master, 6));
    }

    #[test]
    fn higher_epoch_from_a_server_is_adopted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = Instant::now();
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        let r = hb(&mut t, &server(1, 1, Role::Master), 7, t0);
        assert_eq!((role(&r), r.epoch), (Role::Master, 7));
        let again = Table::load(3, HB, dir.path(), t0).expect("reload");
        assert_eq!(again.epoch(1), 7);
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
        for info in bad {
            let err = t.heartbeat(&info, 0, t0).expect_err("rejected");
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
        assert_eq!(all[0].last_heartbeat_ms_ago, 300);
    }

    #[test]
    fn epoch_file_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = Instant::now();
        assert_eq!(
            Table::load(3, HB, dir.path(), t0)
                .expect("missing")
                .epoch(1),
            0
        );
        for bad in ["1\n", "1 2 3\n", "x 1\n", "1 -1\n", "0 1\n", "1 1\n1 2\n"] {
            std::fs::write(dir.path().join(EPOCH_FILE), bad).expect("write");
            let err = Table::load(3, HB, dir.path(), t0).expect_err(bad);
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
        std::fs::write(dir.path().join(EPOCH_FILE), "\n1 3\n\n").expect("write");
        assert_eq!(Table::load(3, HB, dir.path(), t0).expect("ok").epoch(1), 3);
    }
}
