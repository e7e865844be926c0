//! Bounded cost of any input (SPEC §5): timeline streams past their caps,
//! clients that do not read, damaged timeline files, the user cap (and LIST
//! at a million users), and strict client-API input. Each refusal is
//! checked with its code, with the files and the coordinator's table
//! unchanged, and with the legitimate user still served.

use crate::harness::grpc::{connect, expect_code, login, login_ok, request};
use crate::harness::*;

use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tinysns::proto::csce438::Message;
use tinysns::proto::csce438::sns_service_client::SnsServiceClient;
use tinysns::proto::tinysns::coordinator_client::CoordinatorClient;
use tinysns::proto::tinysns::synchronizer_client::SynchronizerClient;
use tinysns::proto::tinysns::{Empty, Role, UserBatch};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

/// The generous bound on a server's resident memory in these tests (it
/// starts at about 15 MB).
const RSS_BOUND_KB: u64 = 100 << 10;

fn token(user: u64) -> String {
    format!("token-{user}")
}

/// The resident set of process `pid`, from `/proc/<pid>/status`.
fn rss_kb(pid: u32) -> u64 {
    read(Path::new(&format!("/proc/{pid}/status")))
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for process {pid}"))
}

/// The largest resident set seen of one process, with where it was seen.
struct Rss {
    pid: u32,
    seen: Vec<(String, u64)>,
}

impl Rss {
    fn new(pid: u32) -> Rss {
        let mut r = Rss {
            pid,
            seen: Vec::new(),
        };
        r.sample("start");
        r
    }

    fn sample(&mut self, when: &str) {
        self.seen.push((when.to_string(), rss_kb(self.pid)));
    }

    fn max(&self) -> u64 {
        self.seen.iter().map(|(_, kb)| *kb).max().unwrap_or(0)
    }

    /// Every sample stayed under the bound.
    fn assert_bounded(&self) {
        eprintln!("server RSS (kB): {:?}", self.seen);
        assert!(
            self.max() < RSS_BOUND_KB,
            "the server grew to {} kB: {:?}",
            self.max(),
            self.seen
        );
    }
}

/// Polling inside the test's runtime, so that its connections keep
/// answering the server's pings while it waits.
struct Waiting {
    what: String,
    start: Instant,
    pause: Duration,
}

impl Waiting {
    fn new(what: &str) -> Waiting {
        Waiting {
            what: what.into(),
            start: Instant::now(),
            pause: Duration::from_millis(10),
        }
    }

    /// Pauses before the next look; at the deadline, fails with `why`.
    async fn again(&mut self, why: impl Display) {
        assert!(
            self.start.elapsed() < DEADLINE,
            "timed out waiting for {}: {why}",
            self.what
        );
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_millis(200));
    }
}

/// What the coordinator's table says of every process, without the times.
async fn table_state(coord_port: u16) -> Vec<(i32, u32, u32, i32, bool, bool, u64)> {
    let mut c = CoordinatorClient::connect(format!("http://127.0.0.1:{coord_port}"))
        .await
        .expect("connect to the coordinator");
    let mut t: Vec<_> = c
        .get_table(Empty {})
        .await
        .expect("the table")
        .into_inner()
        .servers
        .into_iter()
        .map(|e| {
            let key = (e.kind, e.cluster_id, e.server_id, e.role);
            (key.0, key.1, key.2, key.3, e.alive, e.in_service, e.process)
        })
        .collect();
    t.sort();
    t
}

/// Both servers' directories of cluster 1 and the coordinator's table, to
/// show that a refusal changed nothing.
struct Unchanged {
    root: PathBuf,
    dirs: Vec<PathBuf>,
    files: Snapshot,
    table: Vec<(i32, u32, u32, i32, bool, bool, u64)>,
    coord_port: u16,
}

/// Every file of `dirs` but the writers' gate, an empty lock file that a
/// synchronizer creates the first time it comes to write (and is refused).
fn files_of(root: &Path, dirs: &[PathBuf]) -> Snapshot {
    let mut files = snapshot(root, dirs);
    files.retain(|p, _| !p.ends_with(tinysns::storage::GATE_FILE));
    files
}

impl Unchanged {
    async fn now(sys: &System) -> Unchanged {
        let root = sys.data_dir().to_path_buf();
        let dirs = vec![sys.server_dir(1, 1), sys.server_dir(1, 2)];
        Unchanged {
            files: files_of(&root, &dirs),
            table: table_state(sys.coord_port).await,
            root,
            dirs,
            coord_port: sys.coord_port,
        }
    }

