//! Client connections as things a session can be bound to.
//!
//! A course client logs in without a session token and never refreshes; what
//! identifies it is its one HTTP/2 connection (SPEC §6). Every connection
//! the server accepts is wrapped in a [`Conn`]: it numbers the connection
//! and cancels a token when the connection is dropped, which hyper does at
//! once when the peer closes it and, for a peer that vanished without a FIN,
//! when the HTTP/2 keep-alive gives up on it (see [`keepalive`]). Tonic puts
//! the connection's [`ConnInfo`] in every request's extensions (inside a
//! `TlsConnectInfo` with TLS); [`of`] finds it either way.
//!
//! Only the server uses this wrapper: the coordinator reads the caller's
//! address from tonic's own `TcpConnectInfo`, which a wrapper would hide.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::transport::server::{Connected, TcpIncoming};

/// A connection's number, unique within the server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

/// What a request knows about its connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub id: ConnId,
    /// Cancelled once the connection is gone.
    pub closed: CancellationToken,
}

/// An accepted connection, counted until it is dropped.
pub struct Conn {
    stream: TcpStream,
    info: ConnInfo,
    _guard: DropGuard,
}

static NEXT: AtomicU64 = AtomicU64::new(1);

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        let closed = CancellationToken::new();
        Conn {
            stream,
            _guard: closed.clone().drop_guard(),
            info: ConnInfo {
                id: ConnId(NEXT.fetch_add(1, Ordering::Relaxed)),
                closed,
            },
        }
    }
}

/// The connections a server accepts on `listener`, as
/// [`crate::config::incoming`] (Nagle off), each a [`Conn`].
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<Conn>> + Send + 'static {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(|r| r.map(Conn::new))
}

/// The HTTP/2 keep-alive ping interval and timeout for a server with this
/// heartbeat: the same as every channel's ([`crate::trust::Timing::of`]).
/// Hyper pings once the connection has been silent for the interval and
/// cuts it when the ping has no answer within the timeout, so a vanished
/// peer is noticed at most interval + timeout after it last sent anything:
/// one failure window (two heartbeats), as SPEC §6 promises.
pub fn keepalive(heartbeat: Duration) -> (Duration, Duration) {
    let t = crate::trust::Timing::of(heartbeat);
    (t.ping_every, t.ping_timeout)
}

/// The connection a request came on; `None` when served some other way.
pub fn of<T>(req: &tonic::Request<T>) -> Option<ConnInfo> {
    let ext = req.extensions();
    ext.get::<ConnInfo>().cloned().or_else(|| {
        ext.get::<tonic::transport::server::TlsConnectInfo<ConnInfo>>()
            .map(|t| t.get_ref().clone())
    })
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_notices_a_vanished_peer_within_a_failure_window() {
        let hb = Duration::from_millis(500);
        let (interval, timeout) = keepalive(hb);
        assert_eq!(interval + timeout, 2 * hb);
        assert!(timeout > 3 * interval, "most of the window is the ping's");
    }
}
