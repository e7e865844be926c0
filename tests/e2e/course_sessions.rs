//! Course clients (SPEC §6) against a server, as they talk: a raw
//! `SNSService` client that sends no session token and never refreshes,
//! one channel (one connection) for its whole life, a timeline opened with
//! `Set Stream` stamped with the current time, posts ending with `\n` and
//! no `post_id`.
//!
//! The harness's runtime is multi-threaded: the test thread blocks while it
//! polls, and the connections still answer the server's keep-alive pings
//! meanwhile, as a live course client does.

use crate::harness::grpc::{connect, expect_code, login, login_ok, request};
use crate::harness::*;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc as std_mpsc;
use tinysns::proto::csce438::Message;
use tinysns::proto::csce438::sns_service_client::SnsServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// Short, so that idleness and dead-peer detection take little time; the
/// keep-alive timeout is most of a failure window (see `server::conn`).
const HB: u64 = 300;

/// What a course client's `fgets` line looks like on the wire.
const LINE_END: &str = "\n";

type Sns = SnsServiceClient<Channel>;

/// Cluster 1 alone; users 1, 4, 7 live there.
struct Cluster {
    sys: System,
    url: String,
    dir: PathBuf,
}

impl Cluster {
    fn start() -> Cluster {
        let sys = System::one_cluster(HB);
        Cluster {
            url: sys.server_url(1, 1),
            dir: sys.data_dir().join("cluster_1"),
            sys,
        }
    }

    fn files(&self) -> Snapshot {
        snapshot(&self.dir, std::slice::from_ref(&self.dir))
    }

    fn posts_file(&self, user: u64) -> PathBuf {
        self.sys.server_dir(1, 1).join(format!("u{user}_posts.txt"))
    }
}

/// Whether a Login answer refuses a duplicate: `ALREADY_EXISTS`, or, in the
/// course's convention (OK, the outcome in `Reply.msg`), `you have already
/// joined`.
fn is_duplicate(r: &Result<String, Status>) -> bool {
    match r {
        Ok(msg) => msg == "you have already joined",
        Err(s) => s.code() == Code::AlreadyExists,
    }
}

/// A logged-in answer (whatever its wording).
fn is_logged_in(r: &Result<String, Status>) -> bool {
    r.is_ok() && !is_duplicate(r)
}

/// Logs `user` in on `c` with `token`; it must be refused as a duplicate
/// and change no file of the cluster.
fn refused_duplicate(
    rt: &tokio::runtime::Runtime,
    k: &Cluster,
    c: &mut Sns,
    user: &str,
    token: &str,
) {
    let before = k.files();
    let r = rt.block_on(login(c, user, token));
    assert!(
        is_duplicate(&r),
        "a second login of user {user} (token {token:?}) while the first lives: {r:?}"
    );
    assert_same_files(&before, &k.files(), "a refused duplicate login");
}

/// A course client's List: no token.
fn list(rt: &tokio::runtime::Runtime, c: &mut Sns, user: &str) -> Result<Vec<String>, Status> {
    rt.block_on(c.list(request(user, "", &[])))
        .map(|r| r.into_inner().all_users)
}

