//! INTERIM (replaced by the kept counts and the last-change index): the console's overview and
//! records list computed by scanning every record.

use super::*;

pub const FUNNEL_STAGES: [&str; 6] = [
    "invited",
    "enrolled",
    "contact_verified",
    "approved",
    "active",
    "authorized",
];
pub const FUNNEL_CURRENT: [&str; 4] = ["declined", "expired", "undeliverable", "revoked"];

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ProviderFunnel {
    pub provider: String,
    pub stages: [u64; 6],
    pub current: [u64; 4],
}

#[derive(Debug, Clone, Serialize)]
pub struct DayCount {
    pub date: String,
    pub invitations: u64,
    pub confirmations: u64,
}

pub struct RecordQuery {
    pub kind: Option<Kind>,
    pub state: Option<String>,
    pub provider: Option<String>,
    pub text: Option<String>,
    pub page: u32,
    pub per_page: usize,
}

pub struct RecordPage {
    pub records: Vec<Record>,
    pub page: u32,
    pub has_next: bool,
}

impl App {
    pub fn record(&self, id: &RecordId) -> Result<Option<Record>> {
        Ok(self.store.read().record(id)?)
    }

    pub fn funnel(&self) -> Result<Vec<ProviderFunnel>> {
        let mut enrollment: std::collections::HashMap<String, (EnrollmentState, bool)> =
            Default::default();
        let mut invitations = Vec::new();
        self.store.each_record(None, |r| {
            match &r.body {
                Body::Enrollment(e) => {
                    let reviewed = r.history.iter().any(|h| h.to == "in_review");
                    enrollment.insert(r.recipient().to_string(), (e.state, reviewed));
                }
                Body::ProviderAuthorization(a) => {
                    invitations.push((a.provider.clone(), a.email.to_string(), a.state))
                }
                _ => {}
            }
            Ok(())
        })?;
        let mut out: std::collections::BTreeMap<String, ProviderFunnel> = Default::default();
        for (p, email, state) in invitations {
            let f = out.entry(p.clone()).or_insert_with(|| ProviderFunnel {
                provider: p,
                ..Default::default()
            });
            f.stages[0] += 1;
            if let Some((e, reviewed)) = enrollment.get(&email) {
                use EnrollmentState::*;
                f.stages[1] += 1;
                if *reviewed {
                    f.stages[2] += 1;
                }
                if matches!(e, Approved | Active) {
                    f.stages[3] += 1;
                }
                if matches!(e, Active) {
                    f.stages[4] += 1;
                }
            }
            use AuthorizationState::*;
            match state {
                Authorized => f.stages[5] += 1,
                Declined => f.current[0] += 1,
                Expired => f.current[1] += 1,
                Undeliverable => f.current[2] += 1,
                Revoked => f.current[3] += 1,
                _ => {}
            }
        }
        Ok(out.into_values().collect())
    }

    pub fn activity(&self, days: u32) -> Result<Vec<DayCount>> {
        let today = chrono::Utc::now().date_naive();
        let mut out: Vec<DayCount> = (0..days)
            .rev()
            .map(|i| DayCount {
                date: (today - chrono::Duration::days(i64::from(i))).to_string(),
                invitations: 0,
                confirmations: 0,
            })
            .collect();
        self.store.each_record(None, |r| {
            if r.kind() != Kind::Enrollment {
                let d = r.created_at.date_naive().to_string();
                if let Some(x) = out.iter_mut().find(|x| x.date == d) {
                    x.invitations += 1;
                }
            }
            for h in &r.history {
                if matches!(h.channel, Channel::Link | Channel::Reply) {
                    if let Some(x) = out.iter_mut().find(|x| h.at.starts_with(&x.date)) {
                        x.confirmations += 1;
                    }
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    pub fn records_page(&self, q: &RecordQuery) -> Result<RecordPage> {
        let mut all = Vec::new();
        let text = q.text.as_ref().map(|t| t.to_lowercase());
        self.store.each_record(q.provider.as_deref(), |r| {
            if q.kind.is_none_or(|k| k == r.kind())
                && q.state.as_deref().is_none_or(|s| s == r.state_str())
                && text.as_deref().is_none_or(|t| {
                    r.recipient().to_string().contains(t) || r.company().to_lowercase().contains(t)
                })
            {
                all.push(r);
            }
            Ok(())
        })?;
        all.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(b.id.cmp(&a.id)));
        let skip = (q.page.max(1) as usize - 1) * q.per_page;
        let has_next = all.len() > skip + q.per_page;
        Ok(RecordPage {
            records: all.into_iter().skip(skip).take(q.per_page).collect(),
            page: q.page.max(1),
            has_next,
        })
    }
}