    async fn check(&self, what: &str) {
        let files = files_of(&self.root, &self.dirs);
        assert_same_files(&self.files, &files, what);
        assert_eq!(
            table_state(self.coord_port).await,
            self.table,
            "{what} changed the coordinator's table"
        );
    }
}

/// Cluster 1 of 3 (master and in-service slave, no synchronizer), both
/// servers started with `env`.
fn cluster_1(heartbeat_ms: u64, env: &[(&str, &str)]) -> System {
    let mut sys = System::new(3, heartbeat_ms, 30_000);
    sys.start_server_with(1, 1, env);
    sys.wait_for_role(1, 1, Role::Master);
    sys.start_server_with(1, 2, env);
    sys.wait_for_all();
    sys
}

/// Users of cluster 1 other than user 1: 4, 7, 10, ...
fn readers(n: u64) -> Vec<u64> {
    (1..=n).map(|i| 1 + 3 * i).collect()
}

/// Opens a timeline stream for `user`; its first message names the user.
/// A refusal is the error (however it arrives).
async fn open_stream(
    c: &mut SnsServiceClient<Channel>,
    user: u64,
) -> Result<(mpsc::Sender<Message>, Streaming<Message>), Status> {
    grpc::open_timeline(c, &user.to_string(), &token(user)).await
}

/// A refused stream's status (refusals come with the response); `Ok` when
/// the stream was opened after all (it is closed again).
async fn refused_stream(c: &mut SnsServiceClient<Channel>, user: u64) -> Result<(), Status> {
    open_stream(c, user).await.map(drop)
}

/// Posts `text` on `stream` (the author's) and waits for its
/// acknowledgement.
async fn post(
    tx: &mpsc::Sender<Message>,
    stream: &mut Streaming<Message>,
    author: u64,
    post_id: u64,
    text: &str,
) {
    tx.send(Message {
        username: author.to_string(),
        msg: text.into(),
        post_id,
        ..Default::default()
    })
    .await
    .expect("queue a post");
    loop {
        match stream.message().await {
            Ok(Some(m)) if m.ack_id == post_id => return,
            Ok(Some(_)) => continue,
            other => panic!("post {post_id} not acknowledged: {other:?}"),
        }
    }
}

/// The next post shown on `stream` (its text); fails on an end or an error.
async fn next_text(stream: &mut Streaming<Message>, whose: &str) -> String {
    match tokio::time::timeout(DEADLINE, stream.message()).await {
        Ok(Ok(Some(m))) => m.msg,
        other => panic!("{whose}: expected a post, got {other:?}"),
    }
}

fn post_text(i: u64) -> String {
    // 255 bytes: the longest post.
    format!("{i:0>255}")
}

/// Logs in the poster (user 1) and `n` readers who follow it; returns the
/// readers.
async fn poster_and_readers(c: &mut SnsServiceClient<Channel>, n: u64) -> Vec<u64> {
    login_ok(c, "1", &token(1)).await;
    let readers = readers(n);
    for r in &readers {
        login_ok(c, &r.to_string(), &token(*r)).await;
        let reply = c
            .follow(request(&r.to_string(), &token(*r), &["1"]))
            .await
            .unwrap_or_else(|s| panic!("user {r} follows 1: {s:?}"));
        assert_eq!(
            reply.into_inner().msg,
            "Follow Successful",
            "user {r} follows 1"
        );
    }
    readers
}

// ---------------------------------------------------------------------------
// Streams

