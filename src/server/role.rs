//! The server's role and lease rules, as a pure state machine.
//!
//! [`Replica`] is what one server knows about its place in the cluster: its
//! role (starting, master, slave), the cluster's epoch as far as it has seen,
//! and, by role, what replication needs: a master's operation log, the slave
//! in service and the lease; a slave's position in its master's operations.
//! Every rule of the protocol that decides *what to do* lives here, driven
//! with time as a value ([`Instant`]) and facts as arguments; the callers in
//! [`super`] and [`super::replication`] do the I/O that the answers ask for
//! (mirror, resync, heartbeat, wake timelines). So each rule can be tested
//! without processes, and a reader finds them in one place.
//!
//! The rules, and why:
//!
//! * **Roles come from the coordinator.** A heartbeat reply that says MASTER
//!   makes us master; any other reply makes us a slave, and a master that
//!   hears it steps down at once. A new reign starts with a new
//!   *incarnation* and an empty operation log: a slave's position is only
//!   meaningful within one incarnation.
//! * **The lease.** A master may let a write out (flush it to its files,
//!   acknowledge it) only before `sent + failure window` of the last
//!   heartbeat the coordinator answered, minus a small margin for timer
//!   granularity. The coordinator declares a master failed no earlier than a
//!   failure window after it *received* that heartbeat, so no write is ever
//!   acknowledged beside a new master, even by a master that was paused. A
//!   reply only renews the lease if that heartbeat named the slave we mirror
//!   to now: a reply to a heartbeat that still named a slave we have since
//!   dropped must not let us go on alone.
//! * **Heartbeat timings, and why they are safe** (issue 11: a master cut
//!   from the coordinator took 2 to 9 s to send its clients on). A heartbeat
//!   waits one period for its answer ([`heartbeat_deadline`]; it was two),
//!   and a write that finds the lease run out asks for a heartbeat *only if
//!   the last one was answered* ([`Replica::renewal`]); after an unanswered
//!   one it is refused at once ([`Renewal::Refuse`]) and the master's
//!   timelines end ([`Replica::fenced`]), so clients ask the coordinator
//!   where to go instead of waiting, write after write, for heartbeats that
//!   cannot succeed. None of this can let a write out that the lease rule
//!   forbids: the lease is still `sent + window - window/16` of an
//!   *answered* heartbeat and is checked before every flush; giving up on
//!   an answer, or refusing without asking, only ever shortens the time a
//!   master acknowledges. The cost is availability on a slow coordinator:
//!   an answer later than a period is dropped (it would have left less than
//!   half a window of lease anyway) and the next heartbeat goes out at once;
//!   a master whose lease lapsed under load refuses writes until its next
//!   answered heartbeat, at most a period away. An ask for a heartbeat is
//!   answered by the first heartbeat *sent after* it (never one already in
//!   flight, which may not carry what changed, such as a dropped slave), and
//!   every pending ask shares it: an ask no longer races the periodic tick.
//! * **Writes** are numbered in the operation log as they are staged; a
//!   batch is *committed* once written to our files. A snapshot for a slave
//!   is cut at the last committed operation, never the last staged one:
//!   staged operations are not in the files yet, and the join replays them.
//! * **Epochs come from the coordinator only.** A server learns epochs from
//!   heartbeat replies and from nothing else: an epoch in a replica RPC is
//!   compared with ours, never adopted. So no peer can raise a server's
//!   epoch above what the coordinator issued (which would make the real
//!   master look deposed and step down, and leave the coordinator's next
//!   promotion at an epoch the slave already holds: fencing that no longer
//!   grows).
//! * **Fencing.** A slave refuses a batch from a lower epoch (the sender is a
//!   deposed master and steps down when told), refuses any batch while it is
//!   master itself, and refuses one from another incarnation or with a gap
//!   (it must resync; a gap is never skipped over). A batch from a *higher*
//!   epoch than ours is the one legitimate race of this rule: a master the
//!   coordinator has just confirmed at a new epoch mirrors before our own
//!   heartbeat has brought that epoch. It is answered `UNAVAILABLE`
//!   ([`Replica::accept_batch`]) and changes nothing; the caller then asks
//!   the coordinator at once (a heartbeat now) and tries the batch once more,
//!   so the race costs the master one heartbeat's round trip, and a batch
//!   whose epoch the coordinator never issued is refused with our epoch
//!   untouched.
//! * **Resent batches.** A batch that starts before where the slave stands
//!   is legitimate only as a resend: the operations of a join reply that the
//!   mirror sends again. The slave remembers a digest of each operation it
//!   applied recently ([`RECENT`] of them) and takes the batch up where it
//!   stands only if the part it already has is the same operations; a
//!   different operation under a number it already applied is a batch that
//!   is not its master's (or a master that lost track), and is refused as
//!   out of sync: the slave resyncs rather than skip what it never stored.
//! * **Resync.** A slave that does not follow the master the coordinator
//!   names, or that its master dropped (two replies in a row say it is not in
//!   service although it follows), resyncs; one resync at a time.

