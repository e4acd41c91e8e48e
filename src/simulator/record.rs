//! What the simulator served, for a fault campaign's oracle (`GET /_sim/record`).

use serde::Serialize;

use super::generator::SurveyPlan;

/// What the simulator served: [`super::Simulator::record`].
#[derive(Clone, Debug, Serialize)]
pub struct SimRecord {
    pub now_ms: i64,
    pub cases: Vec<RecordedCase>,
}

/// One case with a text id, visible by the record's time.
#[derive(Clone, Debug, Serialize)]
pub struct RecordedCase {
    pub widget: String,
    pub id: String,
    pub created_ms: i64,
    pub visible_ms: i64,
    pub chat_end_ms: Option<i64>,
    /// The survey as it stands (content and when it lands or last changed), even if not yet
    /// served.
    pub survey: Option<SurveyPlan>,
}
