//! The node runtime's integration tests, in one binary to keep link time low.
//! Guest examples are built once per run by `support::guests()`; tiny hostile
//! modules are written inline in WAT.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking, as #[test] bodies do"
)]

mod engine_cache;
mod examples;
mod hostile;
mod lifecycle;
mod logs;
mod outgoing;
mod probes;
mod sandbox;
mod support;
