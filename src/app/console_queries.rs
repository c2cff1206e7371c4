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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{EnrollFields, InviteRow};

    fn ok<T, E: std::fmt::Display>(r: std::result::Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    fn app(dir: &std::path::Path) -> Arc<App> {
        let config = dir.join("invited.toml");
        let store = format!("path = \"{}/store\"", dir.display());
        ok(std::fs::write(
            &config,
            crate::config::minimal_toml(dir, &store)
                + r#"[[providers]]
id = "contoso-kr"
name = "Contoso Korea"
email = "ops@contoso.test"
markets = ["KR"]
[[providers]]
id = "contoso-jp"
name = "Contoso Japan"
email = "ops-jp@contoso.test"
markets = ["KR", "JP"]
"#,
        ));
        let cfg = ok(crate::config::Config::load(&config));
        let store = ok(Store::open(&cfg));
        let shared = ok(crate::daemon::load_shared(cfg));
        Arc::new(App::new(store, shared))
    }

    fn row(i: usize) -> (u64, InviteRow) {
        (
            i as u64 + 2,
            InviteRow {
                email: format!("partner{i}@reseller{i}.test"),
                company: format!("Reseller {i}"),
                country: "KR".into(),
                contact_name: format!("Contact {i}"),
                locale: String::new(),
            },
        )
    }

    /// Invitations, an enrollment approved by staff and a revocation, through `App`: the funnel
    /// and the days equal a recount, and the list shows the last change first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn app_operations_keep_the_console_counts() {
        let dir = ok(tempfile::tempdir());
        let app = app(dir.path());
        let now = ok(chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")).to_utc();
        let rows: Vec<_> = (0..6).map(row).collect();
        ok(app
            .invite_bulk("contoso-kr", rows.clone(), Channel::Cli, now)
            .await);
        ok(app
            .invite_bulk("contoso-jp", rows[..3].to_vec(), Channel::Cli, now)
            .await);
        let later = now + chrono::Duration::hours(1);
        let enrolled = ok(app
            .enroll(
                EnrollFields {
                    company: "Reseller 1".into(),
                    country: "KR".into(),
                    street: "1 Main St".into(),
                    city: "Seoul".into(),
                    postal_code: "04524".into(),
                    contact_name: "Contact 1".into(),
                    contact_email: "Partner1@reseller1.test".into(),
                    contact_phone: "+82 2 555 0100".into(),
                    support_email: "support@reseller1.test".into(),
                    support_phone: "+82 2 555 0101".into(),
                    website: String::new(),
                    mpn_id: "1234567".into(),
                    mpn_country: "KR".into(),
                    locale: String::new(),
                },
                Channel::Api,
                later,
            )
            .await);
        let kr = ok(app.store.read().records_for_provider("contoso-kr"));
        let revoked = kr
            .iter()
            .find(|r| r.recipient().as_str() == "partner4@reseller4.test")
            .map(|r| r.id.to_string())
            .unwrap_or_default();
        ok(app
            .revoke(&revoked, Channel::Cli, later + chrono::Duration::hours(1))
            .await);

        let mut recount = funnel::Recount::default();
        for r in ok(app.store.read().all_records()) {
            recount.add(&r);
        }
        let f = ok(app.funnel());
        assert_eq!(f, recount.funnel());
        assert_eq!(
            f.iter().map(|p| p.provider.as_str()).collect::<Vec<_>>(),
            ["contoso-jp", "contoso-kr"]
        );
        // partner1 enrolled (pending verification) under both providers; partner4 revoked
        assert_eq!(f[1].stages, [6, 1, 0, 0, 0, 0]);
        assert_eq!(f[1].current, [0, 0, 0, 1]);
        assert_eq!(f[0].stages, [3, 1, 0, 0, 0, 0]);

        let days = ok(app.activity_at(3, later));
        assert_eq!(
            days.iter().map(|d| d.date.as_str()).collect::<Vec<_>>(),
            ["2026-11-29", "2026-11-30", "2026-12-01"]
        );
        assert_eq!((days[2].invitations, days[2].confirmations), (9, 0));
        assert_eq!(
            days[0],
            DayCount {
                date: "2026-11-29".into(),
                ..DayCount::default()
            }
        );
        assert!(ok(app.activity_at(0, later)).is_empty());

        let page = ok(app.records_page(&RecordQuery {
            page: 1,
            per_page: 2,
            ..RecordQuery::default()
        }));
        assert!(page.has_next);
        assert_eq!(page.records[0].id.to_string(), revoked);
        assert_eq!(page.records[1].id, enrolled.id);
    }
}
