//! The trust boundary (SPEC §5): who may call what, and how peers prove
//! they belong.
//!
//! # Threat model
//! A *peer* is any process of the system: the coordinator, servers,
//! synchronizers. A *stranger* is anything else that can open a TCP
//! connection to one of them, including every person's client. Strangers
//! may do what a client may do (log in as a user who is not logged in,
//! follow, post, read timelines; the course's protocol has no passwords)
//! and look up routing (`GetServer`, the read-only `GetTable`), and nothing
//! else: they cannot write a file, change the table, an epoch or an
//! in-service flag, receive replicated data, or impersonate a peer.
//!
//! Protected: every replica call (a stranger could otherwise join as a
//! slave and receive every write, download a snapshot, or forge a batch),
//! every synchronizer call (forged users, follows and posts), the
//! coordinator's heartbeats and its peer-only lookups (a forged heartbeat
//! could point clients at an impostor or force a failover).
//!
//! Not protected: anything a client can do (clients are not
//! authenticated, by the course's design); the contents of traffic on the
//! network when TLS is off (the key travels as a bearer token in each
//! call's metadata, so on a network others can watch, turn TLS on); a
//! machine whose files are readable by the attacker (the key is a file).
//! Peers that hold the key are still checked (ids, clusters, times,
//! epochs, sizes: see the receivers), so a buggy peer cannot do more harm
//! than refused calls.
//!
//! # The cluster key
//! 256 random bits in hex, in `<SNS_DATA_DIR>/cluster.key` unless
//! `--cluster-key-file`/`SNS_CLUSTER_KEY_FILE` names another file. The
//! first process that needs it and finds no file creates it ([`key`]:
//! atomically, mode 0600), so the course's plain invocations on one
//! machine share one key with no flag. On several machines the operator
//! copies the file (with `scp`, mode 0600) to each machine and points
//! `SNS_CLUSTER_KEY_FILE` at it. A key file that is unreadable, empty or
//! malformed stops the process at start-up with one line (status 2); the
//! key is never logged, replied or shown.
//!
//! Every gRPC server of a process sits behind one tower layer
//! ([`layer::RequireKey`]) that lets a call through if its method is on the
//! open list or if it carries the key (metadata `x-sns-cluster-key`,
//! compared in constant time); otherwise it answers `UNAUTHENTICATED`
//! before any handler runs, so nothing changes anywhere. Every channel a
//! peer opens to another peer presents the key ([`Trust::peer`]).
//!
//! # Channels
//! Every channel a process opens is made in one place, [`Trust::link`] (or
//! [`Link::new`] for the client, which holds no key): keep-alive, connect
//! timeout and per-call deadlines from the heartbeat, and a connection that
//! missed a deadline replaced for the next call ([`link`]: a cut link
//! closes nothing, and TCP would hold calls for its retransmission
//! back-off).
//!
//! # TLS
//! Optional: `SNS_TLS_CERT`, `SNS_TLS_KEY` and `SNS_TLS_CA` (or the
//! `--tls-*` flags) turn on TLS for every gRPC server of the process and
//! make every channel it opens `https`, verifying the server against the
//! CA; all three or none. The client takes `--tls-ca`. `snsctl tls init`
//! makes a CA and one certificate for the given hosts ([`tls::make`]);
//! `./startup.sh --tls` uses it and starts everything with TLS. TLS is
//! server-side only: peers prove themselves with the key, clients cannot
//! be asked for certificates.

pub mod key;
pub mod layer;
pub mod link;
pub mod tls;

pub use key::ClusterKey;
pub use layer::{AttachKey, RequireKey};
pub use link::{Link, Timing, with_deadline};

use crate::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// A channel to another peer: it presents the cluster key on every call,
/// and replaces a stalled connection ([`link`]).
pub type PeerChannel = InterceptedService<Link, AttachKey>;

/// A gRPC server whose every service is behind the key check.
pub type Server = tonic::transport::Server<
    tower_layer::Stack<
        RequireKey,
        tower_layer::Stack<crate::ops::rpc::RpcMetrics, tower_layer::Identity>,
    >,
>;

