//! The operations of the product: invite, enroll, review, act on links and replies, expire and
//! remind. Each operation is one store batch (state change + the mail it causes) and is flushed
//! before its caller answers. No I/O other than the store; the clock comes in as `now`.

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
    Email, EnrollmentState, Kind, ProviderAuthorization, Purpose, Record, RecordId, Refusal,
    Timestamp,
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
}

pub struct App {
    pub store: Store,
    shared: RwLock<Arc<Shared>>,
    pub metrics: Metrics,
    pub outbox_wake: Notify,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    NotFound(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Refused(String),
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

/// The action a link form or a reply asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Confirm,
    Accept,
    Authorize,
    Decline,
}

/// Why an action did not happen (the record is unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotDone {
    NotAwaiting,
    NeedsEnrollment,
    NotInMarkets { country: String, markets: String },
    NoDecline,
    WrongAction,
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
    pub rows: Vec<BulkRow>,
}

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
        txn.put_ref(
            &item.id,
            &MessageRef {
                record: rec.id,
                purpose: item.link.as_ref().map(|l| l.purpose),
                generation: rec.generation,
                message_id: item.message_id.clone(),
            },
        );
        txn.put_outbox(&item)?;
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
                f.needs_enrollment = Self::active_enrollment(txn, rec.recipient())?.is_none();
                if reminder {
                    MailKind::InvitationReminder
                } else {
                    MailKind::ProviderInvitation
                }
            }
            Purpose::AcceptCustomer => {
                if let Some(c) = rec.customer() {
                    if let Some(e) = txn.record(&c.reseller_enrollment)? {
                        f.reseller_company = e.company().to_string();
                    }
                }
                MailKind::CustomerInvitation
            }
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

    fn queue_provider_notice(
        sh: &Shared,
        txn: &mut Txn,
        rec: &Record,
        reason: &str,
        now: Timestamp,
    ) -> Result<()> {
        let Some(p) = rec.provider().and_then(|p| sh.cfg.provider(p)) else {
            return Ok(());
        };
        let mut f = Self::base_fields(sh, rec);
        f.reason = reason.to_string();
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

    // ---- invitations ---------------------------------------------------------------------

    fn invite_in(
        &self,
        sh: &Shared,
        txn: &mut Txn,
        provider: &Provider,
        row: &InviteRow,
        channel: Channel,
        now: Timestamp,
    ) -> Result<InviteResult> {
        let v = rules::validate_invite(&sh.cfg, &provider.markets, row)?;
        if let Some(id) = txn.live_authorization(&provider.id, &v.email)? {
            let state = txn
                .record(&id)?
                .map(|r| r.state_str().to_string())
                .unwrap_or_default();
            return Ok(InviteResult {
                id,
                state,
                existing: true,
            });
        }
        let enrollment = Self::active_enrollment(txn, &v.email)?.map(|r| r.id);
        let mut rec = Record::new(
            Body::ProviderAuthorization(ProviderAuthorization {
                state: AuthorizationState::Invited,
                provider: provider.id.clone(),
                email: v.email,
                company: v.company,
                country: v.country,
                contact_name: v.contact_name,
                admin_access: provider.admin_access,
                enrollment,
            }),
            &v.locale,
            channel,
            "invited",
            now,
        );
        rec.expires_at = Some(now + to_chrono(sh.cfg.invitation_ttl));
        self.save(txn, &rec)?;
        Self::schedule_timers(sh, txn, &rec, now);
        Self::queue_link_mail(sh, txn, &rec, false, now)?;
        Ok(InviteResult {
            id: rec.id,
            state: rec.state_str().into(),
            existing: false,
        })
    }

    fn schedule_timers(sh: &Shared, txn: &mut Txn, rec: &Record, now: Timestamp) {
        if let Some(at) = rec.expires_at {
            txn.schedule(&at, &rec.id, TimerKind::Expire);
        }
        if rec.kind() == Kind::ProviderAuthorization
            && sh.cfg.reminder_after < sh.cfg.invitation_ttl
        {
            txn.schedule(
                &(now + to_chrono(sh.cfg.reminder_after)),
                &rec.id,
                TimerKind::Remind,
            );
        }
    }

    pub async fn invite(
        &self,
        provider: &str,
        row: InviteRow,
        channel: Channel,
        now: Timestamp,
    ) -> Result<InviteResult> {
        let sh = self.shared();
        let p = Self::provider(&sh, provider)?;
        let r = self
            .store
            .write(|txn| self.invite_in(&sh, txn, p, &row, channel, now))?;
        self.commit().await?;
        Ok(r)
    }

    /// One batch for many rows: a bad row is reported and never stops the rest.
    pub async fn invite_bulk(
        &self,
        provider: &str,
        rows: Vec<(u64, InviteRow)>,
        channel: Channel,
        now: Timestamp,
    ) -> Result<BulkResult> {
        let sh = self.shared();
        let p = Self::provider(&sh, provider)?;
        let out = self.store.write(|txn| -> Result<BulkResult> {
            let mut out = BulkResult::default();
            for (line, row) in &rows {
                let email = row.email.trim().to_string();
                match self.invite_in(&sh, txn, p, row, channel, now) {
                    Ok(r) if r.existing => {
                        out.existing += 1;
                        out.rows.push(BulkRow {
                            line: *line,
                            email,
                            outcome: "existing",
                            id: Some(r.id),
                            reason: None,
                        });
                    }
                    Ok(r) => {
                        out.queued += 1;
                        out.rows.push(BulkRow {
                            line: *line,
                            email,
                            outcome: "queued",
                            id: Some(r.id),
                            reason: None,
                        });
                    }
                    Err(AppError::Store(e)) => return Err(AppError::Store(e)),
                    Err(e) => {
                        out.rejected += 1;
                        out.rows.push(BulkRow {
                            line: *line,
                            email,
                            outcome: "rejected",
                            id: None,
                            reason: Some(e.to_string()),
                        });
                    }
                }
            }
            Ok(out)
        })?;
        self.commit().await?;
        Ok(out)
    }

    pub async fn invite_customer(
        &self,
        req: &CustomerRequest,
        channel: Channel,
        now: Timestamp,
    ) -> Result<Record> {
        let (provider, reseller_email, email, company, locale) = (
            req.provider.as_str(),
            req.reseller_email.as_str(),
            req.email.as_str(),
            req.company.as_str(),
            req.locale.as_deref(),
        );
        let sh = self.shared();
        let p = Self::provider(&sh, provider)?;
        let reseller_email = Email::parse(reseller_email).map_err(|m| AppError::Invalid {
            field: "reseller_email".into(),
            message: m,
        })?;
        let email = Email::parse(email).map_err(|m| AppError::Invalid {
            field: "email".into(),
            message: m,
        })?;
        crate::model::check_text(company).map_err(|m| AppError::Invalid {
            field: "company".into(),
            message: m,
        })?;
        if company.trim().is_empty() {
            return Err(AppError::Invalid {
                field: "company".into(),
                message: "is required".into(),
            });
        }
        let rec = self.store.write(|txn| -> Result<Record> {
            let auth = txn
                .live_authorization(&p.id, &reseller_email)?
                .and_then(|id| txn.record(&id).ok().flatten())
                .filter(|r| r.authorization().is_some_and(|a| a.state == AuthorizationState::Authorized))
                .ok_or_else(|| AppError::Refused(format!("{reseller_email} has not authorized provider {} (needs an authorized provider authorization)", p.id)))?;
            let enrollment = Self::active_enrollment(txn, &reseller_email)?
                .ok_or_else(|| AppError::Refused(format!("{reseller_email} has no active enrollment")))?;
            let mut rec = Record::new(
                Body::CustomerInvitation(CustomerInvitation {
                    state: CustomerState::Invited,
                    provider: p.id.clone(),
                    reseller_enrollment: enrollment.id,
                    reseller_email: reseller_email.clone(),
                    authorization: auth.id,
                    email: email.clone(),
                    company: company.trim().to_string(),
                }),
                &sh.cfg.locale(locale.or(Some(enrollment.locale.as_str()))),
                channel,
                "invited",
                now,
            );
            rec.expires_at = Some(now + to_chrono(sh.cfg.invitation_ttl));
            self.save(txn, &rec)?;
            Self::schedule_timers(&sh, txn, &rec, now);
            Self::queue_link_mail(&sh, txn, &rec, false, now)?;
            Ok(rec)
        })?;
        self.commit().await?;
        Ok(rec)
    }

    // ---- enrollments ---------------------------------------------------------------------

    fn enroll_in(
        &self,
        sh: &Shared,
        txn: &mut Txn,
        fields: &EnrollFields,
        channel: Channel,
        detail: &str,
        now: Timestamp,
    ) -> Result<Record, Vec<FieldError>> {
        let (enrollment, locale) = rules::validate_enrollment(&sh.cfg, fields)?;
        let existing = txn
            .records_for_recipient(&enrollment.primary_contact.email)
            .map_err(|e| {
                vec![FieldError {
                    field: "form",
                    code: "store",
                    message: e.to_string(),
                }]
            })?;
        if let Some(r) = existing.iter().find(|r| {
            r.enrollment().is_some_and(|e| {
                matches!(
                    e.state,
                    EnrollmentState::PendingVerification
                        | EnrollmentState::InReview
                        | EnrollmentState::Approved
                        | EnrollmentState::Active
                )
            })
        }) {
            return Err(vec![FieldError {
                field: "contact_email",
                code: "exists",
                message: format!(
                    "{} already has an enrollment ({}, {})",
                    enrollment.primary_contact.email,
                    r.id,
                    r.state_str()
                ),
            }]);
        }
        let mut rec = Record::new(Body::Enrollment(enrollment), &locale, channel, detail, now);
        rec.expires_at = Some(now + to_chrono(sh.cfg.verification_ttl));
        let store_err = |e: AppError| {
            vec![FieldError {
                field: "form",
                code: "store",
                message: e.to_string(),
            }]
        };
        self.save(txn, &rec).map_err(store_err)?;
        Self::schedule_timers(sh, txn, &rec, now);
        Self::queue_link_mail(sh, txn, &rec, false, now).map_err(store_err)?;
        Ok(rec)
    }

    pub async fn enroll(
        &self,
        fields: EnrollFields,
        channel: Channel,
        now: Timestamp,
    ) -> Result<Record> {
        let sh = self.shared();
        let rec = self
            .store
            .write(|txn| -> Result<_> {
                Ok(self.enroll_in(&sh, txn, &fields, channel, "enrollment submitted", now))
            })?
            .map_err(|errors| {
                let msg = errors
                    .iter()
                    .map(|e| format!("{} ({}): {}", rules::file_key(e.field), e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                AppError::Invalid {
                    field: errors
                        .first()
                        .map(|e| rules::file_key(e.field))
                        .unwrap_or("form")
                        .to_string(),
                    message: msg,
                }
            })?;
        self.commit().await?;
        Ok(rec)
    }

    pub async fn review(
        &self,
        id: &str,
        approve: bool,
        reason: &str,
        channel: Channel,
        now: Timestamp,
    ) -> Result<Record> {
        let sh = self.shared();
        let id = parse_id(id)?;
        crate::model::check_text(reason).map_err(|m| AppError::Invalid {
            field: "reason".into(),
            message: m,
        })?;
        if !approve && reason.trim().is_empty() {
            return Err(AppError::Invalid {
                field: "reason".into(),
                message: "a rejection needs a reason".into(),
            });
        }
        let rec = self.store.write(|txn| -> Result<Record> {
            let mut rec = txn.record(&id)?.ok_or_else(|| not_found(&id))?;
            if rec.kind() != Kind::Enrollment {
                return Err(AppError::Refused(format!(
                    "{id} is a {}, not an enrollment",
                    rec.kind().as_str()
                )));
            }
            if approve {
                rec.set_enrollment(EnrollmentState::Approved, channel, "approved", now)?;
                rec.expires_at = Some(now + to_chrono(sh.cfg.invitation_ttl));
                self.save(txn, &rec)?;
                Self::queue_link_mail(&sh, txn, &rec, false, now)?;
            } else {
                rec.set_enrollment(EnrollmentState::Rejected, channel, reason.trim(), now)?;
                self.save(txn, &rec)?;
                Self::queue_status(&sh, txn, &rec, reason.trim(), now)?;
            }
            Ok(rec)
        })?;
        self.commit().await?;
        Ok(rec)
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
        let via = match channel {
            Channel::Link => "by link",
            Channel::Reply => "by reply",
            _ => "",
        };
        match (purpose, action) {
            (Purpose::VerifyContact, Action::Confirm | Action::Accept) => {
                rec.set_enrollment(
                    EnrollmentState::InReview,
                    channel,
                    &format!("contact verified {via}"),
                    now,
                )?;
                self.save(txn, rec)?;
                Self::queue_status(sh, txn, rec, "", now)?;
            }
            (Purpose::AcceptAgreement, Action::Accept | Action::Confirm) => {
                rec.set_enrollment(
                    EnrollmentState::Active,
                    channel,
                    &format!("partner agreement accepted {via}"),
                    now,
                )?;
                self.save(txn, rec)?;
                Self::queue_status(sh, txn, rec, "", now)?;
                // Invitations waiting for this address get a fresh link now that it can authorize.
                for mut inv in txn.records_for_recipient(rec.recipient())? {
                    if inv
                        .authorization()
                        .is_some_and(|a| a.state == AuthorizationState::Invited)
                    {
                        if let Body::ProviderAuthorization(a) = &mut inv.body {
                            a.enrollment = Some(rec.id);
                        }
                        inv.renew_link(
                            now + to_chrono(sh.cfg.invitation_ttl),
                            "enrollment active: invitation re-sent with a fresh link",
                            Channel::Timer,
                            now,
                        );
                        txn.put_record(&inv)?;
                        Self::schedule_timers(sh, txn, &inv, now);
                        Self::queue_link_mail(sh, txn, &inv, false, now)?;
                    }
                }
            }
            (Purpose::AuthorizeProvider, Action::Authorize | Action::Accept | Action::Confirm) => {
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
                if let Body::ProviderAuthorization(a) = &mut rec.body {
                    a.enrollment = Some(enrollment.id);
                }
                rec.set_authorization(
                    AuthorizationState::Authorized,
                    channel,
                    &format!("provider authorized {via}"),
                    now,
                )?;
                self.save(txn, rec)?;
                Self::queue_provider_notice(sh, txn, rec, "", now)?;
            }
            (Purpose::AuthorizeProvider, Action::Decline) => {
                rec.set_authorization(
                    AuthorizationState::Declined,
                    channel,
                    &format!("declined {via}"),
                    now,
                )?;
                self.save(txn, rec)?;
                Self::queue_provider_notice(sh, txn, rec, "", now)?;
            }
            (Purpose::AcceptCustomer, Action::Accept | Action::Confirm) => {
                rec.set_customer(CustomerState::Accepted, channel, &format!("customer accepted {via}: reseller-customer and provider-customer relationships created"), now)?;
                self.save(txn, rec)?;
            }
            (Purpose::AcceptCustomer, Action::Decline) => {
                rec.set_customer(
                    CustomerState::Declined,
                    channel,
                    &format!("declined {via}"),
                    now,
                )?;
                self.save(txn, rec)?;
            }
            (Purpose::VerifyContact | Purpose::AcceptAgreement, Action::Decline) => {
                return Ok(Some(NotDone::NoDecline))
            }
            _ => return Ok(Some(NotDone::WrongAction)),
        }
        Ok(None)
    }

    /// Read-only check of a link; GET and HEAD use only this.
    pub fn check_link(&self, tok: &str, now: Timestamp) -> LinkCheck {
        let sh = self.shared();
        let Some((kid, claims, mac)) = Keys::decode(tok) else {
            return LinkCheck::Invalid(token::Invalid::Malformed);
        };
        let rec = match self.store.read().record(&claims.record) {
            Ok(Some(r)) => r,
            _ => return LinkCheck::Invalid(token::Invalid::BadMac),
        };
        if let Err(e) = token::check(
            &sh.keys,
            &kid,
            &claims,
            &mac,
            &token::Expected {
                recipient: rec.recipient(),
                generation: rec.generation,
                now,
            },
        ) {
            return LinkCheck::Invalid(e);
        }
        let purpose_fits = matches!(
            (claims.purpose, rec.kind()),
            (
                Purpose::VerifyContact | Purpose::AcceptAgreement,
                Kind::Enrollment
            ) | (Purpose::AuthorizeProvider, Kind::ProviderAuthorization)
                | (Purpose::AcceptCustomer, Kind::CustomerInvitation)
        );
        if !purpose_fits {
            return LinkCheck::Invalid(token::Invalid::BadMac);
        }
        if rec.awaiting() == Some(claims.purpose) {
            LinkCheck::Open {
                record: rec,
                purpose: claims.purpose,
            }
        } else {
            LinkCheck::Used {
                record: rec,
                purpose: claims.purpose,
            }
        }
    }

    /// A POSTed link form. The check and the transition happen under one write lock, so of many
    /// concurrent posts exactly one changes the record.
    pub async fn post_link(
        &self,
        tok: &str,
        form: &LinkForm,
        now: Timestamp,
    ) -> Result<PostOutcome> {
        let sh = self.shared();
        let out = self.store.write(|txn| -> Result<PostOutcome> {
            let (record, purpose) = match self.check_link(tok, now) {
                LinkCheck::Invalid(_) => return Ok(PostOutcome::Invalid),
                LinkCheck::Used { record, purpose } => {
                    let done_same = Self::done_by(&record, purpose, &form.action);
                    return Ok(if done_same {
                        PostOutcome::Already { record, purpose }
                    } else {
                        PostOutcome::Invalid
                    });
                }
                LinkCheck::Open { record, purpose } => (record, purpose),
            };
            // the check above read committed data; re-read inside the batch
            let Some(mut rec) = txn.record(&record.id)? else {
                return Ok(PostOutcome::Invalid);
            };
            let action = match (purpose, form.action.as_str()) {
                (_, "confirm") => Action::Confirm,
                (_, "accept") => Action::Accept,
                (_, "authorize") => Action::Authorize,
                (_, "decline") => Action::Decline,
                (Purpose::AuthorizeProvider, "enroll") => {
                    if Self::active_enrollment(txn, rec.recipient())?.is_some() {
                        return Ok(PostOutcome::NotDone {
                            record: rec,
                            purpose,
                            why: NotDone::WrongAction,
                        });
                    }
                    let mut fields = form.enroll.clone();
                    fields.contact_email = rec.recipient().to_string();
                    return Ok(
                        match self.enroll_in(
                            &sh,
                            txn,
                            &fields,
                            Channel::Link,
                            "enrollment submitted from a provider invitation",
                            now,
                        ) {
                            Ok(enrollment) => PostOutcome::Enrolled {
                                record: rec,
                                enrollment,
                            },
                            Err(errors) => PostOutcome::EnrollErrors {
                                record: rec,
                                errors,
                                values: fields,
                            },
                        },
                    );
                }
                _ => {
                    return Ok(PostOutcome::NotDone {
                        record: rec,
                        purpose,
                        why: NotDone::WrongAction,
                    })
                }
            };
            let needs_consent = matches!(
                (purpose, action),
                (Purpose::AuthorizeProvider, Action::Authorize)
                    | (Purpose::AcceptAgreement, Action::Accept)
                    | (Purpose::AcceptCustomer, Action::Accept)
            );
            if needs_consent && !form.consent {
                return Ok(PostOutcome::ConsentMissing {
                    record: rec,
                    purpose,
                });
            }
            match self.act(&sh, txn, &mut rec, purpose, action, Channel::Link, now)? {
                None => Ok(PostOutcome::Done {
                    record: rec,
                    purpose,
                    action,
                }),
                Some(why) => Ok(PostOutcome::NotDone {
                    record: rec,
                    purpose,
                    why,
                }),
            }
        })?;
        if matches!(out, PostOutcome::Done { .. } | PostOutcome::Enrolled { .. }) {
            self.commit().await?;
        }
        Ok(out)
    }

    /// Whether the record's current state is what `action` on `purpose` produces (a reload).
    fn done_by(rec: &Record, purpose: Purpose, action: &str) -> bool {
        let state = rec.state_str();
        matches!(
            (purpose, action, state),
            (Purpose::VerifyContact, "confirm", "in_review")
                | (Purpose::AcceptAgreement, "accept", "active")
                | (Purpose::AuthorizeProvider, "authorize", "authorized")
                | (
                    Purpose::AuthorizeProvider | Purpose::AcceptCustomer,
                    "decline",
                    "declined"
                )
                | (Purpose::AcceptCustomer, "accept", "accepted")
        )
    }

    // ---- inbound -------------------------------------------------------------------------

    /// Handles one inbound message once: classification, the transition it asks for, and its
    /// outcome, in one batch. Returns None when this message (by Message-ID) was handled before.
    pub async fn handle_inbound(
        &self,
        raw: &[u8],
        now: Timestamp,
    ) -> Result<Option<InboundRecord>> {
        let sh = self.shared();
        let msg = classify::classify(raw, sh.cfg.reply_to.local());
        let key = match &msg.message_id {
            Some(id) if !id.is_empty() => id.clone(),
            _ => {
                use sha2::Digest;
                format!(
                    "sha256:{}",
                    data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(raw))
                )
            }
        };
        let seq = self.store.next_seq()?;
        let out = self.store.write(|txn| -> Result<Option<InboundRecord>> {
            if txn.inbound_seen(&key)? {
                return Ok(None);
            }
            let mut found = None;
            for r in &msg.refs {
                if let Some(m) = txn.message_ref(r)? {
                    found = Some(m);
                    break;
                }
            }
            let (outcome, effect, record) =
                self.inbound_effect(&sh, txn, &msg, found.as_ref(), now)?;
            let rec = InboundRecord {
                message_id: key.clone(),
                from: msg.from.clone().unwrap_or_default(),
                received_at: rfc3339(&now),
                outcome: outcome.to_string(),
                record,
                effect,
            };
            txn.put_inbound(&key, seq, &rec);
            Ok(Some(rec))
        })?;
        if let Some(r) = &out {
            self.metrics.inbound(&r.outcome);
            self.commit().await?;
        }
        Ok(out)
    }

    fn inbound_effect(
        &self,
        sh: &Shared,
        txn: &mut Txn,
        msg: &classify::Inbound,
        mref: Option<&MessageRef>,
        now: Timestamp,
    ) -> Result<(&'static str, String, Option<RecordId>)> {
        let record = mref.map(|m| m.record);
        let load = |txn: &Txn| -> Result<Option<Record>> {
            match mref {
                Some(m) => Ok(txn.record(&m.record)?),
                None => Ok(None),
            }
        };
        Ok(match &msg.classification {
            Classification::Bounce {
                permanent: false,
                diagnostic,
            } => (
                "bounce",
                format!("delivery delayed, no change ({})", short(diagnostic)),
                record,
            ),
            Classification::Bounce {
                permanent: true,
                diagnostic,
            } => {
                let (Some(m), Some(mut rec)) = (mref, load(txn)?) else {
                    return Ok(("bounce", "no record matches this bounce".into(), None));
                };
                if m.purpose.is_none() {
                    return Ok((
                        "bounce",
                        format!("a notice bounced ({}); no record change", short(diagnostic)),
                        record,
                    ));
                }
                let detail = format!("hard bounce: {}", short(diagnostic));
                match rec.bounce(&detail, now) {
                    Ok(to) => {
                        self.save(txn, &rec)?;
                        Self::queue_provider_notice(sh, txn, &rec, &detail, now)?;
                        (
                            "bounce",
                            format!(
                                "{} -> {to}",
                                rec.history
                                    .iter()
                                    .rev()
                                    .nth(0)
                                    .map(|h| h.from.clone())
                                    .unwrap_or_default()
                            ),
                            record,
                        )
                    }
                    Err(r) => ("bounce", format!("no change: {r}"), record),
                }
            }
            Classification::AutoReply { reason } => {
                ("auto_reply", format!("ignored: {reason}"), record)
            }
            Classification::Unrecognised { reason } => (
                "unrecognised",
                format!("left for a human: {reason}"),
                record,
            ),
            Classification::Command { keyword } => {
                let (Some(m), Some(mut rec)) = (mref, load(txn)?) else {
                    return Ok(("command", "no record matches this reply".into(), None));
                };
                let from_ok = msg
                    .from
                    .as_deref()
                    .and_then(|f| Email::parse(f).ok())
                    .is_some_and(|f| &f == rec.recipient());
                if !from_ok {
                    return Ok((
                        "command",
                        format!(
                            "ignored: From {:?} is not the record's recipient",
                            msg.from.clone().unwrap_or_default()
                        ),
                        record,
                    ));
                }
                if msg.auto_submitted {
                    return Ok(("command", "ignored: auto-submitted".into(), record));
                }
                let Some(purpose) = m.purpose else {
                    return Ok((
                        "command",
                        "ignored: a reply to a notice acts on nothing".into(),
                        record,
                    ));
                };
                if m.generation != rec.generation {
                    return Ok((
                        "command",
                        "ignored: a newer email replaced the one replied to".into(),
                        record,
                    ));
                }
                let action = match keyword {
                    Keyword::Yes => match purpose {
                        Purpose::AuthorizeProvider => Action::Authorize,
                        Purpose::VerifyContact => Action::Confirm,
                        _ => Action::Accept,
                    },
                    Keyword::No => Action::Decline,
                };
                if action == Action::Authorize {
                    match sh.cfg.reply_authorize {
                        ReplyAuthorize::Off => {
                            return Ok((
                                "command",
                                "ignored: authorizing by reply is off; use the link".into(),
                                record,
                            ))
                        }
                        ReplyAuthorize::Dmarc
                            if !classify::dmarc_pass(
                                &msg.authentication_results,
                                &sh.cfg.trusted_authserv_id,
                            ) =>
                        {
                            return Ok((
                                "command",
                                format!(
                                    "ignored: no dmarc=pass from {}",
                                    sh.cfg.trusted_authserv_id
                                ),
                                record,
                            ));
                        }
                        _ => {}
                    }
                }
                let from = rec.state_str();
                match self.act(sh, txn, &mut rec, purpose, action, Channel::Reply, now)? {
                    None => ("command", format!("{from} -> {}", rec.state_str()), record),
                    Some(why) => ("command", format!("no change: {}", why.describe()), record),
                }
            }
        })
    }

    // ---- timers --------------------------------------------------------------------------

    /// Expires and reminds whatever is due; returns how many timers ran.
    pub async fn run_timers(&self, now: Timestamp) -> Result<usize> {
        let sh = self.shared();
        let due = self.store.read().due_timers(&now, 1000)?;
        if due.is_empty() {
            return Ok(0);
        }
        self.store.write(|txn| -> Result<()> {
            for t in &due {
                txn.remove_timer(t);
                let Some(mut rec) = txn.record(&t.record)? else {
                    continue;
                };
                match t.kind {
                    TimerKind::Expire => {
                        let expired = rec.expires_at.is_some_and(|e| e <= now);
                        let expirable = matches!(
                            rec.awaiting(),
                            Some(
                                Purpose::VerifyContact
                                    | Purpose::AuthorizeProvider
                                    | Purpose::AcceptCustomer
                            )
                        );
                        if expired && expirable && rec.expire(now).is_ok() {
                            self.save(txn, &rec)?;
                            if rec.kind() == Kind::Enrollment {
                                Self::queue_status(&sh, txn, &rec, "", now)?;
                            }
                        }
                    }
                    TimerKind::Remind => {
                        let lead =
                            to_chrono(sh.cfg.invitation_ttl.saturating_sub(sh.cfg.reminder_after));
                        let due_now = rec.expires_at.is_some_and(|e| e > now && now >= e - lead);
                        if rec.awaiting() == Some(Purpose::AuthorizeProvider)
                            && !rec.reminded
                            && due_now
                        {
                            rec.reminded = true;
                            txn.put_record(&rec)?;
                            Self::queue_link_mail(&sh, txn, &rec, true, now)?;
                        }
                    }
                }
            }
            Ok(())
        })?;
        self.commit().await?;
        Ok(due.len())
    }

    // ---- admin: records ------------------------------------------------------------------

    pub fn show(&self, id: &str) -> Result<Value> {
        let id = parse_id(id)?;
        let rec = self
            .store
            .read()
            .record(&id)?
            .ok_or_else(|| not_found(&id))?;
        Ok(record_json(&rec, true))
    }

    pub fn list(
        &self,
        what: &str,
        provider: Option<&str>,
        state: Option<&str>,
    ) -> Result<Vec<Value>> {
        let kind = match what {
            "invitations" => Kind::ProviderAuthorization,
            "enrollments" => Kind::Enrollment,
            "customers" => Kind::CustomerInvitation,
            other => {
                return Err(AppError::Invalid {
                    field: "list".into(),
                    message: format!(
                    "{other:?} is not invitations, enrollments, customers, resellers or providers"
                ),
                })
            }
        };
        if let Some(s) = state {
            let known = match kind {
                Kind::Enrollment => EnrollmentState::ALL,
                Kind::ProviderAuthorization => AuthorizationState::ALL,
                Kind::CustomerInvitation => CustomerState::ALL,
            };
            if !known.contains(&s) {
                return Err(AppError::Invalid {
                    field: "state".into(),
                    message: format!("{s:?} is not one of {}", known.join(", ")),
                });
            }
        }
        let read = self.store.read();
        let records = match provider {
            Some(p) => read.records_for_provider(p)?,
            None => read.all_records()?,
        };
        let mut out: Vec<&Record> = records
            .iter()
            .filter(|r| r.kind() == kind && state.is_none_or(|s| r.state_str() == s))
            .collect();
        out.sort_by_key(|r| r.created_at);
        Ok(out.into_iter().map(|r| record_json(r, false)).collect())
    }

    pub fn resellers(&self, provider: &str) -> Result<Vec<Value>> {
        let read = self.store.read();
        let mut out = Vec::new();
        for r in read.records_for_provider(provider)? {
            if let Some(a) = r
                .authorization()
                .filter(|a| a.state == AuthorizationState::Authorized)
            {
                let mut v = record_json(&r, false);
                if let Some(e) = a.enrollment.and_then(|id| read.record(&id).ok().flatten()) {
                    v["enrollment"] = json!(e.id);
                    v["company"] = json!(e.company());
                }
                out.push(v);
            }
        }
        Ok(out)
    }

    pub fn providers_of(&self, reseller_email: &str) -> Result<Vec<Value>> {
        let email = Email::parse(reseller_email).map_err(|m| AppError::Invalid {
            field: "reseller_email".into(),
            message: m,
        })?;
        let sh = self.shared();
        let mut out = Vec::new();
        for r in self.store.read().records_for_recipient(&email)? {
            if let Some(a) = r
                .authorization()
                .filter(|a| a.state == AuthorizationState::Authorized)
            {
                let mut v = record_json(&r, false);
                v["provider_name"] = json!(sh
                    .cfg
                    .provider(&a.provider)
                    .map(|p| p.name.clone())
                    .unwrap_or_default());
                out.push(v);
            }
        }
        Ok(out)
    }

    pub async fn resend(&self, id: &str, channel: Channel, now: Timestamp) -> Result<Record> {
        let sh = self.shared();
        let id = parse_id(id)?;
        let rec = self.store.write(|txn| -> Result<Record> {
            let mut rec = txn.record(&id)?.ok_or_else(|| not_found(&id))?;
            let Some(purpose) = rec.awaiting() else {
                return Err(AppError::Refused(format!(
                    "{} {id} is {}: nothing to resend",
                    rec.kind().as_str(),
                    rec.state_str()
                )));
            };
            let ttl = if purpose == Purpose::VerifyContact {
                sh.cfg.verification_ttl
            } else {
                sh.cfg.invitation_ttl
            };
            rec.renew_link(
                now + to_chrono(ttl),
                "re-sent with a fresh link; older links no longer work",
                channel,
                now,
            );
            txn.put_record(&rec)?;
            Self::schedule_timers(&sh, txn, &rec, now);
            Self::queue_link_mail(&sh, txn, &rec, false, now)?;
            Ok(rec)
        })?;
        self.commit().await?;
        Ok(rec)
    }

    pub async fn revoke(&self, id: &str, channel: Channel, now: Timestamp) -> Result<Record> {
        let id = parse_id(id)?;
        let rec = self.store.write(|txn| -> Result<Record> {
            let mut rec = txn.record(&id)?.ok_or_else(|| not_found(&id))?;
            match rec.kind() {
                Kind::ProviderAuthorization => rec.set_authorization(AuthorizationState::Revoked, channel, "revoked", now)?,
                Kind::CustomerInvitation => rec.set_customer(CustomerState::Revoked, channel, "revoked", now)?,
                Kind::Enrollment => return Err(AppError::Refused(format!("{id} is an enrollment; enrollments are rejected with `review reject`, not revoked"))),
            }
            self.save(txn, &rec)?;
            Ok(rec)
        })?;
        self.commit().await?;
        Ok(rec)
    }

    pub async fn remove_admin_access(
        &self,
        id: &str,
        channel: Channel,
        now: Timestamp,
    ) -> Result<Record> {
        let id = parse_id(id)?;
        let rec = self.store.write(|txn| -> Result<Record> {
            let mut rec = txn.record(&id)?.ok_or_else(|| not_found(&id))?;
            rec.remove_admin_access(channel, now)?;
            txn.put_record(&rec)?;
            Ok(rec)
        })?;
        self.commit().await?;
        Ok(rec)
    }

    pub fn outbox(&self, dead_only: bool) -> Result<Vec<Value>> {
        let items = self.store.read().outbox_all()?;
        Ok(items
            .into_iter()
            .filter(|i| !dead_only || i.state == OutboxState::Dead)
            .map(|i| {
                json!({
                    "id": i.id, "message_id": i.message_id, "to": i.to, "kind": i.kind,
                    "state": i.state, "attempts": i.attempts, "last_error": i.last_error,
                    "record": i.record, "created_at": rfc3339(&i.created_at),
                })
            })
            .collect())
    }

    pub fn inbound(&self, outcome: Option<&str>) -> Result<Vec<InboundRecord>> {
        if let Some(o) = outcome {
            if !["bounce", "auto_reply", "command", "unrecognised"].contains(&o) {
                return Err(AppError::Invalid {
                    field: "outcome".into(),
                    message: format!("{o:?} is not bounce, auto_reply, command or unrecognised"),
                });
            }
        }
        Ok(self
            .store
            .read()
            .inbound_all()?
            .into_iter()
            .filter(|r| outcome.is_none_or(|o| r.outcome == o))
            .collect())
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

impl App {
    /// Records what the sender did with a batch: sent, rescheduled, or dead (and then the
    /// record becomes undeliverable, with the server's reply in its history).
    pub async fn record_sends(
        &self,
        results: Vec<(
            OutboxItem,
            std::result::Result<(), crate::sender::SendError>,
        )>,
        now: Timestamp,
    ) -> Result<()> {
        use crate::sender::SendError;
        if results.is_empty() {
            return Ok(());
        }
        let sh = self.shared();
        self.store.write(|txn| -> Result<()> {
            for (mut item, res) in results {
                item.attempts += 1;
                match res {
                    Ok(()) => {
                        item.state = OutboxState::Sent;
                        item.sent_at = Some(now);
                        item.last_error = None;
                        crate::metrics::Metrics::inc(&self.metrics.sent);
                    }
                    Err(SendError::Transient(e)) if now - item.created_at < to_chrono(sh.cfg.max_age) => {
                        tracing::warn!(message = %item.id, attempts = item.attempts, error = %e, "send failed, will retry");
                        item.last_error = Some(e);
                        item.next_attempt_at = now + to_chrono(crate::sender::backoff(item.attempts));
                        crate::metrics::Metrics::inc(&self.metrics.retried);
                    }
                    Err(e) => {
                        tracing::warn!(message = %item.id, attempts = item.attempts, error = %e, "send failed for good");
                        let detail = format!("delivery failed: {e}");
                        item.last_error = Some(e.to_string());
                        item.state = OutboxState::Dead;
                        crate::metrics::Metrics::inc(&self.metrics.failed);
                        if item.link.is_some() {
                            if let Some(mut rec) = txn.record(&item.record)? {
                                if rec.bounce(&detail, now).is_ok() {
                                    self.save(txn, &rec)?;
                                    Self::queue_provider_notice(&sh, txn, &rec, &detail, now)?;
                                }
                            }
                        }
                    }
                }
                txn.put_outbox(&item)?;
            }
            Ok(())
        })?;
        self.commit().await
    }

    /// `send-test-email ADDR`: a test message through the outbox and the configured transport.
    pub async fn send_test_email(&self, to: &str, now: Timestamp) -> Result<Value> {
        let sh = self.shared();
        let to = Email::parse(to).map_err(|m| AppError::Invalid {
            field: "to".into(),
            message: m,
        })?;
        let fields = MailFieldsV1 {
            from_name: sh.cfg.from_name.clone(),
            recipient_email: to.to_string(),
            ..Default::default()
        };
        let item = OutboxItem::queued(
            random_ref(),
            sh.cfg.reply_to.domain(),
            &to,
            "",
            MailKind::TestEmail,
            &sh.cfg.default_locale,
            RecordId([0; 16]),
            fields,
            None,
            now,
        );
        let (id, message_id) = (item.id.clone(), item.message_id.clone());
        self.store.write(|txn| -> Result<()> {
            txn.put_outbox(&item)?;
            Ok(())
        })?;
        self.commit().await?;
        Ok(json!({"id": id, "message_id": message_id, "to": to, "state": "queued"}))
    }

    pub fn outbox_one(&self, id: &str) -> Result<Value> {
        let i = self
            .store
            .read()
            .outbox_item(id)?
            .ok_or_else(|| AppError::NotFound(format!("no outbox message {id}")))?;
        Ok(
            json!({"id": i.id, "message_id": i.message_id, "to": i.to, "kind": i.kind, "state": i.state, "attempts": i.attempts, "last_error": i.last_error}),
        )
    }

    /// `outbox retry ID`: a dead message goes back to the queue.
    pub async fn outbox_retry(&self, id: &str, now: Timestamp) -> Result<Value> {
        let item = self.store.write(|txn| -> Result<OutboxItem> {
            let mut item = txn
                .outbox_item(id)?
                .ok_or_else(|| AppError::NotFound(format!("no outbox message {id}")))?;
            if item.state != OutboxState::Dead {
                return Err(AppError::Refused(
                    format!("outbox message {id} is {:?}, not dead", item.state).to_lowercase(),
                ));
            }
            item.state = OutboxState::Queued;
            item.next_attempt_at = now;
            item.created_at = now;
            txn.put_outbox(&item)?;
            Ok(item)
        })?;
        self.commit().await?;
        Ok(json!({"id": item.id, "message_id": item.message_id, "state": item.state}))
    }
}
