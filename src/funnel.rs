//! What the staff console's overview and records list show, as data and pure functions: the
//! per-provider funnel of provider invitations, the activity per day, and the records list's
//! filter. No I/O and no clock; both store backends keep or compute these with the functions here
//! (the sled store keeps counts in each record's batch, PostgreSQL aggregates in SQL that follows
//! the same definitions), and [`Recount`] is the from-scratch count the kept ones must equal.
//!
//! **Funnel.** Over a provider's provider-authorization records (its invitations), counts of how
//! many reached at least each stage of [`STAGES`]:
//! - `invited`: every invitation, whatever its state;
//! - `enrolled`: the invitation's recipient has an enrollment record (in any state: enrollments
//!   are matched on the invitation's email = the enrollment's primary contact email);
//! - `contact_verified`: that enrollment reached `in_review` or later (DESIGN): it is now
//!   `in_review`, `approved`, `active` or `rejected` (a rejection comes only after the review, so
//!   the contact confirmed). The stage is read from the current state: an `approved` enrollment
//!   that later bounced to `undeliverable` counts as `enrolled` only;
//! - `approved`: the enrollment is `approved` or `active`;
//! - `active`: the enrollment is `active`;
//! - `authorized`: the invitation itself is `authorized`.
//!
//! With several enrollments for one address the furthest one counts. Each invitation has one
//! *level* ([`level`]), the furthest stage it reached, and counts in that stage and every stage
//! before it; an authorized invitation counts in all six (authorizing needs an active
//! enrollment), so the stages are cumulative by construction. Beside them [`CURRENT`]: how many
//! invitations are now `declined`, `expired`, `undeliverable`, `revoked`.
//!
//! **Activity.** Per UTC day: `invitations`, the provider-authorization and customer-invitation
//! records created that day; `confirmations`, the history entries of that day made by the
//! contact (channel `link` or `reply`) that move a record forward: an enrollment to `in_review`
//! (contact verified) or `active` (agreement accepted), an invitation to `authorized`, a customer
//! invitation to `accepted` ([`is_confirmation`]). Declines and unsubscribes are not
//! confirmations.
//!
//! **Records list.** Newest last change first (records changed in the same millisecond by id),
//! where the last change is the time of the record's last history entry (its creation if it has
//! none, [`last_change`]); filtered by kind, state,
//! provider and a case-insensitive substring of the recipient's email or the company
//! ([`ListEntry::matches`]).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::model::{
    AuthorizationState, Body, Channel, EnrollmentState, Kind, Record, Timestamp, Transition,
};

/// The funnel's cumulative stages, in order.
pub const STAGES: [&str; 6] = [
    "invited",
    "enrolled",
    "contact_verified",
    "approved",
    "active",
    "authorized",
];

/// The invitation states counted as they are now, beside the stages.
pub const CURRENT: [&str; 4] = ["declined", "expired", "undeliverable", "revoked"];

/// One provider's funnel: `stages[i]` invitations reached at least `STAGES[i]`; `current[i]` are
/// now in state `CURRENT[i]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ProviderFunnel {
    pub provider: String,
    pub stages: [u64; 6],
    pub current: [u64; 4],
}

/// How far an enrollment got, as a level of the funnel: 1 (`enrolled`) for any enrollment, 2 for
/// `in_review` and `rejected` (contact verified), 3 for `approved`, 4 for `active`. 0 stands for
/// "no enrollment".
pub fn enrollment_rank(state: EnrollmentState) -> u8 {
    match state {
        EnrollmentState::InReview | EnrollmentState::Rejected => 2,
        EnrollmentState::Approved => 3,
        EnrollmentState::Active => 4,
        EnrollmentState::PendingVerification
        | EnrollmentState::Expired
        | EnrollmentState::Undeliverable => 1,
    }
}

/// The furthest stage (index into [`STAGES`]) an invitation in `state` reached, its recipient's
/// best enrollment being of `rank` ([`enrollment_rank`], 0 for none).
pub fn level(state: AuthorizationState, rank: u8) -> usize {
    if state == AuthorizationState::Authorized {
        5
    } else {
        usize::from(rank.min(4))
    }
}

