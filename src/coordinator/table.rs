//! [`Table`]: the routing table and the cluster states as a pure state
//! machine. The rules it applies are the module doc of
//! [`crate::coordinator`]; every method that depends on time takes `now`, so
//! the unit tests below drive it without a network or a clock. Its only I/O
//! is loading and saving the state file, for which the service asks it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::state_file::{self, ClusterState, StateSnapshot, States};
use crate::error::Error;
use crate::model::{RunId, ServerId};
use crate::proto::tinysns::{
    ClusterEpoch, HeartbeatReply, Kind, Role, ServerInfo, ServerList, TableEvent,
};

/// Longest hostname accepted from a heartbeat (the DNS limit).
const MAX_HOSTNAME: usize = 253;

/// Highest server id accepted. A cluster is a master and its slave, so ids
/// are small; the bound keeps a peer from filling the table (and every
/// `GetTable`) with entries.
pub const MAX_SERVER_ID: u32 = 1000;

/// Key of a table entry: kind, cluster, id (a synchronizer's id is its
/// cluster's). Ordered so that `GetTable` lists servers first, by cluster and
/// id.
type Key = (Kind, u32, ServerId);

/// One registered process.
#[derive(Debug, Clone)]
struct Entry {
    hostname: String,
    port: u32,
    /// The process's random start number, if it sends one.
    process: Option<RunId>,
    role: Role,
    /// The role the process claimed in its last heartbeat: a process claims
    /// NONE only until its first heartbeat is answered.
    claimed: Role,
    alive: bool,
    last: Instant,
    /// A synchronizer's full cycles, as its last heartbeat said.
    full_cycles: u64,
    /// What its last heartbeat said of itself: the epoch it holds, a
    /// synchronizer's backlog, its HTTP port. Shown, never acted on.
    epoch: u64,
    behind: u64,
    lag_ms: u64,
    http_port: u32,
}

/// A heartbeat whose fields have been checked.
struct Beat<'a> {
    key: Key,
    hostname: &'a str,
    port: u32,
    process: Option<RunId>,
    full_cycles: u64,
    behind: u64,
    lag_ms: u64,
    http_port: u32,
    /// The role the process believes it has.
    claimed: Role,
    /// The epoch the process holds.
    epoch: u64,
    /// A master's report: its in-service slave (`None`: it has none)...
    in_service_slave: Option<ServerId>,
    /// ...and the run of that slave which joined.
    in_service_process: Option<RunId>,
    /// A registering server without its data.
    empty: bool,
}

/// What the table knew of a process before its heartbeat.
struct Seen {
    known: bool,
    was_alive: bool,
    moved: bool,
    old_role: Role,
}

impl Seen {
    /// What a heartbeat tells the log: registrations, returns and address
    /// changes go to info; a plain heartbeat (`None`) only to debug.
    fn news(&self) -> Option<&'static str> {
        if self.was_alive && !self.moved {
            return None;
        }
        Some(match (self.known, self.moved) {
            (false, _) => "registered",
            (true, true) => "moved",
            (true, false) => "is back",
        })
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
    states: States,
    /// The states changed since they were last written.
    dirty: bool,
    /// Clusters for which "no master, nobody to promote" was already logged
    /// (one warning per outage, not one per check).
    waiting: BTreeSet<u32>,
    /// What happened lately, oldest first, at most [`MAX_EVENTS`]: for the
    /// dashboard and `snsctl`, never read by the rules.
    events: VecDeque<Event>,
    /// The latest `now` a method was given: the time of events noticed
    /// deep inside a step.
    last_now: Instant,
}

/// Most events the table keeps.
pub const MAX_EVENTS: usize = 200;

