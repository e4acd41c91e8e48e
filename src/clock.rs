//! Wall-clock or virtual time, shared by the simulator and the pipeline.
//!
//! The tracker never reads a clock itself (it is handed `now`); the edges read it from a
//! [`Clock`]. A scaled clock runs N times faster than real time from a chosen start, so a test
//! or the demo can let a 5-minute settle window pass in seconds. Both the simulator and the
//! pipeline must hold clones of the same `Clock` for their views of time to agree.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

#[derive(Clone, Debug)]
pub struct Clock {
    inner: Arc<ClockKind>,
}

#[derive(Debug)]
enum ClockKind {
    System,
    Scaled {
        real_origin: Instant,
        virtual_origin: DateTime<Utc>,
        speed: f64,
    },
}

impl Clock {
    /// The real wall clock.
    pub fn system() -> Self {
        Self {
            inner: Arc::new(ClockKind::System),
        }
    }

    /// A virtual clock starting at `start` and running `speed` times faster than real time.
    /// A speed of 1.0 with a start in the past is a shifted real clock.
    pub fn scaled(start: DateTime<Utc>, speed: f64) -> Self {
        let speed = if speed.is_finite() && speed > 0.0 {
            speed
        } else {
            1.0
        };
        Self {
            inner: Arc::new(ClockKind::Scaled {
                real_origin: Instant::now(),
                virtual_origin: start,
                speed,
            }),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match &*self.inner {
            ClockKind::System => Utc::now(),
            ClockKind::Scaled {
                real_origin,
                virtual_origin,
                speed,
            } => {
                let real = real_origin.elapsed().as_secs_f64() * speed;
                let elapsed = chrono::Duration::microseconds((real * 1e6) as i64);
                *virtual_origin + elapsed
            }
        }
    }

    /// How many times faster than real time this clock runs.
    pub fn speed(&self) -> f64 {
        match &*self.inner {
            ClockKind::System => 1.0,
            ClockKind::Scaled { speed, .. } => *speed,
        }
    }

    /// The real duration that lets `virtual_duration` pass on this clock.
    pub fn real_duration(&self, virtual_duration: Duration) -> Duration {
        virtual_duration.div_f64(self.speed())
    }

    /// Sleep until `virtual_duration` has passed on this clock.
    pub async fn sleep(&self, virtual_duration: Duration) {
        tokio::time::sleep(self.real_duration(virtual_duration)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_clock_runs_faster_than_real_time() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = Clock::scaled(start, 600.0);
        std::thread::sleep(Duration::from_millis(50));
        let elapsed = clock.now() - start;
        // 50 ms real at 600x is 30 s virtual; allow for scheduling slack upward only.
        assert!(elapsed >= chrono::Duration::seconds(30), "{elapsed}");
        assert_eq!(
            clock.real_duration(Duration::from_secs(300)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn invalid_speed_falls_back_to_real_time() {
        let clock = Clock::scaled(Utc::now(), 0.0);
        assert_eq!(clock.speed(), 1.0);
    }
}
