//! Tiny SNS: a highly available, partitioned social network service.
//!
//! `docs/design.md` tells the whole design; each folder's `mod.rs` is the
//! chapter of its part, with the invariants it keeps.
//!
//! # Layout
//!
//! | module | what it is | reads first |
//! |---|---|---|
//! | [`coordinator`] | the routing table as a pure state machine, its state file, the gRPC adapter; [`coordinator::membership`] is how the others talk to it | `Table::heartbeat`, `Table::check` |
//! | [`server`] | one server: its role and lease rules, sessions and client ids (pure cores), the client API, timelines, and [`server::replication`] (op log, mirror, snapshot, resync) | the role core |
//! | [`synchronizer`] | carries users, follows and posts between clusters: cursors and push plan (pure), the pusher, the receiver | the push plan |
//! | [`storage`] | records on disk, files under `flock`, incremental views, the store (a directory as a state machine of operations), the journal, the directory watch | `storage::store` |
//! | [`client`] | the terminal client: commands, screen, session, timeline | `client::run` |
//! | [`trust`] | the trust boundary: the cluster key, the one layer that checks it, TLS; its chapter is the threat model | `trust` |
//! | [`model`] | ids as types, the rules about posts | |
//! | [`course`] | the course's reply convention: the one table of `Reply.msg` outcomes, for the server and the client | `course::Outcome` |
//! | [`error`] | the one error type, mapped to `tonic::Status` in one place | |
//! | [`config`], [`timefmt`] | flags and knobs shared by the binaries; time formats | |
//!
//! Dependencies point one way (no cycles): `error` and `course` use nothing; `trust`
//! uses `error`; `config` uses `error` and `trust`; `model` uses `config`; `client` and `coordinator` use those
//! (and `timefmt`) and the protos; `storage` uses `model`, `config` and
//! `timefmt`; `server` and `synchronizer` use `storage` and
//! `coordinator::membership`; nothing uses `server` or `synchronizer`. The
//! binaries in `src/bin/` only parse flags and call a
//! part's `run`. The benchmark is a crate of its own (`bench/`).

pub mod client;
pub mod config;
pub mod coordinator;
pub mod course;
pub mod error;
pub mod model;
pub mod ops;
pub mod server;
pub mod storage;
pub mod synchronizer;
pub mod timefmt;
pub mod trust;

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
    /// Every file above as an encoded `FileDescriptorSet`, for server
    /// reflection.
    pub const DESCRIPTORS: &[u8] = tonic::include_file_descriptor_set!("descriptors");
}
