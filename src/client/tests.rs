//! The client against mock servers: a scripted coordinator and scripted
//! masters, in this process, driving [`run`] end to end (commands, timeline,
//! failover, refused and impossible logins).

use super::*;
use crate::course::Outcome;
use crate::proto::csce438::sns_service_server::{SnsService, SnsServiceServer};
use crate::proto::csce438::{ListReply, Message, Reply, Request};
use crate::proto::tinysns::coordinator_server::{Coordinator, CoordinatorServer};
use crate::proto::tinysns::{
    Empty, HeartbeatReply, HeartbeatRequest, ServerInfo, ServerList, UserRequest,
};
use crate::timefmt;
use std::sync::{Arc, Mutex};
use tokio::time::timeout;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Code, Response, Status};

type Master = Arc<Mutex<Option<u16>>>;
type Log = Arc<Mutex<Vec<String>>>;

fn push(log: &Log, entry: String) {
    log.lock().expect("log").push(entry);
}

fn entries(log: &Log) -> Vec<String> {
    log.lock().expect("log").clone()
}

struct MockCoord {
    master: Master,
}

#[tonic::async_trait]
impl Coordinator for MockCoord {
    async fn heartbeat(
        &self,
        _: tonic::Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn get_server(
        &self,
        _: tonic::Request<UserRequest>,
    ) -> Result<Response<ServerInfo>, Status> {
        match *self.master.lock().expect("master") {
            Some(port) => Ok(Response::new(ServerInfo {
                hostname: "127.0.0.1".into(),
                port: port.into(),
                ..ServerInfo::default()
            })),
            None => Err(Status::unavailable("no master")),
        }
    }
    async fn get_synchronizer(
        &self,
        _: tonic::Request<UserRequest>,
    ) -> Result<Response<ServerInfo>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn get_all_synchronizers(
        &self,
        _: tonic::Request<Empty>,
    ) -> Result<Response<ServerList>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn get_table(&self, _: tonic::Request<Empty>) -> Result<Response<ServerList>, Status> {
        Err(Status::unimplemented("mock"))
    }
}

/// A scripted server. With `hand_over_to`, it points the coordinator at
/// that port and answers UNAVAILABLE to a FOLLOW, or breaks the timeline
/// stream after the first post, as a dying master would.
#[derive(Clone)]
struct MockSns {
    log: Log,
    /// What Login, Follow and UnFollow answer: an outcome (an OK reply with
    /// its `msg`, SPEC §6) or a non-OK status.
    login: Result<Outcome, Code>,
    follow: Result<Outcome, Code>,
    unfollow: Result<Outcome, Code>,
    posts: Vec<Message>,
    hand_over_to: Option<(Master, u16)>,
}

impl MockSns {
    fn new() -> Self {
        MockSns {
            log: Log::default(),
            login: Ok(Outcome::LoggedIn),
            follow: Ok(Outcome::Followed),
            unfollow: Ok(Outcome::UnFollowed),
            posts: Vec::new(),
            hand_over_to: None,
        }
    }

    fn hand_over(&self) -> bool {
        match &self.hand_over_to {
            Some((master, port)) => {
                *master.lock().expect("master") = Some(*port);
                true
            }
            None => false,
        }
    }
}

fn reply(answer: Result<Outcome, Code>) -> Result<Response<Reply>, Status> {
    match answer {
        Ok(outcome) => Ok(Response::new(Reply {
            msg: outcome.msg().into(),
            lease_ms: 2000,
        })),
        Err(code) => Err(Status::new(code, "mock")),
    }
}

#[tonic::async_trait]
impl SnsService for MockSns {
    async fn login(&self, r: tonic::Request<Request>) -> Result<Response<Reply>, Status> {
        let r = r.into_inner();
        push(&self.log, format!("login {} {}", r.username, r.session));
        reply(self.login)
    }
    async fn logout(&self, _: tonic::Request<Request>) -> Result<Response<Reply>, Status> {
        Ok(Response::new(Reply::default()))
    }
    async fn list(&self, _: tonic::Request<Request>) -> Result<Response<ListReply>, Status> {
        Ok(Response::new(ListReply {
            all_users: vec!["1".into(), "2".into(), "3".into()],
            followers: vec![],
        }))
    }
    async fn follow(&self, r: tonic::Request<Request>) -> Result<Response<Reply>, Status> {
        let r = r.into_inner();
        push(
            &self.log,
            format!("follow {} {}", r.arguments.join(","), r.request_id),
        );
        if self.hand_over() {
            return Err(Status::unavailable("going down"));
        }
        reply(self.follow)
    }
    async fn un_follow(&self, r: tonic::Request<Request>) -> Result<Response<Reply>, Status> {
        let r = r.into_inner();
        push(&self.log, format!("unfollow {}", r.arguments.join(",")));
        reply(self.unfollow)
    }

