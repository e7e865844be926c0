//! Bad input from the network and the command line: every bad request gets
//! the gRPC code of the conventions in `src/server.rs` and changes no file of
//! the cluster (master's nor slave's); every process given bad flags exits
//! with status 2 and a one-line reason.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use tinysns::proto::csce438::sns_service_client::SnsServiceClient;
use tinysns::proto::csce438::{Message, Request as SnsRequest};
use tinysns::proto::tinysns::Role;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// Heartbeat period of the systems started here. A session lives two
/// periods without a refresh; a long period keeps the sessions of these tests
/// alive on a busy machine (nothing here depends on failure detection).
const HEARTBEAT_MS: u64 = 1000;

type Snapshot = BTreeMap<PathBuf, Vec<u8>>;

/// Every file under `dir`, by path relative to `dir`, with its bytes.
fn snapshot(dir: &Path) -> Snapshot {
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => panic!("cannot list {}: {e}", dir.display()),
        };
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let bytes = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                let rel = path.strip_prefix(root).expect("under root").to_path_buf();
                out.insert(rel, bytes);
            }
        }
    }
    let mut out = Snapshot::new();
    walk(dir, dir, &mut out);
    out
}

/// Panics, naming the files that differ, unless `dir` still holds exactly
/// what `before` recorded.
fn assert_unchanged(dir: &Path, before: &Snapshot, what: &str) {
    let after = snapshot(dir);
    if &after == before {
        return;
    }
    let mut diffs = Vec::new();
    for (p, b) in before {
        match after.get(p) {
            None => diffs.push(format!("{} was removed", p.display())),
            Some(a) if a != b => diffs.push(format!(
                "{} changed:\n--- before\n{}\n--- after\n{}",
                p.display(),
                String::from_utf8_lossy(b),
                String::from_utf8_lossy(a)
            )),
            _ => {}
        }
    }
    for (p, a) in &after {
        if !before.contains_key(p) {
            diffs.push(format!(
                "{} was created:\n{}",
                p.display(),
                String::from_utf8_lossy(a)
            ));
        }
    }
    panic!("{what} changed files:\n{}", diffs.join("\n"));
}

fn expect_code<T: std::fmt::Debug>(r: Result<T, Status>, want: Code, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected {want:?}, got OK: {v:?}"),
        Err(s) => assert_eq!(
            s.code(),
            want,
            "{what}: expected {want:?}, got {:?} ({:?})",
            s.code(),
            s.message()
        ),
    }
}

/// A coordinator and cluster 1 of 3 with a master and a slave that has
/// joined it.
fn cluster() -> System {
    let mut sys = System::new(3, HEARTBEAT_MS, 30_000);
    sys.start_server(1, 1);
    sys.wait_for_role(1, 1, Role::Master);
    sys.start_server(1, 2);
    sys.wait_for_role(1, 2, Role::Slave);
    sys.wait_for_all();
    sys
}

fn master_url(sys: &System) -> String {
    let port = sys.ports[&System::server_name(1, 1)];
    format!("http://127.0.0.1:{port}")
}