use super::replication::OpLog;
use crate::error::Error;
use crate::model::{RunId, ServerId};
use crate::proto::tinysns::{Role as WireRole, WriteOp};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How many of the operations it applied last a slave remembers (as
/// digests), to tell a resent batch from a different one.
pub const RECENT: usize = 1 << 16;

/// A master's operations are numbered from 1 within one incarnation.
pub type Seq = u64;

/// Tells one reign of a master from another: changes whenever the operation
/// log starts afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incarnation(pub u64);

/// The slave in service, as its master sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaveLink {
    pub server: ServerId,
    /// The slave's run that joined.
    pub run: Option<RunId>,
    pub addr: String,
}

/// As a slave: the master we follow and where we stand in its operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Following {
    pub master: String,
    pub incarnation: Incarnation,
    pub next_seq: Seq,
    /// Digests of the operations just before `next_seq`, oldest first (at
    /// most [`RECENT`]).
    recent: VecDeque<u64>,
}

impl Following {
    /// Following `master` in `incarnation` after a join that sent `ops`,
    /// numbered from `first_seq`.
    pub fn joined(
        master: String,
        incarnation: Incarnation,
        first_seq: Seq,
        ops: &[WriteOp],
    ) -> Following {
        let mut f = Following {
            master,
            incarnation,
            next_seq: first_seq,
            recent: VecDeque::new(),
        };
        f.push(ops);
        f
    }

    /// `ops` were applied from `next_seq` on.
    fn push(&mut self, ops: &[WriteOp]) {
        for op in ops {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(digest(op));
            self.next_seq = self.next_seq.saturating_add(1);
        }
    }

    /// Whether `ops`, numbered from `first` (before `next_seq`), are the
    /// operations applied under those numbers, as far as they go back.
    fn same_as_applied(&self, first: Seq, ops: &[WriteOp]) -> Result<(), Error> {
        let remembered = self.next_seq.saturating_sub(self.recent.len() as u64);
        if first < remembered {
            return Err(Error::OutOfSync(format!(
                "a batch from operation {first} reaches back beyond the {} remembered: \
                 resync needed",
                self.recent.len()
            )));
        }
        let old = ops.iter().take((self.next_seq - first) as usize);
        for (i, op) in old.enumerate() {
            let at = (first - remembered) as usize + i;
            if self.recent.get(at) != Some(&digest(op)) {
                return Err(Error::OutOfSync(format!(
                    "operation {} differs from the one applied under that number: \
                     resync needed",
                    first + i as u64
                )));
            }
        }
        Ok(())
    }
}

/// A digest of an operation, to compare a resent one with the one applied
/// (within one process: the hasher's keys are fixed, not its algorithm).
fn digest(op: &WriteOp) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    prost::Message::encode_to_vec(op).hash(&mut h);
    h.finish()
}

/// A master's replication state.
#[derive(Debug)]
pub struct Master {
    pub incarnation: Incarnation,
    pub log: OpLog,
    /// The last operation written to our files.
    pub committed: Seq,
    pub slave: Option<SlaveLink>,
    /// Until when writes may get out.
    pub lease_until: Option<Instant>,
}

impl Master {
    fn new(incarnation: Incarnation) -> Master {
        Master {
            incarnation,
            log: OpLog::default(),
            committed: 0,
            slave: None,
            lease_until: None,
        }
    }
}

/// A slave's replication state.
#[derive(Debug, Default)]
pub struct Slave {
    /// The master we follow, once in sync.
    pub following: Option<Following>,
    /// Heartbeat replies in a row that said we are not in service although
    /// we follow a master: our master dropped us.
    pub dropped_replies: u32,
}

/// A server's role.
#[derive(Debug)]
pub enum Role {
    /// Registered, not yet told a role.
    Starting,
    Master(Master),
    Slave(Slave),
}

/// What the coordinator said in a heartbeat reply, as the core needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub master: bool,
    pub epoch: u64,
    /// For a slave: whether the coordinator counts it in service.
    pub in_service: bool,
    /// The cluster's alive master, if it is not us.
    pub master_addr: Option<String>,
}

