//! `scale`: how the cost of the system grows with its users.
//!
//! Two systems are built through the API side by side, one of 100 users
//! (the baseline) and one of 100,000 (`--quick`: 1,000): every user logs
//! in (which creates it), then each follows the 10 users after it (ids
//! wrap around; two thirds of them live in another cluster), and the
//! reader (user 1) follows the 1,000 users after it instead (the baseline's
//! reader follows all 99 others): about 1,000,000 follows. Both run with
//! [`WORKERS`] calls in flight, each worker on its own connection to each
//! master, logging in as a course client does (no token: the session is
//! bound to the connection, SPEC §6), so that 100,000 users need 192
//! connections, not 100,000.
//!
//! Then, each beside the same figure on the 100-user system: Login and
//! Follow rates, the masters' RSS growth (VmRSS before the first login and
//! after the last follow), LIST through this project's own client
//! ([`tinysns::client::run`], decoding and the printed lines included), and
//! the time to the first 20 posts of the reader's timeline (30 of its
//! followees in its own cluster have posted once each).
//!
//! LIST at the user cap (`SNS_MAX_USERS`, 1,000,000 users; `--quick`:
//! 10,000) runs on a third system whose `all_users.txt` files are written
//! before it starts (SPEC §3's format, every user in every cluster, the
//! synchronizers' cursors saying all were sent), as creating a million
//! users through the API would take most of the run.

use super::Ctx;
use super::report::{Chart, Outcome, Row};
use super::stats::Samples;
use super::system::{Settings, System, master_of};
use super::user::{User, channel};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};
use tinysns::config::{cluster_dir, server_dir};
use tinysns::course::{Outcome as Said, Rpc};
use tinysns::proto::csce438::sns_service_client::SnsServiceClient;
use tinysns::proto::csce438::{Message, Request};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Calls in flight while users and follows are created.
pub const WORKERS: usize = 64;
/// Follows of every user but the reader.
const FOLLOWS_EACH: u64 = 10;
/// The user whose timeline is opened.
const READER: u64 = 1;
/// The user who lists (with this project's client, which holds a session
/// of its own, while the reader holds another).
const LISTER: u64 = 2;
/// Followees of the reader who post (all in its cluster, so that their
/// posts reach its timeline without waiting for the synchronizers).
const POSTERS: u64 = 30;
/// The baseline's users.
const SMALL: u64 = 100;
/// Deadline of one call: a resync of the slave may hold writes for seconds.
const CALL: Duration = Duration::from_secs(60);

struct Sizes {
    users: u64,
    reader_follows: u64,
    list_users: u64,
    reps: usize,
}

fn sizes(ctx: &Ctx) -> Sizes {
    if ctx.quick {
        Sizes {
            users: 1_000,
            reader_follows: 200,
            list_users: 10_000,
            reps: 3,
        }
    } else {
        Sizes {
            users: 100_000,
            reader_follows: 1_000,
            list_users: tinysns::config::DEFAULT_MAX_USERS,
            reps: 20,
        }
    }
}

fn settings(ctx: &Ctx) -> Settings {
    Settings {
        clusters: 3,
        // SPEC's default (a mirror call's deadline is one heartbeat): with
        // the 1 s of `post`, a slave on two cores busy with 64 writers and
        // three synchronizers missed it at 50,000 users, fell out of
        // service and was resynced over and over. `--quick` starts sooner.
        heartbeat_ms: if ctx.quick {
            2000
        } else {
            tinysns::config::DEFAULT_HEARTBEAT_MS
        },
        sync_interval_ms: 30_000,
        fsync: true,
        lab: None,
    }
}

fn cluster_of(user: u64) -> usize {
    ((user - 1) % 3) as usize
}

fn request(user: u64, args: Vec<String>) -> Request {
    Request {
        username: user.to_string(),
        arguments: args,
        // None: a course client's session, bound to the connection.
        session: String::new(),
        request_id: rand::random::<u64>() | 1,
    }
}

