//! Several hosts on one machine, for tests that cut links.
//!
//! A [`Lab`] is a small network built with `ip netns`, veth pairs and `nft`:
//! one network namespace per host, every host wired by a veth pair to one
//! bridge, and the bridge in a namespace of the lab's own. Nothing is made
//! in the caller's namespace, so labs running at the same time (tests of
//! one `cargo test` run in parallel) never see each other and all reuse the
//! same addresses: host `i` (in the order given to [`Lab::new`]) is
//! `198.18.0.<i+1>/24`, in the range reserved for benchmarking networks
//! (RFC 2544), which reaches nothing outside the lab. Each host has its
//! own ports too, so a process may listen on the same port on every host.
//!
//! # Names
//!
//! Every namespace is named `<prefix><pid>n<lab>-<suffix>` (`<lab>` counts
//! the labs of this process), so two processes, or two labs of one process,
//! never share a name, and a lab left behind by a process that was killed
//! (no `Drop` ran) is recognised by its dead pid and removed by the next
//! [`Lab::new`] with the same prefix. Interfaces live only inside the lab's
//! namespaces, so their names need only be unique per lab; they still carry
//! the prefix (`<prefix>br`, `<prefix>b<i>` on the bridge side,
//! `<prefix>e<i>` in host `i`) and must fit the kernel's 15 bytes, which
//! bounds the prefix to [`MAX_PREFIX`] bytes. [`PREFIX`] is the default;
//! [`Lab::with_prefix`] takes another (the benchmark uses its own).
//!
//! # Starting programs on a host
//!
//! [`Lab::command`] is `ip netns exec <ns> <program>`; `ip` execs the
//! program (it does not fork), so the child's pid is the program's, and
//! killing the child kills the program. The file system is shared with the
//! caller. [`Lab::enter`] moves the calling *thread* into a host's namespace
//! until the guard is dropped: sockets it opens then, and threads it starts
//! (a tokio runtime built there), belong to that host, which is how a test
//! talks to the lab from inside it.
//!
//! # Cuts
//!
//! A cut is a silent drop: each host's namespace has an `nft` table with a
//! set of source addresses whose packets its input hook drops (`drop`, never
//! `reject`: no RST, no ICMP, so TCP connections stay open, half-open, as on
//! a broken link, until a keepalive or a deadline notices).
//! [`Lab::cut_one_way`]`(from, to)` adds `from` to `to`'s set: packets from
//! `from` to `to` are lost, the other direction still flows (though TCP
//! needs both, so a new connection either way fails). [`Lab::cut`] is both
//! directions, [`Lab::isolate`] cuts a host from every other, [`Lab::heal`]
//! and [`Lab::heal_all`] undo. The lab remembers the cuts it made, so
//! healing what is not cut is a no-op rather than an `nft` error.
//!
//! Never address a lab host from outside the lab: the caller's namespace
//! has no route to 198.18.0.0/24 of its own and would send the packets out
//! through its default route. Enter a host instead.
//!
//! # Clean-up
//!
//! `Drop` deletes every namespace the lab made, which deletes their
//! interfaces and rules with them; it runs on a panic too. A process still
//! running inside a host keeps that namespace alive (unnamed) until it
//! exits, so kill the lab's processes before dropping the lab.
//!
//! # Root
//!
//! All of this needs root (`CAP_SYS_ADMIN` and `CAP_NET_ADMIN`) and the
//! `ip` (iproute2) and `nft` (nftables) programs. [`require_root`] says
//! clearly what is missing; [`Lab::new`] calls it, so a test without them
//! fails with that message rather than passing silently.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// The default prefix of every name a lab makes.
pub const PREFIX: &str = "snt";

/// Longest prefix: `<prefix>b<i>` with `i` up to 253 must fit 15 bytes.
pub const MAX_PREFIX: usize = 11;

/// Most hosts in one lab (one /24, without .0 and .255).
pub const MAX_HOSTS: usize = 254;

/// The nft table each host gets.
const TABLE: &str = "inet netlab";

