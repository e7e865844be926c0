//! Heartbeats: the server's link to the coordinator.
//!
//! One task sends a heartbeat every period, and at once when another part
//! asks ([`Node::report_now`]: a master about to go on without its slave, a
//! master whose lease ran out, a slave a client logged in to). The reply is
//! handed to the role core ([`super::role::Replica::on_verdict`]); this file
//! only does what its answer asks for (log, end timelines, start a resync).
//!
//! Each heartbeat waits one period for its answer, on a channel that
//! replaces a stalled connection ([`crate::trust::link`]); one that goes
//! unanswered is told to the role core, and if that leaves a master without
//! a lease its timelines are woken to end (the timings and why they are safe
//! are in [`super::role`]).

use super::node::{Node, fresh_incarnation};
use super::role::{self, Verdict};
use crate::model::ServerId;
use crate::proto::tinysns::coordinator_client::CoordinatorClient;
use crate::proto::tinysns::{HeartbeatReply, HeartbeatRequest, Role as WireRole, ServerInfo};
use crate::trust::{PeerChannel, with_deadline};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

impl Node {
    /// Acts on the coordinator's answer to a heartbeat sent at `sent` that
    /// reported `reported_slave` in service. Returns whether we are (still)
    /// the master.
    pub(crate) fn on_heartbeat(
        self: &Arc<Self>,
        reply: HeartbeatReply,
        sent: Instant,
        reported_slave: Option<ServerId>,
    ) -> bool {
        let verdict = Verdict {
            master: WireRole::try_from(reply.role) == Ok(WireRole::Master),
            epoch: reply.epoch,
            in_service: reply.in_service,
            master_addr: reply
                .peer
                .filter(|p| p.alive && p.role == WireRole::Master as i32)
                .map(|p| format!("{}:{}", p.hostname, p.port)),
        };
        let (reaction, epoch, master) = {
            let mut st = self.state();
            if reply.epoch < st.replica.epoch {
                // A coordinator whose epochs went back (its state file lost or
                // restored): it never adopts ours (it refuses heartbeats above
                // what it issued), so this needs the operator; keep ours.
                log::warn!(
                    "coordinator answered with epoch {} < ours {}",
                    reply.epoch,
                    st.replica.epoch
                );
            }
            let r = st
                .replica
                .on_verdict(&verdict, sent, reported_slave, fresh_incarnation());
            if r.became_master {
                st.sessions.promoted(Instant::now());
            }
            self.publish_status(&st.replica, reply.in_service);
            (r, st.replica.epoch, st.replica.is_master())
        };
        crate::ops::metrics::note_heartbeat_answered();
        let (server, cluster) = (self.opts.server_id, self.opts.cluster);
        if reaction.stepped_down {
            log::warn!(
                "server {server} of cluster {cluster} steps down: the coordinator says we are a slave"
            );
            self.wake_all();
        }
        if reaction.became_master {
            log::info!("server {server} of cluster {cluster} is now master (epoch {epoch})");
        }
        if reaction.became_slave {
            log::info!("server {server} of cluster {cluster} is now slave (epoch {epoch})");
        }
        if let Some(from) = reaction.resync_from {
            log::info!("resyncing from master {from}");
            self.tasks.spawn(self.clone().resync(from));
        }
        master
    }

    /// Health and the role gauges after a heartbeat reply (SPEC §7): a
    /// master is SERVING, a slave only while the coordinator counts it in
    /// service and it is not resyncing.
    fn publish_status(&self, replica: &role::Replica, slave_in_service: bool) {
        let m = crate::ops::metrics::metrics();
        let (role, serving, in_service) = match &replica.role {
            role::Role::Master(master) => ("master", true, master.slave.is_some()),
            role::Role::Slave(_) => {
                let ok = slave_in_service && !replica.resyncing;
                ("slave", ok, ok)
            }
            role::Role::Starting => ("starting", false, false),
        };
        m.set_role(role);
        m.epoch
            .set(i64::try_from(replica.epoch).unwrap_or(i64::MAX));
        m.in_service.set(i64::from(in_service));
        self.health.set(serving);
    }

    /// Sends heartbeats every period and whenever asked, until shutdown.
    ///
    /// Every ask made before a heartbeat goes out is answered by that
    /// heartbeat; one made while a heartbeat is in flight waits for the next,
    /// which goes out as soon as the one in flight ends (the caller may need
    /// the coordinator to hear what changed since: a dropped slave). An ask
    /// never races the periodic tick. Each heartbeat waits one period for its
    /// answer ([`role::heartbeat_deadline`]); an unanswered one marks the
    /// coordinator out of reach, so writes and timelines are refused at once
    /// instead of each waiting for a heartbeat of its own.
    pub(crate) async fn heartbeat_loop(
        self: Arc<Self>,
        mut coordinator: CoordinatorClient<PeerChannel>,
        info: ServerInfo,
        mut asks: mpsc::Receiver<oneshot::Sender<bool>>,
    ) {
        let mut tick = tokio::time::interval(self.opts.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = role::heartbeat_deadline(self.opts.heartbeat);
        let mut waiters: Vec<oneshot::Sender<bool>> = Vec::new();
        let mut asks_open = true;
        loop {
            if waiters.is_empty() {
                tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => return,
                    w = asks.recv(), if asks_open => match w {
                        Some(w) => waiters.push(w),
                        None => asks_open = false,
                    },
                    _ = tick.tick() => {}
                }
            }
            while let Ok(w) = asks.try_recv() {
                waiters.push(w);
            }
            let report = self.state().replica.report();
            let reported_slave = report.in_service.map(|(s, _)| s);
            let req = HeartbeatRequest {
                info: Some(ServerInfo {
                    role: report.role as i32,
                    ..info.clone()
                }),
                epoch: report.epoch,
                in_service_slave: reported_slave.map_or(0, |s| s.0),
                in_service_process: report.in_service.and_then(|(_, r)| r).map_or(0, |r| r.0),
                empty_directory: false,
            };
            let sent = Instant::now();
            let answer = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                a = coordinator.heartbeat(with_deadline(req, deadline)) => a,
            };
            let master = match answer {
                Ok(r) => self.on_heartbeat(r.into_inner(), sent, reported_slave),
                Err(e) => {
                    log::warn!(
                        "heartbeat to {} failed: {}",
                        self.opts.coordinator,
                        e.message()
                    );
                    let fenced = {
                        let mut st = self.state();
                        st.replica.unanswered();
                        let fenced = st.replica.fenced(Instant::now());
                        if fenced {
                            self.health.set(false);
                        }
                        fenced
                    };
                    if fenced {
                        // Timelines look at the lease when woken: end them
                        // now rather than at their next look.
                        self.wake_all();
                    }
                    false
                }
            };
            for w in waiters.drain(..) {
                let _ = w.send(master);
            }
        }
    }
}
