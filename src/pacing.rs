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
}
