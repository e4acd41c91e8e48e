//! The SnapEngage Logs API: the lossless case model and the client.

pub mod case;
pub mod client;

pub use case::{Case, CaseError, CaseProblem, LogsResponse, Survey};
pub use client::{ClientConfig, ClientError, LogsClient, Page, RetryPolicy, Window};
