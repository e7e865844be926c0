//! The production analogue of a mirrored durable post, for `post`: Redis
//! with `appendfsync always` and one replica, each write an `LPUSH`
//! followed by `WAIT 1 0` (answered once the replica has it), if
//! `redis-server` is on the PATH. Without it the scenario says so; it is
//! never a failure.
//!
//! The client is a few lines of RESP over a `TcpStream` rather than a
//! client crate: two commands and `INFO` are all it sends, and a crate
//! (with its own connection manager and features) would be a dependency
//! for one baseline row. Each worker has its own connection, as each
//! poster has its own, and writes `LPUSH` and `WAIT` together (one round
//! trip, as a pipelining client does), then reads both replies.

use super::system::free_port;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What `post` prints when there is no Redis to compare with.
pub const NOT_INSTALLED: &str = "redis: not measured (redis-server not installed)";

/// Whether `redis-server` can be started.
pub fn installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Redis master and its replica, each in a scratch directory of its own;
/// both killed (by pid) when dropped.
pub struct Pair {
    master: Child,
    replica: Child,
    pub port: u16,
}

fn start_one(dir: &Path, port: u16, replica_of: Option<u16>) -> Result<Child, BoxError> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
        ]);
    if let Some(m) = replica_of {
        cmd.args(["--replicaof", "127.0.0.1", &m.to_string()]);
    }
    Ok(cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start redis-server: {e}"))?)
}

impl Pair {
    /// Starts both and waits until the replica is in sync.
    pub async fn start(root: &Path) -> Result<Pair, BoxError> {
        let port = free_port()?;
        let master = start_one(&root.join("master"), port, None)?;
        let replica_port = free_port()?;
        let replica = match start_one(&root.join("replica"), replica_port, Some(port)) {
            Ok(r) => r,
            Err(e) => {
                let mut m = master;
                let _ = m.kill();
                let _ = m.wait();
                return Err(e);
            }
        };
        let pair = Pair {
            master,
            replica,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if pair.in_sync(replica_port).await {
                return Ok(pair);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the redis replica was not in sync within 30 s (logs in {})",
                    root.display()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The master has one online replica and the replica's link is up.
    async fn in_sync(&self, replica_port: u16) -> bool {
        let info = |port| async move {
            let mut c = Resp::connect(port).await?;
            c.info_replication().await
        };
        match (info(self.port).await, info(replica_port).await) {
            (Ok(m), Ok(r)) => {
                m.contains("connected_slaves:1")
                    && m.contains("state=online")
                    && r.contains("master_link_status:up")
            }
            _ => false,
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for c in [&mut self.master, &mut self.replica] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One RESP connection.
pub struct Resp {
    conn: BufReader<TcpStream>,
    out: Vec<u8>,
    line: Vec<u8>,
}

/// A reply: only what LPUSH, WAIT and INFO answer.
#[derive(Debug)]
enum Reply {
    Int(i64),
    Text(String),
}

impl Resp {
    pub async fn connect(port: u16) -> Result<Resp, BoxError> {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        Ok(Resp {
            conn: BufReader::new(s),
            out: Vec::new(),
            line: Vec::new(),
        })
    }

    fn command(&mut self, args: &[&[u8]]) {
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            self.out
                .extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
    }

    async fn send(&mut self) -> Result<(), BoxError> {
        self.conn.get_mut().write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    async fn reply(&mut self) -> Result<Reply, BoxError> {
        self.line.clear();
        self.conn.read_until(b'\n', &mut self.line).await?;
        let line = self
            .line
            .strip_suffix(b"\r\n")
            .ok_or("redis closed the connection")?;
        let (kind, rest) = line.split_first().ok_or("an empty reply from redis")?;
        let text = String::from_utf8_lossy(rest).to_string();
        match kind {
            b':' => Ok(Reply::Int(text.parse()?)),
            b'+' => Ok(Reply::Text(text)),
            b'-' => Err(format!("redis: {text}").into()),
            b'$' => {
                let n: usize = text.parse()?;
                let mut buf = vec![0; n + 2];
                self.conn.read_exact(&mut buf).await?;
                buf.truncate(n);
                Ok(Reply::Text(String::from_utf8_lossy(&buf).to_string()))
            }
            _ => Err(format!("a redis reply of kind {:?}", *kind as char).into()),
        }
    }

    async fn info_replication(&mut self) -> Result<String, BoxError> {
        self.command(&[b"INFO", b"replication"]);
        self.send().await?;
        match self.reply().await? {
            Reply::Text(t) => Ok(t),
            Reply::Int(i) => Err(format!("INFO answered {i}").into()),
        }
    }

    /// `LPUSH key value` then `WAIT 1 0`: the write is on the replica too.
    pub async fn push_and_wait(&mut self, key: &[u8], value: &[u8]) -> Result<(), BoxError> {
        self.command(&[b"LPUSH", key, value]);
        self.command(&[b"WAIT", b"1", b"0"]);
        self.send().await?;
        match self.reply().await? {
            Reply::Int(_) => {}
            other => return Err(format!("LPUSH answered {other:?}").into()),
        }
        match self.reply().await? {
            Reply::Int(n) if n >= 1 => Ok(()),
            other => Err(format!("WAIT 1 0 answered {other:?}").into()),
        }
    }
}