/// 500 streams that never read, on connections whose flow-control windows
/// are tiny (so what is sent piles up on the server): a stream past the
/// user's cap or past the total is refused with RESOURCE_EXHAUSTED and
/// changes nothing; the unread ones are ended with RESOURCE_EXHAUSTED once
/// they have not been read for a failure window; the server's memory stays
/// bounded; and the readers are served again afterwards.
#[test]
fn streams_past_the_caps_are_refused_and_unread_ones_ended() {
    // The poster's stream and 4 for each of 125 readers: the total cap.
    let sys = cluster_1(1000, &[("SNS_FSYNC", "0"), ("SNS_MAX_STREAMS", "501")]);
    let pid = sys.procs[&System::server_name(1, 1)].pid();
    let url = sys.server_url(1, 1);
    runtime().block_on(async {
        let mut c = connect(&url).await;
        let readers = poster_and_readers(&mut c, 125).await;
        login_ok(&mut c, "379", &token(379)).await;
        let mut rss = Rss::new(pid);
        // Sessions live two heartbeats without a refresh, and logging 125
        // readers in may take longer on a busy machine: each is refreshed
        // right before its streams are opened.
        login_ok(&mut c, "1", &token(1)).await;
        let (post_tx, mut posts) = open_stream(&mut c, 1).await.expect("the poster's stream");
        let tiny = Endpoint::from_shared(url.clone())
            .expect("endpoint")
            .initial_stream_window_size(Some(4096));
        let mut unread = Vec::new();
        for r in &readers {
            let mut rc = SnsServiceClient::new(tiny.connect().await.expect("connect"));
            login_ok(&mut rc, &r.to_string(), &token(*r)).await;
            for _ in 0..4 {
                let s = open_stream(&mut rc, *r).await;
                unread.push((*r, s.unwrap_or_else(|s| panic!("user {r}'s stream: {s:?}"))));
            }
        }
        rss.sample("500 streams open");

        let before = Unchanged::now(&sys).await;
        login_ok(&mut c, "4", &token(4)).await;
        let s = expect_code(
            refused_stream(&mut c, 4).await,
            Code::ResourceExhausted,
            "a fifth stream of user 4",
        );
        assert!(s.message().contains("user 4"), "{}", s.message());
        login_ok(&mut c, "379", &token(379)).await;
        let s = expect_code(
            refused_stream(&mut c, 379).await,
            Code::ResourceExhausted,
            "a stream past the total",
        );
        assert!(s.message().contains("maximum"), "{}", s.message());
        before.check("the refused streams").await;

        // Posts that the readers do not read.
        for i in 1..=300 {
            post(&post_tx, &mut posts, 1, i, &post_text(i)).await;
            if i % 50 == 0 {
                rss.sample(&format!("{i} posts"));
            }
        }
        // A reader's streams, once ended, no longer count for the reader:
        // its next stream is refused for the total alone.
        let mut wait = Waiting::new("every unread stream to be ended");
        loop {
            let mut pending = None;
            for r in &readers {
                login_ok(&mut c, &r.to_string(), &token(*r)).await;
                match refused_stream(&mut c, *r).await {
                    Err(s) if s.message().contains("maximum") => {}
                    Err(s) => pending = Some(format!("user {r}: {}", s.message())),
                    Ok(()) => panic!("a stream past the total cap was opened"),
                }
                if pending.is_some() {
                    break;
                }
            }
            match pending {
                None => break,
                Some(why) => wait.again(why).await,
            }
        }
        rss.sample("unread streams ended");

        // Read now, each gives what was on its way, then RESOURCE_EXHAUSTED.
        for (r, (_tx, mut s)) in unread.drain(..) {
            let mut got = 0;
            let status = loop {
                match s.message().await {
                    Ok(Some(_)) => got += 1,
                    Ok(None) => panic!("user {r}'s stream ended without a status"),
                    Err(status) => break status,
                }
            };
            assert_eq!(
                status.code(),
                Code::ResourceExhausted,
                "user {r}: {status:?}"
            );
            assert!(
                status.message().contains("not read"),
                "{}",
                status.message()
            );
            assert!(got < 300, "user {r}'s stream was not cut short");
        }
        rss.sample("unread streams read");

        // The readers are served again: the last 20 posts, then a new one
        // (once the connections have let the ended streams go).
        let mut wait = Waiting::new("user 4's stream again");
        let (_tx, mut s4) = loop {
            login_ok(&mut c, "4", &token(4)).await;
            match open_stream(&mut c, 4).await {
                Ok(s) => break s,
                Err(s) => wait.again(s.message().to_string()).await,
            }
        };
        for i in 281..=300 {
            assert_eq!(next_text(&mut s4, "user 4").await, post_text(i));
        }
        post(&post_tx, &mut posts, 1, 301, "live").await;
        assert_eq!(next_text(&mut s4, "user 4").await, "live");
        rss.sample("end");
        rss.assert_bounded();
    });
}

