//! Bad input from the network and the command line: every bad request gets
//! the gRPC code of the conventions in `src/error.rs` (or, for the user's
//! own mistakes in Login, Follow and UnFollow, an OK reply with the course's
//! `msg`, SPEC §6) and changes no file of the cluster (master's nor slave's); every process given bad flags exits
//! with status 2 and a one-line reason.

use crate::harness::grpc::{connect, expect_code, login, login_ok, open_timeline, request};
use crate::harness::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tinysns::proto::csce438::Message;
use tinysns::proto::csce438::sns_service_client::SnsServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// Heartbeat period of the systems started here. A session lives two
/// periods without a refresh; a long period keeps the sessions of these tests
/// alive on a busy machine (nothing here depends on failure detection).
const HEARTBEAT_MS: u64 = 1000;

/// Every file of the cluster's directory (master's and slave's), by path
/// relative to it.
fn cluster_files(dir: &Path) -> Snapshot {
    snapshot(dir, &[dir.to_path_buf()])
}

/// Panics, naming the files that differ, unless `dir` still holds exactly
/// what `before` recorded.
fn assert_unchanged(dir: &Path, before: &Snapshot, what: &str) {
    assert_same_files(before, &cluster_files(dir), what);
}

/// Cluster 1 of 3 (master and in-service slave, no synchronizer), for
/// requests sent straight to its master.
struct Cluster {
    sys: System,
    /// The cluster's directory (both servers').
    dir: PathBuf,
    /// The master's address.
    url: String,
    /// User 1's posts on the master.
    posts_file: PathBuf,
}

impl Cluster {
    fn start() -> Cluster {
        let sys = System::one_cluster(HEARTBEAT_MS);
        Cluster {
            dir: sys.data_dir().join("cluster_1"),
            url: sys.server_url(1, 1),
            posts_file: sys.server_dir(1, 1).join("u1_posts.txt"),
            sys,
        }
    }

    /// A connection to the master, user 1 logged in with session `token-1`.
    async fn user_1(url: &str) -> SnsServiceClient<Channel> {
        let mut c = connect(url).await;
        login_ok(&mut c, "1", "token-1").await;
        c
    }
}

/// Sends `request` (a future: nothing is sent before it is awaited); it
/// must fail with `want` and leave every file of `dir` as it was.
async fn refused<T: std::fmt::Debug>(
    dir: &Path,
    want: Code,
    what: &str,
    request: impl Future<Output = Result<T, Status>>,
) {
    let before = cluster_files(dir);
    expect_code(request.await, want, what);
    assert_unchanged(dir, &before, what);
}

#[derive(Debug, Clone, Copy)]
enum Op {
    List,
    Follow,
    UnFollow,
}

async fn call(
    c: &mut SnsServiceClient<Channel>,
    op: Op,
    user: &str,
    session: &str,
    args: &[&str],
) -> Result<String, Status> {
    let req = request(user, session, args);
    match op {
        Op::List => c.list(req).await.map(|_| String::new()),
        Op::Follow => c.follow(req).await.map(|r| r.into_inner().msg),
        Op::UnFollow => c.un_follow(req).await.map(|r| r.into_inner().msg),
    }
}

/// Sends `request`; it must be answered OK with the course's `msg` for a
/// refused outcome (SPEC §6) and leave every file of `dir` as it was.
async fn answered(
    dir: &Path,
    want: &str,
    what: &str,
    request: impl Future<Output = Result<String, Status>>,
) {
    let before = cluster_files(dir);
    match request.await {
        Ok(msg) => assert_eq!(msg, want, "{what}"),
        Err(s) => panic!("{what}: expected OK {want:?}, got {s:?}"),
    }
    assert_unchanged(dir, &before, what);
}

/// Calls as user 1 (session `token-1`), refreshing the session first (a
/// login with the same token, which writes nothing for a known user);
/// retries if the session expired in between anyway, so that a slow machine
/// cannot turn the expected code into UNAUTHENTICATED.
async fn as_user_1(
    c: &mut SnsServiceClient<Channel>,
    op: Op,
    args: &[&str],
) -> Result<String, Status> {
    let mut tries = 0;
    loop {
        login_ok(c, "1", "token-1").await;
        let r = call(c, op, "1", "token-1", args).await;
        tries += 1;
        match r {
            Err(s) if s.code() == Code::Unauthenticated && tries < 5 => continue,
            r => return r,
        }
    }
}

