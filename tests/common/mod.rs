//! Test harness: starts the real binaries on free loopback ports, each system
//! in its own temporary data directory, with short heartbeat and sync periods;
//! kills them by pid when dropped. Conditions are awaited by polling with a
//! deadline, never by a fixed sleep.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tinysns::proto::tinysns::coordinator_client::CoordinatorClient;
use tinysns::proto::tinysns::{Empty, Role, ServerList};

/// Generous deadline for anything to happen on a busy 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A port nobody listens on, below the kernel's range for outgoing
/// connections (32768 and up), so that no client socket takes it between now
/// and the process binding it; never the same twice in one test binary.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 1_000) * 12;
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (base + n) % 12_000 + 20_000;
        let port = u16::try_from(port).expect("port in range");
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `cond` until it holds or `DEADLINE` passes; panics with `what`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A started process, killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct System {
    /// Kept (not deleted) when a test fails or `TEST_KEEP` is set, so the
    /// processes' logs and data can be read afterwards.
    pub dir: tempfile::TempDir,
    pub coord_port: u16,
    pub clusters: u32,
    pub heartbeat_ms: u64,
    pub sync_ms: u64,
    pub procs: HashMap<String, Proc>,
    pub ports: HashMap<String, u16>,
}

impl Drop for System {
    fn drop(&mut self) {
        // Stop the processes first, then decide about the directory.
        self.procs.clear();
        if std::thread::panicking() || std::env::var_os("TEST_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("test data and logs kept in {}", dir.keep().display());
        }
    }
}

impl System {
    /// A coordinator alone.
    pub fn new(clusters: u32, heartbeat_ms: u64, sync_ms: u64) -> System {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = System {
            dir,
            coord_port: free_port(),
            clusters,
            heartbeat_ms,
            sync_ms,
            procs: HashMap::new(),
            ports: HashMap::new(),
        };
        s.start_coordinator();
        s
    }

    /// Coordinator, a master and a slave per cluster, a synchronizer per
    /// cluster; returns once the coordinator's table shows them all alive.
    pub fn full(clusters: u32) -> System {
        System::full_with(clusters, 500, 30_000)
    }

