//! A client written for the course (Fall 2023, package `csce438`: the
//! skeleton `client.cc` with the MP1 solution's `tsc.cc`), emulated from the
//! course's side of the wire only (`/work/shared/COURSE.md`, SPEC §6): its
//! messages are defined here by hand with the course's fields and nothing
//! else, so no field this project added (session, request and post ids,
//! acknowledgements, lease) can be sent or read by mistake.
//!
//! Like the course's `tsc`: `GetServer(ID{user})` on the coordinator, then
//! ONE channel to `hostname:port` for the client's whole life, `Login`
//! without a session token and never refreshed, no retry anywhere. What the
//! course client would print is kept as lines ([`CourseClient::next_line`]),
//! prompts left out, so a test checks the screens of the course's sheets.
//! Ending the client ([`Drop`]) is Ctrl-C: the connection simply goes away.

use super::client::TITLE;
use super::process::DEADLINE;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;
use tokio::sync::mpsc as amsc;
use tonic::Status;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic_prost::ProstCodec;

/// `coordinator.proto`'s `ID`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Id {
    #[prost(int32, tag = "1")]
    pub id: i32,
}

/// `coordinator.proto`'s `ServerInfo` (not this project's `tinysns`
/// `ServerInfo`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CourseServerInfo {
    #[prost(int32, tag = "1")]
    pub server_id: i32,
    #[prost(string, tag = "2")]
    pub hostname: String,
    #[prost(string, tag = "3")]
    pub port: String,
    #[prost(string, tag = "4")]
    pub r#type: String,
}

/// `sns.proto`'s `Request`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(string, tag = "1")]
    pub username: String,
    #[prost(string, repeated, tag = "2")]
    pub arguments: Vec<String>,
}

/// `sns.proto`'s `Reply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Reply {
    #[prost(string, tag = "1")]
    pub msg: String,
}

/// `sns.proto`'s `ListReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListReply {
    #[prost(string, repeated, tag = "1")]
    pub all_users: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub followers: Vec<String>,
}

/// `sns.proto`'s `Message`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    #[prost(string, tag = "1")]
    pub username: String,
    #[prost(string, tag = "2")]
    pub msg: String,
    #[prost(message, optional, tag = "3")]
    pub timestamp: Option<prost_types::Timestamp>,
}

pub const GET_SERVER: &str = "/csce438.CoordService/GetServer";
pub const LOGIN: &str = "/csce438.SNSService/Login";
pub const LIST: &str = "/csce438.SNSService/List";
pub const FOLLOW: &str = "/csce438.SNSService/Follow";
pub const UNFOLLOW: &str = "/csce438.SNSService/UnFollow";
pub const TIMELINE: &str = "/csce438.SNSService/Timeline";

/// The line `run()` prints when `connectTo()` fails.
pub const CONNECTION_FAILED: &str = "connection failed: -1";

/// One unary call on `channel` (a clone shares its connection), as a
/// generated stub would make it.
pub async fn unary<Q, R>(channel: &Channel, path: &'static str, req: Q) -> Result<R, Status>
where
    Q: prost::Message + Send + Sync + 'static,
    R: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("Service was not ready: {e}")))?;
    let codec: ProstCodec<Q, R> = ProstCodec::default();
    grpc.unary(
        tonic::Request::new(req),
        PathAndQuery::from_static(path),
        codec,
    )
    .await
    .map(|r| r.into_inner())
}

/// The course's `GetServer(ID{user})` on the coordinator at `host:port`.
pub async fn get_server(host: &str, port: u16, user: u64) -> Result<CourseServerInfo, Status> {
    let channel = lazy_channel(&format!("{host}:{port}"))?;
    let id = i32::try_from(user).map_err(|_| Status::invalid_argument("user id"))?;
    unary(&channel, GET_SERVER, Id { id }).await
}

/// What `grpc::CreateChannel` gives: nothing is dialled until the first
/// call, so a refused connection shows as that call's UNAVAILABLE.
fn lazy_channel(address: &str) -> Result<Channel, Status> {
    Endpoint::from_shared(format!("http://{address}"))
        .map(|e| e.connect_lazy())
        .map_err(|e| Status::invalid_argument(format!("address {address:?}: {e}")))
}

/// The course's `MakeMessage`: stamped with the current time, in seconds.
pub fn make_message(user: u64, msg: &str) -> Message {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Message {
        username: user.to_string(),
        msg: msg.to_string(),
        timestamp: Some(prost_types::Timestamp { seconds, nanos: 0 }),
    }
}

