//! casestream: streams SnapEngage chat cases from the Logs API into Kafka as CloudEvents.
//!
//! Data flows source → tracker → sink → state commit; see DESIGN.md for the map.

pub mod admin;
pub mod app;
pub mod check;
pub mod clock;
pub mod config;
pub mod demo;
pub mod events;
pub mod pipeline;
pub mod redact;
pub mod simulator;
pub mod sink;
pub mod snapengage;
pub mod state;