/// The trust flags every daemon takes (SPEC §5).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TrustArgs {
    /// The cluster key file (default `<data dir>/cluster.key`, created if
    /// missing).
    #[arg(long = "cluster-key-file", env = "SNS_CLUSTER_KEY_FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// TLS: this process's certificate (PEM).
    #[arg(long = "tls-cert", env = "SNS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: this process's private key (PEM).
    #[arg(long = "tls-key", env = "SNS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// TLS: the CA that peers' certificates are checked against (PEM).
    #[arg(long = "tls-ca", env = "SNS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

/// What a daemon proves and checks: its key and its TLS settings. Cheap to
/// clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct Trust {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    key: Arc<ClusterKey>,
    attach: AttachKey,
    tls: Option<tls::Tls>,
}

impl Trust {
    /// Reads the key (creating it if missing) and the TLS files. The error
    /// is one line, for a status-2 exit.
    pub fn load(args: &TrustArgs, data_dir: &Path) -> Result<Trust, String> {
        let key_file = args
            .cluster_key_file
            .clone()
            .unwrap_or_else(|| data_dir.join("cluster.key"));
        let key = ClusterKey::load_or_create(&key_file)?;
        let tls = match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
            (None, None, None) => None,
            (Some(cert), Some(k), Some(ca)) => Some(tls::load(cert, k, ca)?),
            _ => {
                return Err(
                    "TLS needs all three of --tls-cert, --tls-key and --tls-ca (SNS_TLS_CERT, SNS_TLS_KEY, SNS_TLS_CA)"
                        .into(),
                );
            }
        };
        Ok(Trust::new(key, tls))
    }

    pub fn new(key: ClusterKey, tls: Option<tls::Tls>) -> Trust {
        Trust {
            inner: Arc::new(Inner {
                attach: AttachKey::new(&key),
                key: Arc::new(key),
                tls,
            }),
        }
    }

    pub fn tls(&self) -> bool {
        self.inner.tls.is_some()
    }

    /// An endpoint for the process at `addr` (`host:port`): `https` and
    /// verified against the CA when TLS is on.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, Error> {
        endpoint(addr, self.inner.tls.as_ref().map(|t| &t.client))
    }

    /// Wraps a channel made elsewhere (tests) so that its calls present the
    /// key; it has no deadlines and is never replaced ([`Link::fixed`]).
    pub fn peer(&self, channel: Channel) -> PeerChannel {
        InterceptedService::new(Link::fixed(channel), self.inner.attach.clone())
    }

    /// A lazily connected channel to the peer at `addr` (`host:port`) that
    /// presents the key, with `timing`'s keep-alive, connect timeout and
    /// deadlines, replacing a stalled connection ([`link`]). Every channel
    /// a peer opens to another is made here or by [`Trust::link_with`].
    pub fn link(&self, addr: &str, timing: Timing) -> Result<PeerChannel, Error> {
        self.link_with(addr, timing, |e| e)
    }

    /// [`Trust::link`] with more endpoint settings (window sizes).
    pub fn link_with(
        &self,
        addr: &str,
        timing: Timing,
        tune: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Result<PeerChannel, Error> {
        let link = Link::new(tune(self.endpoint(addr)?), timing);
        Ok(InterceptedService::new(link, self.inner.attach.clone()))
    }

    /// A gRPC server builder: TLS when configured, and the key check in
    /// front of every service added to it.
    pub fn server(&self) -> Result<Server, Error> {
        let mut builder = tonic::transport::Server::builder();
        if let Some(t) = &self.inner.tls {
            builder = builder
                .tls_config(t.server.clone())
                .map_err(|e| Error::Invalid(format!("TLS: {e}")))?;
        }
        // Metrics outermost, so refused calls are counted too.
        Ok(builder
            .layer(crate::ops::rpc::RpcMetrics)
            .layer(RequireKey::new(self.inner.key.clone())))
    }
}

/// `host:port` as a URI takes it: a bare IPv6 address in brackets.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// An endpoint for `addr` (`host:port`), `https` with `tls`.
pub fn endpoint(
    addr: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<Endpoint, Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let shown: String = addr.chars().take(64).collect();
    let bad = |e: &dyn std::fmt::Display| Error::Invalid(format!("bad address {shown:?}: {e}"));
    let e = Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| bad(&e))?;
    match tls {
        Some(t) => e.tls_config(t.clone()).map_err(|e| bad(&e)),
        None => Ok(e),
    }
}
