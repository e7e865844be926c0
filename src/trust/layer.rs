//! The key check: one tower layer in front of every gRPC service of a
//! process, and the interceptor that presents the key on a peer's calls.
//!
//! The layer looks at the method's path, so the rule is one list (what
//! anyone may call) and not a check in each handler that a new handler
//! could forget: a method not on the list needs the key.

use super::key::{ClusterKey, HEADER};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};

/// What anyone may call, with no key (SPEC §5, "What stays open"): a path
/// ending in `/` is a whole service, any other one method.
const OPEN: &[&str] = &[
    "/csce438.SNSService/",
    "/csce438.CoordService/GetServer",
    "/tinysns.Coordinator/GetServer",
    "/tinysns.Coordinator/GetTable",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Whether the method at `path` may be called without the key.
pub fn is_open(path: &str) -> bool {
    OPEN.iter().any(|open| {
        if open.ends_with('/') {
            path.starts_with(open) && !path[open.len()..].contains('/')
        } else {
            path == *open
        }
    })
}

/// The layer: refuses every call of a method that is not [`is_open`] unless
/// it presents the cluster key.
#[derive(Clone)]
pub struct RequireKey {
    key: Arc<ClusterKey>,
}

impl RequireKey {
    pub fn new(key: Arc<ClusterKey>) -> RequireKey {
        RequireKey { key }
    }
}

impl<S> tower_layer::Layer<S> for RequireKey {
    type Service = Checked<S>;
    fn layer(&self, inner: S) -> Checked<S> {
        Checked {
            inner,
            key: self.key.clone(),
        }
    }
}

/// A service behind [`RequireKey`].
#[derive(Clone)]
pub struct Checked<S> {
    inner: S,
    key: Arc<ClusterKey>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower_service::Service<http::Request<B>> for Checked<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let presented = req.headers_mut().remove(HEADER);
        let allowed =
            is_open(req.uri().path()) || presented.is_some_and(|v| self.key.matches(v.as_bytes()));
        if !allowed {
            log::debug!("refused {} without the cluster key", req.uri().path());
            let refusal = Status::unauthenticated(
                "this call is for the system's own processes: the cluster key is missing or wrong",
            );
            return Box::pin(std::future::ready(Ok(refusal.into_http())));
        }
        Box::pin(self.inner.call(req))
    }
}

/// Presents the key on every call of a peer's channel.
#[derive(Clone, Debug)]
pub struct AttachKey {
    value: AsciiMetadataValue,
}

impl AttachKey {
    pub fn new(key: &ClusterKey) -> AttachKey {
        let mut value: AsciiMetadataValue =
            MetadataValue::try_from(key.hex()).unwrap_or_else(|_| MetadataValue::from_static(""));
        // Never put into HPACK's table: a secret must not be compressed
        // alongside data an attacker may choose.
        value.set_sensitive(true);
        AttachKey { value }
    }
}

impl tonic::service::Interceptor for AttachKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        req.metadata_mut().insert(HEADER, self.value.clone());
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_methods_are_open() {
        for open in [
            "/csce438.SNSService/Login",
            "/csce438.SNSService/Timeline",
            "/csce438.CoordService/GetServer",
            "/tinysns.Coordinator/GetServer",
            "/tinysns.Coordinator/GetTable",
            "/grpc.health.v1.Health/Check",
        ] {
            assert!(is_open(open), "{open}");
        }
        for closed in [
            "/tinysns.Coordinator/Heartbeat",
            "/tinysns.Coordinator/GetAllSynchronizers",
            "/tinysns.Coordinator/GetSynchronizer",
            "/tinysns.Replica/Apply",
            "/tinysns.Replica/Join",
            "/tinysns.Replica/Snapshot",
            "/tinysns.Replica/Sessions",
            "/tinysns.Synchronizer/PushPosts",
            "/tinysns.Coordinator/GetTableX",
            "/csce438.SNSService/Login/x",
            "/csce438.SNSServiceX/Login",
            "/tinysns.Coordinator/",
            "",
            "/",
        ] {
            assert!(!is_open(closed), "{closed}");
        }
    }
}