/// The index into [`CURRENT`] of an invitation state, if it is one of those.
pub fn current_index(state: AuthorizationState) -> Option<usize> {
    match state {
        AuthorizationState::Declined => Some(0),
        AuthorizationState::Expired => Some(1),
        AuthorizationState::Undeliverable => Some(2),
        AuthorizationState::Revoked => Some(3),
        AuthorizationState::Invited | AuthorizationState::Authorized => None,
    }
}

/// What one invitation adds to its provider's funnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub level: usize,
    pub current: Option<usize>,
}

impl Share {
    pub fn of(state: AuthorizationState, rank: u8) -> Share {
        Share {
            level: level(state, rank),
            current: current_index(state),
        }
    }
}

impl ProviderFunnel {
    pub fn add(&mut self, s: Share) {
        self.add_n(s, 1);
    }

    /// [`add`](Self::add) for `n` invitations alike.
    pub fn add_n(&mut self, s: Share, n: u64) {
        for c in &mut self.stages[..=s.level.min(5)] {
            *c += n;
        }
        if let Some(i) = s.current {
            self.current[i] += n;
        }
    }

    /// Takes back what [`add`](Self::add) added (never below zero).
    pub fn remove(&mut self, s: Share) {
        for n in &mut self.stages[..=s.level.min(5)] {
            *n = n.saturating_sub(1);
        }
        if let Some(i) = s.current {
            self.current[i] = self.current[i].saturating_sub(1);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.stages == [0; 6] && self.current == [0; 4]
    }
}

/// The invitations and confirmations of one UTC day.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct DayCount {
    /// `YYYY-MM-DD`, UTC
    pub date: String,
    pub invitations: u64,
    pub confirmations: u64,
}

/// The UTC day of `t`, `YYYY-MM-DD`.
pub fn day_of(t: &Timestamp) -> String {
    t.format("%Y-%m-%d").to_string()
}

fn parse_at(at: &str) -> Option<Timestamp> {
    chrono::DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Whether a history entry is a confirmation (see the module comment).
pub fn is_confirmation(t: &Transition) -> bool {
    matches!(t.channel, Channel::Link | Channel::Reply)
        && t.from != t.to
        && matches!(
            t.to.as_str(),
            "in_review" | "active" | "authorized" | "accepted"
        )
}

/// When a history entry was made, if its time reads.
pub fn entry_time(t: &Transition) -> Option<Timestamp> {
    parse_at(&t.at)
}

/// A record's last change: its last history entry's time, else its creation.
pub fn last_change(r: &Record) -> Timestamp {
    r.history
        .last()
        .and_then(entry_time)
        .unwrap_or(r.created_at)
}

/// Whether a record counts as an invitation on the day it is created.
pub fn counts_as_invitation(r: &Record) -> bool {
    r.kind() != Kind::Enrollment
}

/// What writing `new` over `old` (None: a new record) adds to the days: (day, invitations,
/// confirmations), one entry per day touched. History is append-only, so what is new is the
/// entries past the old record's.
pub fn activity_delta(old: Option<&Record>, new: &Record) -> Vec<(String, u64, u64)> {
    let mut days: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    if old.is_none() && counts_as_invitation(new) {
        days.entry(day_of(&new.created_at)).or_default().0 += 1;
    }
    let seen = old.map_or(0, |o| o.history.len());
    for t in new.history.iter().skip(seen) {
        if is_confirmation(t) {
            if let Some(at) = entry_time(t) {
                days.entry(day_of(&at)).or_default().1 += 1;
            }
        }
    }
    days.into_iter().map(|(d, (i, c))| (d, i, c)).collect()
}

/// The funnel and the days counted from scratch over every record: what the kept counts must
/// equal, and how they are built for a store written without them.
#[derive(Default)]
pub struct Recount {
    ranks: HashMap<String, u8>,
    invitations: Vec<(String, String, AuthorizationState)>,
    days: BTreeMap<String, (u64, u64)>,
}

impl Recount {
    pub fn add(&mut self, r: &Record) {
        match &r.body {
            Body::Enrollment(e) => {
                let rank = self
                    .ranks
                    .entry(e.primary_contact.email.to_string())
                    .or_default();
                *rank = (*rank).max(enrollment_rank(e.state));
            }
            Body::ProviderAuthorization(a) => {
                self.invitations
                    .push((a.provider.clone(), a.email.to_string(), a.state));
            }
            Body::CustomerInvitation(_) => {}
        }
        for (day, i, c) in activity_delta(None, r) {
            let d = self.days.entry(day).or_default();
            d.0 += i;
            d.1 += c;
        }
    }

    /// Every provider with at least one invitation, by provider id.
    pub fn funnel(&self) -> Vec<ProviderFunnel> {
        let mut by: BTreeMap<&str, ProviderFunnel> = BTreeMap::new();
        for (provider, email, state) in &self.invitations {
            let rank = self.ranks.get(email).copied().unwrap_or(0);
            by.entry(provider)
                .or_insert_with(|| ProviderFunnel {
                    provider: provider.clone(),
                    ..ProviderFunnel::default()
                })
                .add(Share::of(*state, rank));
        }
        by.into_values().collect()
    }

    /// Every day with an invitation or a confirmation, oldest first.
    pub fn days(&self) -> Vec<DayCount> {
        self.days
            .iter()
            .map(|(date, (i, c))| DayCount {
                date: date.clone(),
                invitations: *i,
                confirmations: *c,
            })
            .collect()
    }
}

/// `days` days ending with `today`, oldest first, each with its counts from `known` (by date)
/// or zeros.
pub fn window(known: &[DayCount], today: chrono::NaiveDate, days: u32) -> Vec<DayCount> {
    let by: HashMap<&str, &DayCount> = known.iter().map(|d| (d.date.as_str(), d)).collect();
    (0..days)
        .rev()
        .map(|back| {
            let date = (today - chrono::Days::new(u64::from(back)))
                .format("%Y-%m-%d")
                .to_string();
            match by.get(date.as_str()) {
                Some(d) => (*d).clone(),
                None => DayCount {
                    date,
                    ..DayCount::default()
                },
            }
        })
        .collect()
}

/// The records list's question: every filter optional; `text` is a case-insensitive substring
/// of the recipient's email or the company; `page` counts from 1.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordQuery {
    pub kind: Option<Kind>,
    pub state: Option<String>,
    pub provider: Option<String>,
    pub text: Option<String>,
    pub page: u32,
    pub per_page: usize,
}