/// What the caller must do after a heartbeat reply.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reaction {
    /// We just became master (log it).
    pub became_master: bool,
    /// We just became a slave (log it).
    pub became_slave: bool,
    /// We were master and are not any more: end the timelines so their
    /// clients move on.
    pub stepped_down: bool,
    /// Bring the directory up to date from this master.
    pub resync_from: Option<String>,
}

/// What a heartbeat reports about us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub role: WireRole,
    pub epoch: u64,
    /// A master's slave in service, with its run.
    pub in_service: Option<(ServerId, Option<RunId>)>,
}

/// Where a slave takes up a batch: the operations to skip (already applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub skip: usize,
}

/// How long a periodic heartbeat waits for the coordinator's answer: one
/// period. A later answer would be worth little (the lease runs from when
/// the heartbeat was *sent*, so an answer after a period leaves less than
/// half a window of it) and would hold up the next heartbeat, which goes out
/// at once instead, on a fresh connection if this one stalled. Safety does
/// not depend on it: giving up on an answer only ever shortens a lease.
pub fn heartbeat_deadline(heartbeat: Duration) -> Duration {
    heartbeat
}

/// What a write (or a timeline) does when the lease has run out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The lease holds: go on.
    Held,
    /// Ask the coordinator now (a heartbeat) and look again.
    Ask,
    /// The last heartbeat went unanswered: the coordinator is out of reach,
    /// and waiting for another would only make the client wait to be told
    /// to go elsewhere. Refuse at once; the periodic heartbeats go on and
    /// renew the lease if the coordinator comes back.
    Refuse,
}

/// One server's role, epoch and replication state.
#[derive(Debug)]
pub struct Replica {
    pub role: Role,
    /// The highest epoch seen; it never goes down.
    pub epoch: u64,
    /// A resync task is running.
    pub resyncing: bool,
    /// The last heartbeat got no answer (until one does).
    unanswered: bool,
    failure_window: Duration,
}

impl Replica {
    pub fn new(failure_window: Duration) -> Replica {
        Replica {
            role: Role::Starting,
            epoch: 0,
            resyncing: false,
            unanswered: false,
            failure_window,
        }
    }

    /// A heartbeat got no answer within its deadline.
    pub fn unanswered(&mut self) {
        self.unanswered = true;
    }

    /// Whether a write may get out now, and if not whether to ask the
    /// coordinator first ([`Renewal`]). Not master: an error, as
    /// [`Replica::check_lease`].
    pub fn renewal(&self, now: Instant) -> Result<Renewal, Error> {
        match self.check_lease(now) {
            Ok(()) => Ok(Renewal::Held),
            Err(_) if self.is_master() && self.unanswered => Ok(Renewal::Refuse),
            Err(_) if self.is_master() => Ok(Renewal::Ask),
            Err(e) => Err(e),
        }
    }

    /// Whether this server is a master whose lease has run out while the
    /// coordinator does not answer: its timelines must end, so their clients
    /// ask the coordinator where to go (SPEC §4: a deposed master's
    /// timelines would otherwise show nothing for the whole cut).
    pub fn fenced(&self, now: Instant) -> bool {
        matches!(self.renewal(now), Ok(Renewal::Refuse))
    }

    pub fn is_master(&self) -> bool {
        matches!(self.role, Role::Master(_))
    }

    pub fn master(&self) -> Option<&Master> {
        match &self.role {
            Role::Master(m) => Some(m),
            _ => None,
        }
    }

    pub fn master_mut(&mut self) -> Option<&mut Master> {
        match &mut self.role {
            Role::Master(m) => Some(m),
            _ => None,
        }
    }

    /// The master state, or why there is none.
    pub fn require_master(&mut self) -> Result<&mut Master, Error> {
        self.master_mut()
            .ok_or_else(|| Error::Unavailable("this server is not the master".into()))
    }

