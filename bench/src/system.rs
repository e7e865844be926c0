//! A whole Tiny SNS started by the benchmark: the release binaries (found
//! beside the `bench` executable), each with its own log file, in a scratch
//! directory. Processes are killed by pid (SIGKILL, the failure the system
//! promises to survive) and when the [`System`] is dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tinysns::proto::tinysns::coordinator_client::CoordinatorClient;
use tinysns::proto::tinysns::{Empty, Role, ServerInfo, ServerList};
use tonic::transport::Channel;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a system is started.
#[derive(Debug, Clone)]
pub struct Settings {
    pub clusters: u32,
    pub heartbeat_ms: u64,
    pub sync_interval_ms: u64,
    pub fsync: bool,
    /// Every process on a host of its own in this lab (see [`host_of`]),
    /// started through [`netlab::Lab::command`] with `SNS_HOST` and every
    /// address it is given its host's; the bench must then run on a host
    /// of the lab too ([`CLIENTS`]).
    pub lab: Option<Arc<netlab::Lab>>,
}

pub use netlab::sns::{CLIENTS, host_of};

/// Every host of a lab system of `clusters` clusters, the bench's last.
pub fn lab_hosts(clusters: u32) -> Vec<String> {
    let mut h = vec![host_of("coordinator")];
    for c in 1..=clusters {
        h.push(host_of(&System::server_name(c, 1)));
        h.push(host_of(&System::server_name(c, 2)));
        h.push(host_of(&format!("synchronizer_{c}")));
    }
    h.push(CLIENTS.into());
    h
}

pub struct System {
    pub settings: Settings,
    /// Root of the data directories.
    pub data: PathBuf,
    logs: PathBuf,
    bin: PathBuf,
    pub coord_port: u16,
    ports: HashMap<String, u16>,
    procs: HashMap<String, Child>,
    client: CoordinatorClient<Channel>,
}

/// A port that was free a moment ago (the OS picks it).
///
/// Not one the kernel picks (port 0 gives one of the ephemeral range, which
/// the outgoing connections of every process on the machine draw from too:
/// a daemon started a moment later found its port taken, when a chaos run
/// beside it made connections). So ports come from below that range
/// (20,000–32,000), from a base that differs by process, each tried once.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = (std::process::id() % 1_000) * 12;
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = u16::try_from((base + n) % 12_000 + 20_000).unwrap_or(20_000);
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no free port between 20000 and 32000",
    ))
}

/// The directory of the running executable: the other binaries of the same
/// build are there.
pub fn bin_dir() -> Result<PathBuf, BoxError> {
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .ok_or("the executable has no directory")?
        .to_path_buf())
}

impl System {
    /// Starts a coordinator, `clusters` × (master, slave) servers and one
    /// synchronizer per cluster in `root`, whose data directory may already
    /// hold files; returns once every slave is in service.
    pub async fn start(root: &Path, settings: Settings) -> Result<System, BoxError> {
        let data = root.join("data");
        let logs = root.join("logs");
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(&logs)?;
        let bin = bin_dir()?;
        for b in ["coordinator", "server", "synchronizer"] {
            if !bin.join(b).exists() {
                return Err(format!(
                    "{} not found: build the release binaries first (cargo build --release)",
                    bin.join(b).display()
                )
                .into());
            }
        }
        let coord_port = free_port()?;
        let coord_host = match &settings.lab {
            Some(lab) => lab.addr(&host_of("coordinator")).to_string(),
            None => "127.0.0.1".to_string(),
        };
        let mut sys = System {
            client: coordinator_client(&format!("{coord_host}:{coord_port}"))?,
            settings,
            data,
            logs,
            bin,
            coord_port,
            ports: HashMap::new(),
            procs: HashMap::new(),
        };
        sys.start_coordinator()?;
        sys.wait_for("the coordinator", Duration::from_secs(10), |t| t.is_some())
            .await?;
        for c in 1..=sys.settings.clusters {
            sys.start_server(c, 1)?;
        }
        // Masters first, so that the first server of each cluster is master.
        sys.wait_for("every master", Duration::from_secs(20), |t| {
            t.is_some_and(|t| (1..=t.clusters).all(|c| master_of(t, c).is_some()))
        })
        .await?;
        for c in 1..=sys.settings.clusters {
            sys.start_server(c, 2)?;
            sys.start_synchronizer(c)?;
        }
        sys.wait_ready(Duration::from_secs(120)).await?;
        Ok(sys)
    }