/// One page of the records list, newest last change first.
#[derive(Debug, Clone, Serialize)]
pub struct RecordPage {
    pub records: Vec<crate::model::Record>,
    pub page: u32,
    pub has_next: bool,
}

/// The most records one page holds.
pub const MAX_PER_PAGE: usize = 500;

impl RecordQuery {
    /// The page, from 1.
    pub fn page(&self) -> u32 {
        self.page.max(1)
    }
    /// Records per page, 1 to [`MAX_PER_PAGE`].
    pub fn per_page(&self) -> usize {
        self.per_page.clamp(1, MAX_PER_PAGE)
    }
    /// Matching records to pass over before the page starts.
    pub fn skip(&self) -> usize {
        (self.page() as usize - 1).saturating_mul(self.per_page())
    }
    /// The search text, lowercased; None when absent or empty.
    pub fn text_lower(&self) -> Option<String> {
        self.text
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_lowercase)
    }
}

/// What the records list filters on, kept beside each record's entry in the last-change index so
/// a filtered walk reads no record it does not show. Email and company are lowercased.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListEntry {
    #[serde(rename = "k")]
    pub kind: Kind,
    #[serde(rename = "s")]
    pub state: String,
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(rename = "e")]
    pub email: String,
    #[serde(rename = "c")]
    pub company: String,
}

impl ListEntry {
    pub fn of(r: &Record) -> ListEntry {
        ListEntry {
            kind: r.kind(),
            state: r.state_str().to_string(),
            provider: r.provider().map(str::to_string),
            email: r.recipient().as_str().to_lowercase(),
            company: r.company().to_lowercase(),
        }
    }