    /// Acts on a heartbeat reply to a heartbeat sent at `sent` that reported
    /// `reported_slave` as in service. `fresh` is the incarnation to use if
    /// this reply starts a reign.
    pub fn on_verdict(
        &mut self,
        v: &Verdict,
        sent: Instant,
        reported_slave: Option<ServerId>,
        fresh: Incarnation,
    ) -> Reaction {
        let mut out = Reaction::default();
        self.unanswered = false;
        self.epoch = self.epoch.max(v.epoch);
        if v.master {
            if !self.is_master() {
                self.role = Role::Master(Master::new(fresh));
                out.became_master = true;
            }
            let window = self.failure_window;
            if let Role::Master(m) = &mut self.role
                && m.slave.as_ref().map(|l| l.server) == reported_slave
            {
                m.lease_until = Some(sent + window - window / 16);
            }
            return out;
        }
        match &self.role {
            Role::Master(_) => {
                out.stepped_down = true;
                out.became_slave = true;
                self.role = Role::Slave(Slave::default());
            }
            Role::Starting => {
                out.became_slave = true;
                self.role = Role::Slave(Slave::default());
            }
            Role::Slave(_) => {}
        }
        let (Some(master), Role::Slave(s)) = (&v.master_addr, &mut self.role) else {
            return out;
        };
        let in_sync = s.following.as_ref().is_some_and(|f| &f.master == master);
        if in_sync && !v.in_service {
            s.dropped_replies += 1;
        } else {
            s.dropped_replies = 0;
        }
        if (!in_sync || s.dropped_replies >= 2) && !self.resyncing {
            self.resyncing = true;
            s.following = None;
            s.dropped_replies = 0;
            out.resync_from = Some(master.clone());
        }
        out
    }

    /// Stops acting as master (a slave refused our epoch): nothing gets out
    /// any more. Returns whether we were master.
    pub fn step_down(&mut self) -> bool {
        let was = self.is_master();
        if was {
            self.role = Role::Slave(Slave::default());
        } else if let Role::Slave(s) = &mut self.role {
            s.following = None;
        }
        was
    }

    /// Whether a write may get out now: we are master and the lease holds.
    pub fn check_lease(&self, now: Instant) -> Result<(), Error> {
        match &self.role {
            Role::Master(m) if m.lease_until.is_some_and(|t| now < t) => Ok(()),
            Role::Master(_) => Err(Error::Unavailable(
                "this master has not reached the coordinator within the failure window".into(),
            )),
            _ => Err(Error::Unavailable("this server is not the master".into())),
        }
    }

    /// What our next heartbeat says.
    pub fn report(&self) -> Report {
        let role = match &self.role {
            Role::Starting => WireRole::None,
            Role::Master(_) => WireRole::Master,
            Role::Slave(_) => WireRole::Slave,
        };
        let in_service = self
            .master()
            .and_then(|m| m.slave.as_ref())
            .map(|l| (l.server, l.run));
        Report {
            role,
            epoch: self.epoch,
            in_service,
        }
    }

    /// As master: numbers a staged operation.
    pub fn stage(&mut self, op: WriteOp) -> Result<Seq, Error> {
        Ok(self.require_master()?.log.push(op))
    }

    /// As master: operations up to `seq` are in our files.
    pub fn committed(&mut self, seq: Seq) {
        if let Some(m) = self.master_mut() {
            m.committed = m.committed.max(seq);
        }
    }

    /// As master: a batch failed and nothing staged will be written. The log
    /// starts afresh (any slave must resync), and no write gets out before a
    /// heartbeat has told the coordinator the slave is gone.
    pub fn abandon(&mut self, fresh: Incarnation) {
        if let Some(m) = self.master_mut() {
            *m = Master::new(fresh);
        }
    }

    /// As master: the slave `server` did not store a batch; it is out of
    /// service. Returns whether it was the slave in service.
    pub fn drop_slave(&mut self, server: ServerId) -> bool {
        match self.master_mut() {
            Some(m) if m.slave.as_ref().is_some_and(|l| l.server == server) => {
                m.slave = None;
                true
            }
            _ => false,
        }
    }

    /// As master: where a snapshot is cut. Operations staged but not yet
    /// written are not in the files; the join replays them.
    pub fn snapshot_cut(&self) -> Result<(Seq, Incarnation), Error> {
        let m = self
            .master()
            .ok_or_else(|| Error::Unavailable("this server is not the master".into()))?;
        Ok((m.committed, m.incarnation))
    }

    /// As master: a slave that was cut a snapshot at `from` of `incarnation`
    /// joins. It is in service from now on, with the operations since; or,
    /// if the log no longer reaches back that far (or the reign changed),
    /// `None`: it takes another snapshot.
    pub fn join(
        &mut self,
        link: SlaveLink,
        from: Seq,
        incarnation: Incarnation,
    ) -> Result<Option<Vec<WriteOp>>, Error> {
        let m = self
            .master_mut()
            .ok_or_else(|| Error::Precondition("this server is not the master".into()))?;
        if m.incarnation != incarnation {
            return Ok(None);
        }
        let Some(ops) = m.log.since(from) else {
            return Ok(None);
        };
        m.slave = Some(link);
        Ok(Some(ops))
    }

