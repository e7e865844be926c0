//! The end-to-end tests: one test binary (`cargo test --test e2e`), one
//! module per topic, all on one harness. Each test starts the real binaries
//! (coordinator, servers, synchronizers, clients) as processes in a
//! temporary directory of its own; a failing test keeps that directory, with
//! every process's log, and prints where (`TEST_KEEP=1` keeps it always,
//! `TEST_LOG=<RUST_LOG filter>` sets the processes' log level).
//!
//! One test: `cargo test --test e2e failover::paused_master_is_fenced`; a
//! topic: `cargo test --test e2e failover -- --nocapture` (which also shows
//! the timings the failover tests print).
//!
//! `network` spreads a system over several hosts, network namespaces made
//! by the `netlab` crate (`harness::hosts`), and cuts links between them;
//! it needs root and fails, saying so, without it.

mod harness;

mod bad_input;
mod bounded;
mod client_cli;
mod concurrent_appenders;
mod course_clients;
mod course_coordinator;
mod course_sessions;
mod disk_faults;
mod durability;
mod failover;
mod network;
mod ops;
mod peer_input;
mod shared_sessions;
mod shutdown;
mod slave_restart;
mod stalls;
mod timeline;
mod tls;
mod trust;