/// An HTTP/2 client that opens streams and then never reads its socket
/// (not even the server's pings), with the largest flow-control windows
/// there are, so that the server may send as much as it likes.
mod raw {
    use prost::Message as _;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use tinysns::proto::csce438::Message;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let n = payload.len();
        let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An HPACK literal header without indexing, with a literal name.
    fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
        out.push(0x00);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }

    pub struct Conn {
        sock: TcpStream,
        next: u32,
        authority: String,
    }

    impl Conn {
        pub fn open(port: u16) -> Conn {
            let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let mut c = Conn {
                sock,
                next: 1,
                authority: format!("127.0.0.1:{port}"),
            };
            let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            // SETTINGS_INITIAL_WINDOW_SIZE = 2^31 - 1, and the connection's
            // window as large.
            hello.extend(frame(0x4, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]));
            hello.extend(frame(0x8, 0, 0, &(0x7fff_ffffu32 - 65535).to_be_bytes()));
            c.sock.write_all(&hello).expect("preface");
            // The server's SETTINGS, acknowledged; nothing is read after.
            let mut buf = [0u8; 256];
            let _ = c.sock.read(&mut buf);
            c.sock
                .write_all(&frame(0x4, 1, 0, &[]))
                .expect("settings ack");
            c
        }

        /// Reads until the server closes the connection; fails if it is
        /// still open, silent, at the deadline.
        pub fn wait_closed_by_server(&mut self) {
            let deadline = std::time::Instant::now() + crate::harness::DEADLINE;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                assert!(
                    !left.is_zero(),
                    "the server did not close the silent connection"
                );
                self.sock
                    .set_read_timeout(Some(left))
                    .expect("read timeout");
                match self.sock.read(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                    Err(e) => panic!("the server did not close the silent connection: {e}"),
                }
            }
        }

        /// Opens a Timeline stream whose first message names `user`.
        pub fn timeline(&mut self, user: u64, session: &str) {
            let id = self.next;
            self.next += 2;
            // :method POST, :scheme http (static table), :path, :authority.
            let mut h = vec![0x83, 0x86];
            let path = "/csce438.SNSService/Timeline";
            h.push(0x04);
            h.push(path.len() as u8);
            h.extend_from_slice(path.as_bytes());
            h.push(0x01);
            h.push(self.authority.len() as u8);
            h.extend_from_slice(self.authority.as_bytes());
            literal(&mut h, "content-type", "application/grpc");
            literal(&mut h, "te", "trailers");
            let msg = Message {
                username: user.to_string(),
                session: session.into(),
                ..Default::default()
            }
            .encode_to_vec();
            let mut data = vec![0u8];
            data.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            data.extend(msg);
            let mut out = frame(0x1, 0x4, id, &h);
            out.extend(frame(0x0, 0, id, &data));
            self.sock.write_all(&out).expect("open a stream");
        }
    }
}

/// A client that never reads its socket at all: what HTTP/2 may buffer for
/// it is bounded per stream and by the stream cap, and the server's
/// keep-alive cuts the connection (it answers no ping), which gives every
/// stream's place back.
#[test]
fn a_client_that_never_reads_its_socket_is_cut_off() {
    let sys = cluster_1(1000, &[("SNS_FSYNC", "0"), ("SNS_MAX_STREAMS", "151")]);
    let pid = sys.procs[&System::server_name(1, 1)].pid();
    let url = sys.server_url(1, 1);
    let port = sys.ports[&System::server_name(1, 1)];
    runtime().block_on(async {
        let mut c = connect(&url).await;
        let readers = poster_and_readers(&mut c, 125).await;
        let mut rss = Rss::new(pid);
        // Logging 125 readers in may outlast the poster's session (two
        // heartbeats without a refresh) on a busy machine: refresh it.
        login_ok(&mut c, "1", &token(1)).await;
        let (post_tx, mut posts) = open_stream(&mut c, 1).await.expect("the poster's stream");
        // 500 streams asked for on one connection; 150 fit under the cap.
        let mut conn = raw::Conn::open(port);
        for r in &readers {
            for _ in 0..4 {
                conn.timeline(*r, &token(*r));
            }
        }
        for i in 1..=400 {
            post(&post_tx, &mut posts, 1, i, &post_text(i)).await;
            if i % 50 == 0 {
                rss.sample(&format!("{i} posts"));
            }
        }
        eprintln!("server RSS (kB) after the posts: {:?}", rss.seen);
        let before = Unchanged::now(&sys).await;
        // Once cut off, the readers can open streams again.
        let mut wait = Waiting::new("the silent connection to be cut");
        let (_tx, mut s4) = loop {
            login_ok(&mut c, "4", &token(4)).await;
            match open_stream(&mut c, 4).await {
                Ok(s) => break s,
                Err(s) => wait.again(s.message().to_string()).await,
            }
        };
        rss.sample("cut off");
        conn.wait_closed_by_server();
        before.check("cutting the connection").await;
        for i in 381..=400 {
            assert_eq!(next_text(&mut s4, "user 4").await, post_text(i));
        }
        rss.assert_bounded();
    });
}

