//! Channels that notice a stalled connection and replace it.
//!
//! On a real network a connection can stop carrying packets without being
//! closed: a cut link, a peer host that vanished, a one-way drop. TCP then
//! keeps the connection open and retransmits with a back-off that reaches
//! minutes, and tonic's [`Channel`] keeps sending calls into it: it
//! reconnects only once a connection is *closed*. So every channel a
//! process opens gets, from its heartbeat ([`Timing::of`]):
//!
//! * **HTTP/2 keep-alive**, also while idle: a ping after a quarter heartbeat
//!   without traffic, the connection closed when the ping has no answer
//!   within the rest of a failure window. Any connection that stopped
//!   answering is closed within a failure window, even one with a long
//!   stream on it (a timeline, a snapshot) or with no call at all, and the
//!   next call connects afresh.
//! * **A connect timeout of one heartbeat**: a connection attempt to an
//!   address that drops packets waits for the SYN's retransmission (one
//!   second, then three, seven...); giving up after a heartbeat and trying
//!   again with the next call connects within a heartbeat of a heal instead.
//! * **A per-call deadline** ([`Link`]): the channel's default (a failure
//!   window), or the call's own ([`Deadline`]). A call that misses it marks
//!   the connection stalled: the next call goes out on a fresh channel, and
//!   the stalled one is dropped with its last user. A call cannot tell a
//!   slow peer from a cut one, so the price of a slow peer is one new
//!   connection, against waiting out TCP's back-off for a cut one.
//!
//! The deadline covers a call up to its response headers: the whole of a
//! unary call (a tonic server sends the headers with the reply), the start
//! of a stream; a stream that stalls later is the keep-alive's.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::Status;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};

/// How a channel's connections and calls are timed, for a process with
/// this heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Keep-alive: a ping after this long without traffic...
    pub ping_every: Duration,
    /// ...and the connection closed if the ping has no answer in this long.
    pub ping_timeout: Duration,
    /// How long a new connection may take.
    pub connect: Duration,
    /// A call's deadline unless it names its own ([`Deadline`]).
    pub deadline: Duration,
}

/// Shortest connect timeout and deadline, whatever the heartbeat: a busy
/// machine must not make every connection fail.
const FLOOR: Duration = Duration::from_millis(100);

impl Timing {
    /// The timing for a heartbeat period: a stalled connection is noticed
    /// within a failure window (two heartbeats) by ping, within its deadline
    /// by a call. Most of the window goes to the ping's answer, so a live
    /// peer on a busy machine has as long as possible to give it; the short
    /// interval costs a ping per quarter heartbeat on a silent connection.
    pub fn of(heartbeat: Duration) -> Timing {
        Timing {
            ping_every: heartbeat / 4,
            ping_timeout: heartbeat * 7 / 4,
            connect: heartbeat.max(FLOOR),
            deadline: (2 * heartbeat).max(FLOOR),
        }
    }

    /// The same with another default deadline.
    pub fn with_deadline(self, deadline: Duration) -> Timing {
        Timing { deadline, ..self }
    }

    /// `endpoint` with these keep-alive and connect settings.
    pub fn apply(&self, endpoint: Endpoint) -> Endpoint {
        endpoint
            .connect_timeout(self.connect)
            .http2_keep_alive_interval(self.ping_every.max(Duration::from_millis(1)))
            .keep_alive_timeout(self.ping_timeout.max(Duration::from_millis(1)))
            .keep_alive_while_idle(true)
    }
}

/// A call's own deadline, in its request's extensions ([`with_deadline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Duration);

/// `message` as a request whose call gives up (and replaces a stalled
/// connection) after `deadline` rather than the channel's default.
pub fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.extensions_mut().insert(Deadline(deadline));
    req
}

/// The error of a call that missed its deadline: `DEADLINE_EXCEEDED`, which
/// every caller reads as "nobody answered" (try again, elsewhere).
pub fn missed(deadline: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "no answer within {} ms; the connection is replaced",
        deadline.as_millis()
    ))
}

/// A channel that replaces its connection when a call misses its deadline.
/// Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct Link {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// `None` for a channel made elsewhere: it is never replaced and has no
    /// deadline of its own ([`Link::fixed`]).
    endpoint: Option<Endpoint>,
    deadline: Option<Duration>,
    /// The current channel and how many times it was replaced.
    current: Mutex<(u64, Channel)>,
}