/// What went wrong while building or changing a lab.
#[derive(Debug)]
pub enum LabError {
    /// Not root, or `ip`/`nft` missing: what is needed.
    Unsupported(String),
    /// A host name, prefix or host count the lab does not accept.
    BadInput(String),
    /// A host that is not in the lab.
    UnknownHost(String),
    /// A command that failed: the command line and what it said.
    Command { command: String, output: String },
    /// A system call that failed.
    Os { what: String, error: std::io::Error },
}

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabError::Unsupported(what) => write!(f, "cannot build a network lab: {what}"),
            LabError::BadInput(what) => write!(f, "bad lab input: {what}"),
            LabError::UnknownHost(h) => write!(f, "no host {h:?} in this lab"),
            LabError::Command { command, output } => {
                write!(f, "`{command}` failed: {}", output.trim())
            }
            LabError::Os { what, error } => write!(f, "{what}: {error}"),
        }
    }
}

impl std::error::Error for LabError {}

/// Checks that labs can be built here: root, `ip` and `nft`. The error says
/// what is missing and how to get it.
pub fn require_root() -> Result<(), LabError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(LabError::Unsupported(format!(
            "these tests build network namespaces and need root (CAP_SYS_ADMIN, \
             CAP_NET_ADMIN); running as uid {euid}: run them as root (CI does)"
        )));
    }
    for (program, arg, package) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")] {
        let ok = Command::new(program)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(LabError::Unsupported(format!(
                "`{program}` is missing: install {package} (apt-get install -y {package})"
            )));
        }
    }
    Ok(())
}

/// The names one lab gives its namespaces and interfaces: pure, so that
/// they can be checked without root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
    tag: String,
}

impl Names {
    /// Names for lab number `lab` of process `pid`.
    pub fn new(prefix: &str, pid: u32, lab: u32) -> Result<Names, LabError> {
        if prefix.is_empty()
            || prefix.len() > MAX_PREFIX
            || !prefix.bytes().all(|b| b.is_ascii_lowercase())
        {
            return Err(LabError::BadInput(format!(
                "prefix {:?} must be 1 to {MAX_PREFIX} lowercase ASCII letters",
                truncate(prefix)
            )));
        }
        Ok(Names {
            prefix: prefix.to_string(),
            tag: format!("{prefix}{pid}n{lab}"),
        })
    }

    /// The namespace that holds the bridge.
    pub fn bridge_ns(&self) -> String {
        format!("{}-lab", self.tag)
    }

    /// The namespace of host `name`.
    pub fn host_ns(&self, name: &str) -> String {
        format!("{}-h-{name}", self.tag)
    }

    pub fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    /// Host `i`'s veth, on the bridge's side.
    pub fn bridge_port(&self, i: usize) -> String {
        format!("{}b{i}", self.prefix)
    }

    /// Host `i`'s veth, in the host.
    pub fn host_if(&self, i: usize) -> String {
        format!("{}e{i}", self.prefix)
    }

    /// The pid in a namespace name of this prefix, if it is one of ours.
    pub fn owner_pid(prefix: &str, ns: &str) -> Option<u32> {
        let rest = ns.strip_prefix(prefix)?;
        let (pid, rest) = rest.split_once('n')?;
        let (lab, _) = rest.split_once('-')?;
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        lab.parse::<u32>().ok()?;
        pid.parse().ok()
    }
}

/// Host `i`'s address.
pub fn host_addr(i: usize) -> Ipv4Addr {
    let last = u8::try_from(i + 1).unwrap_or(u8::MAX);
    Ipv4Addr::new(198, 18, 0, last)
}

/// The nft script that gives a host its (empty) drop set.
pub fn table_script() -> String {
    format!(
        "table {TABLE} {{\n\
         \tset cut {{ type ipv4_addr; }}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority 0; policy accept;\n\
         \t\tip saddr @cut drop\n\
         \t}}\n\
         }}\n"
    )
}

/// The nft command that starts (`drop`) or stops dropping packets from
/// `from` on the host that runs it.
pub fn drop_rule(from: Ipv4Addr, drop: bool) -> Vec<String> {
    let verb = if drop { "add" } else { "delete" };
    let mut words: Vec<String> = vec![verb.into(), "element".into()];
    words.extend(TABLE.split(' ').map(String::from));
    words.extend(["cut".into(), format!("{{ {from} }}")]);
    words
}

