//! The standard health service and server reflection on a gRPC port.
//!
//! A daemon says whether it can do its job now with [`Health::set`], from
//! the place that decides it (a server's heartbeat reply, a synchronizer's
//! view of its peers), and from anywhere: it is a watch channel, so the
//! setter never waits. One task carries each change to tonic-health's
//! reporter (whose update is async) for the overall service `""` and each
//! service the daemon serves by name; `/healthz` and the `sns_serving`
//! gauge read the same channel.

use super::metrics::metrics;
use crate::error::Error;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// Whether this process can do its job now; cheap to clone and to set.
#[derive(Clone, Debug)]
pub struct Health {
    serving: Arc<watch::Sender<bool>>,
}

impl Health {
    pub fn new(serving: bool) -> Health {
        metrics().serving.set(i64::from(serving));
        Health {
            serving: Arc::new(watch::Sender::new(serving)),
        }
    }

    /// Sets the status; only a change wakes anyone.
    pub fn set(&self, serving: bool) {
        metrics().serving.set(i64::from(serving));
        self.serving.send_if_modified(|s| {
            let changed = *s != serving;
            *s = serving;
            changed
        });
    }

    pub fn serving(&self) -> bool {
        *self.serving.borrow()
    }
}

/// The gRPC side of one daemon: health and reflection for the services it
/// serves.
pub struct Standard {
    health: Health,
    reporter: HealthReporter,
    /// Full names of the daemon's own services (`tinysns.Coordinator`).
    services: Vec<&'static str>,
}

impl Standard {
    /// Made with the status `health` has now, so no query sees another.
    pub async fn new(health: Health, services: &[&'static str]) -> Standard {
        let s = Standard {
            health,
            reporter: HealthReporter::new(),
            services: services.to_vec(),
        };
        s.publish(s.health.serving()).await;
        s
    }

    async fn publish(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        for s in &self.services {
            self.reporter.set_service_status(*s, status).await;
        }
    }

    fn reflection(&self) -> tonic_reflection::server::Builder<'static> {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::DESCRIPTORS)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            // Reflection lists itself, as grpc-go's and grpc-java's do, so
            // `grpcurl describe` works on it too.
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for s in &self.services {
            b = b.with_service_name(*s);
        }
        b
    }

    /// `router` with the health service and reflection (v1, and v1alpha for
    /// older clients) added.
    pub fn add_to<L>(&self, router: Router<L>) -> Result<Router<L>, Error> {
        let bad = |e: tonic_reflection::server::Error| Error::Internal(format!("reflection: {e}"));
        let v1 = self.reflection().build_v1().map_err(bad)?;
        let v1alpha = self.reflection().build_v1alpha().map_err(bad)?;
        Ok(router
            .add_service(HealthServer::new(HealthService::from_health_reporter(
                self.reporter.clone(),
            )))
            .add_service(v1)
            .add_service(v1alpha))
    }

    /// Carries every change of the status to the health service until
    /// `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut changes = self.health.serving.subscribe();
        loop {
            let serving = *changes.borrow_and_update();
            self.publish(serving).await;
            tokio::select! {
                _ = stop.cancelled() => return,
                c = changes.changed() => if c.is_err() { return },
            }
        }
    }
}
