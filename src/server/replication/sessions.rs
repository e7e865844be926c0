//! Sessions shared with the slave (`Replica.Sessions`): the master's task
//! that tells, and the slave's side that takes. The rules (what is told,
//! what a promoted slave makes of it) are [`crate::server::session`]'s; this
//! file does the I/O and checks the call as peer input.
//!
//! The task runs beside the mirror, never in the write path: a login is not
//! a write, and a slow or dead slave must not hold up writes on its account.
//! It sends at once when the core has an urgent change (a login, a logout,
//! an ended connection: [`Node::kick_sessions`]) and every half heartbeat
//! otherwise (refreshes, and the "still here" the slave's promotion rule
//! needs). A new slave (another address, run or incarnation) or a failed
//! call makes the next call carry the whole table, in parts of at most
//! [`PART`] sessions.
//!
//! The slave takes a call only from the master it follows: the epoch equal
//! to ours (a lower one is a deposed master; a higher one is not adopted, a
//! slave learns epochs from the coordinator only, and unlike `Apply` it asks
//! for no heartbeat: a refused call costs the master a whole table half a
//! heartbeat later, not a write), the incarnation of the
//! master it is in sync with, and not while it is master itself; then every
//! entry is checked ([`crate::server::session::from_wire`]) before any is
//! taken.

use super::replica_client;
use crate::error::Error;
use crate::model::{RunId, UserId};
use crate::proto::tinysns::replica_client::ReplicaClient;
use crate::proto::tinysns::{SessionEntry, SessionsRequest};
use crate::server::node::Node;
use crate::server::role::{Incarnation, Replica, Role, Slave};
use crate::server::session::{self, Sessions};
use crate::trust::PeerChannel;
use std::sync::Arc;
use std::time::Instant;

/// Most sessions in one call (a few hundred KB).
pub const PART: usize = 4096;

/// Whether a slave takes a sessions call from a master at `epoch` in
/// `incarnation`: only from the master it follows (see the module doc).
pub fn accept(replica: &Replica, epoch: u64, incarnation: Incarnation) -> Result<(), Error> {
    if epoch < replica.epoch {
        return Err(Error::Precondition(format!(
            "stale epoch {epoch} (ours is {})",
            replica.epoch
        )));
    }
    if epoch > replica.epoch {
        return Err(Error::Unavailable(format!(
            "epoch {epoch} is ahead of ours ({}); the coordinator has not told us of it",
            replica.epoch
        )));
    }
    match &replica.role {
        Role::Slave(Slave {
            following: Some(f), ..
        }) if f.incarnation == incarnation => Ok(()),
        Role::Master(_) => Err(Error::Precondition("this server is the master".into())),
        _ => Err(Error::OutOfSync(
            "not in sync with this master: resync needed".into(),
        )),
    }
}

/// To whom the whole table was told: a slave's address and run, in our
/// incarnation.
type Told = (String, Option<RunId>, Incarnation);

impl Node {
    /// Wakes the sessions task if the core has a change the slave must hear
    /// of at once.
    pub(crate) fn kick_sessions(&self, sessions: &Sessions) {
        if sessions.urgent() {
            self.session_kick.notify_one();
        }
    }