    /// As slave: whether to take a batch of `ops` numbered from `first`,
    /// sent by a master at `epoch` in `incarnation`. Changes nothing: every
    /// check comes before anything is stored, and an epoch is never taken
    /// from a batch (see the module doc). `Unavailable` means only "your
    /// epoch is ahead of ours": the caller asks the coordinator and may try
    /// again.
    pub fn accept_batch(
        &self,
        epoch: u64,
        incarnation: Incarnation,
        first: Seq,
        ops: &[WriteOp],
    ) -> Result<Accepted, Error> {
        if epoch < self.epoch {
            return Err(Error::Precondition(format!(
                "stale epoch {epoch} (ours is {})",
                self.epoch
            )));
        }
        if epoch > self.epoch {
            return Err(Error::Unavailable(format!(
                "epoch {epoch} is ahead of ours ({}); the coordinator has not told us of it",
                self.epoch
            )));
        }
        if self.is_master() {
            return Err(Error::Precondition("this server is the master".into()));
        }
        match &self.role {
            Role::Slave(Slave {
                following: Some(f), ..
            }) if f.incarnation == incarnation && first <= f.next_seq => {
                f.same_as_applied(first, ops)?;
                Ok(Accepted {
                    skip: (f.next_seq - first) as usize,
                })
            }
            Role::Slave(Slave {
                following: Some(f), ..
            }) if f.incarnation == incarnation => Err(Error::OutOfSync(format!(
                "a gap: the batch starts at operation {first}, we stand at {}; resync needed",
                f.next_seq
            ))),
            _ => Err(Error::OutOfSync(
                "not in sync with this master: resync needed".into(),
            )),
        }
    }

    /// As slave: a batch of `ops` from `first` (accepted with `skip`) is
    /// stored.
    pub fn applied(&mut self, first: Seq, accepted: Accepted, ops: &[WriteOp]) {
        if let Role::Slave(Slave {
            following: Some(f), ..
        }) = &mut self.role
            && first.saturating_add(accepted.skip as u64) == f.next_seq
        {
            f.push(ops.get(accepted.skip..).unwrap_or(&[]));
        }
    }

