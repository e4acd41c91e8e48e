//! Wall-clock or virtual time, shared by the simulator and the pipeline.
//!
//! The tracker never reads a clock itself (it is handed `now`); the edges read it from a
//! [`Clock`]. A scaled clock runs N times faster than real time from a chosen start, so a test
//! or the demo can let a 5-minute settle window pass in seconds. Both the simulator and the
//! pipeline must hold clones of the same `Clock` for their views of time to agree.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
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
        /// Microseconds added by [`Clock::step`], as an NTP step moves a wall clock.
        stepped_us: AtomicI64,
    },
}

/// Milliseconds on a monotonic clock since this process first asked (never 0, never going
/// back). Every wait and every age (heartbeats, poll ages) is measured on it: a wall clock
/// stepped back would otherwise stall waits and keep ages young.
pub fn monotonic_ms() -> i64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = ORIGIN.get_or_init(Instant::now);
    i64::try_from(origin.elapsed().as_millis())
        .unwrap_or(i64::MAX)
        .saturating_add(1)
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
                stepped_us: AtomicI64::new(0),
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
                stepped_us,
            } => {
                let real = real_origin.elapsed().as_secs_f64() * speed;
                let elapsed = chrono::Duration::microseconds((real * 1e6) as i64);
                *virtual_origin
                    + elapsed
                    + chrono::Duration::microseconds(stepped_us.load(Ordering::Relaxed))
            }
        }
    }

    /// Moves a scaled clock's wall time by `by` (back when negative), as an NTP step or an
    /// operator's `date -s` moves the system clock; the seam for tests of a clock stepped
    /// back. The real system clock cannot be moved from here: a no-op for it.
    pub fn step(&self, by: chrono::Duration) {
        if let ClockKind::Scaled { stepped_us, .. } = &*self.inner {
            stepped_us.fetch_add(by.num_microseconds().unwrap_or(0), Ordering::Relaxed);
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

    /// The time that passes on this clock while `real` passes in real time (steps aside).
    pub fn virtual_duration(&self, real: Duration) -> Duration {
        real.mul_f64(self.speed())
    }

    /// Sleep until `virtual_duration` has passed on this clock.
    pub async fn sleep(&self, virtual_duration: Duration) {
        tokio::time::sleep(self.real_duration(virtual_duration)).await;
    }

    /// Sleep until this clock reads `at` (not at all if it already does).
    pub async fn sleep_until(&self, at: DateTime<Utc>) {
        self.sleep((at - self.now()).to_std().unwrap_or_default())
            .await;
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
    fn a_step_moves_wall_time_but_not_monotonic_time() {
        let clock = Clock::scaled(Utc::now(), 1.0);
        let (before, mono) = (clock.now(), monotonic_ms());
        clock.step(-chrono::Duration::hours(1));
        assert!(clock.now() < before - chrono::Duration::minutes(59));
        assert!(monotonic_ms() >= mono);
        assert_eq!(
            clock.virtual_duration(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn invalid_speed_falls_back_to_real_time() {
        let clock = Clock::scaled(Utc::now(), 0.0);
        assert_eq!(clock.speed(), 1.0);
    }
}