// ---------------------------------------------------------------------------
// Damaged files

/// Appends `bytes` to `path` under its exclusive lock, as a writer would.
fn append_locked(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open a timeline");
    f.lock().expect("lock");
    f.write_all(bytes).expect("append");
    f.unlock().expect("unlock");
}

/// A post record with a text of `len` bytes, in the format of the files.
fn record_with_text(author: u64, len: usize) -> String {
    format!(
        "T 2026-11-23T18:10:07.123456789Z\nU {author}\nW {}\n\n",
        "w".repeat(len)
    )
}

/// A file's length and a hash of its contents.
fn digest(path: &Path) -> (u64, u64) {
    use std::hash::Hasher;
    let bytes = std::fs::read(path).expect("read");
    let mut h = std::hash::DefaultHasher::new();
    h.write(&bytes);
    (bytes.len() as u64, h.finish())
}

/// Timeline files damaged as a disk fault or a hand edit could leave them:
/// 50 MiB with no terminator in the middle of one, a well-formed record
/// with a 5 MiB text, 50 MiB with no terminator at the end of another.
/// Both timelines open at once, and the server still answers logins; the
/// streams show the valid posts around the damage, every later post, and
/// never end; reading changes no file.
#[test]
fn damaged_timeline_files_cost_a_bounded_amount() {
    // 100 MiB of damage written and read while a master must keep its
    // lease: a long heartbeat, so that a busy disk does not turn into a
    // step-down (nothing here depends on failure detection).
    let sys = cluster_1(3000, &[]);
    let url = sys.server_url(1, 1);
    let pid = sys.procs[&System::server_name(1, 1)].pid();
    let m = sys.server_dir(1, 1);
    let (tl4, tl7) = (m.join("u4_timeline.txt"), m.join("u7_timeline.txt"));
    runtime().block_on(async {
        let mut c = connect(&url).await;
        poster_and_readers(&mut c, 2).await;
        let (post_tx, mut posts) = open_stream(&mut c, 1).await.expect("the poster's stream");
        for i in 1..=3 {
            post(&post_tx, &mut posts, 1, i, &format!("before {i}")).await;
        }
        wait_until("the posts in both timelines", || {
            posts_in(&tl4).len() == 3 && posts_in(&tl7).len() == 3
        });
        let mut damage = vec![b'x'; 50 << 20];
        damage.extend_from_slice(b"\n\n");
        damage.extend_from_slice(record_with_text(1, 5 << 20).as_bytes());
        append_locked(&tl4, &damage);
        append_locked(&tl7, &vec![b'y'; 50 << 20]);
        let (d4, d7) = (digest(&tl4), digest(&tl7));
        let mut rss = Rss::new(pid);

        // Both open at once, and logins and lists are answered meanwhile.
        let (mut c4, mut c7) = (connect(&url).await, connect(&url).await);
        login_ok(&mut c4, "4", &token(4)).await;
        login_ok(&mut c7, "7", &token(7)).await;
        let (open4, open7) = tokio::join!(open_stream(&mut c4, 4), open_stream(&mut c7, 7));
        let (_t4, mut s4) = open4.expect("user 4's stream");
        let (_t7, mut s7) = open7.expect("user 7's stream");
        login_ok(&mut c, "10", &token(10)).await;
        let list = c
            .list(request("10", &token(10), &[]))
            .await
            .expect("LIST while damaged timelines are open")
            .into_inner();
        assert_eq!(list.all_users, ["1", "4", "7", "10"]);
        rss.sample("damaged timelines open");
        assert_eq!(digest(&tl4), d4, "reading changed u4_timeline.txt");
        assert_eq!(digest(&tl7), d7, "reading changed u7_timeline.txt");

        // User 4's stream shows the posts before the damage (skipped, not
        // a stop), then a new post after it. In user 7's, the server's
        // append cut the unterminated tail off first, and the stream
        // starts over from the file as it is now.
        post(&post_tx, &mut posts, 1, 4, "after 1").await;
        let mut got4 = Vec::new();
        for _ in 0..4 {
            got4.push(next_text(&mut s4, "user 4").await);
        }
        assert_eq!(got4, ["before 1", "before 2", "before 3", "after 1"]);
        let mut got7 = Vec::new();
        for _ in 0..4 {
            got7.push(next_text(&mut s7, "user 7").await);
        }
        assert_eq!(got7, ["before 1", "before 2", "before 3", "after 1"]);

        // A 5 MiB text appended while the stream is open is skipped; the
        // stream goes on with the next post.
        append_locked(&tl4, record_with_text(1, 5 << 20).as_bytes());
        post(&post_tx, &mut posts, 1, 5, "after 2").await;
        assert_eq!(next_text(&mut s4, "user 4").await, "after 2");
        assert_eq!(next_text(&mut s7, "user 7").await, "after 2");

        // Opened again, user 4's timeline shows every valid post: the
        // backward scan skips the records too long.
        drop((_t4, s4));
        login_ok(&mut c4, "4", &token(4)).await;
        let (_t4, mut s4) = open_stream(&mut c4, 4)
            .await
            .expect("user 4's stream again");
        let mut again = Vec::new();
        for _ in 0..5 {
            again.push(next_text(&mut s4, "user 4").await);
        }
        assert_eq!(
            again,
            ["before 1", "before 2", "before 3", "after 1", "after 2"]
        );
        post(&post_tx, &mut posts, 1, 6, "after 3").await;
        assert_eq!(next_text(&mut s4, "user 4").await, "after 3");
        rss.sample("end");
        rss.assert_bounded();
        let log = sys.log(&System::server_name(1, 1));
        assert!(
            log.contains("u4_timeline.txt") && log.contains("longer than any valid one"),
            "the damage is reported, naming the file"
        );
    });
}