    /// As master: tells the slave in service of the sessions, until
    /// shutdown (see the module doc).
    pub(crate) async fn share_sessions_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.opts.heartbeat / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut told: Option<Told> = None;
        let mut channel: Option<(String, ReplicaClient<PeerChannel>)> = None;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.session_kick.notified() => {}
            }
            let (to, all, parts) = {
                let mut st = self.state();
                let epoch = st.replica.epoch;
                let Some(m) = st.replica.master() else {
                    told = None;
                    continue;
                };
                let Some(link) = m.slave.clone() else {
                    told = None;
                    continue;
                };
                let to: Told = (link.addr, link.run, m.incarnation);
                let all = told.as_ref() != Some(&to);
                let incarnation = m.incarnation.0;
                let shared = st.sessions.take_shared(Instant::now(), all);
                let entries: Vec<SessionEntry> =
                    shared.iter().map(|(u, s)| s.to_wire(*u)).collect();
                let mut parts: Vec<SessionsRequest> = entries
                    .chunks(PART)
                    .enumerate()
                    .map(|(i, c)| SessionsRequest {
                        cluster_id: self.opts.cluster,
                        epoch,
                        incarnation,
                        full: all && i == 0,
                        sessions: c.to_vec(),
                    })
                    .collect();
                if parts.is_empty() {
                    // Nothing changed: still say so, the slave counts from it.
                    parts.push(SessionsRequest {
                        cluster_id: self.opts.cluster,
                        epoch,
                        incarnation,
                        full: all,
                        sessions: Vec::new(),
                    });
                }
                (to, all, parts)
            };
            let client = match &channel {
                Some((a, c)) if *a == to.0 => c.clone(),
                _ => match replica_client(&to.0, self.failure_window, &self.opts.trust) {
                    Ok(c) => {
                        channel = Some((to.0.clone(), c.clone()));
                        c
                    }
                    Err(e) => {
                        log::warn!("cannot tell {} of the sessions: {e}", to.0);
                        told = None;
                        continue;
                    }
                },
            };
            let mut sent = true;
            for part in parts {
                let mut c = client.clone();
                let call = tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    r = c.sessions(part) => r,
                };
                if let Err(e) = call {
                    // The next call tells the whole table again.
                    log::debug!("telling {} of the sessions failed: {}", to.0, e.message());
                    sent = false;
                    break;
                }
            }
            told = sent.then_some(to);
            log::trace!("sessions told (whole table: {all}, through: {sent})");
        }
    }

    /// As slave: takes the sessions our master tells us of. Everything is
    /// checked before anything is taken.
    pub(crate) fn take_sessions(&self, req: SessionsRequest) -> Result<(), Error> {
        self.check_cluster(req.cluster_id)?;
        let (cluster, clusters) = (self.opts.cluster, self.clusters);
        let mut st = self.state();
        accept(&st.replica, req.epoch, Incarnation(req.incarnation))?;
        let lease = st.sessions.lease();
        let shared = session::from_wire(&req.sessions, lease, |u: UserId| {
            u.cluster(clusters).0 == cluster
        })?;
        st.sessions.take_peer(shared, req.full, Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::role::{Following, Verdict};
    use std::time::Duration;

    fn slave_following(epoch: u64, incarnation: Incarnation) -> Replica {
        let mut r = Replica::new(Duration::from_secs(1));
        let v = Verdict {
            master: false,
            epoch,
            in_service: true,
            master_addr: Some("m:1".into()),
        };
        r.on_verdict(&v, Instant::now(), None, Incarnation(0));
        r.resync_done(Some(Following::joined("m:1".into(), incarnation, 1, &[])));
        r
    }

    #[test]
    fn a_slave_hears_sessions_only_from_the_master_it_follows() {
        let r = slave_following(3, Incarnation(7));
        accept(&r, 3, Incarnation(7)).unwrap();
        assert!(matches!(
            accept(&r, 2, Incarnation(7)),
            Err(Error::Precondition(_))
        ));
        // An epoch ahead is not taken from a peer.
        assert!(matches!(
            accept(&r, 4, Incarnation(7)),
            Err(Error::Unavailable(_))
        ));
        assert_eq!(r.epoch, 3);
        assert!(matches!(
            accept(&r, 3, Incarnation(8)),
            Err(Error::OutOfSync(_))
        ));
        // Not yet in sync (resyncing): nobody's sessions.
        let mut resyncing = Replica::new(Duration::from_secs(1));
        resyncing.on_verdict(
            &Verdict {
                master: false,
                epoch: 3,
                in_service: false,
                master_addr: None,
            },
            Instant::now(),
            None,
            Incarnation(0),
        );
        assert!(matches!(
            accept(&resyncing, 3, Incarnation(7)),
            Err(Error::OutOfSync(_))
        ));
        // A master takes none.
        let mut master = Replica::new(Duration::from_secs(1));
        master.on_verdict(
            &Verdict {
                master: true,
                epoch: 3,
                in_service: false,
                master_addr: None,
            },
            Instant::now(),
            None,
            Incarnation(7),
        );
        assert!(matches!(
            accept(&master, 3, Incarnation(7)),
            Err(Error::Precondition(_))
        ));
    }
}
