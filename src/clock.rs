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

/// Test-only: `<virtual start RFC 3339>,<speed>,<real epoch ms the start refers to>` makes
/// `casestream run` use [`Clock::anchored`] instead of the wall clock, so the simulator, every
/// instance and every restart of a fault campaign share one virtual time. Not a setting: not
/// in the settings table of docs/configuration.md, never for production.
pub const ENV_TEST_CLOCK: &str = "CASESTREAM_TEST_CLOCK";

#[derive(Debug, thiserror::Error)]
#[error("{ENV_TEST_CLOCK} must be `<virtual start RFC 3339>,<speed>,<real epoch ms>`, got `{0}`")]
pub struct TestClockError(String);

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

    /// A virtual clock that read `start` at the real wall-clock instant `anchor` and runs
    /// `speed` times faster since: separate processes (and restarts) built with the same three
    /// values agree on the time, whenever each was started.
    pub fn anchored(start: DateTime<Utc>, speed: f64, anchor: DateTime<Utc>) -> Self {
        let clock = Self::scaled(start, speed);
        let since_anchor = (Utc::now() - anchor).to_std().unwrap_or_default();
        let ahead = clock.virtual_duration(since_anchor);
        clock.step(chrono::Duration::from_std(ahead).unwrap_or_default());
        clock
    }

    /// The clock [`ENV_TEST_CLOCK`] describes.
    pub fn from_test_spec(spec: &str) -> Result<Self, TestClockError> {
        let invalid = || TestClockError(spec.to_owned());
        let mut parts = spec.split(',').map(str::trim);
        let (Some(start), Some(speed), Some(anchor_ms), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let start = DateTime::parse_from_rfc3339(start).map_err(|_| invalid())?;
        let speed: f64 = speed.parse().map_err(|_| invalid())?;
        let anchor = anchor_ms
            .parse::<i64>()
            .ok()
            .and_then(DateTime::from_timestamp_millis)
            .ok_or_else(invalid)?;
        if !(speed.is_finite() && speed > 0.0) {
            return Err(invalid());
        }
        Ok(Self::anchored(start.with_timezone(&Utc), speed, anchor))
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
    fn anchored_clocks_made_apart_agree() {
        let start: DateTime<Utc> = "2026-01-01T23:50:00Z".parse().unwrap();
        let anchor = Utc::now();
        let first = Clock::anchored(start, 600.0, anchor);
        std::thread::sleep(Duration::from_millis(100));
        let second = Clock::anchored(start, 600.0, anchor);
        // 100 ms apart at 600x is a minute; anchored, they differ by scheduling noise only.
        let apart = (first.now() - second.now()).num_milliseconds().abs();
        assert!(apart < 3_000, "{apart} ms apart");
        assert!(second.now() >= start + chrono::Duration::seconds(60));
        let spec = format!("{},600,{}", start.to_rfc3339(), anchor.timestamp_millis());
        let parsed = Clock::from_test_spec(&spec).unwrap();
        assert!((parsed.now() - first.now()).num_milliseconds().abs() < 3_000);
        for bad in [
            "",
            "2026-01-01T00:00:00Z,600",
            "x,600,1",
            "2026-01-01T00:00:00Z,0,1",
        ] {
            assert!(Clock::from_test_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn invalid_speed_falls_back_to_real_time() {
        let clock = Clock::scaled(Utc::now(), 0.0);
        assert_eq!(clock.speed(), 1.0);
    }
}