/// A record with a 5 MiB text in an author's posts file: the synchronizer
/// reports it, skips it, and carries the next post to the other cluster.
#[test]
fn a_damaged_posts_file_does_not_stop_the_synchronizer() {
    let sys = System::full_with(2, 500, 1000);
    // User 1 lives in cluster 1, user 2 in cluster 2.
    let mut author = Client::logged_in(sys.coord_port, 1);
    let mut reader = Client::logged_in(sys.coord_port, 2);
    wait_until("user 1 in cluster 2", || sys.has_user(2, 1, 1));
    assert_eq!(reader.command("FOLLOW 1"), SUCCESS);
    wait_until("user 2 following 1 in cluster 1", || {
        sys.has_follower(1, 1, 1, 2)
    });
    let remote = sys.server_dir(2, 1).join("u2_timeline.txt");
    author.enter_timeline();
    author.send("before the damage");
    wait_until("the first post in cluster 2", || {
        post_texts(&remote).contains(&"before the damage".to_string())
    });
    let master = sys.master_of(1).expect("a master in cluster 1");
    let posts = sys.server_dir(1, master).join("u1_posts.txt");
    append_locked(&posts, record_with_text(1, 5 << 20).as_bytes());
    author.send("after the damage");
    wait_until("the post after the damage in cluster 2", || {
        post_texts(&remote).contains(&"after the damage".to_string())
    });
    assert_eq!(
        post_texts(&remote),
        ["before the damage", "after the damage"]
    );
    assert!(
        sys.log(&System::synchronizer_name(1))
            .contains("longer than any valid one"),
        "the synchronizer reports the damage"
    );
}

// ---------------------------------------------------------------------------
// The user cap

/// With `SNS_MAX_USERS=5`, the sixth user's login and a synchronizer's push
/// of a new remote user are refused with RESOURCE_EXHAUSTED and change
/// nothing; the five users are served as before.
#[test]
fn the_user_cap_refuses_the_next_user_and_changes_nothing() {
    let cap = [("SNS_MAX_USERS", "5")];
    let mut sys = cluster_1(1000, &cap);
    sys.start_synchronizer_with(1, &cap);
    sys.wait_for_all();
    let url = sys.server_url(1, 1);
    runtime().block_on(async {
        let mut c = connect(&url).await;
        for u in [1, 4, 7, 10, 13] {
            login_ok(&mut c, &u.to_string(), &token(u)).await;
        }
        let before = Unchanged::now(&sys).await;
        let s = expect_code(
            login(&mut c, "16", &token(16)).await,
            Code::ResourceExhausted,
            "the sixth user's login",
        );
        assert_eq!(s.message(), "this cluster holds its maximum of 5 users");
        before.check("the sixth user's login").await;
        // No session was opened for the refused user.
        expect_code(
            c.list(request("16", &token(16), &[])).await,
            Code::Unauthenticated,
            "LIST by the refused user",
        );

        let mut sync = SynchronizerClient::new(peer::peer(&sys, &sys.synchronizer_url(1)).await);
        let s = expect_code(
            sync.push_users(UserBatch {
                from_cluster: 2,
                users: vec![2, 5],
            })
            .await,
            Code::ResourceExhausted,
            "a push of two new users",
        );
        assert_eq!(s.message(), "this cluster holds its maximum of 5 users");
        before.check("the refused push").await;

        // The five are served as before.
        login_ok(&mut c, "4", &token(4)).await;
        login_ok(&mut c, "1", &token(1)).await;
        let list = c
            .list(request("1", &token(1), &[]))
            .await
            .expect("LIST at the cap")
            .into_inner();
        assert_eq!(list.all_users, ["1", "4", "7", "10", "13"]);
        let reply = c
            .follow(request("1", &token(1), &["13"]))
            .await
            .expect("FOLLOW at the cap");
        assert_eq!(
            reply.into_inner().msg,
            "Follow Successful",
            "FOLLOW at the cap"
        );
    });
}

