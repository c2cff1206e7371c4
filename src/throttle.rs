//! The console's sign-in throttle: failures in a row per account and per client address. After
//! `limit` failures in a row a key is held off for a while (5 s, doubling with each further
//! failure, at most 60 s) and every attempt meanwhile is refused before its password is checked,
//! the right one too; when the time has passed one attempt goes through, and a success clears the
//! key. Kept in memory (a restart forgets it); bounded in size.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sign-in failures in a row before an account is held off (DESIGN: 10).
pub const ACCOUNT_LIMIT: u32 = 10;
/// Failures in a row from one client address before it is held off (DESIGN: 50).
pub const ADDRESS_LIMIT: u32 = 50;
const FIRST_HOLD: Duration = Duration::from_secs(5);
const LONGEST_HOLD: Duration = Duration::from_secs(60);
/// Keys kept at most; beyond it the ones not held off are forgotten first.
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    until: Option<Instant>,
}

pub struct Throttle {
    limit: u32,
    keys: Mutex<HashMap<String, Entry>>,
}

impl Throttle {
    pub fn new(limit: u32) -> Throttle {
        Throttle {
            limit,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// How long `key` must still wait, if it is held off now.
    pub fn held(&self, key: &str, now: Instant) -> Option<Duration> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let until = keys.get(key)?.until?;
        until.checked_duration_since(now).filter(|d| !d.is_zero())
    }

    /// One more failure for `key`; from the `limit`-th in a row on, it is held off.
    pub fn failed(&self, key: &str, now: Instant) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if keys.len() >= MAX_KEYS && !keys.contains_key(key) {
            keys.retain(|_, e| e.until.is_some_and(|u| u > now));
            if keys.len() >= MAX_KEYS {
                return;
            }
        }
        let e = keys.entry(key.to_string()).or_insert(Entry {
            failures: 0,
            until: None,
        });
        e.failures = e.failures.saturating_add(1);
        if e.failures >= self.limit {
            let over = (e.failures - self.limit).min(4);
            let hold = (FIRST_HOLD * 2u32.pow(over)).min(LONGEST_HOLD);
            e.until = Some(now + hold);
        }
    }

    /// A success: `key` starts again from nothing.
    pub fn succeeded(&self, key: &str) {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_off_after_the_limit_and_releases() {
        let t = Throttle::new(3);
        let now = Instant::now();
        t.failed("a", now);
        t.failed("a", now);
        assert_eq!(t.held("a", now), None);
        t.failed("a", now);
        let d = t.held("a", now).expect("held after 3");
        assert!(d <= LONGEST_HOLD && d >= FIRST_HOLD - Duration::from_millis(1));
        assert_eq!(t.held("b", now), None, "other keys are not held");
        // time passes: one attempt may go; failing again holds longer
        let later = now + FIRST_HOLD + Duration::from_millis(1);
        assert_eq!(t.held("a", later), None);
        t.failed("a", later);
        let d2 = t.held("a", later).expect("held again");
        assert!(d2 > d);
        // the hold never passes 60 s
        for _ in 0..20 {
            t.failed("a", later);
        }
        assert!(t.held("a", later).expect("held") <= LONGEST_HOLD);
        t.succeeded("a");
        assert_eq!(t.held("a", later), None);
    }
}
