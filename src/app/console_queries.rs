//! What the staff console's overview and records list read: the funnel per provider, the
//! activity per day, a page of the records list (definitions in `crate::funnel`). Reads only,
//! each served by the store from kept counts or an index, never a pass over every record.
//! Blocking (store reads): call on the blocking pool.

use super::*;
use crate::funnel::{self, DayCount, ProviderFunnel, RecordPage, RecordQuery};

impl App {
    /// Per provider with invitations, by provider id: the cumulative stages and current counts
    /// of its provider invitations.
    pub fn funnel(&self) -> Result<Vec<ProviderFunnel>> {
        Ok(self.store.read().funnel()?)
    }

    /// `days` days ending today (UTC), oldest first, zeros included.
    pub fn activity(&self, days: u32) -> Result<Vec<DayCount>> {
        self.activity_at(days, chrono::Utc::now())
    }

    /// [`activity`](Self::activity) with the clock as a parameter: `days` days ending with the
    /// day of `now`.
    pub fn activity_at(&self, days: u32, now: Timestamp) -> Result<Vec<DayCount>> {
        let today = now.date_naive();
        if days == 0 {
            return Ok(Vec::new());
        }
        let first = today - chrono::Days::new(u64::from(days - 1));
        let known = self.store.read().days_since(first)?;
        Ok(funnel::window(&known, today, days))
    }

    /// One page of the records list: filters, newest last change first (see `crate::funnel`).
    pub fn records_page(&self, q: &RecordQuery) -> Result<RecordPage> {
        Ok(self.store.read().records_page(q)?)
    }
}