/// Two clusters, the first at its cap: the second's new users are refused
/// there (and retried), but follows and posts keep flowing both ways.
#[test]
fn a_full_cluster_still_gets_posts_from_the_others() {
    let mut sys = System::new(2, 500, 1000);
    let cap = [("SNS_MAX_USERS", "3")];
    sys.start_server_with(1, 1, &cap);
    sys.wait_for_role(1, 1, Role::Master);
    sys.start_server_with(1, 2, &cap);
    sys.start_pair(2);
    sys.start_synchronizer_with(1, &cap);
    sys.start_synchronizer(2);
    sys.wait_for_all();
    // Users 1 and 3 live in cluster 1, 2 and 4 in cluster 2.
    let mut one = Client::logged_in(sys.coord_port, 1);
    let _three = Client::logged_in(sys.coord_port, 3);
    let mut two = Client::logged_in(sys.coord_port, 2);
    wait_until("user 2 in cluster 1", || sys.has_user(1, 1, 2));
    // Cluster 1 is full now; user 4 is refused there, not in cluster 2.
    let _four = Client::logged_in(sys.coord_port, 4);
    assert_eq!(one.command("FOLLOW 2"), SUCCESS);
    wait_until("user 1 following 2 in cluster 2", || {
        sys.has_follower(2, 1, 2, 1)
    });
    two.enter_timeline();
    two.send("from a cluster with room");
    wait_until("the post in user 1's timeline", || {
        post_texts(&sys.server_dir(1, 1).join("u1_timeline.txt"))
            .contains(&"from a cluster with room".to_string())
    });
    assert!(sys.has_user(2, 1, 4));
    assert!(!sys.has_user(1, 1, 4), "cluster 1 holds at most 3 users");
    assert!(
        sys.log(&System::synchronizer_name(2))
            .contains("this cluster holds its maximum of 3 users"),
        "the refusal is logged where it happens"
    );
}

/// `all_users.txt` written with 1,000,000 users: this project's client
/// lists them all, and the next new user is refused.
#[test]
fn list_works_at_a_million_users() {
    let mut sys = System::new(3, 5000, 30_000);
    let users: String = (1..=1_000_000u64).map(|u| format!("{u}\n")).collect();
    for s in 1..=2 {
        let dir = sys.server_dir(1, s);
        std::fs::create_dir_all(&dir).expect("server dir");
        std::fs::write(dir.join("all_users.txt"), &users).expect("all_users.txt");
    }
    sys.start_pair(1);
    sys.wait_for_all();
    let url = sys.server_url(1, 1);
    let before = runtime().block_on(async {
        // The first look at a million users takes a while on a slow machine:
        // not inside the client's connect timeout.
        let mut c = connect(&url).await;
        login_ok(&mut c, "4", &token(4)).await;
        let before = Unchanged::now(&sys).await;
        let s = expect_code(
            login(&mut c, "1000003", &token(1_000_003)).await,
            Code::ResourceExhausted,
            "a new user past a million",
        );
        assert!(s.message().contains("1000000 users"), "{}", s.message());
        before.check("a new user past a million").await;
        before
    });
    let mut client = Client::start(sys.coord_port, 1, &[("SNS_CONNECT_TIMEOUT_MS", "30000")]);
    client.expect(TITLE_END);
    let [ok, all, followers] = client.list();
    assert_eq!(ok, SUCCESS);
    assert_eq!(followers, "Followers:");
    let ids = all
        .strip_prefix("All users: ")
        .unwrap_or_else(|| panic!("not the users line: {:?}", &all[..all.len().min(80)]));
    let mut n = 0u64;
    for (i, id) in ids.split(", ").enumerate() {
        assert_eq!(id, (i + 1).to_string(), "user number {}", i + 1);
        n += 1;
    }
    assert_eq!(n, 1_000_000);
    runtime().block_on(before.check("LIST"));
}