    type TimelineStream = ReceiverStream<Result<Message, Status>>;

    async fn timeline(
        &self,
        r: tonic::Request<tonic::Streaming<Message>>,
    ) -> Result<Response<Self::TimelineStream>, Status> {
        let mut inbound = r.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let me = self.clone();
        tokio::spawn(async move {
            let Ok(Some(hello)) = inbound.message().await else {
                return;
            };
            push(
                &me.log,
                format!("hello {} {}", hello.username, hello.session),
            );
            for p in &me.posts {
                let _ = tx.send(Ok(p.clone())).await;
            }
            while let Ok(Some(post)) = inbound.message().await {
                push(&me.log, format!("post {} {}", post.msg, post.post_id));
                if me.hand_over() {
                    let _ = tx.send(Err(Status::unavailable("going down"))).await;
                    return;
                }
                let ack = Message {
                    ack_id: post.post_id,
                    ..Message::default()
                };
                let _ = tx.send(Ok(ack)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn listener() -> (tokio::net::TcpListener, u16) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    (l, port)
}

async fn serve_coord(master: Master) -> u16 {
    let (l, port) = listener().await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CoordinatorServer::new(MockCoord { master }))
            .serve_with_incoming(TcpListenerStream::new(l)),
    );
    port
}

fn serve_sns_on(l: tokio::net::TcpListener, mock: MockSns) {
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SnsServiceServer::new(mock))
            .serve_with_incoming(TcpListenerStream::new(l)),
    );
}

/// A post as the server streams it.
pub(super) fn post(author: &str, t: timefmt::Nanos, text: &str) -> Message {
    Message {
        username: author.into(),
        msg: text.into(),
        timestamp: Some(timefmt::to_timestamp(t)),
        ..Message::default()
    }
}

/// Runs the client with these input lines (then end of input); returns
/// the exit status and the output.
async fn drive(coord_port: u16, lines: &[&str]) -> (i32, String) {
    let (tx, rx) = mpsc::channel(lines.len().max(1));
    for l in lines {
        tx.send((*l).to_owned()).await.expect("queue input");
    }
    drop(tx);
    let mut opts = Options::new("127.0.0.1", coord_port, 1);
    opts.connect_timeout = Duration::from_millis(400);
    let mut out = Vec::new();
    let code = timeout(Duration::from_secs(20), run(opts, rx, &mut out))
        .await
        .expect("client finished");
    (code, String::from_utf8(out).expect("utf-8 output"))
}

fn title() -> String {
    TITLE.iter().map(|l| format!("{l}\n")).collect()
}

#[tokio::test]
async fn commands_and_timeline() {
    let master = Master::default();
    let (l, port) = listener().await;
    let mut mock = MockSns::new();
    mock.unfollow = Ok(Outcome::NotAFollower);
    mock.posts = vec![post("2", 1_000_000_000_000_000_000, "old")];
    let log = mock.log.clone();
    serve_sns_on(l, mock);
    *master.lock().expect("master") = Some(port);
    let coord = serve_coord(master).await;

    let (code, out) = drive(
        coord,
        &[
            "",
            "bogus",
            "LIST",
            "follow 2",
            "UNFOLLOW 3",
            "FOLLOW ",
            "list x",
            "TIMELINE",
            "hello",
            "bad\u{7}",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let expected = format!(
        "{}Cmd> Cmd> Invalid Command\nCmd> {SUCCESS}\nAll users: 1, 2, 3\nFollowers:\n\
         Cmd> {SUCCESS}\nCmd> {NOT_A_FOLLOWER}\nCmd> {NO_ARGUMENTS}\n\
         Cmd> {INVALID_TWO_WORD_COMMAND}\nCmd> {SUCCESS}\n{IN_TIMELINE}\n",
        title()
    );
    assert!(out.starts_with(&expected), "{out}");
    let rest: Vec<&str> = out[expected.len()..].lines().collect();
    assert!(rest.contains(&format_post("2", 1_000_000_000_000_000_000, "old").as_str()));
    assert!(
        rest.iter().any(|l| l.starts_with("Post not sent: ")),
        "{out}"
    );
    assert_eq!(rest.len(), 2, "{out}");

    let log = entries(&log);
    let login = &log[0];
    let session = login.strip_prefix("login 1 ").expect("login first");
    assert_eq!(session.len(), 16);
    assert!(log.contains(&format!("hello 1 {session}")), "{log:?}");
    assert!(log.iter().any(|e| e.starts_with("follow 2 ")), "{log:?}");
    assert!(log.contains(&"unfollow 3".to_owned()), "{log:?}");
    let posts: Vec<&String> = log.iter().filter(|e| e.starts_with("post ")).collect();
    assert_eq!(posts.len(), 1, "{log:?}");
    assert!(posts[0].starts_with("post hello "));
}

#[tokio::test]
async fn command_is_retried_on_the_new_master() {
    let master = Master::default();
    let (la, a) = listener().await;
    let (lb, b) = listener().await;
    let mut old = MockSns::new();
    old.hand_over_to = Some((master.clone(), b));
    let new = MockSns::new();
    let (log_a, log_b) = (old.log.clone(), new.log.clone());
    serve_sns_on(la, old);
    serve_sns_on(lb, new);
    *master.lock().expect("master") = Some(a);
    let coord = serve_coord(master).await;

    let (code, out) = drive(coord, &["FOLLOW 2"]).await;
    assert_eq!(code, 0);
    assert!(
        out.ends_with(&format!(
            "Cmd> Reconnecting to 127.0.0.1:{b}...\n{SUCCESS}\nCmd> "
        )),
        "{out}"
    );
    let follows = |log: &Log| -> Vec<String> {
        entries(log)
            .into_iter()
            .filter(|e| e.starts_with("follow "))
            .collect()
    };
    assert_eq!(follows(&log_a), follows(&log_b));
    assert_eq!(follows(&log_a).len(), 1);
    // The same session on both servers.
    let login = |log: &Log| entries(log)[0].clone();
    assert_eq!(login(&log_a), login(&log_b));
}

#[tokio::test]
async fn timeline_survives_failover_without_duplicates() {
    let master = Master::default();
    let (la, a) = listener().await;
    let (lb, b) = listener().await;
    let p1 = post("2", 1_000_000_000_000_000_000, "one");
    let p2 = post("3", 1_000_000_001_000_000_000, "two");
    let mut old = MockSns::new();
    old.posts = vec![p1.clone()];
    old.hand_over_to = Some((master.clone(), b));
    let mut new = MockSns::new();
    new.posts = vec![p1, p2];
    let (log_a, log_b) = (old.log.clone(), new.log.clone());
    serve_sns_on(la, old);
    serve_sns_on(lb, new);
    *master.lock().expect("master") = Some(a);
    let coord = serve_coord(master).await;

    let (code, out) = drive(coord, &["TIMELINE", "x"]).await;
    assert_eq!(code, 0, "{out}");
    let one = format_post("2", 1_000_000_000_000_000_000, "one");
    let two = format_post("3", 1_000_000_001_000_000_000, "two");
    assert_eq!(out.lines().filter(|l| *l == one).count(), 1, "{out}");
    assert_eq!(out.lines().filter(|l| *l == two).count(), 1, "{out}");
    assert!(
        out.contains(&format!("Reconnecting to 127.0.0.1:{b}...\n")),
        "{out}"
    );
    let posts = |log: &Log| -> Vec<String> {
        entries(log)
            .into_iter()
            .filter(|e| e.starts_with("post "))
            .collect()
    };
    // Resent with its original post id.
    assert_eq!(posts(&log_a).len(), 1);
    assert_eq!(posts(&log_a), posts(&log_b));
}

#[tokio::test]
async fn refused_login_fails_at_once() {
    let master = Master::default();
    let (l, port) = listener().await;
    let mut mock = MockSns::new();
    mock.login = Ok(Outcome::AlreadyJoined);
    let log = mock.log.clone();
    serve_sns_on(l, mock);
    *master.lock().expect("master") = Some(port);
    let coord = serve_coord(master).await;
    let (code, out) = drive(coord, &["LIST"]).await;
    assert_eq!((code, out.as_str()), (1, "connection failed: -1\n"));
    // Refused, not retried.
    assert_eq!(entries(&log).len(), 1, "{:?}", entries(&log));
}

#[tokio::test]
async fn a_login_refused_with_a_status_fails_at_once() {
    let master = Master::default();
    let (l, port) = listener().await;
    let mut mock = MockSns::new();
    mock.login = Err(Code::FailedPrecondition);
    serve_sns_on(l, mock);
    *master.lock().expect("master") = Some(port);
    let coord = serve_coord(master).await;
    let (code, out) = drive(coord, &["LIST"]).await;
    assert_eq!((code, out.as_str()), (1, "connection failed: -1\n"));
}

/// Each outcome of FOLLOW and UNFOLLOW, read from `Reply.msg`, prints its
/// SPEC §2 line; a non-OK status prints the unknown reason.
#[tokio::test]
async fn outcomes_are_read_from_the_reply_message() {
    let cases = [
        (
            Ok(Outcome::AlreadyFollowing),
            Ok(Outcome::UnknownUnfollowee),
        ),
        (Ok(Outcome::UnknownFollowee), Ok(Outcome::UnFollowed)),
        (Err(Code::Internal), Err(Code::FailedPrecondition)),
    ];
    let lines = [
        (ALREADY_EXISTS, INVALID_USERNAME),
        (INVALID_USERNAME, SUCCESS),
        (UNKNOWN_REASON, UNKNOWN_REASON),
    ];
    for ((follow, unfollow), (follow_line, unfollow_line)) in cases.into_iter().zip(lines) {
        let master = Master::default();
        let (l, port) = listener().await;
        let mut mock = MockSns::new();
        mock.follow = follow;
        mock.unfollow = unfollow;
        serve_sns_on(l, mock);
        *master.lock().expect("master") = Some(port);
        let coord = serve_coord(master).await;
        let (code, out) = drive(coord, &["FOLLOW 2", "UNFOLLOW 2"]).await;
        assert_eq!(code, 0, "{out}");
        let expected = format!("{}Cmd> {follow_line}\nCmd> {unfollow_line}\nCmd> ", title());
        assert_eq!(out, expected, "{follow:?} {unfollow:?}");
    }
}

#[tokio::test]
async fn no_master_fails_after_the_connect_timeout() {
    let coord = serve_coord(Master::default()).await;
    let started = std::time::Instant::now();
    let (code, out) = drive(coord, &["LIST"]).await;
    assert_eq!((code, out.as_str()), (1, "connection failed: -1\n"));
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn unreachable_coordinator_fails() {
    // A port nobody listens on.
    let (l, port) = listener().await;
    drop(l);
    let (code, out) = drive(port, &[]).await;
    assert_eq!((code, out.as_str()), (1, "connection failed: -1\n"));
}
