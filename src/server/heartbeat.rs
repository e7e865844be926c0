//! Heartbeats: the server's link to the coordinator.
//!
//! One task sends a heartbeat every period, and at once when another part
//! asks ([`Node::report_now`]: a master about to go on without its slave, a
//! master whose lease ran out, a slave a client logged in to). The reply is
//! handed to the role core ([`super::role::Replica::on_verdict`]); this file
//! only does what its answer asks for (log, end timelines, start a resync).

use super::node::{Node, fresh_incarnation};
use super::role::Verdict;
use crate::model::ServerId;
use crate::proto::tinysns::coordinator_client::CoordinatorClient;
use crate::proto::tinysns::{HeartbeatReply, HeartbeatRequest, Role as WireRole, ServerInfo};
use crate::trust::PeerChannel;
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
            (r, st.replica.epoch, st.replica.is_master())
        };
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

    /// Sends heartbeats every period and whenever asked, until shutdown.
    pub(crate) async fn heartbeat_loop(
        self: Arc<Self>,
        mut coordinator: CoordinatorClient<PeerChannel>,
        info: ServerInfo,
        mut asks: mpsc::Receiver<oneshot::Sender<bool>>,
    ) {
        let mut tick = tokio::time::interval(self.opts.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let waiter = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => None,
                w = asks.recv() => w,
            };
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
            };
            let sent = Instant::now();
            let answer = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                a = coordinator.heartbeat(req) => a,
            };
            let master = match answer {
                Ok(r) => self.on_heartbeat(r.into_inner(), sent, reported_slave),
                Err(e) => {
                    log::warn!(
                        "heartbeat to {} failed: {}",
                        self.opts.coordinator,
                        e.message()
                    );
                    false
                }
            };
            if let Some(w) = waiter {
                let _ = w.send(master);
            }
        }
    }
}