    /// [`System::full`] with the given heartbeat and synchronizer periods.
    pub fn full_with(clusters: u32, heartbeat_ms: u64, sync_ms: u64) -> System {
        let mut s = System::new(clusters, heartbeat_ms, sync_ms);
        for c in 1..=clusters {
            s.start_server(c, 1);
            s.wait_for_role(c, 1, Role::Master);
            s.start_server(c, 2);
        }
        for c in 1..=clusters {
            s.start_synchronizer(c);
        }
        s.wait_for_all();
        s
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn server_dir(&self, c: u32, s: u32) -> PathBuf {
        self.data_dir()
            .join(format!("cluster_{c}"))
            .join(format!("server_{s}"))
    }

    fn command(&self, bin: &str) -> Command {
        let mut cmd = Command::new(bin);
        cmd.env("SNS_HEARTBEAT_MS", self.heartbeat_ms.to_string())
            .env("SNS_SYNC_INTERVAL_MS", self.sync_ms.to_string())
            .env("SNS_DATA_DIR", self.data_dir())
            .env(
                "RUST_LOG",
                std::env::var("TEST_LOG")
                    .unwrap_or_else(|_| "info,tinysns::synchronizer=debug".into()),
            )
            .stdin(Stdio::null());
        cmd
    }

    fn spawn(&mut self, name: &str, mut cmd: Command) {
        let log =
            std::fs::File::create(self.data_dir().join(format!("{name}.log"))).expect("log file");
        cmd.stdout(Stdio::null()).stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.procs.insert(
            name.to_string(),
            Proc {
                child,
                name: name.to_string(),
            },
        );
    }

    pub fn start_coordinator(&mut self) {
        let mut cmd = self.command(env!("CARGO_BIN_EXE_coordinator"));
        cmd.args(["-p", &self.coord_port.to_string()])
            .args(["--clusters", &self.clusters.to_string()]);
        self.spawn("coordinator", cmd);
        let port = self.coord_port;
        wait_until("the coordinator to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    pub fn server_name(c: u32, s: u32) -> String {
        format!("server_{c}_{s}")
    }

    pub fn start_server(&mut self, c: u32, s: u32) {
        self.start_server_with(c, s, &[]);
    }

    /// Restarts a server (same port, same directory), first keeping the log
    /// of its previous run as `<name>.log.<n>` (starting truncates the log).
    pub fn restart_server(&mut self, c: u32, s: u32) {
        let name = Self::server_name(c, s);
        let log = self.data_dir().join(format!("{name}.log"));
        let mut n = 1;
        while self.data_dir().join(format!("{name}.log.{n}")).exists() {
            n += 1;
        }
        let _ = std::fs::rename(&log, self.data_dir().join(format!("{name}.log.{n}")));
        self.start_server(c, s);
    }

    /// [`System::start_server`] with extra environment variables (knobs
    /// such as `SNS_FSYNC`).
    pub fn start_server_with(&mut self, c: u32, s: u32, env: &[(&str, &str)]) {
        let name = Self::server_name(c, s);
        let port = *self.ports.entry(name.clone()).or_insert_with(free_port);
        let mut cmd = self.command(env!("CARGO_BIN_EXE_server"));
        cmd.args(["-c", &c.to_string(), "-s", &s.to_string()])
            .args(["-h", "127.0.0.1", "-k", &self.coord_port.to_string()])
            .args(["-p", &port.to_string()])
            .envs(env.iter().copied());
        self.spawn(&name, cmd);
    }

    pub fn start_synchronizer(&mut self, id: u32) {
        let name = format!("synchronizer_{id}");
        let port = *self.ports.entry(name.clone()).or_insert_with(free_port);
        let mut cmd = self.command(env!("CARGO_BIN_EXE_synchronizer"));
        cmd.args(["-h", "127.0.0.1", "-k", &self.coord_port.to_string()])
            .args(["-p", &port.to_string(), "-i", &id.to_string()]);
        self.spawn(&name, cmd);
    }

    /// SIGKILLs a process by name.
    pub fn kill(&mut self, name: &str) {
        if let Some(p) = self.procs.remove(name) {
            drop(p);
        }
    }

    pub fn table(&self) -> Option<ServerList> {
        let port = self.coord_port;
        runtime().block_on(async move {
            let mut c = CoordinatorClient::connect(format!("http://127.0.0.1:{port}"))
                .await
                .ok()?;
            c.get_table(Empty {}).await.ok().map(|r| r.into_inner())
        })
    }

    /// The coordinator's entry for server `s` of cluster `c`.
    pub fn entry(&self, c: u32, s: u32) -> Option<tinysns::proto::tinysns::ServerInfo> {
        self.table()?
            .servers
            .into_iter()
            .find(|e| e.kind == 0 && e.cluster_id == c && e.server_id == s)
    }

    pub fn wait_for_role(&self, c: u32, s: u32, role: Role) {
        wait_until(&format!("server {s} of cluster {c} to be {role:?}"), || {
            self.table().is_some_and(|t| {
                t.servers.iter().any(|e| {
                    e.kind == 0
                        && e.cluster_id == c
                        && e.server_id == s
                        && e.alive
                        && e.role == role as i32
                })
            })
        });
    }

    /// Waits until every started server and synchronizer is alive in the
    /// table, and every slave has announced itself to its master (the
    /// master's log says so).
    pub fn wait_for_all(&self) {
        let expected = self.procs.keys().filter(|n| *n != "coordinator").count();
        wait_until("every process to register", || {
            self.table()
                .is_some_and(|t| t.servers.iter().filter(|e| e.alive).count() >= expected)
        });
        let masters: Vec<String> = self
            .procs
            .keys()
            .filter(|n| n.starts_with("server_"))
            .cloned()
            .collect();
        for c in 1..=self.clusters {
            let members: Vec<&String> = masters
                .iter()
                .filter(|n| n.starts_with(&format!("server_{c}_")))
                .collect();
            if members.len() < 2 {
                continue;
            }
            wait_until(&format!("cluster {c}'s slave to join"), || {
                members.iter().any(|n| {
                    std::fs::read_to_string(self.data_dir().join(format!("{n}.log")))
                        .is_ok_and(|l| l.contains(") is in service"))
                })
            });
        }
    }

    pub fn client(&self, user: u64) -> Client {
        Client::start(self.coord_port, user, &[])
    }
}

/// A terminal client driven through pipes.
pub struct Client {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Client {
    pub fn start(coord_port: u16, user: u64, env: &[(&str, &str)]) -> Client {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_client"));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-k",
            &coord_port.to_string(),
            "-u",
            &user.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start client");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        // The prompt has no newline: it prefixes the next line.
                        let mut l = line.trim_end_matches('\n');
                        while let Some(rest) = l.strip_prefix("Cmd> ") {
                            l = rest;
                        }
                        if tx.send(l.to_string()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Client {
            child,
            stdin,
            lines: rx,
            seen: Vec::new(),
        }
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .expect("write to client");
    }

    /// Closes stdin (Ctrl-D).
    pub fn close_input(&mut self) {
        self.stdin = None;
    }

    /// The next line of output, within the deadline.
    pub fn next_line(&mut self) -> Option<String> {
        let l = self.lines.recv_timeout(DEADLINE).ok()?;
        self.seen.push(l.clone());
        Some(l)
    }

    /// Reads lines until one equals `want`; panics (showing what was seen) if
    /// the deadline passes or output ends.
    pub fn expect(&mut self, want: &str) {
        let start = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l == want {
                        return;
                    }
                }
                Err(_) => panic!("never saw {want:?}; saw {:#?}", self.seen),
            }
        }
    }

    /// The next line must be exactly `want`.
    pub fn expect_next(&mut self, want: &str) {
        match self.next_line() {
            Some(l) => assert_eq!(l, want, "after {:#?}", self.seen),
            None => panic!("no line; wanted {want:?}; saw {:#?}", self.seen),
        }
    }

    /// Starts, waits for the title block's last line.
    pub fn logged_in(coord_port: u16, user: u64) -> Client {
        let mut c = Client::start(coord_port, user, &[]);
        c.expect("=====================================");
        c
    }

    /// Runs a command and returns the first reply line.
    pub fn command(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.next_line()
            .unwrap_or_else(|| panic!("no reply to {cmd:?}; saw {:#?}", self.seen))
    }

    pub fn enter_timeline(&mut self) {
        self.send("TIMELINE");
        self.expect_next("Command completed successfully");
        self.expect_next("Now you are in the timeline");
    }

    /// Waits for the process to exit; returns its status code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            if start.elapsed() > DEADLINE {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything left on stdout after exit.
    pub fn rest(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            out.push(l);
        }
        out
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a whole file as text ("" if missing).
pub fn read(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// The posts `(author, text)` in a timeline or posts file, in file order.
pub fn posts_in(path: &Path) -> Vec<(u64, String)> {
    read(path)
        .split("\n\n")
        .filter(|r| !r.is_empty())
        .filter_map(|r| {
            let mut lines = r.lines();
            let _t = lines.next()?.strip_prefix("T ")?;
            let u = lines.next()?.strip_prefix("U ")?.parse().ok()?;
            let w = lines.next()?.strip_prefix("W ")?.to_string();
            Some((u, w))
        })
        .collect()
}

/// Every record of every file in a directory, sorted, per file name.
pub fn records(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("server dir").flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        // Data files only: the journal is each server's own.
        if tinysns::storage::FileKind::parse(&e.path()).is_none() {
            continue;
        }
        let text = read(&e.path());
        let sep = if name.ends_with("_timeline.txt") || name.ends_with("_posts.txt") {
            "\n\n"
        } else {
            "\n"
        };
        let mut recs: Vec<String> = text
            .split(sep)
            .filter(|r| !r.is_empty())
            .map(String::from)
            .collect();
        recs.sort();
        out.insert(name, recs);
    }
    out
}

pub fn assert_no_duplicates(dir: &Path) {
    for (name, recs) in records(dir) {
        let mut d = recs.clone();
        d.dedup();
        assert_eq!(
            d.len(),
            recs.len(),
            "duplicate records in {}/{name}",
            dir.display()
        );
    }
}