/// Something the table saw happen.
#[derive(Debug, Clone)]
struct Event {
    at: Instant,
    cluster: u32,
    /// 0: the cluster, or its synchronizer.
    server: u32,
    kind: &'static str,
    text: String,
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
        let states = state_file::load(state_dir)?;
        Ok(Table {
            clusters: clusters.max(1),
            window: heartbeat.saturating_mul(2),
            started: now,
            state_dir: state_dir.to_path_buf(),
            entries: BTreeMap::new(),
            states,
            dirty: false,
            waiting: BTreeSet::new(),
            events: VecDeque::new(),
            last_now: now,
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

    /// Records `slave` as the in-service slave of `cluster` (`None`: there
    /// is none), logging the change and why.
    fn set_in_service(&mut self, cluster: u32, slave: Option<ServerId>, why: &str) {
        let old = self.state(cluster).in_service;
        if old == slave {
            return;
        }
        if let Some(old) = old {
            log::info!("cluster {cluster}: server {old} is out of service ({why})");
            self.event(
                cluster,
                old.0,
                "out_of_service",
                format!("server {old} out of service ({why})"),
            );
        }
        if let Some(slave) = slave {
            log::info!("cluster {cluster}: server {slave} is in service ({why})");
            self.event(
                cluster,
                slave.0,
                "in_service",
                format!("server {slave} in service: it holds every write ({why})"),
            );
        }
        self.update(cluster, |st| st.in_service = slave);
    }

    /// Keeps an event, forgetting the oldest beyond [`MAX_EVENTS`]. Its
    /// time is the latest `now` the table was given.
    fn event(&mut self, cluster: u32, server: u32, kind: &'static str, text: String) {
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            at: self.last_now,
            cluster,
            server,
            kind,
            text,
        });
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
            StateSnapshot::new(self.state_dir.clone(), states)
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
    /// `info.hostname` must already be filled in; `epoch` and the in-service
    /// report are the request's, with the wire's 0 already read as `None`.
    /// The caller must persist [`Table::unsaved`] before sending the reply.
    pub fn heartbeat(
        &mut self,
        info: &ServerInfo,
        epoch: u64,
        in_service_slave: Option<ServerId>,
        in_service_process: Option<RunId>,
        now: Instant,
    ) -> Result<HeartbeatReply, Error> {
        self.heartbeat_of(
            info,
            epoch,
            in_service_slave,
            in_service_process,
            false,
            now,
        )
    }

    /// [`Table::heartbeat`] from a server that may say it came back with
    /// an empty directory (`empty`, only heard while it claims NONE).
    pub fn heartbeat_of(
        &mut self,
        info: &ServerInfo,
        epoch: u64,
        in_service_slave: Option<ServerId>,
        in_service_process: Option<RunId>,
        empty: bool,
        now: Instant,
    ) -> Result<HeartbeatReply, Error> {
        let mut beat = self.validate(info, epoch, in_service_slave, in_service_process)?;
        beat.empty = empty && beat.claimed == Role::None;
        self.last_now = self.last_now.max(now);
        let seen = self.record(&beat, now);
        if let Some(news) = seen.news() {
            let (kind, cluster, ServerId(id)) = beat.key;
            let (server, what) = match kind {
                Kind::Server => (id, format!("server {id}")),
                Kind::Synchronizer => (0, "synchronizer".to_string()),
            };
            let kind = if news == "is back" {
                "back"
            } else {
                "registered"
            };
            self.event(
                cluster,
                server,
                kind,
                format!("{what} {news} at {}:{}", beat.hostname, beat.port),
            );
        }
        if beat.key.0 == Kind::Synchronizer {
            return Ok(self.synchronizer_heartbeat(&beat, &seen));
        }
        self.forget_restarted_in_service(&beat, &seen);
        let role = self.decide_role(beat.key, beat.claimed, beat.epoch, beat.empty, now);
        self.take_in_service_report(&beat, role);
        self.log_server_heartbeat(&beat, &seen, role);
        Ok(self.reply(beat.key, role))
    }

    /// Checks a heartbeat's fields: anything the table cannot place is
    /// refused, and changes nothing.
    fn validate<'a>(
        &self,
        info: &'a ServerInfo,
        epoch: u64,
        in_service_slave: Option<ServerId>,
        in_service_process: Option<RunId>,
    ) -> Result<Beat<'a>, Error> {
        let kind = Kind::try_from(info.kind)
            .map_err(|_| Error::Invalid(format!("unknown kind {}", info.kind)))?;
        let claimed = Role::try_from(info.role)
            .map_err(|_| Error::Invalid(format!("unknown role {}", info.role)))?;
        let cluster = info.cluster_id;
        if cluster == 0 || cluster > self.clusters {
            return Err(Error::Invalid(format!(
                "cluster_id {cluster} is outside 1..={}",
                self.clusters
            )));
        }
        let id = match ServerId::from_wire(info.server_id) {
            Some(id) if id.0 <= MAX_SERVER_ID => id,
            _ => {
                return Err(Error::Invalid(format!(
                    "server_id {} is outside 1..={MAX_SERVER_ID}",
                    info.server_id
                )));
            }
        };
        if info.port == 0 || info.port > u32::from(u16::MAX) {
            return Err(Error::Invalid(format!(
                "port must be in 1..=65535, got {}",
                info.port
            )));
        }
        if info.http_port > u32::from(u16::MAX) {
            return Err(Error::Invalid(format!(
                "http_port must be in 0..=65535, got {}",
                info.http_port
            )));
        }
        let hostname = info.hostname.trim();
        if hostname.is_empty()
            || hostname.len() > MAX_HOSTNAME
            || hostname
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control())
        {
            return Err(Error::Invalid(format!(
                "invalid hostname {:?}",
                info.hostname
            )));
        }
        let beat = Beat {
            key: (kind, cluster, id),
            hostname,
            port: info.port,
            process: RunId::from_wire(info.process),
            full_cycles: info.full_cycles,
            behind: info.behind,
            lag_ms: info.lag_ms,
            http_port: info.http_port,
            claimed,
            epoch,
            in_service_slave,
            in_service_process,
            empty: false,
        };
        match kind {
            Kind::Synchronizer => Self::validate_synchronizer(&beat)?,
            Kind::Server => self.validate_server(&beat)?,
        }
        Ok(beat)
    }

    /// A synchronizer is keyed by its cluster and has no role, epoch or
    /// slave: it sends none.
    fn validate_synchronizer(beat: &Beat<'_>) -> Result<(), Error> {
        let (_, cluster, id) = beat.key;
        if id.0 != cluster {
            return Err(Error::Invalid(format!(
                "synchronizer {id} must have its cluster's id ({cluster})"
            )));
        }
        if beat.claimed != Role::None
            || beat.epoch != 0
            || beat.in_service_slave.is_some()
            || beat.in_service_process.is_some()
        {
            return Err(Error::Invalid(
                "a synchronizer claims no role, epoch or in-service slave".into(),
            ));
        }
        Ok(())
    }

    /// What a server's heartbeat may say, given what the table knows: the
    /// claims a real server makes, and nothing else (see *Peer input* in the
    /// module doc of [`crate::coordinator`]).
    fn validate_server(&self, beat: &Beat<'_>) -> Result<(), Error> {
        let (_, cluster, _) = beat.key;
        let what = describe(beat.key);
        // Epochs are ours to issue: a server holds only what we told it.
        let issued = self.epoch(cluster);
        if beat.epoch > issued {
            return Err(Error::Invalid(format!(
                "{what} claims epoch {}, above the {issued} this coordinator issued \
                 (was {} lost or rolled back? restore it rather than lower the servers' epochs)",
                beat.epoch,
                super::EPOCH_FILE
            )));
        }
        let Some(entry) = self.entries.get(&beat.key) else {
            return Ok(()); // first heard of (also after our own restart)
        };
        match (entry.process, beat.process) {
            // A server that sent its run once sends it always.
            (Some(_), None) => Err(Error::Invalid(format!(
                "{what} sent its run before and none now"
            ))),
            // A new run registers first (claims NONE); a role claimed by
            // another run than the live one is not that server's.
            (Some(known), Some(run))
                if run != known && entry.alive && beat.claimed != Role::None =>
            {
                Err(Error::Invalid(format!(
                    "{what} claims {} from a run that has not registered",
                    beat.claimed.as_str_name()
                )))
            }
            // A run claims NONE only until its first heartbeat is answered:
            // after that it holds the role we gave it.
            (Some(known), Some(run))
                if run == known && beat.claimed == Role::None && entry.claimed != Role::None =>
            {
                Err(Error::Invalid(format!(
                    "{what} claims no role after it has claimed {}; a restart is a new run",
                    entry.claimed.as_str_name()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Finds or creates the process's entry and marks it alive, keeping its
    /// role for [`Table::decide_role`]; returns what was known before.
    fn record(&mut self, beat: &Beat<'_>, now: Instant) -> Seen {
        let previous = self.entries.get(&beat.key);
        let seen = Seen {
            known: previous.is_some(),
            was_alive: previous.is_some_and(|e| e.alive),
            moved: previous.is_some_and(|e| e.hostname != beat.hostname || e.port != beat.port),
            old_role: previous.map_or(Role::None, |e| e.role),
        };
        self.entries.insert(
            beat.key,
            Entry {
                hostname: beat.hostname.to_string(),
                port: beat.port,
                process: beat.process,
                role: seen.old_role,
                claimed: beat.claimed,
                alive: true,
                last: now,
                full_cycles: beat.full_cycles,
                epoch: beat.epoch,
                behind: beat.behind,
                lag_ms: beat.lag_ms,
                http_port: beat.http_port,
            },
        );
        seen
    }

    /// A synchronizer has no role and no epoch: it only needs to be found.
    fn synchronizer_heartbeat(&self, beat: &Beat<'_>, seen: &Seen) -> HeartbeatReply {
        let what = describe(beat.key);
        match seen.news() {
            Some(news) => log::info!("{what} {news} at {}:{}", beat.hostname, beat.port),
            None => log::debug!("heartbeat from {what}"),
        }
        HeartbeatReply {
            role: Role::None as i32,
            epoch: 0,
            peer: None,
            in_service: false,
            clusters: self.clusters,
        }
    }

    /// A fresh process is not in service, whatever was recorded; after a
    /// restart of the coordinator the recorded in-service slave must show
    /// it is the same process, still the slave of the current epoch.
    fn forget_restarted_in_service(&mut self, beat: &Beat<'_>, seen: &Seen) {
        let (_, cluster, id) = beat.key;
        if self.state(cluster).in_service != Some(id) {
            return;
        }
        let current = self.epoch(cluster);
        let (claimed, epoch) = (beat.claimed, beat.epoch);
        // The first heartbeat this coordinator hears from it.
        let first = !seen.known;
        let still_its_slave = claimed == Role::Slave && epoch == current;
        if claimed == Role::None {
            self.set_in_service(cluster, None, &format!("server {id} restarted"));
        } else if first && !still_its_slave {
            self.set_in_service(
                cluster,
                None,
                &format!(
                    "server {id} claims {} at epoch {epoch}, not SLAVE at epoch {current}",
                    claimed.as_str_name()
                ),
            );
        }
    }

    /// The master's report of its in-service slave, believed only from the
    /// master of the current epoch.
    fn take_in_service_report(&mut self, beat: &Beat<'_>, role: Role) {
        let (_, cluster, id) = beat.key;
        let what = describe(beat.key);
        if role != Role::Master || beat.epoch != self.epoch(cluster) {
            if let Some(slave) = beat.in_service_slave {
                log::debug!(
                    "{what} ({} at epoch {}, current {}) reports in-service slave \
                     {slave}: ignored, not the current master",
                    role.as_str_name(),
                    beat.epoch,
                    self.epoch(cluster)
                );
            }
            return;
        }
        let Some(slave) = beat.in_service_slave else {
            self.set_in_service(cluster, None, &format!("reported by master {id}"));
            return;
        };
        if slave == id {
            // A master that does not know its slave has none.
            log::warn!("{what} reports itself as its in-service slave");
            self.set_in_service(cluster, None, &format!("master {id} named itself"));
            return;
        }
        // A slave we have not heard from (it registers before it can join,
        // so at most one heartbeat after our own restart): the report says
        // nothing we can check, and what we recorded stands.
        let Some(registered) = self.entries.get(&(Kind::Server, cluster, slave)) else {
            log::debug!("{what} reports unregistered server {slave} in service; ignored");
            return;
        };
        let slave = match (beat.in_service_process, registered.process) {
            // The master took in an earlier run of that slave, which has
            // restarted since (maybe with an empty directory) and not yet
            // joined again: it is not in service.
            (Some(reported), Some(registered)) if reported != registered => {
                log::debug!("{what} reports an earlier run of server {slave} in service");
                None
            }
            // A slave joins with its run, so its master always knows it: a
            // report without it is not one a master makes, and changes
            // nothing.
            (None, Some(_)) => {
                log::debug!("{what} reports server {slave} in service without its run; ignored");
                return;
            }
            _ => Some(slave),
        };
        self.set_in_service(cluster, slave, &format!("reported by master {id}"));
    }

    fn log_server_heartbeat(&self, beat: &Beat<'_>, seen: &Seen, role: Role) {
        let what = describe(beat.key);
        let epoch = self.epoch(beat.key.1);
        if let Some(news) = seen.news() {
            log::info!(
                "{what} {news} at {}:{} as {} (epoch {epoch})",
                beat.hostname,
                beat.port,
                role.as_str_name(),
            );
        } else if seen.old_role != role {
            log::info!(
                "{what}: {} -> {} (epoch {epoch})",
                seen.old_role.as_str_name(),
                role.as_str_name(),
            );
        } else {
            log::debug!("heartbeat from {what} ({})", role.as_str_name());
        }
    }

    /// What a server is told: its role, the epoch, its peer, and (a slave)
    /// whether it is in service.
    fn reply(&self, key: Key, role: Role) -> HeartbeatReply {
        let (_, cluster, id) = key;
        HeartbeatReply {
            in_service: role == Role::Slave && self.state(cluster).in_service == Some(id),
            role: role as i32,
            epoch: self.epoch(cluster),
            peer: self.peer_of(key, role),
            clusters: self.clusters,
        }
    }

    /// Applies the role rules of the module docs to the server `key`, which
    /// has just heartbeated (its entry is already alive).
    fn decide_role(
        &mut self,
        key: Key,
        claimed: Role,
        claimed_epoch: u64,
        empty: bool,
        now: Instant,
    ) -> Role {
        let (_, cluster, id) = key;
        let st = self.state(cluster);
        let me_master = self
            .entries
            .get(&key)
            .is_some_and(|e| e.role == Role::Master);
        let other_alive_master = self
            .servers_of(cluster)
            .any(|(k, e)| k != key && e.alive && e.role == Role::Master);
        let role = if me_master || (!other_alive_master && st.master == Some(id)) {
            // The master of the cluster (in the table, or recorded before a
            // restart of the coordinator).
            self.master_heartbeats(key, claimed, st.epoch, empty, now)
        } else if other_alive_master {
            Role::Slave
        } else {
            match st.master {
                None => self.decide_unknown_master(key, claimed, claimed_epoch, now),
                Some(master) if st.in_service == Some(id) && !self.in_grace(now) => {
                    log::info!(
                        "cluster {cluster}: master server {master} is down; promoting \
                         in-service slave server {id}"
                    );
                    self.make_master(key, false);
                    Role::Master
                }
                // The master is down (or has not heartbeated since our
                // restart) and this server may lack acknowledged writes:
                // wait for it.
                Some(_) => Role::Slave,
            }
        };
        if let Some(e) = self.entries.get_mut(&key) {
            e.role = role;
        }
        role
    }

    /// The role of the cluster's master when it heartbeats: master, unless it
    /// is a fresh process (NONE) and an alive in-service slave can take over
    /// (see *Restarted master*).
    ///
    /// A coordinator that has just restarted has not heard from anyone yet:
    /// an in-service slave it has not heard from is not known to be down.
    /// So within its start-up window a restarted master hands over to the
    /// recorded in-service slave all the same, before that slave's first
    /// heartbeat, and waits as slave for it: the restarted master may have
    /// come back without its directory, and keeping it master would have
    /// the slave resync from an empty directory (found by `bench chaos`: a
    /// master killed with its directory deleted, the coordinator killed
    /// right after). Should that slave be down too (two failures), the
    /// cluster waits for it, as for any master that is down.
    ///
    /// A restarted master that comes back with an empty directory (it was
    /// reset) never stays master over an alive slave, in service or not:
    /// the slave may lack what the master acknowledged alone since it left
    /// service, but that is gone with the directory either way, and the
    /// slave has everything before (found by `bench chaos`: the slave went
    /// out of service after a coordinator pause, the master was killed with
    /// its directory deleted, and the slave resynced from the empty one).
    fn master_heartbeats(
        &mut self,
        key: Key,
        claimed: Role,
        epoch: u64,
        empty: bool,
        now: Instant,
    ) -> Role {
        let (_, cluster, id) = key;
        let heir = if claimed == Role::None {
            self.alive_in_service_slave(cluster)
                .or_else(|| self.unheard_in_service_slave(cluster, now))
                .or_else(|| empty.then(|| self.alive_slave(cluster, id)).flatten())
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
            return Role::Slave;
        }
        if claimed == Role::None && epoch > 0 {
            log::info!(
                "cluster {cluster}: master server {id} restarted; it stays master \
                 (no alive in-service slave)"
            );
        }
        self.make_master(key, true);
        Role::Master
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

    /// An alive server of the cluster other than `me`, in service or not.
    fn alive_slave(&self, cluster: u32, me: ServerId) -> Option<Key> {
        self.servers_of(cluster)
            .find(|(k, e)| k.2 != me && e.alive)
            .map(|(k, _)| k)
    }

    /// The recorded in-service slave of a cluster while this coordinator is
    /// in its start-up window and has not heard from it yet.
    fn unheard_in_service_slave(&self, cluster: u32, now: Instant) -> Option<Key> {
        let key = (Kind::Server, cluster, self.state(cluster).in_service?);
        let heard = self.entries.get(&key).is_some_and(|e| e.alive);
        (self.in_grace(now) && !heard).then_some(key)
    }

    /// The in-service slave of a cluster if it is alive (and a slave).
    fn alive_in_service_slave(&self, cluster: u32) -> Option<Key> {
        let key = (Kind::Server, cluster, self.state(cluster).in_service?);
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
            if old == Some(id) {
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
            match old {
                Some(old) if old != id => log::info!(
                    "cluster {cluster}: server {id} takes over from server {old} as master, \
                     epoch {epoch}"
                ),
                _ => log::info!("cluster {cluster}: server {id} is master, epoch {epoch}"),
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
        if old != Some(id) {
            let epoch = self.epoch(cluster);
            self.event(
                cluster,
                id.0,
                "promoted",
                match old {
                    Some(old) => {
                        format!("server {id} takes over from server {old}: master, epoch {epoch}")
                    }
                    None => format!("server {id} is master, epoch {epoch}"),
                },
            );
            crate::ops::metrics::metrics().promotions.inc();
            // A new master has no in-service slave until it reports one (the
            // promoted slave was the in-service one; the old master is not).
            self.update(cluster, |st| {
                st.master = Some(id);
                st.in_service = None;
            });
        }
        self.waiting.remove(&cluster);
    }

    /// Periodic failure detection: marks silent entries dead and promotes the
    /// in-service slave in every cluster left without an alive master. The
    /// caller must persist [`Table::unsaved`] afterwards.
    pub fn check(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        let mut failed = Vec::new();
        for (&key, e) in self.entries.iter_mut() {
            if e.alive && now.saturating_duration_since(e.last) > self.window {
                e.alive = false;
                log::info!("{} declared failed", describe(key));
                failed.push(key);
            }
        }
        for (kind, cluster, ServerId(id)) in failed {
            let (server, what) = match kind {
                Kind::Server => (id, format!("server {id}")),
                Kind::Synchronizer => (0, "synchronizer".to_string()),
            };
            self.event(
                cluster,
                server,
                "failed",
                format!("{what} declared failed: no heartbeat for two periods"),
            );
        }
        if self.in_grace(now) {
            // Masters of a just-restarted coordinator may not have
            // heartbeated yet (see the module docs).
            return;
        }
        for cluster in 1..=self.clusters {
            self.check_cluster(cluster);
        }
    }

    /// Gives `cluster` a master if it has no alive one and someone may take
    /// over; otherwise warns, once per outage.
    fn check_cluster(&mut self, cluster: u32) {
        let has_master = self
            .servers_of(cluster)
            .any(|(_, e)| e.alive && e.role == Role::Master);
        if has_master {
            self.waiting.remove(&cluster);
            return;
        }
        if let Some(key) = self.alive_in_service_slave(cluster) {
            log::info!(
                "cluster {cluster} has no alive master: promoting in-service slave server {}",
                key.2
            );
            self.make_master(key, false);
            return;
        }
        let Some(master) = self.state(cluster).master else {
            // Master not recorded (old state file, or lost): the rules from
            // before in-service slaves, promote the freshest slave.
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
            return;
        };
        if self.waiting.insert(cluster) {
            let slaves: Vec<u32> = self
                .servers_of(cluster)
                .filter(|(_, e)| e.alive)
                .map(|(k, _)| k.2.0)
                .collect();
            log::warn!(
                "cluster {cluster} has no master until server {master} comes back: it is down \
                 and no alive slave is in service (alive slaves {slaves:?} may lack \
                 acknowledged writes; not promoting)"
            );
        }
    }

    /// "1: epoch 3, master 2, in service 1; ..." for the start-up log.
    pub fn describe_states(&self) -> String {
        let mut text = String::new();
        for (c, st) in &self.states {
            if !text.is_empty() {
                text.push_str("; ");
            }
            let _ = write!(text, "{c}: epoch {}", st.epoch);
            if let Some(master) = st.master {
                let _ = write!(text, ", master {master}");
            }
            if let Some(slave) = st.in_service {
                let _ = write!(text, ", in service {slave}");
            }
        }
        if text.is_empty() {
            text.push_str("all new");
        }
        text
    }

    /// Server entries of one cluster.
    fn servers_of(&self, cluster: u32) -> impl Iterator<Item = (Key, &Entry)> {
        self.of_kind(Kind::Server, cluster)
    }

    /// Entries of one kind in one cluster.
    fn of_kind(&self, kind: Kind, cluster: u32) -> impl Iterator<Item = (Key, &Entry)> {
        self.entries
            .range((kind, cluster, ServerId(0))..=(kind, cluster, ServerId(u32::MAX)))
            .map(|(k, e)| (*k, e))
    }

    /// Whether `key` is the in-service slave of its cluster.
    fn is_in_service(&self, key: Key) -> bool {
        let (kind, cluster, id) = key;
        kind == Kind::Server && self.state(cluster).in_service == Some(id)
    }

    /// The wire form of an entry; `now` fills in the heartbeat age (GetTable).
    fn info_of(&self, key: Key, e: &Entry, now: Option<Instant>) -> ServerInfo {
        let (kind, cluster_id, ServerId(server_id)) = key;
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
            process: e.process.map_or(0, |RunId(run)| run),
            full_cycles: e.full_cycles,
            epoch: e.epoch,
            behind: e.behind,
            lag_ms: e.lag_ms,
            http_port: e.http_port,
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
        self.of_kind(Kind::Synchronizer, cluster)
            .filter(|(_, e)| e.alive)
            .max_by_key(|(_, e)| e.last)
            .map(|(k, e)| self.info_of(k, e, None))
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

    /// Everything `GetTable` tells: every entry, each cluster's recorded
    /// state, the events (their `unix_ms` left to the caller, who has a
    /// clock) and the heartbeat period.
    pub fn view(&self, now: Instant) -> ServerList {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        ServerList {
            servers: self.all(now),
            clusters: self.clusters,
            epochs: (1..=self.clusters)
                .map(|c| {
                    let st = self.state(c);
                    ClusterEpoch {
                        cluster_id: c,
                        epoch: st.epoch,
                        master_id: st.master.map_or(0, |m| m.0),
                        in_service_id: st.in_service.map_or(0, |s| s.0),
                    }
                })
                .collect(),
            events: self
                .events
                .iter()
                .map(|e| TableEvent {
                    unix_ms: 0,
                    ago_ms: ms(now.saturating_duration_since(e.at)),
                    cluster_id: e.cluster,
                    server_id: e.server,
                    kind: e.kind.to_string(),
                    text: e.text.clone(),
                })
                .collect(),
            heartbeat_ms: ms(self.window / 2),
        }
    }
}

/// "cluster 1 server 2" / "cluster 1 synchronizer 1", for logs.
fn describe((kind, cluster, id): Key) -> String {
    match kind {
        Kind::Server => format!("cluster {cluster} server {id}"),
        Kind::Synchronizer => format!("cluster {cluster} synchronizer {id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::EPOCH_FILE;
    use tonic::Status;

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
            .heartbeat(
                info,
                epoch,
                ServerId::from_wire(slave),
                RunId::from_wire(process),
                now,
            )
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
            master: ServerId::from_wire(master),
            in_service: ServerId::from_wire(in_service),
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
        assert_eq!(t.state(1).in_service, None);
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
    fn a_restarted_master_waits_for_the_in_service_slave_a_restarted_coordinator_has_not_heard() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_before, _, t1) = pair(dir.path(), true);
        // The master is killed (its directory deleted), then the
        // coordinator; the master comes back first.
        let t2 = t1 + HB * 10;
        let t = &mut Table::load(3, HB, dir.path(), t2).expect("reload");
        let r = hb(t, &server(1, 1, Role::None), 0, t2 + HB / 2);
        assert_eq!(
            (role(&r), r.epoch),
            (Role::Slave, 2),
            "it does not stay master"
        );
        assert!(r.peer.is_none(), "nobody to resync from yet");
        assert_eq!(t.state(1), state(2, 2, 0));
        // The slave with the data takes over as it heartbeats.
        let r = hb(t, &server(1, 2, Role::Slave), 1, t2 + HB);
        assert_eq!((role(&r), r.epoch), (Role::Master, 2));
        let r = hb(t, &server(1, 1, Role::Slave), 2, t2 + HB * 3 / 2);
        assert_eq!(role(&r), Role::Slave);
        assert_eq!(r.peer.expect("its master").server_id, 2);
        // Past the start-up window, an unheard slave is a dead one: a
        // restarted master stays master (the rule below).
        let dir = tempfile::tempdir().expect("tempdir");
        let (_t, _, t1) = pair(dir.path(), true);
        let late = t1 + HB * 10;
        let mut t = Table::load(3, HB, dir.path(), late).expect("reload");
        let r = hb(&mut t, &server(1, 1, Role::None), 0, late + HB * 3);
        assert_eq!((role(&r), r.epoch), (Role::Master, 1));
    }

    #[test]
    fn a_restarted_master_without_its_directory_never_stays_master_over_an_alive_slave() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The slave left service (say the master's batch was abandoned),
        // then the master is killed and its directory deleted.
        let (mut t, _, t1) = pair(dir.path(), false);
        let back = t1 + HB;
        let r = t
            .heartbeat_of(&server(1, 1, Role::None), 0, None, None, true, back)
            .expect("valid heartbeat");
        t.save().expect("save");
        assert_eq!((role(&r), r.epoch), (Role::Slave, 2), "the slave has more");
        assert_eq!(r.peer.expect("its master").server_id, 2);
        let r = hb(&mut t, &server(1, 2, Role::Slave), 1, back);
        assert_eq!((role(&r), r.epoch), (Role::Master, 2));
        // With its directory, it stays master as before (next test); and
        // with nobody alive to take over, an empty master is all there is.
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut t, _, t1) = pair(dir.path(), false);
        hb(&mut t, &server(1, 1, Role::Master), 1, t1 + HB * 2);
        t.check(t1 + HB * 2 + HB / 2);
        let r = t
            .heartbeat_of(&server(1, 1, Role::None), 0, None, None, true, t1 + HB * 3)
            .expect("valid heartbeat");
        assert_eq!((role(&r), r.epoch), (Role::Master, 1));
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

    /// Refused with INVALID_ARGUMENT, and nothing changed: no entry, no
    /// state, no file.
    fn refused(t: &mut Table, dir: &Path, info: &ServerInfo, epoch: u64, slave: u32, now: Instant) {
        let before = (
            t.all(now),
            t.states.clone(),
            std::fs::read(dir.join(EPOCH_FILE)).ok(),
        );
        let err = t
            .heartbeat(info, epoch, ServerId::from_wire(slave), None, now)
            .expect_err("refused");
        assert_eq!(
            Status::from(err).code(),
            tonic::Code::InvalidArgument,
            "{info:?}"
        );
        assert!(t.unsaved().is_none(), "nothing to write");
        t.save().expect("save");
        let after = (
            t.all(now),
            t.states.clone(),
            std::fs::read(dir.join(EPOCH_FILE)).ok(),
        );
        assert_eq!(format!("{before:?}"), format!("{after:?}"), "{info:?}");
    }

    #[test]
    fn an_epoch_above_what_was_issued_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut t, _, t1) = pair(dir.path(), true);
        for (info, epoch) in [
            (server(1, 1, Role::Master), 2),
            (server(1, 1, Role::Master), u64::MAX),
            (server(1, 2, Role::Slave), 7),
            (server(1, 3, Role::None), 2),
            (server(2, 1, Role::None), 1),
        ] {
            refused(&mut t, dir.path(), &info, epoch, 0, t1 + HB);
        }
        assert_eq!(t.state(1), state(1, 1, 2));
        // Promotions go on raising the epoch from where it was.
        hb(&mut t, &server(1, 2, Role::Slave), 1, t1 + HB * 2);
        t.check(t1 + HB * 2 + HB / 2);
        t.save().expect("save");
        assert_eq!(t.state(1), state(2, 2, 0));
        // A coordinator whose file was lost refuses the servers' epochs
        // rather than adopt them (fencing must not rest on what a peer
        // says); its operator restores the file.
        let lost = tempfile::tempdir().expect("tempdir");
        let mut t = Table::load(3, HB, lost.path(), t1).expect("load");
        refused(&mut t, lost.path(), &server(1, 2, Role::Master), 2, 0, t1);
        assert!(!lost.path().join(EPOCH_FILE).exists());
    }

    #[test]
    fn claims_no_real_server_makes_are_refused() {
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
        report_run(&mut t, &run(1, Role::Master, 11), 1, 2, 21, t1);
        hb(&mut t, &run(2, Role::Slave, 21), 1, t1);
        assert_eq!(t.state(1), state(1, 1, 2));
        let now = t1 + HB;
        // The master's run claiming NONE again (a run claims it only before
        // its first answer): no failover.
        refused(&mut t, dir.path(), &run(1, Role::None, 11), 1, 0, now);
        // The master's slot without its run, or from a run that never
        // registered: no report of it counts (the in-service flag stays).
        refused(&mut t, dir.path(), &run(1, Role::Master, 0), 1, 0, now);
        refused(&mut t, dir.path(), &run(1, Role::Master, 12), 1, 0, now);
        refused(&mut t, dir.path(), &run(2, Role::Slave, 0), 1, 0, now);
        assert_eq!(t.master_of(1).expect("master").server_id, 1);
        assert_eq!(t.state(1), state(1, 1, 2));
        // A report naming a server we have never heard of, or its slave
        // without the slave's run, changes nothing either.
        report_run(&mut t, &run(1, Role::Master, 11), 1, 9, 99, now);
        report_run(&mut t, &run(1, Role::Master, 11), 1, 2, 0, now);
        assert_eq!(t.state(1), state(1, 1, 2));
        assert!(listed_in_service(&t, 1, 2));
        // What a real restart sends (a new run, NONE) still hands over.
        let r = hb(&mut t, &run(1, Role::None, 12), 0, now);
        assert_eq!((role(&r), r.epoch), (Role::Slave, 2));
        assert_eq!(t.master_of(1).expect("promoted").server_id, 2);
        // A registration whose answer was lost is sent again: fine.
        let r = hb(&mut t, &run(1, Role::None, 12), 0, now);
        assert_eq!(role(&r), Role::Slave);
        // The old run of the new slave's slot is refused while the new one
        // lives, and heard again (as a slave) once that one is gone.
        hb(&mut t, &run(1, Role::Slave, 12), 2, now);
        refused(&mut t, dir.path(), &run(1, Role::Master, 11), 1, 2, now);
        hb(&mut t, &run(2, Role::Master, 21), 2, now + HB * 3);
        t.check(now + HB * 3);
        let r = hb(&mut t, &run(1, Role::Master, 11), 1, now + HB * 3);
        assert_eq!((role(&r), r.epoch), (Role::Slave, 2));
    }

    #[test]
    fn synchronizers_send_no_role_epoch_or_slave() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = Instant::now();
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        hb(&mut t, &server(1, 1, Role::None), 0, t0);
        let sync = |cluster, id, role| ServerInfo {
            kind: Kind::Synchronizer as i32,
            ..server(cluster, id, role)
        };
        refused(&mut t, dir.path(), &sync(2, 3, Role::None), 0, 0, t0);
        refused(&mut t, dir.path(), &sync(1, 1, Role::Master), 0, 0, t0);
        refused(&mut t, dir.path(), &sync(1, 1, Role::None), 1, 0, t0);
        refused(&mut t, dir.path(), &sync(1, 1, Role::None), 0, 2, t0);
        assert!(t.synchronizers().is_empty());
        hb(&mut t, &sync(1, 1, Role::None), 0, t0);
        assert_eq!(t.synchronizers().len(), 1);
        assert_eq!(t.master_of(1).expect("master").server_id, 1);
    }

    #[test]
    fn invalid_heartbeats_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = Instant::now();
        let mut t = Table::load(3, HB, dir.path(), t0).expect("load");
        let mut bad = vec![
            server(0, 1, Role::None),
            server(4, 1, Role::None),
            server(1, 0, Role::None),
        ];
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
        bad.push(server(1, MAX_SERVER_ID + 1, Role::None));
        let mut long = server(1, 1, Role::None);
        long.hostname = "h".repeat(254);
        bad.push(long);
        for info in bad {
            let err = t.heartbeat(&info, 0, None, None, t0).expect_err("rejected");
            assert_eq!(
                Status::from(err).code(),
                tonic::Code::InvalidArgument,
                "{info:?}"
            );
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
}