    /// A resync ended; on success we follow `master` from `next_seq`, unless
    /// our role changed meanwhile.
    pub fn resync_done(&mut self, following: Option<Following>) {
        self.resyncing = false;
        if let (Some(f), Role::Slave(s)) = (following, &mut self.role) {
            s.following = Some(f);
            s.dropped_replies = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tinysns::{AddUser, write_op};

    const WINDOW: Duration = Duration::from_millis(1600);

    fn master_verdict(epoch: u64) -> Verdict {
        Verdict {
            master: true,
            epoch,
            in_service: false,
            master_addr: None,
        }
    }

    fn slave_verdict(epoch: u64, master: &str, in_service: bool) -> Verdict {
        Verdict {
            master: false,
            epoch,
            in_service,
            master_addr: Some(master.to_string()),
        }
    }

    fn op(user: u64) -> WriteOp {
        WriteOp {
            op: Some(write_op::Op::AddUser(AddUser { user })),
        }
    }

    fn link(id: u32) -> SlaveLink {
        SlaveLink {
            server: ServerId(id),
            run: Some(RunId(7)),
            addr: format!("127.0.0.1:900{id}"),
        }
    }

    /// A master at epoch 1 with slave 2 in service, its lease fresh at `t0`.
    fn master_with_slave(t0: Instant) -> Replica {
        let mut r = Replica::new(WINDOW);
        r.on_verdict(&master_verdict(1), t0, None, Incarnation(10));
        let (from, inc) = r.snapshot_cut().unwrap();
        r.join(link(2), from, inc).unwrap().unwrap();
        r.on_verdict(&master_verdict(1), t0, Some(ServerId(2)), Incarnation(99));
        r
    }

    /// A slave following `master` from operation 1 of incarnation 5.
    fn following_slave(master: &str) -> Replica {
        let mut r = Replica::new(WINDOW);
        let t = Instant::now();
        let re = r.on_verdict(&slave_verdict(1, master, false), t, None, Incarnation(1));
        assert_eq!(re.resync_from.as_deref(), Some(master));
        r.resync_done(Some(Following::joined(
            master.into(),
            Incarnation(5),
            1,
            &[],
        )));
        r
    }

    #[test]
    fn a_master_reply_starts_a_reign_with_a_lease() {
        let t0 = Instant::now();
        let mut r = Replica::new(WINDOW);
        assert!(r.check_lease(t0).is_err(), "starting: no writes");
        let re = r.on_verdict(&master_verdict(3), t0, None, Incarnation(10));
        assert!(re.became_master && !re.stepped_down);
        assert_eq!(r.epoch, 3);
        assert!(r.check_lease(t0 + WINDOW / 2).is_ok());
        // The lease ends a little before the failure window does.
        assert!(r.check_lease(t0 + WINDOW - WINDOW / 32).is_err());
        assert_eq!(r.report().role, WireRole::Master);
    }

    #[test]
    fn a_renewed_reign_keeps_its_log_and_incarnation() {
        let t0 = Instant::now();
        let mut r = Replica::new(WINDOW);
        r.on_verdict(&master_verdict(1), t0, None, Incarnation(10));
        r.stage(op(1)).unwrap();
        let re = r.on_verdict(&master_verdict(1), t0, None, Incarnation(11));
        assert!(!re.became_master);
        let m = r.master().unwrap();
        assert_eq!(m.incarnation, Incarnation(10));
        assert_eq!(m.log.last(), 1);
    }

    #[test]
    fn a_reply_about_a_dropped_slave_does_not_renew_the_lease() {
        let t0 = Instant::now();
        let mut r = master_with_slave(t0);
        assert!(r.drop_slave(ServerId(2)));
        // A late reply to a heartbeat that still named slave 2.
        let later = t0 + WINDOW;
        r.on_verdict(&master_verdict(1), later, Some(ServerId(2)), Incarnation(1));
        assert!(r.check_lease(later + Duration::from_millis(1)).is_err());
        // The reply to a heartbeat that said "no slave" does.
        r.on_verdict(&master_verdict(1), later, None, Incarnation(1));
        assert!(r.check_lease(later + Duration::from_millis(1)).is_ok());
    }

    #[test]
    fn a_slave_verdict_makes_a_master_step_down() {
        let t0 = Instant::now();
        let mut r = master_with_slave(t0);
        let re = r.on_verdict(
            &slave_verdict(2, "10.0.0.2:1", false),
            t0,
            None,
            Incarnation(1),
        );
        assert!(re.stepped_down && re.became_slave);
        assert_eq!(re.resync_from.as_deref(), Some("10.0.0.2:1"));
        assert!(r.check_lease(t0).is_err());
        assert_eq!(r.report().in_service, None);
        assert_eq!(r.epoch, 2);
    }

    #[test]
    fn a_refused_epoch_steps_down_once() {
        let t0 = Instant::now();
        let mut r = master_with_slave(t0);
        assert!(r.step_down());
        assert!(!r.step_down(), "a slave has nothing to step down from");
        assert!(r.check_lease(t0).is_err());
    }

    #[test]
    fn one_resync_at_a_time() {
        let mut r = Replica::new(WINDOW);
        let t = Instant::now();
        let v = slave_verdict(1, "m:1", false);
        assert!(
            r.on_verdict(&v, t, None, Incarnation(1))
                .resync_from
                .is_some()
        );
        assert!(
            r.on_verdict(&v, t, None, Incarnation(1))
                .resync_from
                .is_none()
        );
        r.resync_done(None);
        assert!(
            r.on_verdict(&v, t, None, Incarnation(1))
                .resync_from
                .is_some(),
            "a failed resync is tried again"
        );
    }

    #[test]
    fn a_slave_dropped_by_its_master_resyncs_after_two_replies() {
        let mut r = following_slave("m:1");
        let t = Instant::now();
        let dropped = slave_verdict(1, "m:1", false);
        assert!(
            r.on_verdict(&dropped, t, None, Incarnation(1))
                .resync_from
                .is_none()
        );
        // An in-service reply in between resets the count.
        r.on_verdict(&slave_verdict(1, "m:1", true), t, None, Incarnation(1));
        assert!(
            r.on_verdict(&dropped, t, None, Incarnation(1))
                .resync_from
                .is_none()
        );
        assert!(
            r.on_verdict(&dropped, t, None, Incarnation(1))
                .resync_from
                .is_some()
        );
    }

    #[test]
    fn a_new_master_address_means_resync() {
        let mut r = following_slave("m:1");
        let re = r.on_verdict(
            &slave_verdict(2, "m:2", true),
            Instant::now(),
            None,
            Incarnation(1),
        );
        assert_eq!(re.resync_from.as_deref(), Some("m:2"));
    }

    #[test]
    fn batches_are_fenced_by_epoch_role_and_incarnation() {
        let mut r = following_slave("m:1");
        r.epoch = 4;
        let ops = [op(1)];
        // A deposed master's batch changes nothing, not even our epoch.
        assert!(matches!(
            r.accept_batch(3, Incarnation(5), 1, &ops),
            Err(Error::Precondition(_))
        ));
        assert_eq!(r.epoch, 4);
        assert!(matches!(
            r.accept_batch(4, Incarnation(6), 1, &ops),
            Err(Error::OutOfSync(_))
        ));
        assert_eq!(
            r.accept_batch(4, Incarnation(5), 1, &ops),
            Ok(Accepted { skip: 0 })
        );
        let mut m = Replica::new(WINDOW);
        m.on_verdict(&master_verdict(1), Instant::now(), None, Incarnation(1));
        assert!(matches!(
            m.accept_batch(1, Incarnation(1), 1, &ops),
            Err(Error::Precondition(_))
        ));
    }

    #[test]
    fn an_epoch_is_learnt_from_the_coordinator_never_from_a_batch() {
        let mut r = following_slave("m:1");
        let ops = [op(1)];
        // Ahead of ours: "ask the coordinator", and nothing moves.
        for epoch in [2, u64::MAX] {
            assert!(matches!(
                r.accept_batch(epoch, Incarnation(5), 1, &ops),
                Err(Error::Unavailable(_))
            ));
            assert_eq!(r.epoch, 1);
        }
        // The same holds for a master: a batch claiming a newer epoch does
        // not make it step down or change its epoch.
        let mut m = Replica::new(WINDOW);
        m.on_verdict(&master_verdict(3), Instant::now(), None, Incarnation(1));
        assert!(matches!(
            m.accept_batch(u64::MAX, Incarnation(1), 1, &ops),
            Err(Error::Unavailable(_))
        ));
        assert!(m.is_master());
        assert_eq!(m.epoch, 3);
        // Once the coordinator has said so, the batch is taken.
        let re = r.on_verdict(
            &slave_verdict(2, "m:1", true),
            Instant::now(),
            None,
            Incarnation(1),
        );
        assert_eq!(re.resync_from, None, "the same master: no resync");
        assert_eq!(r.epoch, 2);
        assert_eq!(
            r.accept_batch(2, Incarnation(5), 1, &ops),
            Ok(Accepted { skip: 0 })
        );
    }

    /// Applies a batch as the slave's caller does.
    fn apply(r: &mut Replica, first: Seq, ops: &[WriteOp]) -> Result<Accepted, Error> {
        let a = r.accept_batch(1, Incarnation(5), first, ops)?;
        r.applied(first, a, ops);
        Ok(a)
    }

    #[test]
    fn a_resent_batch_is_taken_up_where_the_slave_stands_and_a_gap_is_refused() {
        let mut r = following_slave("m:1");
        let ops: Vec<WriteOp> = (1..=5).map(op).collect();
        assert_eq!(apply(&mut r, 1, &ops[0..3]), Ok(Accepted { skip: 0 })); // 1..=3
        // A resend of 2..=4: the part we have is the same, 4 is new.
        assert_eq!(apply(&mut r, 2, &ops[1..4]), Ok(Accepted { skip: 2 }));
        // Entirely old: nothing to do, nothing moves back.
        assert_eq!(apply(&mut r, 1, &ops[0..2]), Ok(Accepted { skip: 4 }));
        assert_eq!(apply(&mut r, 5, &ops[4..5]), Ok(Accepted { skip: 0 }));
        // A gap is never skipped over.
        let gap = r.accept_batch(1, Incarnation(5), 7, &ops[0..1]);
        assert!(matches!(gap, Err(Error::OutOfSync(_))), "{gap:?}");
        // Nor is a batch at the right place accepted after a refused one.
        assert_eq!(apply(&mut r, 6, &[op(6)]), Ok(Accepted { skip: 0 }));
    }

    #[test]
    fn different_operations_under_numbers_already_applied_mean_resync() {
        let mut r = following_slave("m:1");
        let ops: Vec<WriteOp> = (1..=3).map(op).collect();
        apply(&mut r, 1, &ops).unwrap();
        // A batch that claims numbers we applied, with other operations
        // (not our master's, or a master that lost track): refused, and it
        // does not move where we stand, so the real next batch still fits.
        for (first, forged) in [(3, vec![op(99), op(4)]), (1, vec![op(1), op(98)])] {
            assert!(matches!(
                r.accept_batch(1, Incarnation(5), first, &forged),
                Err(Error::OutOfSync(_))
            ));
        }
        assert_eq!(apply(&mut r, 4, &[op(4)]), Ok(Accepted { skip: 0 }));
        // Before what a join sent (and so before what we remember): resync.
        let mut j = Replica::new(WINDOW);
        j.on_verdict(
            &slave_verdict(1, "m:1", false),
            Instant::now(),
            None,
            Incarnation(1),
        );
        j.resync_done(Some(Following::joined(
            "m:1".into(),
            Incarnation(5),
            10,
            &[op(10), op(11)],
        )));
        assert_eq!(
            j.accept_batch(1, Incarnation(5), 11, &[op(11), op(12)]),
            Ok(Accepted { skip: 1 })
        );
        assert!(matches!(
            j.accept_batch(1, Incarnation(5), 9, &[op(9), op(10)]),
            Err(Error::OutOfSync(_))
        ));
    }

    #[test]
    fn a_snapshot_is_cut_at_the_last_written_operation() {
        let t0 = Instant::now();
        let mut r = Replica::new(WINDOW);
        r.on_verdict(&master_verdict(1), t0, None, Incarnation(10));
        let a = r.stage(op(1)).unwrap();
        r.committed(a);
        r.stage(op(2)).unwrap(); // staged, not yet written
        let (cut, inc) = r.snapshot_cut().unwrap();
        assert_eq!(cut, a, "not the last staged operation");
        // The join replays what the files lack.
        let ops = r.join(link(2), cut, inc).unwrap().unwrap();
        assert_eq!(ops, vec![op(2)]);
        assert_eq!(r.report().in_service, Some((ServerId(2), Some(RunId(7)))));
    }

    #[test]
    fn a_join_from_another_reign_takes_another_snapshot() {
        let t0 = Instant::now();
        let mut r = Replica::new(WINDOW);
        r.on_verdict(&master_verdict(1), t0, None, Incarnation(10));
        let (cut, inc) = r.snapshot_cut().unwrap();
        r.abandon(Incarnation(11));
        assert_eq!(r.join(link(2), cut, inc).unwrap(), None);
        assert_eq!(r.report().in_service, None);
        assert!(r.check_lease(t0).is_err(), "abandon drops the lease");
    }

    #[test]
    fn only_the_slave_in_service_is_dropped() {
        let mut r = master_with_slave(Instant::now());
        assert!(!r.drop_slave(ServerId(3)));
        assert!(r.drop_slave(ServerId(2)));
        assert!(!r.drop_slave(ServerId(2)));
    }

    #[test]
    fn a_resync_that_ends_after_a_promotion_changes_nothing() {
        let mut r = Replica::new(WINDOW);
        let t = Instant::now();
        r.on_verdict(&slave_verdict(1, "m:1", false), t, None, Incarnation(1));
        r.on_verdict(&master_verdict(2), t, None, Incarnation(2));
        r.resync_done(Some(Following::joined(
            "m:1".into(),
            Incarnation(5),
            1,
            &[],
        )));
        assert!(r.is_master());
        assert!(!r.resyncing);
    }

    #[test]
    fn a_lapsed_lease_asks_the_coordinator_unless_it_did_not_answer() {
        let t0 = Instant::now();
        let mut r = master_with_slave(t0);
        assert_eq!(r.renewal(t0), Ok(Renewal::Held));
        let late = t0 + WINDOW;
        assert_eq!(r.renewal(late), Ok(Renewal::Ask));
        assert!(!r.fenced(late));
        // A heartbeat went unanswered: refuse at once, and end timelines.
        r.unanswered();
        assert_eq!(r.renewal(late), Ok(Renewal::Refuse));
        assert!(r.fenced(late));
        // Within the lease a missed answer changes nothing: the lease is
        // the rule, the missed answer only says not to wait for another.
        assert_eq!(r.renewal(t0), Ok(Renewal::Held));
        assert!(!r.fenced(t0));
        // An answer, whatever it says, clears it.
        r.on_verdict(&master_verdict(1), late, Some(ServerId(2)), Incarnation(1));
        assert_eq!(r.renewal(late), Ok(Renewal::Held));
        let later = late + WINDOW;
        assert_eq!(r.renewal(later), Ok(Renewal::Ask));
        // Not a master: an error, never a renewal.
        let mut s = following_slave("m:1");
        s.unanswered();
        assert!(s.renewal(later).is_err());
        assert!(!s.fenced(later));
    }

    #[test]
    fn a_heartbeat_answered_at_its_deadline_still_leaves_a_lease() {
        // The lease runs from the send; an answer that comes as late as the
        // deadline allows still leaves part of the window, so a master that
        // is merely slow to hear back keeps writing.
        let hb = WINDOW / 2;
        let t0 = Instant::now();
        let mut r = Replica::new(WINDOW);
        r.on_verdict(&master_verdict(1), t0, None, Incarnation(1));
        let answered = t0 + heartbeat_deadline(hb);
        assert_eq!(r.renewal(answered), Ok(Renewal::Held));
        // And never past the window from the send: the coordinator declares
        // us failed no earlier than a window after it received it.
        assert_eq!(r.renewal(t0 + WINDOW), Ok(Renewal::Ask));
    }
}
