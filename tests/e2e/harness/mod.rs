//! The harness: starts the real binaries on free loopback ports, each system
//! in its own temporary data directory, with short heartbeat and sync
//! periods, and kills them by pid when dropped. Conditions are awaited by
//! polling the system's own state (the coordinator's table, the data files,
//! what a client prints) with a deadline, never by a fixed sleep.
//!
//! | part | what |
//! |---|---|
//! | [`process`] | the deadline and polling, free ports, child processes killed on drop |
//! | [`system`] | a whole system and the coordinator's table |
//! | [`client`] | the terminal client, line by line or byte for byte |
//! | [`course`] | a client written for the course, emulated from the course's messages only |
//! | [`grpc`] | a server's client API called directly |
//! | [`peer`] | peer services called directly, with or without the cluster key |
//! | [`files`] | reading data files; snapshots that prove nothing was written |
//! | [`ops`] | HTTP, `/metrics` parsed, gRPC health and reflection, headless Chromium on the dashboard |
//! | [`hosts`] | a system spread over the hosts of a `netlab` lab (one network namespace per process), links to cut |

pub mod client;
pub mod course;
pub mod files;
pub mod grpc;
pub mod hosts;
pub mod ops;
pub mod peer;
pub mod process;
pub mod system;

pub use client::*;
pub use files::*;
pub use process::*;
pub use system::*;
