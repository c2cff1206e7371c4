//! The operations of the product: invite, enroll, review, act on links and replies, expire and
//! remind. Each operation is one store batch (state change + the mail it causes) and is flushed
//! before its caller answers. No I/O other than the store; the clock comes in as `now`.

mod console_queries;
mod inbound;
mod links;
mod onboarding;
mod queries;
mod retention;
mod sending;
mod staff;

mod suppression;
mod timers;

pub use inbound::Inbound;
pub use staff::SignedIn;
pub use suppression::{suppression_json, UnsubscribeCheck, UnsubscribeOutcome};

use std::sync::{Arc, RwLock};

use chrono::Duration as ChronoDuration;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::classify::{self, Classification, Keyword};
use crate::config::{Config, Provider, ReplyAuthorize};
use crate::metrics::Metrics;
use crate::model::{
    random_ref, rfc3339, AuthorizationState, Body, Channel, CustomerInvitation, CustomerState,
    Effects, Email, EnrollmentState, Kind, ProviderAuthorization, Purpose, Record, RecordId,
    Refusal, Timestamp,
};
use crate::outbox::{LinkSpec, MailFieldsV1, MailKind, OutboxItem, OutboxState};
use crate::rules::{self, EnrollFields, FieldError, InviteRow};
use crate::store::{InboundRecord, MessageRef, Store, StoreError, TimerKind, Txn};
use crate::templates::Templates;
use crate::token::{self, Keys};

/// What SIGHUP swaps as one piece: configuration, keys and templates.
pub struct Shared {
    pub cfg: Config,
    pub keys: Keys,
    pub templates: Templates,
    /// The `[mail.dkim]` key, loaded once with the rest (None: no signing).
    pub dkim: Option<crate::dkim::Signer>,
}

pub struct App {
    pub store: Store,
    shared: RwLock<Arc<Shared>>,
    pub metrics: Metrics,
    pub outbox_wake: Notify,
    /// Busy marks of the work loops, read by the systemd watchdog (`notify`).
    pub heartbeats: Heartbeats,
}

/// One [`Heartbeat`](crate::notify::Heartbeat) per long-running work loop.
#[derive(Default)]
pub struct Heartbeats {
    pub sender: crate::notify::Heartbeat,
    pub inbound: crate::notify::Heartbeat,
}

