//! casestream: streams SnapEngage chat cases from the Logs API into Kafka as CloudEvents.
//!
//! Data flows source → tracker → sink → state commit; see docs/architecture.md for the map.
//!
//! The modules stand in layers; a module imports only from its own layer or the ones below,
//! never from above (`tests/architecture.rs` checks it):
//!
//! 1. foundation: `clock`, `redact`, `metrics`
//! 2. the outside world's shapes: `snapengage` (the Logs API), `events` (CloudEvents), `state`
//! 3. edges: `sink` (Kafka), `simulator` (a Logs API to test against)
//! 4. operations: `admin` (probes, health, the admin port)
//! 5. the core loop: `pipeline`, `failover` (exactly-once delivery's active and standby roles)
//! 6. the top floor, which assembles the rest: `config`, `app`, `check`, `demo`, `toolkit`
//!    (the operator's `casestream state` commands)

pub mod clock;
pub mod metrics;
pub mod redact;

pub mod events;
pub mod snapengage;
pub mod state;

pub mod simulator;
pub mod sink;

pub mod admin;

pub mod failover;
pub mod pipeline;

pub mod app;
pub mod check;
pub mod config;
pub mod demo;
pub mod toolkit;