    /// Starts (or restarts, on the same port and with the same state file)
    /// the coordinator.
    pub fn start_coordinator(&mut self) -> Result<(), BoxError> {
        let port = self.coord_port.to_string();
        let clusters = self.settings.clusters.to_string();
        self.spawn(
            "coordinator",
            "coordinator",
            &["-p", &port, "--clusters", &clusters],
        )
    }

    fn spawn(&mut self, name: &str, bin: &str, args: &[&str]) -> Result<(), BoxError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{name}.log")))?;
        let s = &self.settings;
        let mut cmd = match &s.lab {
            Some(lab) => {
                let mut cmd = lab.command(&host_of(name), self.bin.join(bin));
                cmd.env("SNS_HOST", self.host_addr(name));
                cmd
            }
            None => Command::new(self.bin.join(bin)),
        };
        let child = cmd
            .args(args)
            .env("SNS_HEARTBEAT_MS", s.heartbeat_ms.to_string())
            .env("SNS_SYNC_INTERVAL_MS", s.sync_interval_ms.to_string())
            .env("SNS_FSYNC", if s.fsync { "1" } else { "0" })
            .env("SNS_DATA_DIR", &self.data)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {bin}: {e}"))?;
        self.procs.insert(name.to_string(), child);
        Ok(())
    }

    /// The address process `name` listens at and hands out.
    pub fn host_addr(&self, name: &str) -> String {
        match &self.settings.lab {
            Some(lab) => lab.addr(&host_of(name)).to_string(),
            None => "127.0.0.1".to_string(),
        }
    }

    fn port(&mut self, name: &str) -> Result<u16, BoxError> {
        if let Some(p) = self.ports.get(name) {
            return Ok(*p);
        }
        let p = free_port()?;
        self.ports.insert(name.to_string(), p);
        Ok(p)
    }

    pub fn server_name(c: u32, s: u32) -> String {
        format!("server_{c}_{s}")
    }

    /// Starts (or restarts, on the same port) server `s` of cluster `c`.
    pub fn start_server(&mut self, c: u32, s: u32) -> Result<(), BoxError> {
        let name = Self::server_name(c, s);
        let port = self.port(&name)?.to_string();
        let coord = self.coord_port.to_string();
        let coord_host = self.host_addr("coordinator");
        let (c, s) = (c.to_string(), s.to_string());
        self.spawn(
            &name,
            "server",
            &[
                "-c",
                &c,
                "-s",
                &s,
                "-h",
                &coord_host,
                "-k",
                &coord,
                "-p",
                &port,
            ],
        )
    }

    pub fn start_synchronizer(&mut self, c: u32) -> Result<(), BoxError> {
        let name = format!("synchronizer_{c}");
        let port = self.port(&name)?.to_string();
        let coord = self.coord_port.to_string();
        let coord_host = self.host_addr("coordinator");
        let id = c.to_string();
        self.spawn(
            &name,
            "synchronizer",
            &["-h", &coord_host, "-k", &coord, "-p", &port, "-i", &id],
        )
    }

    /// SIGKILLs a process and reaps it.
    pub fn kill(&mut self, name: &str) -> Result<(), BoxError> {
        let mut child = self
            .procs
            .remove(name)
            .ok_or_else(|| format!("no process {name}"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, ...) to a running process.
    pub fn signal(&self, name: &str, signal: libc::c_int) -> Result<(), BoxError> {
        let pid = self.pid(name).ok_or_else(|| format!("no process {name}"))?;
        let pid = libc::pid_t::try_from(pid).map_err(|_| format!("bad pid {pid}"))?;
        // SAFETY: kill(2) on a child we started and have not reaped.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(format!(
                "signal {signal} to {name}: {}",
                std::io::Error::last_os_error()
            )
            .into());
        }
        Ok(())
    }

    /// Whether a process of that name was started and not killed since.
    pub fn running(&self, name: &str) -> bool {
        self.procs.contains_key(name)
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// CPU time used so far by each process, by name.
    pub fn cpu(&self) -> HashMap<String, Duration> {
        self.procs
            .iter()
            .filter_map(|(n, c)| Some((n.clone(), cpu_time(c.id())?)))
            .collect()
    }

    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs.get(name).map(Child::id)
    }

    pub fn server_dir(&self, c: u32, s: u32) -> PathBuf {
        tinysns::config::server_dir(&self.data, c, s)
    }

    pub fn coordinator(&self) -> String {
        format!("{}:{}", self.host_addr("coordinator"), self.coord_port)
    }

    pub async fn table(&self) -> Option<ServerList> {
        let mut c = self.client.clone();
        c.get_table(Empty {}).await.ok().map(|r| r.into_inner())
    }

    /// The routing table, or `None` if the coordinator does not answer
    /// within `limit` (it may be stopped).
    pub async fn table_within(&self, limit: Duration) -> Option<ServerList> {
        tokio::time::timeout(limit, self.table())
            .await
            .ok()
            .flatten()
    }

    /// Polls the routing table until `ok`, or fails after `limit`.
    pub async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        ok: impl Fn(Option<&ServerList>) -> bool,
    ) -> Result<Duration, BoxError> {
        let start = Instant::now();
        loop {
            if ok(self.table().await.as_ref()) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "gave up waiting for {what} after {limit:?} (logs in {})",
                    self.logs.display()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until every cluster has a master and an in-service slave and
    /// every synchronizer is alive.
    pub async fn wait_ready(&self, limit: Duration) -> Result<Duration, BoxError> {
        let clusters = self.settings.clusters;
        self.wait_for("every slave in service", limit, |t| {
            t.is_some_and(|t| {
                (1..=clusters).all(|c| {
                    master_of(t, c).is_some()
                        && in_service_slave(t, c).is_some()
                        && t.servers.iter().any(|e| {
                            e.kind == tinysns::proto::tinysns::Kind::Synchronizer as i32
                                && e.cluster_id == c
                                && e.alive
                        })
                })
            })
        })
        .await
    }
}

impl Drop for System {
    fn drop(&mut self) {
        for (_, mut child) in self.procs.drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn is_server(e: &ServerInfo) -> bool {
    e.kind == tinysns::proto::tinysns::Kind::Server as i32
}

/// The live master of cluster `c`.
pub fn master_of(t: &ServerList, c: u32) -> Option<&ServerInfo> {
    t.servers
        .iter()
        .find(|e| is_server(e) && e.cluster_id == c && e.alive && e.role == Role::Master as i32)
}

/// The live, in-service slave of cluster `c`.
pub fn in_service_slave(t: &ServerList, c: u32) -> Option<&ServerInfo> {
    t.servers.iter().find(|e| {
        is_server(e) && e.cluster_id == c && e.alive && e.role == Role::Slave as i32 && e.in_service
    })
}

/// A client of the coordinator at `addr` that connects on first use.
pub fn coordinator_client(addr: &str) -> Result<CoordinatorClient<Channel>, BoxError> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect_lazy();
    Ok(CoordinatorClient::new(ch))
}

/// CPU time a process has used, from /proc: the sum over its threads of
/// their nanoseconds on a CPU (`task/*/schedstat`), or the process's clock
/// ticks of 10 ms (`stat`, which also counts threads that have ended),
/// whichever is larger.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line; Linux reports
    // them in USER_HZ, which is 100 on every architecture it runs on.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let coarse = Duration::from_millis(ticks * 10);
    let mut fine = Duration::ZERO;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let ns = std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
            fine += Duration::from_nanos(ns.unwrap_or(0));
        }
    }
    Some(coarse.max(fine))
}

/// CPU time used so far by this process (the bench's simulated users).
pub fn own_cpu() -> Option<Duration> {
    cpu_time(std::process::id())
}
