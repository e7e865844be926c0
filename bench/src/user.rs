//! A simulated user: what the terminal client does, straight over gRPC.
//!
//! Each user has its own connection, as each terminal client does, and the
//! `echo` baseline gives each of its callers one too, so that the two are
//! measured with the same concurrency and the same number of connections.

use super::system::coordinator_client;
use std::time::Duration;
use tinysns::course::{Outcome, Rpc};
use tinysns::proto::csce438::sns_service_client::SnsServiceClient;
use tinysns::proto::csce438::{Message, Request};
use tinysns::proto::tinysns::UserRequest;
use tinysns::proto::tinysns::coordinator_client::CoordinatorClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Deadline of one unary call.
const CALL: Duration = Duration::from_secs(5);

/// A lazily connected channel to `addr` without a per-call timeout (it would
/// also cut the long-lived timeline streams).
pub fn channel(addr: &str) -> Result<Channel, BoxError> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy())
}

async fn call<T>(
    f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, BoxError> {
    match tokio::time::timeout(CALL, f).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message()).into()),
        Err(_) => Err("no answer within the deadline".into()),
    }
}

pub struct User {
    pub id: u64,
    session: String,
    coord: CoordinatorClient<Channel>,
    /// The master we are logged in to.
    server: Option<(String, SnsServiceClient<Channel>)>,
}

impl User {
    pub fn new(coordinator: &str, id: u64) -> Result<User, BoxError> {
        Ok(User {
            id,
            session: format!("bench-{:016x}", rand::random::<u64>()),
            coord: coordinator_client(coordinator)?,
            server: None,
        })
    }

    fn request(&self, args: Vec<String>) -> Request {
        Request {
            username: self.id.to_string(),
            arguments: args,
            session: self.session.clone(),
            request_id: rand::random::<u64>() | 1,
        }
    }

    /// Asks the coordinator for our cluster's master and logs in there (which
    /// creates the user); also refreshes the session.
    pub async fn login(&mut self) -> Result<(), BoxError> {
        let info = call(self.coord.get_server(UserRequest { user_id: self.id })).await?;
        let addr = format!("{}:{}", info.hostname, info.port);
        if self.server.as_ref().is_none_or(|(a, _)| *a != addr) {
            self.server = Some((addr.clone(), SnsServiceClient::new(channel(&addr)?)));
        }
        let req = self.request(Vec::new());
        let server = self.server_mut()?;
        call(server.login(req)).await?;
        Ok(())
    }

    fn server_mut(&mut self) -> Result<&mut SnsServiceClient<Channel>, BoxError> {
        match self.server.as_mut() {
            Some((_, s)) => Ok(s),
            None => Err("not logged in".into()),
        }
    }

    /// Follows `target`. A refusal is an OK reply in the course's
    /// convention (SPEC §6), told by its message: taken as done, a follow
    /// of a user not yet carried here was lost without a word, and the
    /// `delivery` warm-up waited 90 s for posts that could never come.
    pub async fn follow(&mut self, target: u64) -> Result<(), BoxError> {
        let req = self.request(vec![target.to_string()]);
        let reply = call(self.server_mut()?.follow(req)).await?;
        match Outcome::from_msg(Rpc::Follow, &reply.msg) {
            Some(Outcome::Followed | Outcome::AlreadyFollowing) => Ok(()),
            Some(Outcome::UnknownFollowee) => {
                Err(format!("NotFound: user {target} is not known here (yet)").into())
            }
            _ => Err(format!("follow of {target} refused: {}", reply.msg).into()),
        }
    }

    /// Follows a user who may live in another cluster and may have just been
    /// created: until the synchronizers have carried the new user here, the
    /// server answers "no such user", so ask again for a while.
    pub async fn follow_remote(&mut self, target: u64) -> Result<(), BoxError> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match self.follow(target).await {
                Err(e)
                    if e.to_string().starts_with("NotFound")
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => return other,
            }
        }
    }

    /// Opens the TIMELINE stream.
    pub async fn timeline(&mut self) -> Result<Timeline, BoxError> {
        let (tx, rx) = mpsc::channel(1024);
        tx.send(Message {
            username: self.id.to_string(),
            session: self.session.clone(),
            ..Default::default()
        })
        .await?;
        let server = self.server_mut()?;
        let inbound = call(server.timeline(ReceiverStream::new(rx))).await?;
        Ok(Timeline {
            user: self.id,
            tx,
            inbound,
        })
    }
}

/// An open TIMELINE stream: posts go out on it, posts and acknowledgements
/// come back.
pub struct Timeline {
    user: u64,
    tx: mpsc::Sender<Message>,
    inbound: Streaming<Message>,
}

impl Timeline {
    /// Sends a post without waiting for its acknowledgement.
    pub async fn post(&self, text: String, post_id: u64) -> Result<(), BoxError> {
        self.tx
            .send(Message {
                username: self.user.to_string(),
                msg: text,
                post_id,
                ..Default::default()
            })
            .await
            .map_err(|_| "the timeline stream is closed".into())
    }

    /// The next message from the server (a post or an acknowledgement).
    pub async fn next(&mut self) -> Result<Message, BoxError> {
        match self.inbound.message().await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err("the server ended the timeline".into()),
            Err(s) => Err(format!("{:?}: {}", s.code(), s.message()).into()),
        }
    }

    /// Posts and waits for the acknowledgement, skipping posts that arrive
    /// meanwhile.
    pub async fn post_acked(&mut self, text: String, post_id: u64) -> Result<(), BoxError> {
        self.post(text, post_id).await?;
        loop {
            if self.next().await?.ack_id == post_id {
                return Ok(());
            }
        }
    }
}