async fn call<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, BoxError> {
    match tokio::time::timeout(CALL, f).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!("{what}: {:?}: {}", s.code(), s.message()).into()),
        Err(_) => Err(format!("{what}: no answer within {CALL:?}").into()),
    }
}

/// One caller: a connection to each cluster's master.
#[derive(Clone)]
struct Worker {
    masters: Vec<SnsServiceClient<Channel>>,
}

impl Worker {
    fn to(&mut self, user: u64) -> &mut SnsServiceClient<Channel> {
        &mut self.masters[cluster_of(user)]
    }

    async fn login(&mut self, user: u64) -> Result<(), BoxError> {
        let r = call("login", self.to(user).login(request(user, Vec::new()))).await?;
        match Said::from_msg(Rpc::Login, &r.msg) {
            Some(Said::LoggedIn) => Ok(()),
            _ => Err(format!("login of {user}: {}", r.msg).into()),
        }
    }

    async fn follow(&mut self, user: u64, target: u64) -> Result<(), BoxError> {
        let r = call(
            "follow",
            self.to(user)
                .follow(request(user, vec![target.to_string()])),
        )
        .await?;
        match Said::from_msg(Rpc::Follow, &r.msg) {
            Some(Said::Followed) => Ok(()),
            _ => Err(format!("{user} follows {target}: {}", r.msg).into()),
        }
    }

    async fn list_len(&mut self, user: u64) -> Result<usize, BoxError> {
        let r = call("list", self.to(user).list(request(user, Vec::new()))).await?;
        Ok(r.all_users.len())
    }

    /// One post by `user` on a stream of its own, acknowledged.
    async fn post(&mut self, user: u64, text: String) -> Result<(), BoxError> {
        let (tx, rx) = mpsc::channel(4);
        tx.send(Message {
            username: user.to_string(),
            ..Default::default()
        })
        .await?;
        let mut inbound = call("timeline", self.to(user).timeline(ReceiverStream::new(rx))).await?;
        let post_id = rand::random::<u64>() | 1;
        tx.send(Message {
            username: user.to_string(),
            msg: text,
            post_id,
            ..Default::default()
        })
        .await?;
        loop {
            match tokio::time::timeout(CALL, inbound.message()).await {
                Ok(Ok(Some(m))) if m.ack_id == post_id => return Ok(()),
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => return Err("the server ended the timeline".into()),
                Ok(Err(s)) => return Err(format!("post: {:?}: {}", s.code(), s.message()).into()),
                Err(_) => return Err(format!("post: no acknowledgement within {CALL:?}").into()),
            }
        }
    }
}

async fn workers(sys: &System) -> Result<Vec<Worker>, BoxError> {
    let t = sys.table().await.ok_or("no routing table")?;
    let mut addrs = Vec::new();
    for c in 1..=sys.settings.clusters {
        let m = master_of(&t, c).ok_or_else(|| format!("cluster {c} has no master"))?;
        addrs.push(format!("{}:{}", m.hostname, m.port));
    }
    let mut out = Vec::new();
    for _ in 0..WORKERS {
        let mut masters = Vec::new();
        for a in &addrs {
            masters.push(SnsServiceClient::new(channel(a)?));
        }
        out.push(Worker { masters });
    }
    Ok(out)
}