/// `ctime()` of `seconds` in local time, without its newline.
pub fn ctime(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%a %b %e %H:%M:%S %Y")
                .to_string()
        })
        .unwrap_or_else(|| format!("<bad time {seconds}>"))
}

/// The course's `displayPostMessage`: it writes ctime's string with a NUL
/// where the newline was, and the text as received (a newline in it makes
/// a second line on the screen).
pub fn display_post(m: &Message) -> String {
    let seconds = m.timestamp.as_ref().map_or(0, |t| t.seconds);
    format!("{} ({}\0) >> {}", m.username, ctime(seconds), m.msg)
}

/// `(author, text)` of a post line, the time left out.
pub fn split_post(line: &str) -> Option<(String, String)> {
    let (author, _) = line.split_once(" (")?;
    let (_, text) = line.split_once(") >> ")?;
    Some((author.to_string(), text.to_string()))
}

/// What the course client prints for a `Follow` / `UnFollow` that came
/// back OK (tsc's `Reply.msg` to status mapping, then the skeleton's
/// `processCommandReply`). A string tsc does not know is taken as failure
/// for an unknown reason.
pub fn follow_line(unfollow: bool, msg: &str) -> &'static str {
    match (unfollow, msg) {
        (false, "Follow Successful") | (true, "UnFollow Successful") => {
            "Command completed successfully"
        }
        (false, "you have already joined") => "Input username already exists, command failed",
        (false, "unknown follower username" | "unkown user name")
        | (true, "Unknown follower" | "Unknown follower username") => {
            "Command failed with invalid username"
        }
        (true, "You are not a follower") => "Command failed with not a follower",
        _ => "Command failed with unknown reason",
    }
}

/// A running course client of one user.
pub struct CourseClient {
    pub user: u64,
    /// `hostname:port` from `GetServer`, the one server it talks to.
    pub server: String,
    /// Why connecting failed, when it printed [`CONNECTION_FAILED`].
    pub failure: Option<String>,
    /// How the timeline stream ended, if it has (the course client prints
    /// nothing then; kept for the tests' messages).
    pub stream_end: Arc<Mutex<Option<String>>>,
    /// Every line printed so far that the test has read.
    pub seen: Vec<String>,
    rt: Option<tokio::runtime::Runtime>,
    channel: Option<Channel>,
    screen: mpsc::Sender<String>,
    lines: mpsc::Receiver<String>,
    timeline: Option<amsc::UnboundedSender<Message>>,
}

