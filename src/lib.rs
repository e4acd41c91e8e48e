//! casestream: streams SnapEngage chat cases from the Logs API into Kafka as CloudEvents.
//!
//! Data flows source → tracker → sink → state commit; see DESIGN.md for the map.

pub mod clock;
pub mod simulator;
pub mod snapengage;
pub mod config;
pub mod events;
pub mod pipeline;
pub mod sink;
pub mod state;