// ---------------------------------------------------------------------------
// Strict input

/// User ids parse strictly (a FOLLOW argument is not trimmed), a Logout
/// with another session's token is refused and changes nothing, and an
/// error quotes at most 64 bytes of a megabyte of input.
#[test]
fn client_api_input_is_strict() {
    let sys = cluster_1(1000, &[]);
    let url = sys.server_url(1, 1);
    runtime().block_on(async {
        let mut c = connect(&url).await;
        login_ok(&mut c, "1", &token(1)).await;
        login_ok(&mut c, "4", &token(4)).await;
        let before = Unchanged::now(&sys).await;
        let bad: &[&[&str]] = &[
            &["4\n"],
            &["4\r\n"],
            &[" 4"],
            &["4 "],
            &["\t4"],
            &["04"],
            &["+4"],
            &["٤"],
        ];
        // Not a user id: the course's outcome "no such user" (SPEC §6).
        for args in bad {
            login_ok(&mut c, "1", &token(1)).await;
            let what = format!("FOLLOW {args:?}");
            let reply = c.follow(request("1", &token(1), args)).await;
            let msg = reply.map(|r| r.into_inner().msg);
            assert_eq!(
                msg.as_deref().ok(),
                Some("unknown follower username"),
                "{what}: {msg:?}"
            );
            before.check(&what).await;
        }
        // Two users: a malformed request.
        login_ok(&mut c, "1", &token(1)).await;
        expect_code(
            c.follow(request("1", &token(1), &["4", "7"])).await,
            Code::InvalidArgument,
            "FOLLOW [4, 7]",
        );
        before.check("FOLLOW [4, 7]").await;

        // Logout with a token that is not the session's.
        let what = "Logout of user 1 with another token";
        expect_code(
            c.logout(request("1", "not-the-token", &[])).await,
            Code::Unauthenticated,
            what,
        );
        expect_code(
            c.logout(request("9", &token(9), &[])).await,
            Code::Unauthenticated,
            "Logout of a user who never logged in",
        );
        before.check(what).await;
        // The session is as it was: its own token works, and logs it out.
        c.list(request("1", &token(1), &[]))
            .await
            .expect("LIST after a wrong Logout");
        assert_eq!(
            login(&mut c, "1", "another-client").await.ok().as_deref(),
            Some("you have already joined"),
            "another client while the session lives",
        );
        c.logout(request("1", &token(1), &[]))
            .await
            .expect("Logout with the session's token");
        expect_code(
            c.list(request("1", &token(1), &[])).await,
            Code::Unauthenticated,
            "LIST after Logout",
        );

        // A megabyte of input: refused, and at most 64 bytes quoted.
        let mib = "x".repeat(1 << 20);
        login_ok(&mut c, "4", &token(4)).await;
        let before = Unchanged::now(&sys).await;
        let cases = [
            ("Login as 1 MiB", c.login(request(&mib, "t", &[])).await),
            (
                "LIST as 1 MiB",
                c.list(request(&mib, "t", &[]))
                    .await
                    .map(|_| tonic::Response::new(Default::default())),
            ),
            (
                "Login with a 1 MiB token",
                c.login(request("7", &mib, &[])).await,
            ),
        ];
        for (what, r) in cases {
            let s = expect_code(r, Code::InvalidArgument, what);
            let quoted = s.message().matches('x').count();
            assert!(quoted <= 64, "{what}: {quoted} bytes of input quoted");
            assert!(s.message().len() < 200, "{what}: {:?}", s.message());
        }
        // Not a user id either: answered as such, without echoing it.
        let reply = c.follow(request("4", &token(4), &[&mib])).await;
        let msg = reply.map(|r| r.into_inner().msg);
        assert_eq!(
            msg.as_deref().ok(),
            Some("unknown follower username"),
            "FOLLOW 1 MiB"
        );
        before.check("a megabyte of input").await;
        // The user is still served.
        let reply = c
            .follow(request("4", &token(4), &["1"]))
            .await
            .expect("a FOLLOW as it should be");
        assert_eq!(reply.into_inner().msg, "Follow Successful");
    });
}
