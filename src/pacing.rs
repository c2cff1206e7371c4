//! The sending pace a mailbox provider allows, as data: messages per second and per minute, and
//! per UTC day. Pure (the clock is a parameter): when a queue of N messages will have gone out.
//! Exchange Online allows a mailbox 30 messages a minute and 10,000 recipients a day, Google
//! Workspace 2,000 messages a day.

use chrono::{DateTime, Duration, TimeZone, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pace {
    /// 0 = no limit
    pub per_second: u32,
    pub per_minute: u32,
    /// messages per UTC day; 0 = no limit
    pub per_day: u32,
}

impl Pace {
    /// Seconds between two sends at the tighter of the per-second and per-minute rates, if any.
    pub fn interval_secs(&self) -> Option<f64> {
        let a = (self.per_second > 0).then(|| 1.0 / f64::from(self.per_second));
        let b = (self.per_minute > 0).then(|| 60.0 / f64::from(self.per_minute));
        match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// When `queued` messages will have been sent, starting at `now` with `sent_today` already
    /// sent this UTC day. None when nothing limits the pace (then it is the server's speed).
    pub fn estimated_finish(
        &self,
        now: DateTime<Utc>,
        queued: u64,
        sent_today: u64,
    ) -> Option<DateTime<Utc>> {
        if queued == 0 {
            return Some(now);
        }
        let interval = self.interval_secs();
        if interval.is_none() && self.per_day == 0 {
            return None;
        }
        let per_day = u64::from(self.per_day);
        let mut left = queued;
        let mut t = now;
        let mut budget = if per_day > 0 {
            per_day.saturating_sub(sent_today)
        } else {
            u64::MAX
        };
        // one iteration per UTC day: bounded by queued / per_day (+1)
        loop {
            let end_of_day = next_midnight(t);
            let secs_left = (end_of_day - t).num_milliseconds() as f64 / 1000.0;
            let by_rate = match interval {
                Some(i) => (secs_left / i).floor() as u64 + 1,
                None => u64::MAX,
            };
            let can = budget.min(by_rate);
            if left <= can {
                let secs = interval.map_or(0.0, |i| (left - 1) as f64 * i);
                return Some(t + Duration::milliseconds((secs * 1000.0).round() as i64));
            }
            left -= can;
            t = end_of_day;
            budget = if per_day > 0 { per_day } else { u64::MAX };
        }
    }
}

/// Where the sender reads the time from.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// `start` plus the tokio time passed since the clock was made: under `tokio::time::pause()`,
/// timers and this clock move together, so a test runs a day's pacing in seconds.
pub struct TokioClock {
    start: DateTime<Utc>,
    base: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(start: DateTime<Utc>) -> TokioClock {
        TokioClock {
            start,
            base: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let passed = tokio::time::Instant::now().saturating_duration_since(self.base);
        self.start + Duration::milliseconds(passed.as_millis() as i64)
    }
}

/// How the sender slows down when a server says "too many" (a 421, or 4.7.x to a message):
/// a pause, doubling with each strike that comes after the last pause ended (1 s … 5 min), then
/// an extra gap between two sends that doubles with each strike (0.5 s … 60 s) and shrinks by a
/// tenth with every message the server takes, until the configured pace is all that is left.
#[derive(Debug, Default)]
pub struct Throttle {
    until: Option<tokio::time::Instant>,
    gap: std::time::Duration,
    next_start: Option<tokio::time::Instant>,
    strikes: u32,
}

impl Throttle {
    const MIN_GAP: std::time::Duration = std::time::Duration::from_millis(500);
    const MAX_GAP: std::time::Duration = std::time::Duration::from_secs(60);
    const MAX_PAUSE: std::time::Duration = std::time::Duration::from_secs(300);

    /// The server said "too many". The sends already in flight get the same answer: those that
    /// arrive during the pause are one strike with it. Returns the new (pause, gap) when this
    /// was a new strike.
    pub fn strike(
        &mut self,
        now: tokio::time::Instant,
    ) -> Option<(std::time::Duration, std::time::Duration)> {
        if self.until.is_some_and(|u| now < u) {
            return None;
        }
        self.strikes = self.strikes.saturating_add(1);
        let pause =
            std::time::Duration::from_secs(1u64 << (self.strikes - 1).min(9)).min(Self::MAX_PAUSE);
        self.gap = (self.gap * 2).clamp(Self::MIN_GAP, Self::MAX_GAP);
        self.until = Some(now + pause);
        Some((pause, self.gap))
    }

    /// The server took a message.
    pub fn success(&mut self) {
        if self.gap.is_zero() {
            return;
        }
        self.gap = self.gap.mul_f64(0.9);
        if self.gap < std::time::Duration::from_millis(20) {
            self.gap = std::time::Duration::ZERO;
            self.strikes = 0;
        }
    }

    /// How long the next send must wait from `now`; the send is then counted as started.
    pub fn wait(&mut self, now: tokio::time::Instant) -> std::time::Duration {
        let mut start = now;
        if let Some(u) = self.until.filter(|u| *u > start) {
            start = u;
        }
        if let Some(n) = self.next_start.filter(|n| *n > start) {
            start = n;
        }
        self.next_start = (!self.gap.is_zero()).then(|| start + self.gap);
        start - now
    }

    /// Slowed down now (for `outbox --summary` and tests).
    pub fn gap(&self) -> std::time::Duration {
        self.gap
    }
}

/// The start of the next UTC day after `t`.
pub fn next_midnight(t: DateTime<Utc>) -> DateTime<Utc> {
    let day = t.date_naive() + Duration::days(1);
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default())
}

/// The start of `t`'s UTC day.
pub fn start_of_day(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.from_utc_datetime(&t.date_naive().and_hms_opt(0, 0, 0).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn finish_times() {
        let now = at("2026-12-01T10:00:00Z");
        let none = Pace::default();
        assert_eq!(none.estimated_finish(now, 10, 0), None, "no limit: unknown");
        assert_eq!(none.estimated_finish(now, 0, 0), Some(now));
        // 60 a minute: 150 messages, the first now, the last 149 s later
        let minute = Pace {
            per_minute: 60,
            ..Pace::default()
        };
        assert_eq!(
            minute.estimated_finish(now, 150, 0),
            Some(at("2026-12-01T10:02:29Z"))
        );
        // the tighter rate wins
        let both = Pace {
            per_second: 50,
            per_minute: 30,
            per_day: 0,
        };
        assert_eq!(both.interval_secs(), Some(2.0));
        // 60 a minute and 100 a day, 150 queued: 100 today, 50 from midnight on
        let daily = Pace {
            per_second: 0,
            per_minute: 60,
            per_day: 100,
        };
        assert_eq!(
            daily.estimated_finish(now, 150, 0),
            Some(at("2026-12-02T00:00:49Z"))
        );
        // 90 of today's 100 already sent: 10 today, the rest tomorrow
        assert_eq!(
            daily.estimated_finish(now, 20, 90),
            Some(at("2026-12-02T00:00:09Z"))
        );
        // a daily limit alone: 2,000 a day, 5,000 queued → the third day, at its midnight
        let google = Pace {
            per_day: 2000,
            ..Pace::default()
        };
        assert_eq!(
            google.estimated_finish(now, 5000, 0),
            Some(at("2026-12-03T00:00:00Z"))
        );
        // Exchange Online: 30 a minute, 10,000 a day → 5,000 take 166.6 minutes
        let exo = Pace {
            per_second: 0,
            per_minute: 30,
            per_day: 10_000,
        };
        assert_eq!(
            exo.estimated_finish(now, 5000, 0),
            Some(at("2026-12-01T12:46:38Z"))
        );
    }

    #[test]
    fn a_throttle_pauses_widens_the_gap_and_recovers() {
        use std::time::Duration as D;
        let t0 = tokio::time::Instant::now();
        let mut t = Throttle::default();
        assert_eq!(t.wait(t0), D::ZERO, "no strike, no wait");
        assert_eq!(t.strike(t0), Some((D::from_secs(1), D::from_millis(500))));
        // the other sends in flight answered the same way: the same strike
        assert_eq!(t.strike(t0 + D::from_millis(100)), None);
        assert_eq!(t.wait(t0), D::from_secs(1), "the pause");
        assert_eq!(t.wait(t0), D::from_millis(1500), "then the gap");
        // after the pause, a new strike: twice the pause and the gap
        let t1 = t0 + D::from_secs(2);
        assert_eq!(t.strike(t1), Some((D::from_secs(2), D::from_secs(1))));
        for _ in 0..60 {
            t.success();
        }
        assert_eq!(t.gap(), D::ZERO, "recovered after the server took enough");
        let t2 = t1 + D::from_secs(10);
        assert_eq!(t.wait(t2), D::ZERO);
        assert_eq!(t.strike(t2), Some((D::from_secs(1), D::from_millis(500))));
        for i in 0..20 {
            t.strike(t2 + D::from_secs(1000 * (i + 1)));
        }
        assert_eq!(t.gap(), D::from_secs(60), "the gap is capped");
        let t3 = t2 + D::from_secs(100_000);
        assert_eq!(
            t.strike(t3).map(|p| p.0),
            Some(D::from_secs(300)),
            "the pause is capped"
        );
    }
}
