//! A whole system of real processes (coordinator, servers, synchronizers) in
//! its own temporary directory, and what the coordinator's table says about
//! it. Every wait here reads the table (`GetTable`), never a log.

use super::client::{Client, SUCCESS};
use super::files::read;
use super::process::{
    Proc, all_threads_stopped, free_port, runtime, signal_pid, wait_for, wait_until,
};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tinysns::proto::tinysns::coordinator_client::CoordinatorClient;
use tinysns::proto::tinysns::{Empty, Kind, Role, ServerInfo, ServerList};

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
    /// Every process's HTTP port (`SNS_HTTP_PORT`: `/metrics`, `/healthz`,
    /// the coordinator's dashboard), kept across restarts like `ports`.
    pub http_ports: HashMap<String, u16>,
    /// With TLS: the CA and the certificate every process uses.
    pub tls: Option<tinysns::trust::tls::Made>,
    /// In a lab ([`super::hosts`]): every process on a host of its own,
    /// reached at that host's address. `None`: everything on loopback.
    /// Dropped after the processes (fields drop after `Drop::drop`).
    pub lab: Option<std::sync::Arc<netlab::Lab>>,
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

/// Where a process of ours stands in the coordinator's table, from the name
/// the harness gave it: `(kind, cluster, id)`.
fn table_key(name: &str) -> Option<(Kind, u32, u32)> {
    if let Some(rest) = name.strip_prefix("server_") {
        let (c, s) = rest.split_once('_')?;
        return Some((Kind::Server, c.parse().ok()?, s.parse().ok()?));
    }
    let c = name.strip_prefix("synchronizer_")?.parse().ok()?;
    Some((Kind::Synchronizer, c, c))
}

fn is_server(e: &ServerInfo, c: u32) -> bool {
    e.kind == Kind::Server as i32 && e.cluster_id == c
}

pub fn is_slave_in_service(e: &ServerInfo) -> bool {
    e.alive && e.role == Role::Slave as i32 && e.in_service
}

impl System {
    /// A coordinator alone.
    pub fn new(clusters: u32, heartbeat_ms: u64, sync_ms: u64) -> System {
        System::create(clusters, heartbeat_ms, sync_ms, false)
    }

    /// [`System::full`] with TLS on every channel (`snsctl tls init`'s
    /// files, made in the system's directory).
    pub fn full_tls(clusters: u32) -> System {
        let mut s = System::create(clusters, 500, 30_000, true);
        s.start_rest();
        s
    }

    fn create(clusters: u32, heartbeat_ms: u64, sync_ms: u64, tls: bool) -> System {
        System::create_in(clusters, heartbeat_ms, sync_ms, tls, None)
    }

    /// A coordinator alone, on `lab`'s host for it when there is a lab.
    pub(super) fn create_in(
        clusters: u32,
        heartbeat_ms: u64,
        sync_ms: u64,
        tls: bool,
        lab: Option<std::sync::Arc<netlab::Lab>>,
    ) -> System {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = tls.then(|| {
            let hosts = ["localhost".to_string(), "127.0.0.1".to_string()];
            tinysns::trust::tls::make(&dir.path().join("tls"), &hosts).expect("certificates")
        });
        let mut s = System {
            dir,
            coord_port: free_port(),
            clusters,
            heartbeat_ms,
            sync_ms,
            procs: HashMap::new(),
            ports: HashMap::new(),
            http_ports: HashMap::new(),
            tls,
            lab,
        };
        s.start_coordinator();
        s
    }

    /// Coordinator, a master and a slave per cluster, a synchronizer per
    /// cluster; returns once the coordinator's table shows them all alive and
    /// every slave in service.
    pub fn full(clusters: u32) -> System {
        System::full_with(clusters, 500, 30_000)
    }

    /// [`System::full`] with the given heartbeat and synchronizer periods.
    pub fn full_with(clusters: u32, heartbeat_ms: u64, sync_ms: u64) -> System {
        let mut s = System::new(clusters, heartbeat_ms, sync_ms);
        s.start_rest();
        s
    }

    /// Every cluster's pair and synchronizer, once the coordinator runs.
    pub(super) fn start_rest(&mut self) {
        for c in 1..=self.clusters {
            self.start_pair(c);
        }
        for c in 1..=self.clusters {
            self.start_synchronizer(c);
        }
        self.wait_for_all();
    }

