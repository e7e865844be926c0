//! The client-facing API (`csce438.SNSService`): login, list, follow,
//! unfollow, logout, and opening a timeline ([`super::timeline`]).
//!
//! Every handler is a check, at most one write through [`Node::write`], and
//! an answer; errors are [`Error`]s, turned into statuses by `?` at the end.

use super::node::{Node, State};
use super::session::ClientId;
use super::timeline;
use crate::error::Error;
use crate::model::UserId;
use crate::proto::csce438::sns_service_server::SnsService;
use crate::proto::csce438::{ListReply, Message, Reply, Request as SnsRequest};
use crate::proto::tinysns::{AddUser, FollowOp, WriteOp, write_op};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

pub(crate) struct ClientApi(pub Arc<Node>);

fn parse_user(s: &str, what: &str) -> Result<UserId, Error> {
    UserId::parse(s).ok_or_else(|| Error::Invalid(format!("invalid {what} {s:?}")))
}

fn argument(req: &SnsRequest) -> Result<UserId, Error> {
    let arg = req.arguments.first().map(|s| s.trim()).unwrap_or("");
    parse_user(arg, "username")
}

fn ok(msg: &str) -> Response<Reply> {
    Response::new(Reply {
        msg: msg.to_string(),
        lease_ms: 0,
    })
}

impl Node {
    /// The user a request comes from, who must hold a live session.
    pub(crate) fn caller(&self, username: &str, session: &str) -> Result<UserId, Error> {
        self.require_master()?;
        let user = parse_user(username, "user id")?;
        self.state().sessions.check(user, session, Instant::now())?;
        Ok(user)
    }
}

#[tonic::async_trait]
impl SnsService for ClientApi {
    async fn login(&self, req: Request<SnsRequest>) -> Result<Response<Reply>, Status> {
        Ok(self.do_login(req.into_inner()).await?)
    }

    async fn list(&self, req: Request<SnsRequest>) -> Result<Response<ListReply>, Status> {
        let req = req.into_inner();
        let user = self.0.caller(&req.username, &req.session)?;
        let mut st = self.0.state();
        // Through our one mapping of errors (tonic's own would make a
        // damaged file DATA_LOSS, unlogged).
        let all_users = st
            .store
            .users()
            .map_err(Error::from)?
            .iter()
            .map(u64::to_string)
            .collect();
        let followers = st
            .store
            .followers(user)
            .map_err(Error::from)?
            .current()
            .iter()
            .map(u64::to_string)
            .collect();
        Ok(Response::new(ListReply {
            all_users,
            followers,
        }))
    }

    async fn follow(&self, req: Request<SnsRequest>) -> Result<Response<Reply>, Status> {
        Ok(self.follow_or_unfollow(req.into_inner(), true).await?)
    }

    async fn un_follow(&self, req: Request<SnsRequest>) -> Result<Response<Reply>, Status> {
        Ok(self.follow_or_unfollow(req.into_inner(), false).await?)
    }

    async fn logout(&self, req: Request<SnsRequest>) -> Result<Response<Reply>, Status> {
        let req = req.into_inner();
        let user = parse_user(&req.username, "user id")?;
        self.0.state().sessions.logout(user, &req.session);
        Ok(ok("Logout successful"))
    }

    type TimelineStream = Pin<Box<dyn Stream<Item = Result<Message, Status>> + Send>>;

    async fn timeline(
        &self,
        req: Request<Streaming<Message>>,
    ) -> Result<Response<Self::TimelineStream>, Status> {
        Ok(Response::new(
            timeline::open(self.0.clone(), req.into_inner()).await?,
        ))
    }
}

impl ClientApi {
    async fn do_login(&self, req: SnsRequest) -> Result<Response<Reply>, Error> {
        let node = &self.0;
        if !node.is_master() {
            // The coordinator sent this client here: it has probably just
            // promoted us, and we would only hear so at our next heartbeat.
            // Ask now rather than make the client wait a heartbeat.
            node.report_now().await;
        }
        node.require_master()?;
        let user = parse_user(&req.username, "user id")?;
        let home = user.cluster(node.clusters).0;
        if home != node.opts.cluster {
            return Err(Error::Precondition(format!(
                "user {user} lives in cluster {home}, not {}",
                node.opts.cluster
            )));
        }
        node.state()
            .sessions
            .login(user, &req.session, Instant::now())?;
        node.write(|st, _| {
            let known = st.store.users()?.contains(&user.get());
            Ok((!known).then_some(WriteOp {
                op: Some(write_op::Op::AddUser(AddUser { user: user.get() })),
            }))
        })
        .await?;
        // The write may have waited: the lease starts now.
        let mut st = node.state();
        st.sessions.touch(user, &req.session, Instant::now());
        Ok(Response::new(Reply {
            msg: "Login successful".into(),
            lease_ms: st.sessions.lease().as_millis() as u64,
        }))
    }

    async fn follow_or_unfollow(
        &self,
        req: SnsRequest,
        follow: bool,
    ) -> Result<Response<Reply>, Error> {
        let node = &self.0;
        let user = node.caller(&req.username, &req.session)?;
        let target = argument(&req)?;
        if target == user {
            return Err(if follow {
                Error::AlreadyExists("you cannot follow yourself".into())
            } else {
                Error::Invalid("you cannot unfollow yourself".into())
            });
        }
        let retry = (req.request_id != 0).then_some(ClientId::Request {
            user,
            id: req.request_id,
        });
        node.write(|st: &mut State, clock| {
            if retry.is_some_and(|id| st.ids.contains(id)) {
                // A retry of a request already done (its answer was lost).
                return Ok(None);
            }
            if !st.store.users()?.contains(&target.get()) {
                return Err(Error::NotFound(format!("no user {target}")));
            }
            let following = st.store.following(user)?;
            match (follow, following.contains(target.get())) {
                (true, true) => {
                    return Err(Error::AlreadyExists(format!("already following {target}")));
                }
                (false, false) => {
                    return Err(Error::Precondition(format!("not following {target}")));
                }
                _ => {}
            }
            let time_ns = clock
                .next_after(following.max_time())
                .map_err(|why| Error::Storage(format!("user {user}'s follows: {why}")))?;
            Ok(Some(WriteOp {
                op: Some(write_op::Op::Follow(FollowOp {
                    follower: user.get(),
                    followee: target.get(),
                    request_id: req.request_id,
                    time_ns,
                    follow,
                })),
            }))
        })
        .await?;
        Ok(ok("Command completed successfully"))
    }
}
