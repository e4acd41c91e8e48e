//! The SnapEngage Logs API: the lossless case model, the client, its settings and windows.

pub mod case;
pub mod client;
mod error;
pub mod settings;
mod window;

pub use case::{Case, CaseError, CaseProblem, LogsResponse, Survey};
pub use client::{LogsClient, Page};
pub use error::ClientError;
pub use settings::{ClientConfig, RetryPolicy};
pub use window::{Window, WindowMode};
