//! The client-facing API (`csce438.SNSService`): login, list, follow,
//! unfollow, logout, and opening a timeline ([`super::timeline`]).
//!
//! Every handler is a check, at most one write through [`Node::write`], and
//! an answer; errors are [`Error`]s, turned into statuses by `?` at the end.
//! The outcomes of Login, Follow and UnFollow that the user caused (logged
//! in elsewhere, already followed, no such user, not a follower) are not
//! errors: they are OK replies with the course's `Reply.msg`
//! ([`Outcome`], SPEC §6), what course clients read. A FOLLOW argument that
//! is not a user id is such an outcome (no such user); a request with no
//! argument or several stays `INVALID_ARGUMENT`.
//!
//! Input is taken strictly: a user id is spelt as [`UserId::parse`] says (a
//! `FOLLOW` argument is not trimmed: `"4\n"` is not a user), a request
//! names exactly one user to follow, and an error quotes at most 64 bytes
//! of what it was sent ([`quote`]). A login that would create a user past
//! `SNS_MAX_USERS` is refused with `RESOURCE_EXHAUSTED` before anything is
//! written or a session opened.

use super::client_ids::ClientId;
use super::conn::{self, ConnInfo};
use super::node::{Node, State};
use super::session::Holder;
use super::timeline;
use crate::course::Outcome;
use crate::error::{Error, quote};
use crate::model::UserId;
use crate::proto::csce438::sns_service_server::SnsService;
use crate::proto::csce438::{ListReply, Message, Reply, Request as SnsRequest};
use crate::proto::tinysns::{AddUser, FollowOp, WriteOp, write_op};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

pub(crate) struct ClientApi {
    node: Arc<Node>,
    /// The open timeline streams, against their caps.
    streams: timeline::Slots,
}

impl ClientApi {
    pub fn new(node: Arc<Node>) -> ClientApi {
        let streams = timeline::Slots::new(&node.opts.limits);
        ClientApi { node, streams }
    }
}

fn parse_user(s: &str, what: &str) -> Result<UserId, Error> {
    UserId::parse(s).ok_or_else(|| Error::Invalid(format!("invalid {what} {}", quote(s))))
}

/// The one argument a FOLLOW or UNFOLLOW has (a request with none or several
/// is malformed, not an outcome).
fn argument(req: &SnsRequest) -> Result<&str, Error> {
    match req.arguments.as_slice() {
        [arg] => Ok(arg),
        args => Err(Error::Invalid(format!(
            "invalid username: expected one, got {}",
            args.len()
        ))),
    }
}

fn ok(msg: &str) -> Response<Reply> {
    Response::new(Reply {
        msg: msg.to_string(),
        lease_ms: 0,
    })
}

/// An outcome in the course's convention: status OK, the outcome in `msg`.
fn answer(outcome: Outcome) -> Response<Reply> {
    ok(outcome.msg())
}

impl Node {
    /// The user a request comes from, who must hold a live session: its
    /// token's, or (without a token) the one its connection `conn` holds.
    ///
    /// A course client never logs in again, but its channel replaces a
    /// connection that was cut (an older C-core client idle at its prompt
    /// answers no keep-alive ping for up to 5 s) or closed when idle (30
    /// minutes). So a request without a token, on a connection that holds
    /// no session, takes an existing user's session as Login would, when no
    /// one else holds it; otherwise it is refused as before.
    pub(crate) fn caller(
        self: &Arc<Self>,
        username: &str,
        session: &str,
        conn: Option<&ConnInfo>,
    ) -> Result<UserId, Error> {
        self.require_master()?;
        let user = parse_user(username, "user id")?;
        let holder = Holder::of(session, conn.map(|c| c.id))?;
        let now = Instant::now();
        let mut st = self.state();
        let refused = match st.sessions.check(user, &holder, now) {
            Ok(()) => return Ok(user),
            Err(e) => e,
        };
        let Some(info) = conn.filter(|_| matches!(holder, Holder::Conn(_))) else {
            return Err(refused);
        };
        if st.sessions.may_login(user, &holder, now).is_err()
            || !st.store.users().map_err(Error::from)?.contains(&user.get())
        {
            return Err(refused);
        }
        let watch = st.sessions.login(user, holder, now)?;
        self.kick_sessions(&st.sessions);
        drop(st);
        log::debug!("user {user}'s session moves to connection {}", info.id.0);
        if watch {
            self.watch_connection(info.clone());
        }
        Ok(user)
    }

    /// Ends the sessions connection `conn` holds once it is gone.
    fn watch_connection(self: &Arc<Self>, conn: ConnInfo) {
        let node = self.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = conn.closed.cancelled() => {}
                // The sessions die with the server.
                _ = node.shutdown.cancelled() => return,
            }
            let mut st = node.state();
            st.sessions.closed(conn.id);
            node.kick_sessions(&st.sessions);
            drop(st);
            log::debug!("connection {} closed: its sessions end", conn.id.0);
        });
    }
}

#[tonic::async_trait]
impl SnsService for ClientApi {
    async fn login(&self, req: Request<SnsRequest>) -> Result<Response<Reply>, Status> {
        let conn = conn::of(&req);
        Ok(self.do_login(req.into_inner(), conn).await?)
    }