/// Runs `job` for every item of `items` on the workers (item `i` on worker
/// `i % WORKERS`, in order, so that a user's calls go over the connection
/// its session is bound to); returns the wall time.
async fn on_workers<I, F, Fut>(
    workers: &[Worker],
    items: Vec<I>,
    key: impl Fn(&I) -> u64,
    job: F,
) -> Result<Duration, BoxError>
where
    I: Send + 'static,
    F: Fn(Worker, I) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = (Worker, Result<(), BoxError>)> + Send,
{
    let mut queues: Vec<Vec<I>> = (0..workers.len()).map(|_| Vec::new()).collect();
    for it in items {
        let w = (key(&it) as usize) % workers.len();
        queues[w].push(it);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (w, q) in workers.iter().cloned().zip(queues) {
        let job = job.clone();
        tasks.push(tokio::spawn(async move {
            let mut w = w;
            for it in q {
                let (back, r) = job(w, it).await;
                w = back;
                r?;
            }
            Ok::<_, BoxError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(start.elapsed())
}

/// VmRSS of each cluster's master, in bytes.
async fn masters_rss(sys: &System) -> Result<Vec<u64>, BoxError> {
    let t = sys.table().await.ok_or("no routing table")?;
    let mut out = Vec::new();
    for c in 1..=sys.settings.clusters {
        let m = master_of(&t, c).ok_or_else(|| format!("cluster {c} has no master"))?;
        let pid = sys
            .pid(&System::server_name(c, m.server_id))
            .ok_or("the master is not ours")?;
        out.push(rss(pid).ok_or_else(|| format!("cannot read the RSS of {pid}"))?);
    }
    Ok(out)
}

fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The users `user` follows.
fn followees(user: u64, users: u64, reader_follows: u64) -> Vec<u64> {
    let n = if user == READER {
        reader_follows
    } else {
        FOLLOWS_EACH
    };
    (1..=n.min(users - 1))
        .map(|d| (user - 1 + d) % users + 1)
        .collect()
}

/// A system built through the API, and what building it cost.
struct Built {
    sys: System,
    users: u64,
    follows: u64,
    login_rate: f64,
    follow_rate: f64,
    /// The largest growth of a master's RSS, in bytes.
    rss_growth: u64,
    rss_before: Vec<u64>,
    rss_after: Vec<u64>,
}

async fn build(ctx: &Ctx, name: &str, users: u64, reader_follows: u64) -> Result<Built, BoxError> {
    let sys = System::start(&ctx.scratch.join(name), settings(ctx)).await?;
    let rss_before = masters_rss(&sys).await?;
    let ws = workers(&sys).await?;
    let took = on_workers(
        &ws,
        (1..=users).collect(),
        |u| *u,
        |mut w, u| async move {
            let r = w.login(u).await;
            (w, r)
        },
    )
    .await?;
    let login_rate = users as f64 / took.as_secs_f64();
    // Follows of users in other clusters wait for the synchronizers to have
    // carried every user everywhere: ask as users 1, 2 and 3, one per
    // cluster, on the connection that holds their sessions.
    let deadline = Instant::now() + Duration::from_secs(300);
    for probe in 1..=3u64.min(users) {
        let mut w = ws[probe as usize % WORKERS].clone();
        while w.list_len(probe).await? < users as usize {
            if Instant::now() > deadline {
                return Err(format!("not all {users} users reached every cluster in 300 s").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let pairs: Vec<(u64, u64)> = (1..=users)
        .flat_map(|u| {
            followees(u, users, reader_follows)
                .into_iter()
                .map(move |t| (u, t))
        })
        .collect();
    let follows = pairs.len() as u64;
    let took = on_workers(
        &ws,
        pairs,
        |(u, _)| *u,
        |mut w, (u, t)| async move {
            let r = w.follow(u, t).await;
            (w, r)
        },
    )
    .await?;
    let follow_rate = follows as f64 / took.as_secs_f64();
    // The reader's followees in its own cluster post, the latest last.
    let mine: Vec<u64> = followees(READER, users, reader_follows)
        .into_iter()
        .filter(|&f| cluster_of(f) == cluster_of(READER))
        .collect();
    let posters = &mine[mine.len().saturating_sub(POSTERS as usize)..];
    for &p in posters {
        let mut w = ws[p as usize % WORKERS].clone();
        w.post(p, format!("a post by {p}, one line like any other"))
            .await?;
    }
    // Their connections go, and with them the sessions they held.
    drop(ws);
    let rss_after = masters_rss(&sys).await?;
    let rss_growth = rss_after
        .iter()
        .zip(&rss_before)
        .map(|(a, b)| a.saturating_sub(*b))
        .max()
        .unwrap_or(0);
    Ok(Built {
        sys,
        users,
        follows,
        login_rate,
        follow_rate,
        rss_growth,
        rss_before,
        rss_after,
    })
}

/// This project's terminal client's output, to the bench.
struct Screen(mpsc::UnboundedSender<Vec<u8>>);

impl Write for Screen {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .send(buf.to_vec())
            .map_err(|_| std::io::Error::other("the bench stopped reading"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads the client's output up to the next line that starts with one of
/// `ends`; returns that line's prefix and the `All users` line's number of
/// users, if one came.
async fn read_until(
    out: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    pending: &mut Vec<u8>,
    ends: &[&str],
) -> Result<(String, Option<usize>), BoxError> {
    let mut listed = None;
    loop {
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let line = &line[..line.len() - 1];
            // The prompt has no newline: it starts the next line.
            let line = line
                .strip_prefix(tinysns::client::PROMPT.as_bytes())
                .unwrap_or(line);
            if let Some(rest) = line.strip_prefix(b"All users:") {
                listed = Some(if rest.is_empty() {
                    0
                } else {
                    rest.iter().filter(|&&b| b == b',').count() + 1
                });
            }
            for e in ends {
                if line.starts_with(e.as_bytes()) {
                    return Ok((e.to_string(), listed));
                }
            }
        }
        let chunk = tokio::time::timeout(CALL, out.recv())
            .await
            .map_err(|_| format!("the client printed nothing for {CALL:?}"))?
            .ok_or("the client ended")?;
        pending.extend_from_slice(&chunk);
    }
}

/// This project's client logged in as `user`, typing commands.
struct Client {
    input: mpsc::Sender<String>,
    out: mpsc::UnboundedReceiver<Vec<u8>>,
    pending: Vec<u8>,
    task: tokio::task::JoinHandle<i32>,
}

impl Client {
    async fn start(coord: &str, user: u64) -> Result<Client, BoxError> {
        let (host, port) = coord.rsplit_once(':').ok_or("bad coordinator address")?;
        let opts = tinysns::client::Options::new(host, port.parse()?, user);
        let (input, rx) = mpsc::channel(4);
        let (tx, out) = mpsc::unbounded_channel();
        let task = tokio::spawn(tinysns::client::run(opts, rx, Screen(tx)));
        let mut c = Client {
            input,
            out,
            pending: Vec::new(),
            task,
        };
        // The title block's last line: logged in.
        let title_end = tinysns::client::TITLE[tinysns::client::TITLE.len() - 1];
        let (end, _) = read_until(
            &mut c.out,
            &mut c.pending,
            &[title_end, tinysns::client::CONNECTION_FAILED],
        )
        .await?;
        if end == tinysns::client::CONNECTION_FAILED {
            return Err(format!("the client could not log in as {user}").into());
        }
        Ok(c)
    }

    /// Types LIST; the time to its last line, and how many users it listed.
    async fn list(&mut self) -> Result<(Duration, usize), BoxError> {
        let start = Instant::now();
        self.input.send("LIST".into()).await?;
        let (end, listed) = read_until(
            &mut self.out,
            &mut self.pending,
            &["Followers:", "Command failed"],
        )
        .await?;
        let took = start.elapsed();
        match listed {
            Some(n) if end == "Followers:" => Ok((took, n)),
            _ => Err("LIST failed in the client".into()),
        }
    }

    async fn end(self) {
        drop(self.input);
        let _ = tokio::time::timeout(CALL, self.task).await;
    }
}

/// This project's client logged in as [`LISTER`]: at first the session
/// may still be held by a worker's connection the server has not seen go.
async fn lister(coord: &str) -> Result<Client, BoxError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::start(coord, LISTER).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline => {
                log::debug!("lister: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One LIST, checking that every user is listed.
async fn list_once(c: &mut Client, users: u64, s: &mut Samples) -> Result<(), BoxError> {
    let (took, n) = c.list().await?;
    if n as u64 != users {
        return Err(format!("LIST showed {n} users of {users}").into());
    }
    s.push(took);
    Ok(())
}

/// Opens the reader's timeline and waits for its first 20 posts.
async fn open_once(user: &mut User) -> Result<Duration, BoxError> {
    user.login().await?;
    let start = Instant::now();
    let mut tl = user.timeline().await?;
    let mut n = 0;
    while n < 20 {
        if tl.next().await?.ack_id == 0 {
            n += 1;
        }
    }
    Ok(start.elapsed())
}

/// The reader logs in with a token session of its own: wait until the
/// server has seen the connection that held its course-client session go.
async fn reader(coord: &str) -> Result<User, BoxError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut u = User::new(coord, READER)?;
        match u.login().await {
            Ok(()) => return Ok(u),
            Err(e) if Instant::now() < deadline => {
                log::debug!("reader login: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes `users` users into every server directory (see the module doc).
fn write_users(data: &Path, users: u64) -> std::io::Result<()> {
    for c in 0..3usize {
        let mut text = String::with_capacity(users as usize * 8);
        let (mine, others): (Vec<u64>, Vec<u64>) = (1..=users).partition(|&u| cluster_of(u) == c);
        for u in mine.iter().chain(&others) {
            text.push_str(&u.to_string());
            text.push('\n');
        }
        let cluster = c as u32 + 1;
        for s in 1..=2 {
            let dir = server_dir(data, cluster, s);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("all_users.txt"), &text)?;
        }
        let sync = cluster_dir(data, cluster).join("synchronizer");
        std::fs::create_dir_all(&sync)?;
        let peers: String = (1..=3u32)
            .filter(|&p| p != cluster)
            .map(|p| format!("users {p} {}\n", mine.len()))
            .collect();
        std::fs::write(sync.join("positions.txt"), peers)?;
    }
    Ok(())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// `n` with thousands separated, as the table prints it.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub async fn scale(ctx: &Ctx) -> Result<Outcome, BoxError> {
    let mut out = Outcome::new("scale");
    let z = sizes(ctx);
    let small = build(ctx, "scale-small", SMALL, SMALL - 1).await?;
    let big = build(ctx, "scale-big", z.users, z.reader_follows).await?;
    let (n, nf) = (count(big.users), count(big.follows));
    let base = format!("{SMALL} users");
    out.rows.push(
        Row::new(format!("Login/s, {n} users"), big.login_rate, "/s")
            .beside(&base, small.login_rate),
    );
    out.rows.push(
        Row::new(format!("Follow/s, {nf} follows"), big.follow_rate, "/s").beside(
            format!("{} follows", count(small.follows)),
            small.follow_rate,
        ),
    );
    out.rows.push(
        Row::new(
            format!("master RSS growth, {n} users"),
            mb(big.rss_growth),
            "MB",
        )
        .beside(&base, mb(small.rss_growth)),
    );
    // Less the small system's growth: the workers' 192 connections and
    // whatever a first call allocates cost both the same.
    let per_100k = (mb(big.rss_growth) - mb(small.rss_growth)) * 100_000.0
        / (big.users - small.users).max(1) as f64;
    out.rows.push(
        Row::new(
            "master RSS growth per 100,000 users (less 100 users')",
            per_100k,
            "MB",
        )
        .target("< 50 MB", per_100k < 50.0),
    );
    out.notes.push(format!(
        "masters' VmRSS before the first login / after the last follow: {} users: {}; {SMALL} users: {}",
        n,
        rss_pairs(&big.rss_before, &big.rss_after),
        rss_pairs(&small.rss_before, &small.rss_after),
    ));
    // Alternating, so that both see the same machine.
    let (sc, bc) = (small.sys.coordinator(), big.sys.coordinator());
    let (mut ls, mut lb) = (Samples::default(), Samples::default());
    let (mut ts, mut tb) = (Samples::default(), Samples::default());
    let (mut rs, mut rb) = (reader(&sc).await?, reader(&bc).await?);
    let (mut cs, mut cb) = (lister(&sc).await?, lister(&bc).await?);
    for _ in 0..z.reps {
        list_once(&mut cs, small.users, &mut ls).await?;
        list_once(&mut cb, big.users, &mut lb).await?;
        ts.push(open_once(&mut rs).await?);
        tb.push(open_once(&mut rb).await?);
    }
    cb.end().await;
    drop(big);
    let (lsum, bsum) = (ls.summary(), lb.summary());
    out.rows
        .push(Row::new(format!("LIST p50, {n} users"), bsum.p50, "ms").beside(&base, lsum.p50));
    let (tss, tbs) = (ts.summary(), tb.summary());
    out.rows.push(
        Row::new(
            format!("timeline open p50, follows {}", count(z.reader_follows)),
            tbs.p50,
            "ms",
        )
        .beside(format!("follows {} of {SMALL}", SMALL - 1), tss.p50),
    );
    // The cap, from files.
    let root = ctx.scratch.join("scale-cap");
    write_users(&root.join("data"), z.list_users)?;
    let cap = System::start(&root, settings(ctx)).await?;
    let cap_rss = masters_rss(&cap).await?;
    let cc = cap.coordinator();
    let (mut ls2, mut lc) = (Samples::default(), Samples::default());
    let mut ccl = lister(&cc).await?;
    for _ in 0..z.reps {
        list_once(&mut cs, small.users, &mut ls2).await?;
        list_once(&mut ccl, z.list_users, &mut lc).await?;
    }
    ccl.end().await;
    cs.end().await;
    let (s2, csum) = (ls2.summary(), lc.summary());
    let nc = count(z.list_users);
    out.rows.push(
        Row::new(format!("LIST p50, {nc} users"), csum.p50, "ms")
            .beside(&base, s2.p50)
            .target("< 1 s", csum.p50 < 1000.0),
    );
    out.rows
        .push(Row::new(format!("LIST p99, {nc} users"), csum.p99, "ms").beside(&base, s2.p99));
    out.notes.push(format!(
        "{n} users and {nf} follows created through the API, {WORKERS} calls in flight (course-client sessions, one connection per worker and master); each user follows the {FOLLOWS_EACH} after it, the reader the {} after it; {POSTERS} of the reader's followees in its cluster post once",
        count(z.reader_follows)
    ));
    out.notes.push(format!(
        "LIST through this project's client (tinysns::client::run: the RPC, decoding and the printed lines), {} times each, alternating with the {SMALL}-user system; the {nc} users' all_users.txt written before the start (SPEC §3), not created through the API; masters' VmRSS there: {}",
        z.reps,
        cap_rss
            .iter()
            .map(|b| format!("{:.0} MB", mb(*b)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out.summaries.push((format!("LIST {SMALL} users"), lsum));
    out.summaries.push((format!("LIST {n} users"), bsum));
    out.summaries.push((format!("LIST {nc} users"), csum));
    out.summaries
        .push((format!("timeline open {SMALL} users"), tss));
    out.summaries
        .push((format!("timeline open {n} users"), tbs));
    out.charts.push(Chart::Bars {
        file: "scale_list.png".into(),
        title: "scale: LIST through the project's client (p50)".into(),
        y_label: "ms".into(),
        bars: vec![
            (base.clone(), lsum.p50),
            (format!("{n} users"), bsum.p50),
            (format!("{nc} users"), csum.p50),
        ],
    });
    Ok(out)
}

fn rss_pairs(before: &[u64], after: &[u64]) -> String {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| format!("{:.0}->{:.0} MB", mb(*b), mb(*a)))
        .collect::<Vec<_>>()
        .join(", ")
}