impl Link {
    /// A lazily connected link to `endpoint`, timed by `timing`.
    pub fn new(endpoint: Endpoint, timing: Timing) -> Link {
        let endpoint = timing.apply(endpoint);
        let channel = endpoint.connect_lazy();
        Link {
            shared: Arc::new(Shared {
                endpoint: Some(endpoint),
                deadline: Some(timing.deadline),
                current: Mutex::new((0, channel)),
            }),
        }
    }

    /// A link over a channel made elsewhere (tests): calls have only the
    /// deadlines they name, and a stalled connection is not replaced.
    pub fn fixed(channel: Channel) -> Link {
        Link {
            shared: Arc::new(Shared {
                endpoint: None,
                deadline: None,
                current: Mutex::new((0, channel)),
            }),
        }
    }

    /// How many times the connection was replaced.
    pub fn replaced(&self) -> u64 {
        self.current().0
    }

    fn current(&self) -> std::sync::MutexGuard<'_, (u64, Channel)> {
        self.shared
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The channel of generation `stalled` missed a deadline: the next call
    /// gets a fresh one (once, however many calls missed theirs on it).
    fn stalled(&self, stalled: u64) {
        let Some(endpoint) = &self.shared.endpoint else {
            return;
        };
        let mut cur = self.current();
        if cur.0 == stalled {
            log::debug!(
                "a call to {} missed its deadline; connecting afresh",
                endpoint.uri()
            );
            *cur = (stalled + 1, endpoint.connect_lazy());
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower_service::Service<http::Request<Body>> for Link {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    // Readiness is the channel's, awaited inside the call, under its
    // deadline: a connection that cannot be made is a missed deadline too.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let deadline = req
            .extensions()
            .get::<Deadline>()
            .map(|d| d.0)
            .or(self.shared.deadline);
        let (generation, mut channel) = self.current().clone();
        let link = self.clone();
        Box::pin(async move {
            let call = async {
                std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut channel, cx))
                    .await?;
                tower_service::Service::call(&mut channel, req).await
            };
            let Some(limit) = deadline else {
                return call.await.map_err(BoxError::from);
            };
            match tokio::time::timeout(limit, call).await {
                Ok(r) => r.map_err(BoxError::from),
                Err(_) => {
                    link.stalled(generation);
                    Err(Box::new(missed(limit)) as BoxError)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_connection_is_noticed_within_a_failure_window() {
        let hb = Duration::from_millis(500);
        let t = Timing::of(hb);
        assert_eq!(t.ping_every + t.ping_timeout, 2 * hb);
        assert!(
            t.ping_timeout > 3 * t.ping_every,
            "most of the window is the ping's"
        );
        assert_eq!(t.deadline, 2 * hb);
        // A connection attempt gives up within a heartbeat, so one that
        // started during a cut does not outlast the heal by more.
        assert_eq!(t.connect, hb);
        // Short heartbeats: not below the floor.
        let t = Timing::of(Duration::from_millis(10));
        assert_eq!((t.connect, t.deadline), (FLOOR, FLOOR));
        assert_eq!(
            Timing::of(hb).with_deadline(hb).deadline,
            hb,
            "a channel may have a shorter default"
        );
    }

    #[test]
    fn a_missed_deadline_reads_as_nobody_answered() {
        let e = crate::error::Error::from(missed(Duration::from_millis(5)));
        assert!(e.is_unavailable(), "{e:?}");
    }

    #[tokio::test]
    async fn a_call_that_misses_its_deadline_replaces_the_connection() {
        use tower_service::Service;
        // A listener that accepts and never answers: a stalled peer.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let ep = crate::trust::endpoint(&addr.to_string(), None).unwrap();
        let mut link = Link::new(ep, Timing::of(Duration::from_millis(200)));
        assert_eq!(link.replaced(), 0);
        let mut req = http::Request::new(Body::empty());
        req.extensions_mut()
            .insert(Deadline(Duration::from_millis(50)));
        let err = link.call(req).await.unwrap_err();
        let status = Status::from_error(err);
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(link.replaced(), 1);
        // Another call that misses its deadline on the fresh channel replaces
        // it again; one on an old generation would not.
        link.stalled(0);
        assert_eq!(link.replaced(), 1);
        drop(listener);
    }
}