impl Drop for CourseClient {
    /// Ctrl-C: the stream and the channel go away with the process.
    fn drop(&mut self) {
        self.timeline = None;
        self.channel = None;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl CourseClient {
    /// `tsc -h localhost -k <coord_port> -u <user>`: connects and logs in,
    /// printing the title block, or `connection failed: -1` (then the
    /// client has ended, as `exit(1)` would).
    pub fn start(coord_port: u16, user: u64) -> CourseClient {
        CourseClient::start_at("localhost", coord_port, user)
    }

    pub fn start_at(coord_host: &str, coord_port: u16, user: u64) -> CourseClient {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (screen, lines) = mpsc::channel();
        let mut c = CourseClient {
            user,
            server: String::new(),
            failure: None,
            stream_end: Arc::new(Mutex::new(None)),
            seen: Vec::new(),
            rt: None,
            channel: None,
            screen,
            lines,
            timeline: None,
        };
        let connected = rt.block_on(async {
            let info = get_server(coord_host, coord_port, user)
                .await
                .map_err(|s| format!("GetServer: {:?} {:?}", s.code(), s.message()))?;
            let server = format!("{}:{}", info.hostname, info.port);
            let channel = lazy_channel(&server).map_err(|s| s.message().to_string())?;
            let reply: Reply = unary(&channel, LOGIN, c.request(&[]))
                .await
                .map_err(|s| format!("Login at {server}: {:?} {:?}", s.code(), s.message()))?;
            if reply.msg == "you have already joined" {
                return Err(format!("Login at {server}: {:?}", reply.msg));
            }
            Ok((server, channel))
        });
        match connected {
            Ok((server, channel)) => {
                c.server = server;
                c.channel = Some(channel);
                c.rt = Some(rt);
                for l in TITLE {
                    c.print(l);
                }
            }
            Err(why) => {
                c.failure = Some(why);
                c.print(CONNECTION_FAILED);
                rt.shutdown_background();
            }
        }
        c
    }

    /// Started, and the title block printed.
    pub fn logged_in(coord_port: u16, user: u64) -> CourseClient {
        let mut c = CourseClient::start(coord_port, user);
        c.expect_title();
        c
    }

    /// A user relaunched (the course's sheets wait between steps): started
    /// again until it logs in or the deadline passes, since the server
    /// may take up to two heartbeat periods to notice that the previous
    /// client went away, and a just-promoted master to know it is one.
    pub fn relaunched(coord_port: u16, user: u64) -> CourseClient {
        let start = Instant::now();
        loop {
            let c = CourseClient::start(coord_port, user);
            if c.failure.is_none() || start.elapsed() >= DEADLINE {
                let mut c = c;
                c.expect_title();
                return c;
            }
            drop(c);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn expect_title(&mut self) {
        for l in TITLE {
            self.expect_next(l);
        }
    }

    fn print(&self, text: &str) {
        for l in text.split('\n') {
            let _ = self.screen.send(l.to_string());
        }
    }

    fn request(&self, arguments: &[&str]) -> Request {
        Request {
            username: self.user.to_string(),
            arguments: arguments.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn channel(&self) -> &Channel {
        self.channel.as_ref().expect("a connected course client")
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("a connected course client")
    }

    /// Types one command-mode line (`FOLLOW 4`, `UNFOLLOW 4`, `LIST`,
    /// `TIMELINE`); what it prints is read with [`CourseClient::next_line`].
    pub fn send(&mut self, line: &str) {
        let (word, arg) = match line.split_once(' ') {
            Some((w, a)) => (w.to_ascii_uppercase(), a.to_string()),
            None => (line.to_ascii_uppercase(), String::new()),
        };
        let out = match (word.as_str(), arg.is_empty()) {
            ("LIST", true) => self.list_rpc(),
            ("TIMELINE", true) => {
                self.open_timeline();
                return;
            }
            ("FOLLOW" | "UNFOLLOW", false) => {
                let unfollow = word == "UNFOLLOW";
                let path = if unfollow { UNFOLLOW } else { FOLLOW };
                let req = self.request(&[&arg]);
                let r: Result<Reply, Status> =
                    self.runtime().block_on(unary(self.channel(), path, req));
                match r {
                    Ok(reply) => follow_line(unfollow, &reply.msg).to_string(),
                    Err(s) => grpc_failed(&s),
                }
            }
            ("FOLLOW" | "UNFOLLOW", true) => "Invalid Input -- No Arguments Given".into(),
            (_, true) => "Invalid Command".into(),
            (_, false) => "Command failed with invalid command".into(),
        };
        self.print(&out);
    }

    fn list_rpc(&self) -> String {
        let r: Result<ListReply, Status> =
            self.runtime()
                .block_on(unary(self.channel(), LIST, self.request(&[])));
        match r {
            Ok(l) => format!(
                "Command completed successfully\nAll users: {}\nFollowers: {}",
                l.all_users.join(", "),
                l.followers.join(", ")
            ),
            Err(s) => grpc_failed(&s),
        }
    }

    /// TIMELINE: the two lines, then the stream, whose first message is
    /// `Set Stream` stamped with the current time; every message received
    /// is printed as it arrives.
    fn open_timeline(&mut self) {
        self.print("Command completed successfully");
        self.print("Now you are in the timeline");
        let (tx, rx) = amsc::unbounded_channel();
        let _ = tx.send(make_message(self.user, "Set Stream"));
        self.timeline = Some(tx);
        let channel = self.channel().clone();
        let screen = self.screen.clone();
        let end = self.stream_end.clone();
        self.runtime().spawn(async move {
            let why = read_timeline(channel, rx, screen).await;
            *end.lock().expect("stream end") = Some(why);
        });
    }

    /// A line typed in timeline mode, sent as `fgets` read it: with its
    /// newline.
    pub fn post(&mut self, line: &str) {
        self.post_raw(&format!("{line}\n"));
    }

    /// Sends `msg` exactly as the post's text.
    pub fn post_raw(&mut self, msg: &str) {
        let m = make_message(self.user, msg);
        let tx = self.timeline.as_ref().expect("in timeline mode");
        assert!(tx.send(m).is_ok(), "timeline stream of {} gone", self.user);
    }

    pub fn post_all(&mut self, lines: &[&str]) {
        for l in lines {
            self.post(l);
        }
    }

    /// The next printed line, within the deadline.
    pub fn next_line(&mut self) -> Option<String> {
        let l = self.lines.recv_timeout(DEADLINE).ok()?;
        self.seen.push(l.clone());
        Some(l)
    }

    /// What the screen showed so far, and how the stream ended, for
    /// messages.
    pub fn transcript(&self) -> String {
        format!(
            "user {} at {:?} (failure {:?}, stream end {:?}) saw {:#?}",
            self.user,
            self.server,
            self.failure,
            self.stream_end.lock().expect("stream end"),
            self.seen
        )
    }

    /// The next line must be exactly `want`.
    pub fn expect_next(&mut self, want: &str) {
        match self.next_line() {
            Some(l) => assert_eq!(l, want, "{}", self.transcript()),
            None => panic!("no line; wanted {want:?}; {}", self.transcript()),
        }
    }

    /// Runs a command and requires exactly these lines.
    pub fn check(&mut self, line: &str, want: &[&str]) {
        self.send(line);
        for w in want {
            self.expect_next(w);
        }
    }

    /// Runs LIST; the screen must show these users and followers.
    pub fn expect_list(&mut self, users: &str, followers: &str) {
        self.check(
            "LIST",
            &[
                "Command completed successfully",
                &format!("All users: {users}"),
                &format!("Followers: {followers}"),
            ],
        );
    }

    /// TIMELINE and its two lines.
    pub fn enter_timeline(&mut self) {
        self.check(
            "TIMELINE",
            &[
                "Command completed successfully",
                "Now you are in the timeline",
            ],
        );
    }

    /// The next lines must be these posts, `(author, text)`, in this order.
    pub fn expect_posts(&mut self, want: &[(u64, &str)]) {
        for (author, text) in want {
            let line = self.next_line().unwrap_or_else(|| {
                panic!(
                    "no post; wanted {author} >> {text:?}; {}",
                    self.transcript()
                )
            });
            let got = split_post(&line);
            assert_eq!(
                got,
                Some((author.to_string(), text.to_string())),
                "line {line:?}; {}",
                self.transcript()
            );
        }
    }

    /// Nothing printed but what was read already (checked after the others'
    /// screens are complete, so anything extra would have had time to come).
    pub fn expect_nothing_more(&mut self) {
        let extra: Vec<String> = self.lines.try_iter().collect();
        assert!(
            extra.is_empty(),
            "extra lines {extra:?}; {}",
            self.transcript()
        );
    }
}

/// Reads the stream until it ends; returns how.
async fn read_timeline(
    channel: Channel,
    rx: amsc::UnboundedReceiver<Message>,
    screen: mpsc::Sender<String>,
) -> String {
    let mut grpc = Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return format!("not ready: {e}");
    }
    let codec: ProstCodec<Message, Message> = ProstCodec::default();
    let outbound = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let resp = grpc
        .streaming(
            tonic::Request::new(outbound),
            PathAndQuery::from_static(TIMELINE),
            codec,
        )
        .await;
    let mut inbound = match resp {
        Ok(r) => r.into_inner(),
        Err(s) => return format!("{:?} {:?}", s.code(), s.message()),
    };
    loop {
        match inbound.message().await {
            Ok(Some(m)) => {
                for l in display_post(&m).split('\n') {
                    if screen.send(l.to_string()).is_err() {
                        return "client ended".into();
                    }
                }
            }
            Ok(None) => return "ended by the server (OK)".into(),
            Err(s) => return format!("{:?} {:?}", s.code(), s.message()),
        }
    }
}

/// The skeleton's line for a non-OK status.
pub fn grpc_failed(s: &Status) -> String {
    format!("grpc failed: {}", s.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screens_are_what_the_course_client_prints() {
        let m = Message {
            username: "2".into(),
            msg: "hello".into(),
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_795_000_000,
                nanos: 0,
            }),
        };
        let line = display_post(&m);
        assert!(line.contains("\0) >> hello"), "{line:?}");
        assert_eq!(split_post(&line), Some(("2".into(), "hello".into())));
        // A text that kept fgets's newline would show as a second, empty line.
        let kept = display_post(&Message {
            msg: "hello\n".into(),
            ..m
        });
        assert_eq!(kept.split('\n').nth(1), Some(""));
        assert_eq!(
            follow_line(false, "Follow Successful"),
            "Command completed successfully"
        );
        assert_eq!(
            follow_line(true, "Unknown follower"),
            "Command failed with invalid username"
        );
        assert_eq!(
            follow_line(true, "Follow Successful"),
            "Command failed with unknown reason"
        );
    }
}
