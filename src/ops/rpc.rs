//! Per-RPC metrics: one tower layer in front of every gRPC service of a
//! process, beside the key check, so no handler has to remember them.
//!
//! A call is counted when its response headers leave: its method, its
//! latency until then, and an error when the headers carry a non-OK
//! `grpc-status` (how tonic answers a failed unary call and a refused
//! stream). A stream that fails later says so in its trailers, which this
//! layer does not wait for: its latency is the time to open it.
//!
//! The method label is the call's path only when it is one of this
//! program's methods (read from the descriptors the code was generated
//! from); any other path is `other`, so a stranger calling made-up paths
//! cannot grow the metrics.

use super::metrics::{ErrorLabels, MethodLabels, metrics};
use prost::Message;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Instant;

/// Every method path of the protocols this program serves.
static METHODS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let mut all = HashSet::new();
    for set in [
        crate::proto::DESCRIPTORS,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ] {
        let Ok(fds) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in fds.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = service.name.unwrap_or_default();
                for m in service.method {
                    let method = m.name.unwrap_or_default();
                    all.insert(format!("/{package}.{name}/{method}"));
                }
            }
        }
    }
    all
});

/// The label of a call's path.
pub fn method_label(path: &str) -> String {
    if METHODS.contains(path) {
        path.to_string()
    } else {
        "other".to_string()
    }
}

/// The gRPC code's name, as grpcurl and the docs spell it.
fn code_name(code: tonic::Code) -> String {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
    .to_string()
}

/// The layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcMetrics;

impl<S> tower_layer::Layer<S> for RpcMetrics {
    type Service = Measured<S>;
    fn layer(&self, inner: S) -> Measured<S> {
        Measured { inner }
    }
}

/// A service behind [`RpcMetrics`].
#[derive(Clone, Debug)]
pub struct Measured<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower_service::Service<http::Request<B>> for Measured<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let method = method_label(req.uri().path());
        let answer = self.inner.call(req);
        Box::pin(async move {
            let res = answer.await;
            let m = metrics();
            let labels = MethodLabels { method };
            m.rpc_requests.get_or_create(&labels).inc();
            m.rpc_duration
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            let code = match &res {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                Err(_) => tonic::Code::Unknown,
            };
            if code != tonic::Code::Ok {
                m.rpc_errors
                    .get_or_create(&ErrorLabels {
                        method: labels.method,
                        code: code_name(code),
                    })
                    .inc();
            }
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_methods_get_a_label_of_their_own() {
        for real in [
            "/csce438.SNSService/Login",
            "/tinysns.Coordinator/Heartbeat",
            "/tinysns.Replica/Apply",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(method_label(real), real);
        }
        for made_up in [
            "/tinysns.Coordinator/Nope",
            "/x/y",
            "",
            "/csce438.SNSService/",
        ] {
            assert_eq!(method_label(made_up), "other");
        }
    }
}