async fn connect(url: &str) -> SnsServiceClient<Channel> {
    let start = Instant::now();
    loop {
        match SnsServiceClient::connect(url.to_string()).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(start.elapsed() < DEADLINE, "cannot connect to {url}: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

fn request(user: &str, session: &str, arguments: &[&str]) -> SnsRequest {
    SnsRequest {
        username: user.to_string(),
        arguments: arguments.iter().map(|s| s.to_string()).collect(),
        session: session.to_string(),
        request_id: 0,
    }
}

async fn login(
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
async fn login_ok(c: &mut SnsServiceClient<Channel>, user: &str, session: &str) {
    let start = Instant::now();
    loop {
        match login(c, user, session).await {
            Ok(_) => return,
            Err(s) if s.code() == Code::Unavailable && start.elapsed() < DEADLINE => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(s) => panic!("login of {user:?} failed: {s:?}"),
        }
    }
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
) -> Result<(), Status> {
    let req = request(user, session, args);
    match op {
        Op::List => c.list(req).await.map(|_| ()),
        Op::Follow => c.follow(req).await.map(|_| ()),
        Op::UnFollow => c.un_follow(req).await.map(|_| ()),
    }
}

/// Refreshes the session (a login with the same token, which writes nothing
/// for a known user), then calls; retries if the session expired in between
/// anyway, so that a slow machine cannot turn the expected code into
/// UNAUTHENTICATED.
async fn as_user(
    c: &mut SnsServiceClient<Channel>,
    op: Op,
    user: &str,
    session: &str,
    args: &[&str],
) -> Result<(), Status> {
    let mut tries = 0;
    loop {
        login_ok(c, user, session).await;
        let r = call(c, op, user, session, args).await;
        tries += 1;
        match r {
            Err(s) if s.code() == Code::Unauthenticated && tries < 5 => continue,
            r => return r,
        }
    }
}

/// Opens a timeline stream whose first message names the user.
async fn open_timeline(
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

/// What ended a timeline stream (the first error), or the ack of `post_id`.
#[derive(Debug)]
enum Outcome {
    Acked,
    Failed(Status),
    Ended,
}

async fn outcome(stream: &mut Streaming<Message>, post_id: u64) -> Outcome {
    let wait = async {
        loop {
            match stream.message().await {
                Ok(Some(m)) if m.ack_id == post_id => return Outcome::Acked,
                Ok(Some(_)) => continue, // a post of the timeline, or another ack
                Ok(None) => return Outcome::Ended,
                Err(s) => return Outcome::Failed(s),
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("no ack for post {post_id} and no error within {DEADLINE:?}"))
}

#[test]
fn bad_requests_get_their_codes_and_change_nothing() {
    let sys = cluster();
    let dir = sys.data_dir().join("cluster_1");
    let url = master_url(&sys);
    runtime().block_on(async {
        let mut c = connect(&url).await;
        login_ok(&mut c, "1", "token-1").await;
        login_ok(&mut c, "4", "token-4").await;

        // Login
        for bad in [
            "0",
            "-1",
            "abc",
            "",
            "+1",
            " 1",
            "1 ",
            "99999999999999999999999",
        ] {
            let before = snapshot(&dir);
            let what = format!("Login as {bad:?}");
            expect_code(
                login(&mut c, bad, "token-x").await,
                Code::InvalidArgument,
                &what,
            );
            assert_unchanged(&dir, &before, &what);
        }
        for other in ["2", "3", "5"] {
            let before = snapshot(&dir);
            let what = format!("Login at cluster 1 as user {other} of another cluster");
            expect_code(
                login(&mut c, other, "token-x").await,
                Code::FailedPrecondition,
                &what,
            );
            assert_unchanged(&dir, &before, &what);
        }

        // Requests before Login (user 7 lives in cluster 1 but never logged
        // in), and with the wrong session token.
        for (user, session) in [("7", "token-7"), ("7", ""), ("1", "not-the-token")] {
            for (op, args) in [
                (Op::List, &[][..]),
                (Op::Follow, &["1"][..]),
                (Op::UnFollow, &["1"][..]),
            ] {
                let before = snapshot(&dir);
                let what = format!("{op:?} {args:?} by user {user} with session {session:?}");
                expect_code(
                    call(&mut c, op, user, session, args).await,
                    Code::Unauthenticated,
                    &what,
                );
                assert_unchanged(&dir, &before, &what);
            }
            let before = snapshot(&dir);
            let what = format!("Timeline by user {user} with session {session:?}");
            let r = match open_timeline(&mut c, user, session).await {
                Err(s) => Err(s),
                Ok((_tx, mut stream)) => match outcome(&mut stream, u64::MAX).await {
                    Outcome::Failed(s) => Err(s),
                    o => Ok(o),
                },
            };
            expect_code(r, Code::Unauthenticated, &what);
            assert_unchanged(&dir, &before, &what);
        }
        // An invalid user name is refused as such, logged in or not.
        let before = snapshot(&dir);
        expect_code(
            call(&mut c, Op::List, "abc", "token-1", &[]).await,
            Code::InvalidArgument,
            "List as \"abc\"",
        );
        assert_unchanged(&dir, &before, "List as \"abc\"");

        // Follow / UnFollow arguments. User 10 lives in cluster 1 and user 2
        // in cluster 2; neither ever logged in and there is no synchronizer,
        // so neither exists here.
        let cases: &[(Op, &[&str], Code)] = &[
            (Op::Follow, &[], Code::InvalidArgument),
            (Op::Follow, &[""], Code::InvalidArgument),
            (Op::Follow, &["abc"], Code::InvalidArgument),
            (Op::Follow, &["0"], Code::InvalidArgument),
            (Op::Follow, &["-3"], Code::InvalidArgument),
            (Op::Follow, &["4x"], Code::InvalidArgument),
            (Op::UnFollow, &[], Code::InvalidArgument),
            (Op::UnFollow, &["abc"], Code::InvalidArgument),
            (Op::UnFollow, &["0"], Code::InvalidArgument),
            (Op::Follow, &["10"], Code::NotFound),
            (Op::Follow, &["2"], Code::NotFound),
            (Op::UnFollow, &["10"], Code::NotFound),
            (Op::Follow, &["1"], Code::AlreadyExists),
            (Op::UnFollow, &["1"], Code::InvalidArgument),
            (Op::UnFollow, &["4"], Code::FailedPrecondition),
        ];
        for (op, args, code) in cases {
            let before = snapshot(&dir);
            let what = format!("{op:?} {args:?} by user 1");
            expect_code(
                as_user(&mut c, *op, "1", "token-1", args).await,
                *code,
                &what,
            );
            assert_unchanged(&dir, &before, &what);
        }

        // Following twice, unfollowing twice: the second of each is refused
        // and writes nothing.
        as_user(&mut c, Op::Follow, "1", "token-1", &["4"])
            .await
            .expect("user 1 follows 4");
        let before = snapshot(&dir);
        expect_code(
            as_user(&mut c, Op::Follow, "1", "token-1", &["4"]).await,
            Code::AlreadyExists,
            "Follow 4 again",
        );
        assert_unchanged(&dir, &before, "Follow 4 again");
        as_user(&mut c, Op::UnFollow, "1", "token-1", &["4"])
            .await
            .expect("user 1 unfollows 4");
        let before = snapshot(&dir);
        expect_code(
            as_user(&mut c, Op::UnFollow, "1", "token-1", &["4"]).await,
            Code::FailedPrecondition,
            "UnFollow 4 again",
        );
        assert_unchanged(&dir, &before, "UnFollow 4 again");

        // A second login: another token is refused while the session lives,
        // the same token refreshes it.
        login_ok(&mut c, "1", "token-1").await;
        let before = snapshot(&dir);
        expect_code(
            login(&mut c, "1", "token-other").await,
            Code::AlreadyExists,
            "a second Login with another token",
        );
        assert_unchanged(&dir, &before, "a second Login with another token");
        login(&mut c, "1", "token-1")
            .await
            .expect("a second Login with the same token");
        assert_unchanged(&dir, &before, "a second Login with the same token");
    });
}

#[test]
fn bad_posts_are_refused_and_good_ones_stored() {
    let sys = cluster();
    let dir = sys.data_dir().join("cluster_1");
    let url = master_url(&sys);
    let posts_file = sys.server_dir(1, 1).join("u1_posts.txt");
    runtime().block_on(async {
        let mut c = connect(&url).await;
        login_ok(&mut c, "1", "token-1").await;

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
            let before = snapshot(&dir);
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
            assert_unchanged(&dir, &before, what);
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
                posts_in(&posts_file)
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
    let wait = async {
        loop {
            match stream.message().await {
                Ok(Some(m)) if m.ack_id == post_id => return Outcome::Acked,
                Ok(Some(_)) => continue,
                Ok(None) => return Outcome::Ended,
                Err(s) => return Outcome::Failed(s),
            }
        }
    };
    let out = tokio::time::timeout(DEADLINE, wait).await.ok();
    drop(tx);
    Ok(out)
}

#[test]
fn a_post_that_is_not_utf8_is_refused() {
    let sys = cluster();
    let dir = sys.data_dir().join("cluster_1");
    let url = master_url(&sys);
    let posts_file = sys.server_dir(1, 1).join("u1_posts.txt");
    runtime().block_on(async {
        let mut c = connect(&url).await;
        login_ok(&mut c, "1", "token-1").await;

        // The raw encoding itself works: a UTF-8 post sent this way is stored.
        let r = raw_post(
            &url,
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
            posts_in(&posts_file)
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
            let before = snapshot(&dir);
            let r = raw_post(
                &url,
                RawMessage {
                    username: "1".into(),
                    msg: bytes,
                    post_id: 2,
                    ..Default::default()
                },
            )
            .await;
            assert_unchanged(&dir, &before, what);
            match r {
                Err(s) | Ok(Some(Outcome::Failed(s))) => assert_ne!(s.code(), Code::Ok, "{what}"),
                Ok(Some(o)) => panic!("{what}: expected an error status, got {o:?}"),
                Ok(None) => {
                    let log = read(&sys.data_dir().join("server_1_1.log"));
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
    let mut child = Command::new(bin)
        .args(args)
        .env("SNS_DATA_DIR", dir.path().join("data"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let mut status = None;
    wait_until(&format!("{bin} {args:?} to exit"), || {
        status = child.try_wait().expect("wait for the child");
        status.is_some()
    });
    let status = status.expect("exited");
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