    /// A coordinator for three clusters and cluster 1 alone (master and
    /// in-service slave, no synchronizer).
    pub fn one_cluster(heartbeat_ms: u64) -> System {
        let mut s = System::new(3, heartbeat_ms, 30_000);
        s.start_pair(1);
        s.wait_for_all();
        s
    }

    /// Starts cluster `c`'s server 1, and once it is master, server 2.
    pub fn start_pair(&mut self, c: u32) {
        self.start_server(c, 1);
        self.wait_for_role(c, 1, Role::Master);
        self.start_server(c, 2);
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The system's cluster key file (made by its first process).
    pub fn key_file(&self) -> PathBuf {
        self.data_dir().join("cluster.key")
    }

    /// What a peer of this system proves itself with: its key.
    pub fn trust(&self) -> tinysns::trust::Trust {
        let key = tinysns::trust::ClusterKey::load_or_create(&self.key_file())
            .unwrap_or_else(|e| panic!("the system's key: {e}"));
        tinysns::trust::Trust::new(key, None)
    }

    pub fn server_dir(&self, c: u32, s: u32) -> PathBuf {
        tinysns::config::server_dir(self.data_dir(), c, s)
    }

    /// Both server directories of every cluster.
    pub fn server_dirs(&self) -> Vec<PathBuf> {
        (1..=self.clusters)
            .flat_map(|c| (1..=2).map(move |s| (c, s)))
            .map(|(c, s)| self.server_dir(c, s))
            .collect()
    }

    /// The log of the current run of process `name`.
    pub fn log(&self, name: &str) -> String {
        read(&self.log_path(name))
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.data_dir().join(format!("{name}.log"))
    }

    /// The cluster user `user` lives in.
    pub fn cluster_of(&self, user: u64) -> u32 {
        tinysns::config::cluster_of(user, self.clusters)
    }

    /// Whether `all_users.txt` of server `s` of cluster `c` lists `user`.
    pub fn has_user(&self, c: u32, s: u32, user: u64) -> bool {
        read(&self.server_dir(c, s).join("all_users.txt"))
            .lines()
            .any(|l| l.trim() == user.to_string())
    }

    /// Whether `follower`'s follow of `followee` is in the followee's
    /// `_followers` file on server `s` of cluster `c`.
    pub fn has_follower(&self, c: u32, s: u32, followee: u64, follower: u64) -> bool {
        read(
            &self
                .server_dir(c, s)
                .join(format!("u{followee}_followers.txt")),
        )
        .lines()
        .any(|l| l.starts_with(&format!("+ {follower} ")))
    }

    /// The address process `name` listens at and hands out: its lab
    /// host's, or loopback.
    pub fn addr_of(&self, name: &str) -> String {
        match &self.lab {
            Some(lab) => lab.addr(&super::hosts::host_of(name)).to_string(),
            None => "127.0.0.1".to_string(),
        }
    }

    /// The coordinator's address (without the port).
    pub fn coord_host(&self) -> String {
        self.addr_of("coordinator")
    }

    /// `bin` to be run as process `name`: on its lab host, with `SNS_HOST`
    /// its address, or here on loopback.
    fn command(&self, name: &str, bin: &str) -> Command {
        let mut cmd = match &self.lab {
            Some(lab) => lab.command(&super::hosts::host_of(name), bin),
            None => Command::new(bin),
        };
        cmd.env("SNS_HOST", self.addr_of(name))
            .env("SNS_HEARTBEAT_MS", self.heartbeat_ms.to_string())
            .env("SNS_SYNC_INTERVAL_MS", self.sync_ms.to_string())
            .env("SNS_DATA_DIR", self.data_dir())
            // The system's own key and TLS settings, never the caller's.
            .env_remove("SNS_CLUSTER_KEY_FILE")
            .env_remove("SNS_TLS_CERT")
            .env_remove("SNS_TLS_KEY")
            .env_remove("SNS_TLS_CA")
            .env(
                "RUST_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null());
        if let Some(t) = &self.tls {
            cmd.env("SNS_TLS_CERT", &t.cert)
                .env("SNS_TLS_KEY", &t.key)
                .env("SNS_TLS_CA", &t.ca);
        }
        cmd
    }

    fn spawn(&mut self, name: &str, mut cmd: Command) {
        let log = std::fs::File::create(self.log_path(name)).expect("log file");
        let http = *self
            .http_ports
            .entry(name.to_string())
            .or_insert_with(free_port);
        cmd.env("SNS_HTTP_PORT", http.to_string());
        cmd.stdout(Stdio::null()).stderr(log);
        self.procs.insert(name.to_string(), Proc::spawn(cmd, name));
    }

    pub fn start_coordinator(&mut self) {
        let mut cmd = self.command("coordinator", env!("CARGO_BIN_EXE_coordinator"));
        cmd.args(["-p", &self.coord_port.to_string()])
            .args(["--clusters", &self.clusters.to_string()]);
        self.spawn("coordinator", cmd);
        let addr = format!("{}:{}", self.coord_host(), self.coord_port);
        wait_until("the coordinator to listen", || {
            std::net::TcpStream::connect(&addr).is_ok()
        });
    }

    pub fn server_name(c: u32, s: u32) -> String {
        format!("server_{c}_{s}")
    }

    pub fn synchronizer_name(c: u32) -> String {
        format!("synchronizer_{c}")
    }

    pub fn start_server(&mut self, c: u32, s: u32) {
        self.start_server_with(c, s, &[]);
    }

    /// Restarts a server (same port, same directory), first keeping the log
    /// of its previous run as `<name>.log.<n>` (starting truncates the log).
    pub fn restart_server(&mut self, c: u32, s: u32) {
        let name = Self::server_name(c, s);
        let log = self.log_path(&name);
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
        let mut cmd = self.command(&name, env!("CARGO_BIN_EXE_server"));
        cmd.args(["-c", &c.to_string(), "-s", &s.to_string()])
            .args(["-h", &self.coord_host(), "-k", &self.coord_port.to_string()])
            .args(["-p", &port.to_string()])
            .envs(env.iter().copied());
        self.spawn(&name, cmd);
    }

    pub fn start_synchronizer(&mut self, id: u32) {
        self.start_synchronizer_with(id, &[]);
    }

    /// [`System::start_synchronizer`] with extra environment variables
    /// (knobs such as `SNS_MAX_USERS`).
    pub fn start_synchronizer_with(&mut self, id: u32, env: &[(&str, &str)]) {
        let name = Self::synchronizer_name(id);
        let port = *self.ports.entry(name.clone()).or_insert_with(free_port);
        let mut cmd = self.command(&name, env!("CARGO_BIN_EXE_synchronizer"));
        cmd.args(["-h", &self.coord_host(), "-k", &self.coord_port.to_string()])
            .args(["-p", &port.to_string(), "-i", &id.to_string()])
            .envs(env.iter().copied());
        self.spawn(&name, cmd);
    }

    /// The gRPC address of synchronizer `id`.
    pub fn synchronizer_url(&self, id: u32) -> String {
        let name = Self::synchronizer_name(id);
        format!("http://{}:{}", self.addr_of(&name), self.ports[&name])
    }

    /// The coordinator's gRPC address.
    pub fn coordinator_url(&self) -> String {
        format!("http://{}:{}", self.coord_host(), self.coord_port)
    }

    /// The HTTP address (`http://host:port`) of process `name`.
    pub fn http_url(&self, name: &str) -> String {
        format!("http://{}:{}", self.addr_of(name), self.http_ports[name])
    }

    /// SIGKILLs a process by name.
    pub fn kill(&mut self, name: &str) {
        drop(self.procs.remove(name));
    }

    /// The gRPC address of server `s` of cluster `c`.
    pub fn server_url(&self, c: u32, s: u32) -> String {
        let name = Self::server_name(c, s);
        format!("http://{}:{}", self.addr_of(&name), self.ports[&name])
    }

    pub fn table(&self) -> Option<ServerList> {
        let addr = format!("{}:{}", self.coord_host(), self.coord_port);
        let tls = self
            .tls
            .as_ref()
            .map(|t| tinysns::trust::tls::client_config(&t.ca).expect("the CA"));
        runtime().block_on(async move {
            let endpoint = tinysns::trust::endpoint(&addr, tls.as_ref()).ok()?;
            let mut c = CoordinatorClient::new(endpoint.connect().await.ok()?);
            c.get_table(Empty {}).await.ok().map(|r| r.into_inner())
        })
    }

    /// The coordinator's entry for server `s` of cluster `c`.
    pub fn entry(&self, c: u32, s: u32) -> Option<ServerInfo> {
        self.table()?
            .servers
            .into_iter()
            .find(|e| is_server(e, c) && e.server_id == s)
    }

    /// The live master of cluster `c`, per the table.
    pub fn master_of(&self, c: u32) -> Option<u32> {
        self.table()?
            .servers
            .iter()
            .find(|e| is_server(e, c) && e.alive && e.role == Role::Master as i32)
            .map(|e| e.server_id)
    }

    pub fn wait_for_role(&self, c: u32, s: u32, role: Role) {
        wait_until(&format!("server {s} of cluster {c} to be {role:?}"), || {
            self.entry(c, s)
                .is_some_and(|e| e.alive && e.role == role as i32)
        });
    }

    pub fn wait_slave_in_service(&self, c: u32, s: u32) {
        wait_until(
            &format!("server {s} of cluster {c} to be an in-service slave"),
            || self.entry(c, s).is_some_and(|e| is_slave_in_service(&e)),
        );
    }

    /// Waits until the table shows every started server and synchronizer
    /// alive, and in every cluster where both servers run, a master and an
    /// in-service slave (one that the master mirrors every write to).
    pub fn wait_for_all(&self) {
        wait_for("every process in the table, every slave in service", || {
            let table = self.table().ok_or("no table from the coordinator")?;
            self.missing_from(&table)
        });
    }

    /// What [`System::wait_for_all`] still waits for in `table`.
    fn missing_from(&self, table: &ServerList) -> Result<(), String> {
        let mut missing = Vec::new();
        let mut servers: BTreeMap<u32, usize> = BTreeMap::new();
        for name in self.procs.keys() {
            let Some((kind, c, id)) = table_key(name) else {
                continue;
            };
            let alive = table.servers.iter().any(|e| {
                e.kind == kind as i32 && e.cluster_id == c && e.server_id == id && e.alive
            });
            if !alive {
                missing.push(format!("{name} alive"));
            }
            if kind == Kind::Server {
                *servers.entry(c).or_default() += 1;
            }
        }
        for c in servers.iter().filter(|(_, n)| **n == 2).map(|(c, _)| *c) {
            let cluster = || table.servers.iter().filter(move |e| is_server(e, c));
            if !cluster().any(|e| e.alive && e.role == Role::Master as i32) {
                missing.push(format!("a master in cluster {c}"));
            }
            if !cluster().any(is_slave_in_service) {
                missing.push(format!("an in-service slave in cluster {c}"));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("missing {missing:?}; table {:?}", table.servers))
        }
    }
}

/// Signals, pauses and follows, in the system's terms.
impl System {
    /// Sends `sig` (`-STOP`, `-CONT`) to a process by name.
    pub fn signal(&self, name: &str, sig: &str) {
        signal_pid(self.procs[name].pid(), sig);
    }

    /// Stops (SIGSTOP) a process by name and waits until every thread of it
    /// is stopped: `kill -STOP` returns before that.
    pub fn stop(&self, name: &str) {
        self.signal(name, "-STOP");
        let pid = self.procs[name].pid();
        wait_until(&format!("every thread of {name} to stop"), || {
            all_threads_stopped(pid)
        });
    }

    /// `client`, logged in as `user`, follows `followee`, once the followee
    /// is known in the user's cluster; waits until the follow is known in
    /// the followee's cluster.
    pub fn follow(&self, client: &mut Client, user: u64, followee: u64) {
        let (fc, uc) = (self.cluster_of(followee), self.cluster_of(user));
        wait_until(&format!("user {followee} known in cluster {uc}"), || {
            self.master_of(uc)
                .is_some_and(|m| self.has_user(uc, m, followee))
        });
        assert_eq!(client.command(&format!("FOLLOW {followee}")), SUCCESS);
        wait_until(
            &format!("{user}'s follow of {followee} in cluster {fc}"),
            || {
                self.master_of(fc)
                    .is_some_and(|m| self.has_follower(fc, m, followee, user))
            },
        );
    }
}
