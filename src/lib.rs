//! Tiny SNS: a highly available, partitioned social network service.
//!
//! See `docs/design.md` for the design; each module's documentation explains
//! its part and the invariants it keeps.

pub mod client;
pub mod config;
pub mod coordinator;
pub mod model;
pub mod server;
pub mod storage;
pub mod synchronizer;
pub mod timefmt;

/// Generated gRPC code.
pub mod proto {
    /// The client-facing service, with the course's names.
    pub mod csce438 {
        tonic::include_proto!("csce438");
    }
    /// Coordinator, mirroring and synchronizer services.
    pub mod tinysns {
        tonic::include_proto!("tinysns");
    }
}