    /// Whether the entry passes the query's filters; `text` is [`RecordQuery::text_lower`].
    pub fn matches(&self, q: &RecordQuery, text: Option<&str>) -> bool {
        q.kind.is_none_or(|k| k == self.kind)
            && q.state.as_deref().is_none_or(|s| s == self.state)
            && q.provider
                .as_deref()
                .is_none_or(|p| Some(p) == self.provider.as_deref())
            && text.is_none_or(|t| self.email.contains(t) || self.company.contains(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_cumulative_and_authorized_counts_everywhere() {
        use AuthorizationState::*;
        let mut f = ProviderFunnel::default();
        f.add(Share::of(Invited, 0));
        f.add(Share::of(Declined, 1));
        f.add(Share::of(Expired, 2));
        f.add(Share::of(Invited, 3));
        f.add(Share::of(Revoked, 4));
        f.add(Share::of(Authorized, 4));
        assert_eq!(f.stages, [6, 5, 4, 3, 2, 1]);
        assert_eq!(f.current, [1, 1, 0, 1]);
        f.remove(Share::of(Authorized, 4));
        f.remove(Share::of(Invited, 0));
        assert_eq!(f.stages, [4, 4, 3, 2, 1, 0]);
    }

    #[test]
    fn ranks_follow_the_enrollment_states() {
        // in the order the states are declared: pending_verification, in_review, approved,
        // active, rejected, expired, undeliverable
        let ranks: Vec<u8> = EnrollmentState::ALL
            .iter()
            .filter_map(|s| EnrollmentState::parse(s))
            .map(enrollment_rank)
            .collect();
        assert_eq!(ranks, [1, 2, 3, 4, 2, 1, 1]);
    }

    #[test]
    fn confirmations_are_forward_moves_by_the_contact() {
        let t = |from: &str, to: &str, channel| Transition {
            at: "2026-12-01T10:00:00Z".into(),
            from: from.into(),
            to: to.into(),
            channel,
            detail: String::new(),
            message_ids: Vec::new(),
            staff: None,
        };
        assert!(is_confirmation(&t(
            "pending_verification",
            "in_review",
            Channel::Link
        )));
        assert!(is_confirmation(&t("approved", "active", Channel::Reply)));
        assert!(is_confirmation(&t("invited", "authorized", Channel::Link)));
        assert!(is_confirmation(&t("invited", "accepted", Channel::Reply)));
        assert!(!is_confirmation(&t("invited", "declined", Channel::Link)));
        assert!(!is_confirmation(&t("in_review", "approved", Channel::Cli)));
        assert!(!is_confirmation(&t("invited", "authorized", Channel::Api)));
        assert!(!is_confirmation(&t(
            "authorized",
            "authorized",
            Channel::Link
        )));
    }

    #[test]
    fn the_window_has_every_day_oldest_first() {
        let today = chrono::NaiveDate::from_ymd_opt(2026, 3, 2).unwrap_or_default();
        let known = [DayCount {
            date: "2026-02-28".into(),
            invitations: 3,
            confirmations: 1,
        }];
        let w = window(&known, today, 4);
        let dates: Vec<&str> = w.iter().map(|d| d.date.as_str()).collect();
        assert_eq!(
            dates,
            ["2026-02-27", "2026-02-28", "2026-03-01", "2026-03-02"]
        );
        assert_eq!((w[1].invitations, w[1].confirmations), (3, 1));
        assert_eq!(
            w[0],
            DayCount {
                date: "2026-02-27".into(),
                ..DayCount::default()
            }
        );
        assert!(window(&known, today, 0).is_empty());
    }

    #[test]
    fn list_entries_filter_on_each_field() {
        let e = ListEntry {
            kind: Kind::ProviderAuthorization,
            state: "invited".into(),
            provider: Some("contoso-kr".into()),
            email: "kim@fabrikam.test".into(),
            company: "fabrikam korea".into(),
        };
        let q = |f: &dyn Fn(&mut RecordQuery)| {
            let mut q = RecordQuery::default();
            f(&mut q);
            let t = q.text_lower();
            e.matches(&q, t.as_deref())
        };
        assert!(q(&|_| {}));
        assert!(q(&|q| q.kind = Some(Kind::ProviderAuthorization)));
        assert!(!q(&|q| q.kind = Some(Kind::Enrollment)));
        assert!(q(&|q| q.state = Some("invited".into())));
        assert!(!q(&|q| q.state = Some("authorized".into())));
        assert!(q(&|q| q.provider = Some("contoso-kr".into())));
        assert!(!q(&|q| q.provider = Some("contoso".into())));
        assert!(q(&|q| q.text = Some("FABRIKAM K".into())));
        assert!(q(&|q| q.text = Some("Kim@".into())));
        assert!(!q(&|q| q.text = Some("northwind".into())));
        assert!(q(&|q| q.text = Some("  ".into())));
    }
}