/// Waits until `user` logs in without a token on `c`.
fn wait_login(rt: &tokio::runtime::Runtime, c: &mut Sns, user: &str, what: &str) {
    wait_for(what, || {
        let r = rt.block_on(login(c, user, ""));
        if is_logged_in(&r) {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
}

#[test]
fn a_course_session_outlives_idleness_and_shuts_out_a_second_login() {
    let k = Cluster::start();
    let rt = runtime();
    let mut first = rt.block_on(connect(&k.url));
    rt.block_on(login_ok(&mut first, "1", ""));
    // A clock for idleness that the test can poll: user 4's token session,
    // never refreshed, runs out after a failure window (two heartbeats);
    // twice over is four heartbeats of silence on the first connection.
    let mut clock = rt.block_on(connect(&k.url));
    rt.block_on(login_ok(&mut clock, "4", "t0"));
    for t in ["t1", "t2"] {
        wait_for("user 4's token session to run out", || {
            let r = rt.block_on(login(&mut clock, "4", t));
            if is_logged_in(&r) {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        });
    }
    // Idle for four heartbeats, never refreshed: still logged in.
    let users = list(&rt, &mut first, "1").expect("List after idleness");
    assert!(users.contains(&"1".to_string()), "{users:?}");
    rt.block_on(first.follow(request("1", "", &["4"])))
        .expect("Follow after idleness");

    // Another connection is refused, with or without a token, and cannot
    // use the session either.
    let mut second = rt.block_on(connect(&k.url));
    refused_duplicate(&rt, &k, &mut second, "1", "");
    refused_duplicate(&rt, &k, &mut second, "1", "some-token");
    let before = k.files();
    expect_code(
        list(&rt, &mut second, "1"),
        Code::Unauthenticated,
        "List of user 1 on another connection",
    );
    expect_code(
        rt.block_on(second.un_follow(request("1", "", &["4"]))),
        Code::Unauthenticated,
        "UnFollow of user 1 on another connection",
    );
    assert_same_files(&before, &k.files(), "requests on another connection");
    // The first client is untouched, and logging in again on its own
    // connection is harmless.
    let r = rt.block_on(login(&mut first, "1", ""));
    assert!(is_logged_in(&r), "{r:?}");
    list(&rt, &mut first, "1").expect("List on the first connection");
}

#[test]
fn a_dropped_connection_frees_its_user() {
    let k = Cluster::start();
    let rt = runtime();
    let mut first = rt.block_on(connect(&k.url));
    rt.block_on(login_ok(&mut first, "1", ""));
    let mut second = rt.block_on(connect(&k.url));
    refused_duplicate(&rt, &k, &mut second, "1", "");
    // The client goes away: its channel (and connection) is dropped.
    drop(first);
    wait_login(
        &rt,
        &mut second,
        "1",
        "a new login once the first connection is gone",
    );
    list(&rt, &mut second, "1").expect("the new session works");
}

/// A course client as a process of its own: this test binary again,
/// running [`course_client_process`], which logs in without a token,
/// prints `logged in` and then sits idle on its connection.
struct CourseClient {
    proc: Proc,
}

impl CourseClient {
    fn start(url: &str, user: u64) -> CourseClient {
        let exe = std::env::current_exe().expect("the test binary");
        let mut cmd = Command::new(exe);
        cmd.args([
            "--exact",
            "course_sessions::course_client_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("COURSE_CLIENT_URL", url)
        .env("COURSE_CLIENT_USER", user.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        let mut proc = Proc::spawn(cmd, "a course client");
        let stdout = proc.child.stdout.take().expect("stdout");
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let start = std::time::Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match rx.recv_timeout(left) {
                // After libtest's own "test ... " on the same line.
                Ok(l) if l.ends_with("logged in") => break,
                Ok(_) => {}
                Err(_) => panic!("the course client of user {user} did not log in"),
            }
        }
        CourseClient { proc }
    }

    fn signal(&self, sig: &str) {
        let pid = self.proc.pid();
        let st = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill {sig} {pid} failed");
    }
}

/// Not a test: the body of [`CourseClient`], run in a process of its own.
#[test]
#[ignore = "run by CourseClient in a process of its own"]
fn course_client_process() {
    let (Ok(url), Ok(user)) = (
        std::env::var("COURSE_CLIENT_URL"),
        std::env::var("COURSE_CLIENT_USER"),
    ) else {
        return;
    };
    let rt = runtime();
    let _channel = rt.block_on(async {
        let mut c = connect(&url).await;
        login_ok(&mut c, &user, "").await;
        c
    });
    println!("logged in");
    // Idle on the connection, which the runtime's threads keep answering.
    loop {
        std::thread::park();
    }
}

#[test]
fn a_killed_or_paused_course_client_frees_its_user() {
    let k = Cluster::start();
    let rt = runtime();
    let mut c = rt.block_on(connect(&k.url));

    // SIGKILL: the kernel closes the connection.
    let mut killed = CourseClient::start(&k.url, 1);
    refused_duplicate(&rt, &k, &mut c, "1", "");
    killed.proc.kill();
    wait_login(&rt, &mut c, "1", "a new login once the client is killed");

    // SIGSTOP: the connection stays open but nobody answers on it, as with
    // a peer on a cut link; the keep-alive gives up on it.
    let paused = CourseClient::start(&k.url, 4);
    refused_duplicate(&rt, &k, &mut c, "4", "");
    paused.signal("-STOP");
    wait_login(
        &rt,
        &mut c,
        "4",
        "a new login once the client stops answering",
    );
    list(&rt, &mut c, "4").expect("the new session works");
    paused.signal("-CONT");
}

/// Opens a course client's timeline: `Set Stream`, the current time (or
/// `at`), no token.
async fn course_timeline(
    c: &mut Sns,
    user: &str,
    at: Option<prost_types::Timestamp>,
) -> Result<(mpsc::Sender<Message>, Streaming<Message>), Status> {
    let (tx, rx) = mpsc::channel(64);
    let now = tinysns::timefmt::to_timestamp(tinysns::timefmt::now());
    tx.send(Message {
        username: user.to_string(),
        msg: "Set Stream".into(),
        timestamp: Some(at.unwrap_or(now)),
        ..Default::default()
    })
    .await
    .expect("queue the first message");
    let stream = c.timeline(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, stream))
}

/// A course client's post: stamped now, no `post_id`.
fn post(user: &str, text: &str) -> Message {
    Message {
        username: user.to_string(),
        msg: text.to_string(),
        timestamp: Some(tinysns::timefmt::to_timestamp(tinysns::timefmt::now())),
        ..Default::default()
    }
}

async fn next(stream: &mut Streaming<Message>, what: &str) -> Message {
    match tokio::time::timeout(DEADLINE, stream.message()).await {
        Ok(Ok(Some(m))) => m,
        other => panic!("{what}: {other:?}"),
    }
}

fn wait_posts(path: &Path, n: usize) -> Vec<String> {
    wait_for("the posts to be stored", || {
        let texts = post_texts(path);
        if texts.len() >= n {
            Ok(texts)
        } else {
            Err(format!("{} of {n}", texts.len()))
        }
    })
}

#[test]
fn a_course_timeline_gets_the_last_20_posts_and_its_line_ends_are_removed() {
    let k = Cluster::start();
    let rt = runtime();
    let mut author = rt.block_on(connect(&k.url));
    let mut reader = rt.block_on(connect(&k.url));
    rt.block_on(login_ok(&mut author, "1", ""));
    rt.block_on(login_ok(&mut reader, "4", ""));
    rt.block_on(reader.follow(request("4", "", &["1"])))
        .expect("4 follows 1");

    // User 1 posts 25 lines as fgets reads them, asking for no acks.
    let (to_1, mut from_1) = rt
        .block_on(course_timeline(&mut author, "1", None))
        .expect("user 1's timeline");
    let texts: Vec<String> = (0..25).map(|i| format!("p{i}")).collect();
    for t in &texts {
        rt.block_on(to_1.send(post("1", &format!("{t}{LINE_END}"))))
            .expect("post");
    }
    let stored = wait_posts(&k.posts_file(1), texts.len());
    assert_eq!(stored, texts, "stored without their line ends");

    // Opened with the current time, as course clients do: the last 20, not
    // only what is newer than about a minute ago; and the same with a clock
    // far ahead.
    let an_hour_on = tinysns::timefmt::to_timestamp(tinysns::timefmt::now() + 3_600_000_000_000);
    for at in [None, Some(an_hour_on)] {
        let (_to_4, mut from_4) = rt
            .block_on(course_timeline(&mut reader, "4", at))
            .expect("user 4's timeline");
        let got: Vec<String> = rt.block_on(async {
            let mut got = Vec::new();
            for _ in 0..20 {
                got.push(next(&mut from_4, "the last 20 posts").await.msg);
            }
            got
        });
        assert_eq!(got, texts[5..], "opened at {at:?}");
    }

    // A live post arrives without its line end.
    let (to_4, mut from_4) = rt
        .block_on(course_timeline(&mut reader, "4", None))
        .expect("user 4's timeline");
    rt.block_on(async {
        for _ in 0..20 {
            next(&mut from_4, "the backlog").await;
        }
        to_1.send(post("1", &format!("hello{LINE_END}")))
            .await
            .expect("post");
        let m = next(&mut from_4, "the live post").await;
        assert_eq!((m.username.as_str(), m.msg.as_str()), ("1", "hello"));
        assert_eq!(m.ack_id, 0);
    });
    assert_eq!(
        post_texts(&k.posts_file(1)).last().map(String::as_str),
        Some("hello")
    );

    // No acks came to user 1, who asked for none: the first message on its
    // stream is the post of someone it follows, made after all of its own.
    rt.block_on(author.follow(request("1", "", &["4"])))
        .expect("1 follows 4");
    rt.block_on(to_4.send(post("4", &format!("sentinel{LINE_END}"))))
        .expect("post");
    let m = rt.block_on(next(&mut from_1, "user 1's first message"));
    assert_eq!(
        (m.username.as_str(), m.msg.as_str(), m.ack_id),
        ("4", "sentinel", 0),
        "no acknowledgement before it"
    );

    // Another control character is still refused, and nothing is stored.
    let before = k.files();
    rt.block_on(to_1.send(post("1", "a\tb\n"))).expect("post");
    let end = rt.block_on(async {
        match tokio::time::timeout(DEADLINE, from_1.message()).await {
            Ok(Ok(Some(m))) => panic!("unexpected message {m:?}"),
            Ok(Err(s)) => Err::<(), Status>(s),
            other => panic!("the stream did not end with an error: {other:?}"),
        }
    });
    expect_code(end, Code::InvalidArgument, "a post with a tab");
    assert_same_files(&before, &k.files(), "a refused post");
}

/// A course client's channel may replace its connection (cut, or closed
/// when idle) and the client never logs in again: its next request on the
/// new connection takes the user's session back, as long as no other
/// client holds it; a second client is then refused as before.
#[test]
fn a_course_client_on_a_new_connection_carries_on_without_logging_in() {
    let k = Cluster::start();
    let rt = runtime();
    let mut first = rt.block_on(connect(&k.url));
    rt.block_on(login_ok(&mut first, "1", ""));
    drop(first);
    // The same client, its channel on a new connection: no Login.
    let mut again = rt.block_on(connect(&k.url));
    // The old connection's end may not be seen yet: until then the session
    // is still the old connection's.
    wait_for("LIST on the new connection", || {
        list(&rt, &mut again, "1")
            .map(drop)
            .map_err(|s| format!("{s:?}"))
    });
    let mut other = rt.block_on(connect(&k.url));
    refused_duplicate(&rt, &k, &mut other, "1", "");
    // A user who never logged in is not taken in this way.
    let mut stranger = rt.block_on(connect(&k.url));
    let r = list(&rt, &mut stranger, "4");
    assert!(
        matches!(&r, Err(s) if s.code() == Code::Unauthenticated),
        "{r:?}"
    );
}