fn valid_host(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Runs `program args`, its output captured; an error carries both.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), LabError> {
    let line = format!("{program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| LabError::Command {
        command: line.clone(),
        output: e.to_string(),
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(text.as_bytes())
            .map_err(|e| LabError::Command {
                command: line.clone(),
                output: e.to_string(),
            })?;
    }
    let out = child.wait_with_output().map_err(|e| LabError::Command {
        command: line.clone(),
        output: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Command {
            command: line,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

/// The namespace names `ip netns list` shows.
fn list_namespaces() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes the namespaces of `prefix` whose process is gone (a lab whose
/// `Drop` never ran because its process was killed).
pub fn remove_stale(prefix: &str) {
    for ns in list_namespaces() {
        if let Some(pid) = Names::owner_pid(prefix, &ns)
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = run("ip", &["netns", "del", &ns], None);
        }
    }
}

struct Host {
    name: String,
    ns: String,
    addr: Ipv4Addr,
}

/// A set of hosts on one bridge, removed when dropped. See the crate's
/// documentation.
pub struct Lab {
    names: Names,
    hosts: Vec<Host>,
    /// Every namespace made so far, bridge first: what `Drop` deletes.
    made: Vec<String>,
    /// `(from, to)` host indices whose packets are being dropped.
    cuts: Mutex<BTreeSet<(usize, usize)>>,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab")
            .field("namespaces", &self.made)
            .finish()
    }
}

impl Lab {
    /// A lab with one host per name, with the default [`PREFIX`].
    pub fn new(hosts: &[&str]) -> Result<Lab, LabError> {
        Lab::with_prefix(PREFIX, hosts)
    }

    /// A lab whose names start with `prefix` (lowercase letters, at most
    /// [`MAX_PREFIX`]).
    pub fn with_prefix(prefix: &str, hosts: &[&str]) -> Result<Lab, LabError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let names = Names::new(
            prefix,
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst),
        )?;
        if hosts.is_empty() || hosts.len() > MAX_HOSTS {
            return Err(LabError::BadInput(format!(
                "a lab has 1 to {MAX_HOSTS} hosts, not {}",
                hosts.len()
            )));
        }
        let mut seen = BTreeSet::new();
        for h in hosts {
            if !valid_host(h) {
                return Err(LabError::BadInput(format!(
                    "host name {:?}: 1 to 32 of [A-Za-z0-9_.]",
                    truncate(h)
                )));
            }
            if !seen.insert(*h) {
                return Err(LabError::BadInput(format!("host {h:?} given twice")));
            }
        }
        require_root()?;
        remove_stale(prefix);
        let mut lab = Lab {
            hosts: hosts
                .iter()
                .enumerate()
                .map(|(i, h)| Host {
                    name: h.to_string(),
                    ns: names.host_ns(h),
                    addr: host_addr(i),
                })
                .collect(),
            names,
            made: Vec::new(),
            cuts: Mutex::new(BTreeSet::new()),
        };
        // On an error, dropping `lab` removes what was made so far.
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<(), LabError> {
        let br_ns = self.names.bridge_ns();
        let bridge = self.names.bridge();
        run("ip", &["netns", "add", &br_ns], None)?;
        self.made.push(br_ns.clone());
        run(
            "ip",
            &["-n", &br_ns, "link", "add", &bridge, "type", "bridge"],
            None,
        )?;
        run("ip", &["-n", &br_ns, "link", "set", &bridge, "up"], None)?;
        let script = table_script();
        for i in 0..self.hosts.len() {
            let ns = self.hosts[i].ns.clone();
            let addr = format!("{}/24", self.hosts[i].addr);
            let (port, inner) = (self.names.bridge_port(i), self.names.host_if(i));
            run("ip", &["netns", "add", &ns], None)?;
            self.made.push(ns.clone());
            let veth = [
                "-n", &br_ns, "link", "add", &port, "type", "veth", "peer", "name", &inner,
                "netns", &ns,
            ];
            run("ip", &veth, None)?;
            let up = ["-n", &br_ns, "link", "set", &port, "master", &bridge, "up"];
            run("ip", &up, None)?;
            run(
                "ip",
                &["-n", &ns, "addr", "add", &addr, "dev", &inner],
                None,
            )?;
            run("ip", &["-n", &ns, "link", "set", &inner, "up"], None)?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"], None)?;
            run(
                "ip",
                &["netns", "exec", &ns, "nft", "-f", "-"],
                Some(&script),
            )?;
        }
        Ok(())
    }

    fn index(&self, host: &str) -> Result<usize, LabError> {
        self.hosts
            .iter()
            .position(|h| h.name == host)
            .ok_or_else(|| LabError::UnknownHost(truncate(host).to_string()))
    }

    /// The host names, in order.
    pub fn hosts(&self) -> Vec<&str> {
        self.hosts.iter().map(|h| h.name.as_str()).collect()
    }

    /// The address of `host`. Panics on a host not in the lab (a test's
    /// mistake, not outside input).
    pub fn addr(&self, host: &str) -> IpAddr {
        match self.index(host) {
            Ok(i) => IpAddr::V4(self.hosts[i].addr),
            Err(e) => panic!("{e}"),
        }
    }

    /// The name of `host`'s namespace (for `ip netns exec` by hand).
    pub fn namespace(&self, host: &str) -> &str {
        match self.index(host) {
            Ok(i) => &self.hosts[i].ns,
            Err(e) => panic!("{e}"),
        }
    }

    /// `program` to be run on `host`: `ip netns exec <ns> <program>`, which
    /// execs, so the child's pid is the program's. Add arguments,
    /// environment and pipes as to any `Command`.
    pub fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.namespace(host)])
            .arg(program);
        cmd
    }

    /// Moves the calling thread into `host`'s namespace until the guard is
    /// dropped (on the same thread). Sockets opened and threads started
    /// meanwhile are `host`'s.
    pub fn enter(&self, host: &str) -> Result<Entered, LabError> {
        let ns = self.namespace(host).to_string();
        let os = |what: String| move |error| LabError::Os { what, error };
        let back = File::open("/proc/thread-self/ns/net")
            .map_err(os("open this thread's network namespace".into()))?;
        let target =
            File::open(format!("/run/netns/{ns}")).map_err(os(format!("open namespace {ns}")))?;
        setns(&target).map_err(os(format!("enter namespace {ns}")))?;
        Ok(Entered {
            back,
            _thread: std::marker::PhantomData,
        })
    }

    /// Runs `f` on a new thread inside `host`'s namespace and returns its
    /// handle (for servers a test runs itself, such as an echo).
    pub fn spawn_in<T: Send + 'static>(
        &self,
        host: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<T>, LabError> {
        let target =
            File::open(format!("/run/netns/{}", self.namespace(host))).map_err(|error| {
                LabError::Os {
                    what: format!("open namespace of {host}"),
                    error,
                }
            })?;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let entered = setns(&target);
            let ok = entered.is_ok();
            let _ = tx.send(entered);
            // The caller gets the error; the closure never runs outside.
            assert!(ok, "cannot enter the lab's namespace");
            f()
        });
        match rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(error)) => Err(LabError::Os {
                what: format!("enter namespace of {host}"),
                error,
            }),
            Err(_) => Err(LabError::BadInput("the lab thread ended early".into())),
        }
    }

    /// Drops packets from `from` to `to`; the other direction still flows.
    pub fn cut_one_way(&self, from: &str, to: &str) -> Result<(), LabError> {
        self.set_drop(from, to, true)
    }

    /// Drops packets between `a` and `b`, both ways.
    pub fn cut(&self, a: &str, b: &str) -> Result<(), LabError> {
        self.set_drop(a, b, true)?;
        self.set_drop(b, a, true)
    }

    /// Cuts `host` from every other host, both ways.
    pub fn isolate(&self, host: &str) -> Result<(), LabError> {
        for other in self.hosts() {
            if other != host {
                self.cut(host, other)?;
            }
        }
        Ok(())
    }

    /// Undoes any cut between `a` and `b`, both ways.
    pub fn heal(&self, a: &str, b: &str) -> Result<(), LabError> {
        self.set_drop(a, b, false)?;
        self.set_drop(b, a, false)
    }

    /// Undoes every cut.
    pub fn heal_all(&self) -> Result<(), LabError> {
        let cuts: Vec<(usize, usize)> = self.cuts().into_iter().collect();
        for (from, to) in cuts {
            let (from, to) = (self.hosts[from].name.clone(), self.hosts[to].name.clone());
            self.set_drop(&from, &to, false)?;
        }
        Ok(())
    }

    /// The `(from, to)` cuts in force, as host indices.
    fn cuts(&self) -> BTreeSet<(usize, usize)> {
        self.cuts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether packets from `from` to `to` are being dropped.
    pub fn is_cut(&self, from: &str, to: &str) -> bool {
        match (self.index(from), self.index(to)) {
            (Ok(f), Ok(t)) => self.cuts().contains(&(f, t)),
            _ => false,
        }
    }

    fn set_drop(&self, from: &str, to: &str, drop: bool) -> Result<(), LabError> {
        let (f, t) = (self.index(from)?, self.index(to)?);
        if f == t {
            return Err(LabError::BadInput(format!(
                "cannot cut {from:?} from itself"
            )));
        }
        let mut cuts = self.cuts.lock().unwrap_or_else(|p| p.into_inner());
        if cuts.contains(&(f, t)) == drop {
            return Ok(());
        }
        let words = drop_rule(self.hosts[f].addr, drop);
        let mut args = vec!["netns", "exec", &self.hosts[t].ns, "nft"];
        args.extend(words.iter().map(String::as_str));
        run("ip", &args, None)?;
        if drop {
            cuts.insert((f, t));
        } else {
            cuts.remove(&(f, t));
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Hosts first, the bridge last: deleting a namespace deletes its
        // veth ends and their peers.
        for ns in self.made.iter().rev() {
            if let Err(e) = run("ip", &["netns", "del", ns], None) {
                eprintln!("netlab: {e}");
            }
        }
    }
}

fn setns(ns: &File) -> std::io::Result<()> {
    // SAFETY: `ns` is an open namespace file; setns changes only the
    // calling thread's network namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling thread inside a host of a lab, until dropped (then back where
/// it was). Not `Send`: a namespace belongs to a thread.
pub struct Entered {
    back: File,
    _thread: std::marker::PhantomData<*const ()>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.back) {
            eprintln!("netlab: cannot leave the lab's namespace: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    #[test]
    fn names_fit_the_kernel_and_carry_the_prefix() {
        let n = Names::new("snt", 4_194_304, 17).unwrap();
        assert_eq!(n.bridge_ns(), "snt4194304n17-lab");
        assert_eq!(n.host_ns("c1s2"), "snt4194304n17-h-c1s2");
        for name in [n.bridge(), n.bridge_port(253), n.host_if(253)] {
            assert!(name.starts_with("snt") && name.len() <= 15, "{name}");
        }
        let long = Names::new(&"b".repeat(MAX_PREFIX), 1, 1).unwrap();
        assert!(long.bridge_port(MAX_HOSTS - 1).len() <= 15);
        assert!(Names::new(&"b".repeat(MAX_PREFIX + 1), 1, 1).is_err());
        assert!(Names::new("", 1, 1).is_err());
        assert!(Names::new("s-t", 1, 1).is_err());
    }

    #[test]
    fn owner_pid_reads_only_our_names() {
        assert_eq!(Names::owner_pid("snt", "snt123n4-h-a"), Some(123));
        assert_eq!(Names::owner_pid("snt", "snt123n4-lab"), Some(123));
        // Another prefix that starts with ours, and foreign names.
        assert_eq!(Names::owner_pid("snt", "sntb123n4-lab"), None);
        assert_eq!(Names::owner_pid("snt", "abc123n4-lab"), None);
        assert_eq!(Names::owner_pid("snt", "snt123n-lab"), None);
        assert_eq!(Names::owner_pid("snt", "sntn4-lab"), None);
    }

    #[test]
    fn addresses_and_rules() {
        assert_eq!(host_addr(0), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(host_addr(253), Ipv4Addr::new(198, 18, 0, 254));
        assert_eq!(
            drop_rule(host_addr(1), true).join(" "),
            "add element inet netlab cut { 198.18.0.2 }"
        );
        assert_eq!(
            drop_rule(host_addr(1), false).join(" "),
            "delete element inet netlab cut { 198.18.0.2 }"
        );
        let t = table_script();
        assert!(
            t.contains("ip saddr @cut drop") && !t.contains("reject"),
            "{t}"
        );
    }

    #[test]
    fn bad_hosts_are_refused_before_anything_is_made() {
        for hosts in [&[][..], &["a", "a"][..], &["a/b"][..], &[""][..]] {
            assert!(
                matches!(Lab::new(hosts), Err(LabError::BadInput(_))),
                "{hosts:?}"
            );
        }
    }

    /// Sends `msg` on `s` and waits up to `wait` for it to come back.
    fn echo_back(s: &mut TcpStream, msg: &[u8], wait: Duration) -> bool {
        if s.write_all(msg).is_err() {
            return false;
        }
        let mut got = Vec::new();
        let start = Instant::now();
        let mut buf = [0u8; 64];
        while got.len() < msg.len() && start.elapsed() < wait {
            match s.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return false,
            }
        }
        got == msg
    }

    /// Two hosts: b reaches a's echo; cut, the open connection goes silent
    /// (not reset); healed, what was sent meanwhile arrives.
    #[test]
    fn two_hosts_echo_cut_and_heal() {
        let lab = Lab::new(&["a", "b"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(lab.addr("a"), IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)));
        let a = lab.addr("a");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        lab.spawn_in("a", move || {
            let l = TcpListener::bind((a, 7000)).expect("bind in a");
            ready_tx.send(()).expect("ready");
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
        ready_rx.recv().expect("the echo listens");

        let guard = lab.enter("b").unwrap_or_else(|e| panic!("{e}"));
        let mut s = TcpStream::connect((a, 7000)).expect("b reaches a");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        assert!(echo_back(&mut s, b"one", Duration::from_secs(30)));

        lab.cut("a", "b").unwrap_or_else(|e| panic!("{e}"));
        assert!(lab.is_cut("a", "b") && lab.is_cut("b", "a"));
        assert!(
            !echo_back(&mut s, b"two", Duration::from_secs(1)),
            "echo through a cut"
        );
        lab.heal_all().unwrap_or_else(|e| panic!("{e}"));
        assert!(!lab.is_cut("a", "b"));
        // The connection survived (no reset): "two" comes back with TCP's
        // retransmission, then "three".
        let mut rest = Vec::new();
        let start = Instant::now();
        let mut buf = [0u8; 64];
        while rest.len() < 3 && start.elapsed() < Duration::from_secs(60) {
            if let Ok(n) = s.read(&mut buf) {
                assert!(n > 0, "connection closed by the cut");
                rest.extend_from_slice(&buf[..n]);
            }
        }
        assert_eq!(rest, b"two");
        assert!(echo_back(&mut s, b"three", Duration::from_secs(30)));

        // One way: b's bytes reach a, a's answers do not.
        lab.cut_one_way("a", "b").unwrap_or_else(|e| panic!("{e}"));
        assert!(lab.is_cut("a", "b") && !lab.is_cut("b", "a"));
        assert!(!echo_back(&mut s, b"four", Duration::from_secs(1)));
        lab.heal("a", "b").unwrap_or_else(|e| panic!("{e}"));
        let mut back = Vec::new();
        let start = Instant::now();
        while back.len() < 4 && start.elapsed() < Duration::from_secs(60) {
            if let Ok(n) = s.read(&mut buf) {
                assert!(n > 0, "connection closed by the cut");
                back.extend_from_slice(&buf[..n]);
            }
        }
        assert_eq!(back, b"four");

        // A program started on a host runs there.
        let out = lab
            .command("b", "ip")
            .args(["-4", "-o", "addr", "show"])
            .output()
            .expect("ip in b");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("198.18.0.2/24"), "{text}");
        drop(guard);

        let names: Vec<String> = lab.made.clone();
        drop(lab);
        let left = list_namespaces();
        assert!(names.iter().all(|n| !left.contains(n)), "{left:?}");
    }
}

/// The host names of a Tiny SNS system in a lab, shared by the e2e harness
/// and the bench so that both lay a system out the same way: `coord`,
/// `c<c>s<s>` for server `s` of cluster `c`, `c<c>sync` for a cluster's
/// synchronizer, and [`sns::CLIENTS`] for everything else. Only names: the
/// lab itself knows nothing of the system.
pub mod sns {
    /// The host the clients (and the test or bench driving them) run on.
    pub const CLIENTS: &str = "clients";

    /// The lab host of a process by the name the harness and the bench give
    /// it (`coordinator`, `server_<c>_<s>`, `synchronizer_<c>`).
    pub fn host_of(name: &str) -> String {
        if name == "coordinator" {
            return "coord".into();
        }
        if let Some(rest) = name.strip_prefix("server_")
            && let Some((c, s)) = rest.split_once('_')
        {
            return format!("c{c}s{s}");
        }
        if let Some(c) = name.strip_prefix("synchronizer_") {
            return format!("c{c}sync");
        }
        CLIENTS.into()
    }
}