/// What ended a timeline stream (the first error), or the ack of `post_id`.
#[derive(Debug)]
enum Outcome {
    Acked,
    Failed(Status),
    Ended,
}

async fn outcome(stream: &mut Streaming<Message>, post_id: u64) -> Outcome {
    outcome_within_deadline(stream, post_id, |m| m.ack_id)
        .await
        .unwrap_or_else(|| panic!("no ack for post {post_id} and no error within {DEADLINE:?}"))
}

/// [`outcome`] for a stream of any message type (`ack_id` reads its ack);
/// `None` if neither an ack nor an error came within the deadline.
async fn outcome_within_deadline<M>(
    stream: &mut Streaming<M>,
    post_id: u64,
    ack_id: impl Fn(&M) -> u64,
) -> Option<Outcome> {
    let wait = async {
        loop {
            match stream.message().await {
                Ok(Some(m)) if ack_id(&m) == post_id => return Outcome::Acked,
                Ok(Some(_)) => continue, // a post of the timeline, or another ack
                Ok(None) => return Outcome::Ended,
                Err(s) => return Outcome::Failed(s),
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait).await.ok()
}

#[test]
fn bad_requests_get_their_codes_and_change_nothing() {
    let cluster = Cluster::start();
    let (dir, url) = (&cluster.dir, &cluster.url);
    runtime().block_on(async {
        let mut c = Cluster::user_1(url).await;
        login_ok(&mut c, "4", "token-4").await;

        // Login: malformed user ids, then users of other clusters.
        let malformed = [
            "0",
            "-1",
            "abc",
            "",
            "+1",
            " 1",
            "1 ",
            "99999999999999999999999",
        ]
        .map(|u| (u, Code::InvalidArgument, format!("Login as {u:?}")));
        let elsewhere = ["2", "3", "5"].map(|u| {
            let what = format!("Login at cluster 1 as user {u} of another cluster");
            (u, Code::FailedPrecondition, what)
        });
        for (user, code, what) in malformed.into_iter().chain(elsewhere) {
            refused(dir, code, &what, login(&mut c, user, "token-x")).await;
        }

        // Requests before Login (user 7 lives in cluster 1 but never logged
        // in), and with the wrong session token.
        for (user, session) in [("7", "token-7"), ("7", ""), ("1", "not-the-token")] {
            for (op, args) in [
                (Op::List, &[][..]),
                (Op::Follow, &["1"][..]),
                (Op::UnFollow, &["1"][..]),
            ] {
                let what = format!("{op:?} {args:?} by user {user} with session {session:?}");
                refused(
                    dir,
                    Code::Unauthenticated,
                    &what,
                    call(&mut c, op, user, session, args),
                )
                .await;
            }
            let what = format!("Timeline by user {user} with session {session:?}");
            let timeline = async {
                match open_timeline(&mut c, user, session).await {
                    Err(s) => Err(s),
                    Ok((_tx, mut stream)) => match outcome(&mut stream, u64::MAX).await {
                        Outcome::Failed(s) => Err(s),
                        o => Ok(o),
                    },
                }
            };
            refused(dir, Code::Unauthenticated, &what, timeline).await;
        }
        // An invalid user name is refused as such, logged in or not.
        let list = call(&mut c, Op::List, "abc", "token-1", &[]);
        refused(dir, Code::InvalidArgument, "List as \"abc\"", list).await;

        // Follow / UnFollow arguments. User 10 lives in cluster 1 and user 2
        // in cluster 2; neither ever logged in and there is no synchronizer,
        // so neither exists here.
        // A request naming no user is malformed; the user's own mistakes are
        // outcomes, answered OK in the course's convention (SPEC §6).
        for op in [Op::Follow, Op::UnFollow] {
            let what = format!("{op:?} [] by user 1");
            refused(
                dir,
                Code::InvalidArgument,
                &what,
                as_user_1(&mut c, op, &[]),
            )
            .await;
        }
        let unknown_followee = "unknown follower username";
        let unknown_unfollowee = "Unknown follower";
        let cases: &[(Op, &[&str], &str)] = &[
            (Op::Follow, &[""], unknown_followee),
            (Op::Follow, &["abc"], unknown_followee),
            (Op::Follow, &["0"], unknown_followee),
            (Op::Follow, &["-3"], unknown_followee),
            (Op::Follow, &["4x"], unknown_followee),
            (Op::UnFollow, &["abc"], unknown_unfollowee),
            (Op::UnFollow, &["0"], unknown_unfollowee),
            (Op::Follow, &["10"], unknown_followee),
            (Op::Follow, &["2"], unknown_followee),
            (Op::UnFollow, &["10"], unknown_unfollowee),
            (Op::Follow, &["1"], "you have already joined"),
            (Op::UnFollow, &["1"], unknown_unfollowee),
            (Op::UnFollow, &["4"], "You are not a follower"),
        ];
        for (op, args, msg) in cases {
            let what = format!("{op:?} {args:?} by user 1");
            answered(dir, msg, &what, as_user_1(&mut c, *op, args)).await;
        }

        // Following twice, unfollowing twice: the second of each is refused
        // and writes nothing.
        for (op, done, again) in [
            (Op::Follow, "Follow Successful", "you have already joined"),
            (
                Op::UnFollow,
                "UnFollow Successful",
                "You are not a follower",
            ),
        ] {
            let first = as_user_1(&mut c, op, &["4"])
                .await
                .unwrap_or_else(|s| panic!("user 1's first {op:?} 4: {s:?}"));
            assert_eq!(first, done, "user 1's first {op:?} 4");
            let what = format!("{op:?} 4 again");
            answered(dir, again, &what, as_user_1(&mut c, op, &["4"])).await;
        }

        // A second login: another token is refused while the session lives,
        // the same token refreshes it.
        login_ok(&mut c, "1", "token-1").await;
        let before = cluster_files(dir);
        answered(
            dir,
            "you have already joined",
            "a second Login with another token",
            login(&mut c, "1", "token-other"),
        )
        .await;
        assert_unchanged(dir, &before, "a second Login with another token");
        let again = login(&mut c, "1", "token-1")
            .await
            .expect("a second Login with the same token");
        assert_eq!(again, "Login Successful!");
        assert_unchanged(dir, &before, "a second Login with the same token");
    });
}

#[test]
fn bad_posts_are_refused_and_good_ones_stored() {
    let cluster = Cluster::start();
    let (dir, url, posts_file) = (&cluster.dir, &cluster.url, &cluster.posts_file);
    runtime().block_on(async {
        let mut c = Cluster::user_1(url).await;

        let mut post_id = 0;
        let bad = [
            ("an empty post", String::new()),
            ("a multi-line post", "a\nb".to_string()),
            ("a 256-byte post", "a".repeat(256)),
            ("a 256-byte post of multi-byte chars", "a".repeat(254) + "é"),
            ("a post with a tab", "tab\there".to_string()),
            ("a post with a NUL", "nul\0".to_string()),
            ("a post with a carriage return", "cr\rhere".to_string()),
            ("a post with a DEL", "del\u{7f}".to_string()),
            ("a post with an escape", "esc\u{1b}[31m".to_string()),
            ("a post with a C1 control", "nel\u{85}".to_string()),
        ];
        for (what, text) in bad {
            post_id += 1;
            login_ok(&mut c, "1", "token-1").await;
            let before = cluster_files(dir);
            let (tx, mut stream) = open_timeline(&mut c, "1", "token-1")
                .await
                .unwrap_or_else(|s| panic!("open a timeline for {what}: {s:?}"));
            tx.send(Message {
                username: "1".into(),
                msg: text,
                post_id,
                ..Default::default()
            })
            .await
            .expect("queue the post");
            match outcome(&mut stream, post_id).await {
                Outcome::Failed(s) => assert_eq!(
                    s.code(),
                    Code::InvalidArgument,
                    "{what}: expected InvalidArgument, got {:?} ({:?})",
                    s.code(),
                    s.message()
                ),
                o => panic!("{what}: expected InvalidArgument, got {o:?}"),
            }
            assert_unchanged(dir, &before, what);
        }

        let good = [
            ("a 255-byte post", "b".repeat(255)),
            ("254 bytes of two-byte chars", "é".repeat(127)),
            ("255 bytes of three-byte chars", "€".repeat(85)),
            ("252 bytes of four-byte chars", "🦀".repeat(63)),
            (
                "a post with spaces and a zero-width joiner",
                "a b\u{200d}c".into(),
            ),
        ];
        for (what, text) in good {
            post_id += 1;
            login_ok(&mut c, "1", "token-1").await;
            let (tx, mut stream) = open_timeline(&mut c, "1", "token-1")
                .await
                .unwrap_or_else(|s| panic!("open a timeline for {what}: {s:?}"));
            tx.send(Message {
                username: "1".into(),
                msg: text.clone(),
                post_id,
                ..Default::default()
            })
            .await
            .expect("queue the post");
            match outcome(&mut stream, post_id).await {
                Outcome::Acked => {}
                o => panic!("{what}: expected an ack, got {o:?}"),
            }
            assert!(
                posts_in(posts_file)
                    .iter()
                    .any(|(u, w)| *u == 1 && *w == text),
                "{what} acknowledged but not in {}",
                posts_file.display()
            );
        }
    });
}

/// A `csce438.Message` whose `msg` is raw bytes, so that a test can send a
/// post that is not UTF-8 (which `String` cannot hold).
#[derive(Clone, PartialEq, prost::Message)]
struct RawMessage {
    #[prost(string, tag = "1")]
    username: String,
    #[prost(bytes = "vec", tag = "2")]
    msg: Vec<u8>,
    #[prost(uint64, tag = "4")]
    post_id: u64,
    #[prost(uint64, tag = "5")]
    ack_id: u64,
    #[prost(string, tag = "6")]
    session: String,
}

/// Sends `post` after a first message naming user 1 on a Timeline stream
/// that encodes with [`RawMessage`]; returns what became of it (`None` if
/// neither an ack nor an error came within the deadline).
async fn raw_post(url: &str, post: RawMessage) -> Result<Option<Outcome>, Status> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the master");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(format!("not ready: {e}")))?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(RawMessage {
        username: "1".into(),
        session: "token-1".into(),
        ..Default::default()
    })
    .await
    .expect("queue the first message");
    let post_id = post.post_id;
    tx.send(post).await.expect("queue the post");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/csce438.SNSService/Timeline");
    let codec = tonic_prost::ProstCodec::<RawMessage, RawMessage>::default();
    let mut stream = grpc
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, codec)
        .await?
        .into_inner();
    let out = outcome_within_deadline(&mut stream, post_id, |m| m.ack_id).await;
    drop(tx);
    Ok(out)
}