impl Heartbeats {
    /// The first loop busy with one unit of work for longer than `limit`, if any: stuck.
    pub fn stuck(&self, limit: std::time::Duration) -> Option<(&'static str, std::time::Duration)> {
        [("sender", &self.sender), ("inbound", &self.inbound)]
            .into_iter()
            .find_map(|(name, h)| h.busy_for().filter(|d| *d > limit).map(|d| (name, d)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    NotFound(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Refused(String),
    /// An invitation to an address on the provider's suppression list: nothing was sent.
    #[error("{email} is on the suppression list of provider {provider} since {since} ({why}); no invitation was sent (`invited suppress remove --provider {provider} --email {email}` lifts it)")]
    Suppressed {
        provider: String,
        email: String,
        since: String,
        why: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Refusal> for AppError {
    fn from(r: Refusal) -> Self {
        AppError::Refused(r.to_string())
    }
}
impl From<FieldError> for AppError {
    fn from(e: FieldError) -> Self {
        AppError::Invalid {
            field: e.field.to_string(),
            message: e.message,
        }
    }
}

pub type Result<T, E = AppError> = std::result::Result<T, E>;

/// Who makes a change: the channel, and the staff member when it is the console. History
/// entries a change adds carry both (`Transition::staff`).
#[derive(Debug, Clone)]
pub struct Actor {
    pub channel: Channel,
    pub staff: Option<Email>,
}

impl From<Channel> for Actor {
    fn from(channel: Channel) -> Actor {
        Actor {
            channel,
            staff: None,
        }
    }
}

impl Actor {
    /// A staff member in the console.
    pub fn console(staff: &Email) -> Actor {
        Actor {
            channel: Channel::Console,
            staff: Some(staff.clone()),
        }
    }

    /// Names the staff member on the history entries from `since` on (the ones this change
    /// added).
    pub(crate) fn stamp(&self, rec: &mut Record, since: usize) {
        if let Some(s) = &self.staff {
            for t in rec.history.iter_mut().skip(since) {
                t.staff = Some(s.clone());
            }
        }
    }
}

/// The action a link form or a reply asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Confirm,
    Accept,
    Authorize,
    Decline,
}

impl Action {
    /// Acting actions need the consent checkbox on a link page (`consent=on`); confirming one's
    /// own address and declining do not. A reply is its own consent.
    pub fn needs_consent(self) -> bool {
        matches!(self, Action::Accept | Action::Authorize)
    }
}

/// Why an action did not happen (the record is unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotDone {
    NotAwaiting,
    NeedsEnrollment,
    NotInMarkets {
        country: String,
        markets: String,
    },
    NoDecline,
    WrongAction,
    /// A customer invitation whose reseller no longer authorizes the provider.
    ProviderNotAuthorized,
}

impl NotDone {
    pub fn describe(&self) -> String {
        match self {
            NotDone::NotAwaiting => "the record no longer waits for this".into(),
            NotDone::NeedsEnrollment => {
                "no active enrollment for this address yet; the link shows the enrollment form"
                    .into()
            }
            NotDone::NotInMarkets { country, markets } => {
                format!(
                    "the reseller's country {country} is not in the provider's markets ({markets})"
                )
            }
            NotDone::NoDecline => "there is nothing to decline for this record".into(),
            NotDone::ProviderNotAuthorized => {
                "the reseller no longer authorizes this provider, so the invitation cannot be accepted"
                    .into()
            }
            NotDone::WrongAction => "this action does not apply to this link".into(),
        }
    }
}

/// Result of checking a link token against the store.
pub enum LinkCheck {
    Invalid(token::Invalid),
    /// Valid, and the record waits for this purpose.
    Open {
        record: Record,
        purpose: Purpose,
    },
    /// Valid signature and generation, but the record has moved on.
    Used {
        record: Record,
        purpose: Purpose,
    },
}

pub enum PostOutcome {
    Invalid,
    Done {
        record: Record,
        purpose: Purpose,
        action: Action,
    },
    Already {
        record: Record,
        purpose: Purpose,
    },
    ConsentMissing {
        record: Record,
        purpose: Purpose,
    },
    NotDone {
        record: Record,
        purpose: Purpose,
        why: NotDone,
    },
    EnrollErrors {
        record: Record,
        errors: Vec<FieldError>,
        values: EnrollFields,
    },
    Enrolled {
        record: Record,
        enrollment: Record,
    },
}

#[derive(Debug, Serialize)]
pub struct InviteResult {
    pub id: RecordId,
    pub state: String,
    pub existing: bool,
}

#[derive(Debug, Serialize)]
pub struct BulkRow {
    pub line: u64,
    pub email: String,
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<RecordId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, Default)]
pub struct BulkResult {
    pub queued: u64,
    pub existing: u64,
    pub rejected: u64,
    /// rows whose address is on the provider's suppression list: no record, no mail
    pub suppressed: u64,
    pub rows: Vec<BulkRow>,
}

impl BulkResult {
    fn append(&mut self, other: BulkResult) {
        self.queued += other.queued;
        self.existing += other.existing;
        self.rejected += other.rejected;
        self.suppressed += other.suppressed;
        self.rows.extend(other.rows);
    }
}

/// Bulk rows per store batch: a batch of 100 invitations (about 1,100 keys) is applied in
/// milliseconds, so neither our write lock nor sled's (readers wait while a batch is applied)
/// is held long enough to stall a page. Bigger batches also cost memory: sled keeps every node
/// a batch replaced until the batch ends (BENCHMARKS.md, bulk enqueue).
pub const BULK_BATCH_ROWS: usize = 100;

fn to_chrono(d: std::time::Duration) -> ChronoDuration {
    ChronoDuration::milliseconds(d.as_millis().min(i64::MAX as u128) as i64)
}

impl App {
    pub fn new(store: Store, shared: Shared) -> App {
        App {
            store,
            shared: RwLock::new(Arc::new(shared)),
            metrics: Metrics::default(),
            outbox_wake: Notify::new(),
            heartbeats: Heartbeats::default(),
        }
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn replace_shared(&self, s: Shared) {
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(s);
    }

    /// Durable before acknowledged: every mutating caller awaits this, then the sender is woken.
    pub async fn commit(&self) -> Result<()> {
        self.store.flush().await?;
        self.outbox_wake.notify_one();
        Ok(())
    }

    // ---- mail ----------------------------------------------------------------------------

    fn base_fields(sh: &Shared, rec: &Record) -> MailFieldsV1 {
        let mut f = MailFieldsV1 {
            from_name: sh.cfg.from_name.clone(),
            recipient_email: rec.recipient().to_string(),
            company: rec.company().to_string(),
            ..Default::default()
        };
        if let Some(p) = rec.provider().and_then(|p| sh.cfg.provider(p)) {
            f.provider_name = p.name.clone();
            f.provider_email = p.email.to_string();
        }
        match &rec.body {
            Body::Enrollment(e) => {
                f.recipient_name = e.primary_contact.name.clone();
                f.country = e.country.clone();
                f.state = e.state.as_str().into();
                f.reply_enabled = true;
            }
            Body::ProviderAuthorization(a) => {
                f.recipient_name = a.contact_name.clone();
                f.country = a.country.clone();
                f.admin_access = a.admin_access;
                f.state = a.state.as_str().into();
                f.reseller_email = a.email.to_string();
                f.in_markets = sh
                    .cfg
                    .provider(&a.provider)
                    .is_some_and(|p| p.markets.contains(&a.country));
                f.reply_enabled = sh.cfg.reply_authorize != ReplyAuthorize::Off;
            }
            Body::CustomerInvitation(c) => {
                f.state = c.state.as_str().into();
                f.reseller_email = c.reseller_email.to_string();
                f.reply_enabled = true;
            }
        }
        f
    }

    /// Queues one message in the same batch as the change that causes it, with its own `<ref>`.
    #[allow(clippy::too_many_arguments)]
    fn queue(
        sh: &Shared,
        txn: &mut Txn,
        rec: &Record,
        kind: MailKind,
        to: &Email,
        to_name: &str,
        link: Option<Purpose>,
        fields: MailFieldsV1,
        now: Timestamp,
    ) -> Result<()> {
        let link = link.map(|purpose| LinkSpec {
            purpose,
            generation: rec.generation,
            expires_at: rec.expires_at.map(|t| t.timestamp()).unwrap_or(0),
        });
        let item = OutboxItem::queued(
            random_ref(),
            sh.cfg.reply_to.domain(),
            to,
            to_name,
            kind,
            &rec.locale,
            rec.id,
            fields,
            link,
            now,
        );
        txn.put_new_outbox(&item);
        txn.note_message(&rec.id, &item.message_id)?;
        Ok(())
    }

    /// The mail that carries the link for whatever the record now waits for.
    fn queue_link_mail(
        sh: &Shared,
        txn: &mut Txn,
        rec: &Record,
        reminder: bool,
        now: Timestamp,
    ) -> Result<()> {
        let Some(purpose) = rec.awaiting() else {
            return Ok(());
        };
        let mut f = Self::base_fields(sh, rec);
        let kind = match purpose {
            Purpose::VerifyContact => MailKind::ContactVerification,
            Purpose::AcceptAgreement => MailKind::AgreementRequest,
            Purpose::AuthorizeProvider => {
                // Never to a suppressed address. `invite_in` refuses those and suppressing
                // declines the pending invitation, so no waiting invitation should get here;
                // this keeps reminders and re-sends honest should one ever do.
                if let Some(p) = rec.provider() {
                    if Self::is_suppressed(txn, p, rec.recipient())? {
                        tracing::info!(record = %rec.id, "invitation mail not sent: the address is suppressed");
                        return Ok(());
                    }
                }
                let needs_enrollment = Self::active_enrollment(txn, rec.recipient())?.is_none();
                return Self::queue_invitation(sh, txn, rec, reminder, needs_enrollment, now);
            }
            Purpose::AcceptCustomer => {
                if let Some(c) = rec.customer() {
                    if let Some(e) = txn.record(&c.reseller_enrollment)? {
                        f.reseller_company = e.company().to_string();
                    }
                }
                MailKind::CustomerInvitation
            }
            // an unsubscribe link rides along with the invitation; nothing waits for it
            Purpose::Unsubscribe => return Ok(()),
        };
        let name = f.recipient_name.clone();
        Self::queue(
            sh,
            txn,
            rec,
            kind,
            rec.recipient(),
            &name,
            Some(purpose),
            f,
            now,
        )
    }

    /// The invitation (or its reminder) to a provider authorization's recipient, whose
    /// suppression and enrollment the caller has looked up already.
    fn queue_invitation(
        sh: &Shared,
        txn: &mut Txn,
        rec: &Record,
        reminder: bool,
        needs_enrollment: bool,
        now: Timestamp,
    ) -> Result<()> {
        let mut f = Self::base_fields(sh, rec);
        f.needs_enrollment = needs_enrollment;
        let kind = if reminder {
            MailKind::InvitationReminder
        } else {
            MailKind::ProviderInvitation
        };
        let name = f.recipient_name.clone();
        Self::queue(
            sh,
            txn,
            rec,
            kind,
            rec.recipient(),
            &name,
            Some(Purpose::AuthorizeProvider),
            f,
            now,
        )
    }

    fn queue_status(
        sh: &Shared,
        txn: &mut Txn,
        rec: &Record,
        reason: &str,
        now: Timestamp,
    ) -> Result<()> {
        let mut f = Self::base_fields(sh, rec);
        f.reason = reason.to_string();
        let name = f.recipient_name.clone();
        Self::queue(
            sh,
            txn,
            rec,
            MailKind::EnrollmentStatus,
            rec.recipient(),
            &name,
            None,
            f,
            now,
        )
    }

    /// Tells the provider what became of its invitation. `server_words` (empty unless the
    /// invitation is undeliverable) is what the remote mail system said: a bounce's diagnostic
    /// or an SMTP reply. The templates quote it as the receiving server's answer, and it comes
    /// from a stranger, so it is clipped, stripped of control characters and of curly quotes
    /// (it cannot close the quotation and go on in our voice) first.
    fn queue_provider_notice(
        sh: &Shared,
        txn: &mut Txn,
        rec: &Record,
        server_words: &str,
        now: Timestamp,
    ) -> Result<()> {
        let Some(p) = rec.provider().and_then(|p| sh.cfg.provider(p)) else {
            return Ok(());
        };
        let mut f = Self::base_fields(sh, rec);
        f.reason = quotable(server_words);
        f.recipient_name = p.name.clone();
        f.recipient_email = p.email.to_string();
        let mut notice = rec.clone();
        notice.locale = sh.cfg.default_locale.clone();
        Self::queue(
            sh,
            txn,
            &notice,
            MailKind::ProviderNotice,
            &p.email,
            &p.name,
            None,
            f,
            now,
        )
    }

    fn save(&self, txn: &mut Txn, rec: &Record) -> Result<()> {
        txn.put_record(rec)?;
        self.metrics
            .transition(rec.kind().as_str(), rec.state_str());
        Ok(())
    }

    /// Writes a record a transition changed, and what the transition causes (`model::Effects`):
    /// its mails queued and its timers armed, in the same transaction. The one place a
    /// transition's effects are carried out, on either store backend.
    fn carry_out(
        &self,
        sh: &Shared,
        txn: &mut Txn,
        rec: &Record,
        effects: Effects,
        now: Timestamp,
    ) -> Result<()> {
        // a same-state entry (a reminder, a fresh link) is not a transition for the metrics
        if rec.history.last().is_none_or(|t| t.from != t.to) {
            self.save(txn, rec)?;
        } else {
            txn.put_record(rec)?;
        }
        if effects.link_timers {
            Self::schedule_timers(sh, txn, rec, now);
        }
        if let Some(at) = effects.expire_at {
            txn.schedule(&at, &rec.id, TimerKind::Expire);
        }
        for mail in effects.mails {
            match mail {
                crate::model::Mail::Link { reminder } => {
                    Self::queue_link_mail(sh, txn, rec, reminder, now)?
                }
                crate::model::Mail::Status { note } => {
                    Self::queue_status(sh, txn, rec, &note, now)?
                }
                crate::model::Mail::ProviderNotice { words } => {
                    Self::queue_provider_notice(sh, txn, rec, &words, now)?
                }
            }
        }
        Ok(())
    }

    /// [`save`](Self::save) for a record made by `Record::new` in this batch.
    fn save_new(&self, txn: &mut Txn, rec: &Record) -> Result<()> {
        txn.put_new_record(rec)?;
        self.metrics
            .transition(rec.kind().as_str(), rec.state_str());
        Ok(())
    }

    fn active_enrollment(txn: &Txn, email: &Email) -> Result<Option<Record>> {
        Ok(txn.records_for_recipient(email)?.into_iter().find(|r| {
            r.enrollment()
                .is_some_and(|e| e.state == EnrollmentState::Active)
        }))
    }

    fn provider<'a>(sh: &'a Shared, id: &str) -> Result<&'a Provider> {
        sh.cfg.provider(id).ok_or_else(|| AppError::Invalid {
            field: "provider".into(),
            message: format!(
                "unknown provider {id:?} (configured: {})",
                sh.cfg
                    .providers
                    .iter()
                    .map(|p| p.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }

    // ---- acting on a record (link or reply) ----------------------------------------------

    /// Performs `action` for `purpose` on `rec`, queues what it causes; Ok(None) when it changed
    /// something, Ok(Some(why)) when it did not.
    #[allow(clippy::too_many_arguments)] // one call site per channel; a struct would only rename the same eight things
    fn act(
        &self,
        sh: &Shared,
        txn: &mut Txn,
        rec: &mut Record,
        purpose: Purpose,
        action: Action,
        channel: Channel,
        now: Timestamp,
    ) -> Result<Option<NotDone>> {
        if rec.awaiting() != Some(purpose) {
            return Ok(Some(NotDone::NotAwaiting));
        }
        let effects = match (purpose, action) {
            (Purpose::VerifyContact, Action::Confirm) => rec.verify_contact(channel, now)?,
            (Purpose::AcceptAgreement, Action::Accept) => {
                let effects = rec.accept_agreement(channel, now)?;
                // Invitations waiting for this address get a fresh link now that it can authorize.
                let until = now + to_chrono(sh.cfg.invitation_ttl);
                for mut inv in txn.records_for_recipient(rec.recipient())? {
                    if let Some(renewed) = inv.renew_for_enrollment(rec.id, until, now) {
                        self.carry_out(sh, txn, &inv, renewed, now)?;
                    }
                }
                effects
            }
            (Purpose::AuthorizeProvider, Action::Authorize) => {
                let Some(enrollment) = Self::active_enrollment(txn, rec.recipient())? else {
                    return Ok(Some(NotDone::NeedsEnrollment));
                };
                let provider = rec.provider().and_then(|p| sh.cfg.provider(p));
                let country = enrollment
                    .enrollment()
                    .map(|e| e.country.clone())
                    .unwrap_or_default();
                if let Some(p) = provider {
                    if !p.markets.contains(&country) {
                        return Ok(Some(NotDone::NotInMarkets {
                            country,
                            markets: p.markets.join(", "),
                        }));
                    }
                }
                rec.authorize(enrollment.id, channel, now)?
            }
            // No customer invitation to revoke after a provider invitation's decline: one needs
            // its provider authorized, and this authorization was `invited` until now (nothing
            // leads back to `invited`), so it never was. Looking would read every record of the
            // provider (10,000 reads per decline after a 10,000-row CSV).
            (Purpose::AuthorizeProvider | Purpose::AcceptCustomer, Action::Decline) => {
                rec.decline(channel, now)?
            }
            (Purpose::AcceptCustomer, Action::Accept) => {
                // the provider must still be authorized now, not only when the invitation went out
                let authorization = match rec.customer() {
                    Some(c) => txn.record(&c.authorization)?,
                    None => None,
                };
                let authorized = authorization
                    .as_ref()
                    .and_then(Record::authorization)
                    .is_some_and(|a| a.state == AuthorizationState::Authorized);
                if !authorized {
                    return Ok(Some(NotDone::ProviderNotAuthorized));
                }
                rec.accept_customer(channel, now)?
            }
            (Purpose::VerifyContact | Purpose::AcceptAgreement, Action::Decline) => {
                return Ok(Some(NotDone::NoDecline))
            }
            _ => return Ok(Some(NotDone::WrongAction)),
        };
        self.carry_out(sh, txn, rec, effects, now)?;
        Ok(None)
    }
}

impl App {
    /// Revokes the customer invitations still waiting on `authorization`, which has just stopped
    /// being authorized (revoked or declined): a customer is invited for a reseller and its
    /// provider together, which needs that provider authorized (DESIGN, customer invitation).
    pub(super) fn revoke_pending_customers(
        &self,
        txn: &mut Txn,
        authorization: &Record,
        channel: Channel,
        now: Timestamp,
    ) -> Result<usize> {
        let detail = format!(
            "revoked: the provider authorization {} was {}",
            authorization.id,
            authorization.state_str()
        );
        let mut revoked = 0;
        for mut customer in txn.customers_of(&authorization.id)? {
            let waiting = customer.customer().is_some_and(|c| {
                c.authorization == authorization.id && c.state == CustomerState::Invited
            });
            if waiting {
                customer.set_customer(CustomerState::Revoked, channel, &detail, now)?;
                self.save(txn, &customer)?;
                revoked += 1;
            }
        }
        Ok(revoked)
    }
}

/// A customer invitation request (`invite-customer`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct CustomerRequest {
    pub provider: String,
    pub reseller_email: String,
    pub email: String,
    pub company: String,
    #[serde(default)]
    pub locale: Option<String>,
}

/// The fields of a posted link form.
#[derive(Debug, Clone, Default)]
pub struct LinkForm {
    pub action: String,
    pub consent: bool,
    pub enroll: EnrollFields,
}

/// Someone else's words, made fit to quote in our mail: whitespace and line breaks become single
/// spaces, control characters (`crate::text::is_escaped`) go, quotation marks are straight, and
/// at most 300 characters stay.
fn quotable(words: &str) -> String {
    let plain: String = words
        .chars()
        .map(|c| match c {
            '\u{201c}' | '\u{201d}' | '\u{201e}' | '\u{201f}' | '\u{ab}' | '\u{bb}' => '"',
            c if c.is_whitespace() => ' ',
            c => c,
        })
        .filter(|c| !crate::text::is_escaped(*c))
        .collect();
    short(&plain)
}

fn short(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 300 {
        s.chars().take(300).collect::<String>() + "…"
    } else {
        s
    }
}

fn parse_id(id: &str) -> Result<RecordId> {
    RecordId::parse(id).ok_or_else(|| AppError::Invalid {
        field: "id".into(),
        message: format!("{id:?} is not a record id (26 base32 or 32 hex characters)"),
    })
}

fn not_found(id: &RecordId) -> AppError {
    AppError::NotFound(format!("no record {id}"))
}

/// The JSON shape of a record for the CLI and the admin API (names fixed by DESIGN).
pub fn record_json(r: &Record, with_history: bool) -> Value {
    let mut v = json!({
        "id": r.id,
        "kind": r.kind().as_str(),
        "state": r.state_str(),
        "email": r.recipient(),
        "company": r.company(),
        "locale": r.locale,
        "created_at": rfc3339(&r.created_at),
        "updated_at": rfc3339(&r.updated_at),
        "expires_at": r.expires_at.as_ref().map(rfc3339),
    });
    if let Some(p) = r.provider() {
        v["provider"] = json!(p);
    }
    match &r.body {
        Body::Enrollment(e) => {
            v["country"] = json!(e.country);
            v["enrollment"] = json!(e);
        }
        Body::ProviderAuthorization(a) => {
            v["admin_access"] = json!(a.admin_access);
            v["country"] = json!(a.country);
            v["enrollment"] = json!(a.enrollment);
        }
        Body::CustomerInvitation(c) => {
            v["reseller_email"] = json!(c.reseller_email);
            v["reseller_enrollment"] = json!(c.reseller_enrollment);
            v["authorization"] = json!(c.authorization);
            let rel = if c.state == CustomerState::Accepted {
                json!([
                    {"kind": "reseller_customer", "reseller": c.reseller_enrollment},
                    {"kind": "provider_customer", "provider": c.provider},
                ])
            } else {
                json!([])
            };
            v["relationships"] = rel;
        }
    }
    if with_history {
        v["history"] = json!(r.history);
    }
    v
}
