//! Talking to a server over gRPC directly, as a client program would, for
//! what the terminal client cannot send or would hide.

use super::process::DEADLINE;
use std::time::{Duration, Instant};
use tinysns::proto::csce438::sns_service_client::SnsServiceClient;
use tinysns::proto::csce438::{Message, Request};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// Connects to the server at `url`, retrying until the deadline (it may
/// still be starting).
pub async fn connect(url: &str) -> SnsServiceClient<Channel> {
    let start = Instant::now();
    loop {
        match SnsServiceClient::connect(url.to_string()).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(start.elapsed() < DEADLINE, "cannot connect to {url}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pub fn request(user: &str, session: &str, arguments: &[&str]) -> Request {
    Request {
        username: user.to_string(),
        arguments: arguments.iter().map(|s| s.to_string()).collect(),
        session: session.to_string(),
        request_id: 0,
    }
}

pub async fn login(
    c: &mut SnsServiceClient<Channel>,
    user: &str,
    session: &str,
) -> Result<String, Status> {
    c.login(request(user, session, &[]))
        .await
        .map(|r| r.into_inner().msg)
}

/// Logs in, waiting out the moments where the server does not yet know it
/// is the master (UNAVAILABLE).
pub async fn login_ok(c: &mut SnsServiceClient<Channel>, user: &str, session: &str) {
    let start = Instant::now();
    loop {
        match login(c, user, session).await {
            Ok(msg) if msg == "Login Successful!" => return,
            Ok(msg) => panic!("login of {user:?} refused: {msg:?}"),
            Err(s) if s.code() == Code::Unavailable && start.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("login of {user:?} failed: {s:?}"),
        }
    }
}

/// Panics unless `r` is the error `want`; returns it.
pub fn expect_code<T: std::fmt::Debug>(r: Result<T, Status>, want: Code, what: &str) -> Status {
    match r {
        Ok(v) => panic!("{what}: expected {want:?}, got OK: {v:?}"),
        Err(s) => {
            assert_eq!(
                s.code(),
                want,
                "{what}: got {:?} ({:?})",
                s.code(),
                s.message()
            );
            s
        }
    }
}

/// Opens a timeline stream whose first message names `user` with
/// `session`; returns the sender for later messages and the stream. A
/// refusal is the error (refusals come with the response).
pub async fn open_timeline(
    c: &mut SnsServiceClient<Channel>,
    user: &str,
    session: &str,
) -> Result<(mpsc::Sender<Message>, Streaming<Message>), Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(Message {
        username: user.to_string(),
        session: session.to_string(),
        ..Default::default()
    })
    .await
    .expect("queue the first message");
    let stream = c.timeline(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, stream))
}