#[test]
fn a_post_that_is_not_utf8_is_refused() {
    let cluster = Cluster::start();
    let (dir, url, posts_file) = (&cluster.dir, &cluster.url, &cluster.posts_file);
    runtime().block_on(async {
        let mut c = Cluster::user_1(url).await;

        // The raw encoding itself works: a UTF-8 post sent this way is stored.
        let r = raw_post(
            url,
            RawMessage {
                username: "1".into(),
                msg: b"sent raw".to_vec(),
                post_id: 1,
                ..Default::default()
            },
        )
        .await;
        assert!(
            matches!(r, Ok(Some(Outcome::Acked))),
            "a UTF-8 post sent raw: {r:?}"
        );
        assert!(
            posts_in(posts_file)
                .iter()
                .any(|(u, w)| *u == 1 && w == "sent raw"),
            "the raw UTF-8 post is not in {}",
            posts_file.display()
        );

        for (what, bytes) in [
            ("a post with an invalid byte", b"bad \xff byte".to_vec()),
            ("a post with a truncated sequence", b"cut \xc3".to_vec()),
            ("a post with a surrogate", b"\xed\xa0\x80".to_vec()),
        ] {
            login_ok(&mut c, "1", "token-1").await;
            let before = cluster_files(dir);
            let r = raw_post(
                url,
                RawMessage {
                    username: "1".into(),
                    msg: bytes,
                    post_id: 2,
                    ..Default::default()
                },
            )
            .await;
            assert_unchanged(dir, &before, what);
            match r {
                Err(s) | Ok(Some(Outcome::Failed(s))) => assert_ne!(s.code(), Code::Ok, "{what}"),
                Ok(Some(o)) => panic!("{what}: expected an error status, got {o:?}"),
                Ok(None) => {
                    let log = cluster.sys.log(&System::server_name(1, 1));
                    let tail: Vec<&str> = log.lines().rev().take(10).collect();
                    panic!(
                        "{what}: the server neither refused nor acknowledged it within \
                         {DEADLINE:?}: the stream stayed open without an error \
                         (nothing was stored). The master's log ends with:\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
        }
    });
}

/// Runs `bin` with `args`; returns its exit code, stdout and stderr. Panics
/// if it does not exit by itself within the deadline.
fn run_bad(bin: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let err = dir.path().join("err");
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("SNS_DATA_DIR", dir.path().join("data"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"));
    let status = Proc::spawn(cmd, bin).exit_status(&format!("{bin} {args:?}"));
    (status.code(), read(&out), read(&err))
}

#[test]
fn bad_flags_exit_with_status_2_and_a_reason() {
    let client = env!("CARGO_BIN_EXE_client");
    let server = env!("CARGO_BIN_EXE_server");
    let synchronizer = env!("CARGO_BIN_EXE_synchronizer");
    let coordinator = env!("CARGO_BIN_EXE_coordinator");
    // (binary, its arguments, what the one-line reason must mention)
    let cases: &[(&str, &str, &str)] = &[
        (client, "-h 127.0.0.1 -k 9000 -u 0", "0"),
        (client, "-h 127.0.0.1 -k 9000 -u abc", "abc"),
        (client, "-h 127.0.0.1 -k 9000 -u -1", "-1"),
        (client, "-h 127.0.0.1 -u 1", "-k"),
        (client, "-h 127.0.0.1 -k x -u 1", "x"),
        (client, "-h 127.0.0.1 -k 9000", "-u"),
        (client, "-h 127.0.0.1 -k 9000 -u 1 --bogus", "--bogus"),
        (server, "-c 1 -s 1 -h 127.0.0.1 -k 9000 -p abc", "abc"),
        (server, "-c 0 -s 1 -h 127.0.0.1 -k 9000 -p 9001", "0"),
        (server, "-c 1 -s 1 -h 127.0.0.1 -k 9000", "-p"),
        (
            server,
            "-c 1 -s 1 -h 127.0.0.1 -k 9000 -p 9001 --bogus",
            "--bogus",
        ),
        (synchronizer, "-h 127.0.0.1 -k 9000 -p 9100 -i abc", "abc"),
        (synchronizer, "-h 127.0.0.1 -k 9000 -p 9100", "-i"),
        (
            synchronizer,
            "-h 127.0.0.1 -k 9000 -p 9100 -i 1 --bogus",
            "--bogus",
        ),
        (coordinator, "-p abc", "abc"),
        (coordinator, "", "-p"),
        (coordinator, "-p 9000 --bogus", "--bogus"),
        (coordinator, "-p 9000 --clusters 0", "0"),
    ];
    for (bin, args, mention) in cases {
        let args: Vec<&str> = args.split_whitespace().collect();
        let name = Path::new(bin)
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let (code, out, err) = run_bad(bin, &args);
        assert_eq!(
            code,
            Some(2),
            "{name} {args:?}: exit status; stderr: {err:?}"
        );
        assert!(out.is_empty(), "{name} {args:?}: wrote to stdout: {out:?}");
        let mut lines = err.lines();
        let reason = lines.next().unwrap_or("");
        assert!(
            reason.starts_with("error: ") && reason.len() > "error: ".len(),
            "{name} {args:?}: the first line of stderr is not a reason: {err:?}"
        );
        assert!(
            reason.contains(mention),
            "{name} {args:?}: the reason does not mention {mention:?}: {reason:?}"
        );
        // The reason is one line; what follows is the usage.
        let rest: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
        assert!(
            rest.first().is_some_and(|l| l.starts_with("Usage:")),
            "{name} {args:?}: no usage after the one-line reason: {err:?}"
        );
        assert_eq!(
            rest.len(),
            1,
            "{name} {args:?}: more than a reason and a usage line: {err:?}"
        );
    }
}