    async fn list(&self, req: Request<SnsRequest>) -> Result<Response<ListReply>, Status> {
        let conn = conn::of(&req);
        let req = req.into_inner();
        let user = self
            .node
            .caller(&req.username, &req.session, conn.as_ref())?;
        // The numbers are taken under the state lock, the million strings
        // they may make are built outside it. Errors go through our one
        // mapping (tonic's own would make a damaged file DATA_LOSS, unlogged).
        let (all_users, followers): (Vec<u64>, Vec<u64>) = {
            let mut st = self.node.state();
            let all = st
                .store
                .users()
                .map_err(Error::from)?
                .iter()
                .copied()
                .collect();
            let followers = st.store.followers(user).map_err(Error::from)?;
            (all, followers.current().into_iter().collect())
        };
        let strings = |v: Vec<u64>| v.into_iter().map(|u| u.to_string()).collect();
        Ok(Response::new(ListReply {
            all_users: strings(all_users),
            followers: strings(followers),
        }))
    }

    async fn follow(&self, req: Request<SnsRequest>) -> Result<Response<Reply>, Status> {
        let conn = conn::of(&req);
        Ok(self
            .follow_or_unfollow(req.into_inner(), conn, true)
            .await?)
    }

    async fn un_follow(&self, req: Request<SnsRequest>) -> Result<Response<Reply>, Status> {
        let conn = conn::of(&req);
        Ok(self
            .follow_or_unfollow(req.into_inner(), conn, false)
            .await?)
    }

    async fn logout(&self, req: Request<SnsRequest>) -> Result<Response<Reply>, Status> {
        let conn = conn::of(&req).map(|c| c.id);
        let req = req.into_inner();
        let user = parse_user(&req.username, "user id")?;
        let holder = Holder::of(&req.session, conn)?;
        let mut st = self.node.state();
        st.sessions.logout(user, &holder, Instant::now())?;
        self.node.kick_sessions(&st.sessions);
        drop(st);
        Ok(ok("Logout successful"))
    }

    type TimelineStream = Pin<Box<dyn Stream<Item = Result<Message, Status>> + Send>>;

    async fn timeline(
        &self,
        req: Request<Streaming<Message>>,
    ) -> Result<Response<Self::TimelineStream>, Status> {
        let conn = conn::of(&req);
        Ok(Response::new(
            timeline::open(self.node.clone(), &self.streams, req.into_inner(), conn).await?,
        ))
    }
}

impl ClientApi {
    async fn do_login(
        &self,
        req: SnsRequest,
        conn: Option<ConnInfo>,
    ) -> Result<Response<Reply>, Error> {
        let node = &self.node;
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
        // A course client sends no token: its session is its connection's.
        let holder = Holder::of(&req.session, conn.as_ref().map(|c| c.id))?;
        // Refused logins write nothing and open no session: check first,
        // log in once the user exists.
        let may = node
            .state()
            .sessions
            .may_login(user, &holder, Instant::now());
        if let Err(Error::AlreadyExists(why)) = &may {
            log::debug!("login refused: {why}");
            return Ok(answer(Outcome::AlreadyJoined));
        }
        may?;
        let limits = node.opts.limits;
        node.write(None, |st, _| {
            let users = st.store.users()?;
            if users.contains(&user.get()) {
                return Ok(None);
            }
            limits.admit_users(users.len(), 1)?;
            Ok(Some(WriteOp {
                op: Some(write_op::Op::AddUser(AddUser { user: user.get() })),
            }))
        })
        .await?;
        // The write may have waited: the lease starts now.
        let mut st = node.state();
        // Another client may have logged in while the write waited.
        let watch = match st.sessions.login(user, holder, Instant::now()) {
            Err(Error::AlreadyExists(_)) => return Ok(answer(Outcome::AlreadyJoined)),
            other => other?,
        };
        node.kick_sessions(&st.sessions);
        if watch && let Some(conn) = conn {
            node.watch_connection(conn);
        }
        Ok(Response::new(Reply {
            msg: Outcome::LoggedIn.msg().into(),
            lease_ms: st.sessions.lease().as_millis() as u64,
        }))
    }

    async fn follow_or_unfollow(
        &self,
        req: SnsRequest,
        conn: Option<ConnInfo>,
        follow: bool,
    ) -> Result<Response<Reply>, Error> {
        let node = &self.node;
        let user = node.caller(&req.username, &req.session, conn.as_ref())?;
        let (done, unknown) = if follow {
            (Outcome::Followed, Outcome::UnknownFollowee)
        } else {
            (Outcome::UnFollowed, Outcome::UnknownUnfollowee)
        };
        let Some(target) = UserId::parse(argument(&req)?) else {
            return Ok(answer(unknown));
        };
        if target == user {
            return Ok(answer(if follow {
                Outcome::AlreadyFollowing
            } else {
                unknown
            }));
        }
        let retry = (req.request_id != 0).then_some(ClientId::Request {
            user,
            id: req.request_id,
        });
        // Set when the user's request is refused: nothing is written, and
        // the refusal is an OK reply.
        let mut refused = None;
        node.write(retry, |st: &mut State, clock| {
            if !st.store.users()?.contains(&target.get()) {
                refused = Some(unknown);
                return Ok(None);
            }
            let following = st.store.following(user)?;
            match (follow, following.contains(target.get())) {
                (true, true) => {
                    refused = Some(Outcome::AlreadyFollowing);
                    return Ok(None);
                }
                (false, false) => {
                    refused = Some(Outcome::NotAFollower);
                    return Ok(None);
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
        Ok(answer(refused.unwrap_or(done)))
    }
}
