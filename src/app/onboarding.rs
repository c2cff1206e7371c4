//! Invitations (one or a CSV batch, customers) and enrollments (submit, review).

use super::*;

impl App {
    // ---- invitations ---------------------------------------------------------------------

    pub(super) fn invite_in(
        &self,
        sh: &Shared,
        txn: &mut Txn,
        provider: &Provider,
        row: &InviteRow,
        by: &Actor,
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
        if let Some(s) = txn.suppression(&provider.id, &v.email)? {
            return Err(AppError::suppressed(&s));
        }
        // the recipient is looked up once: the invitation mail says whether it must enroll first
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
            by.channel,
            "invited",
            now,
        );
        by.stamp(&mut rec, 0);
        rec.expires_at = Some(now + to_chrono(sh.cfg.invitation_ttl));
        self.save_new(txn, &rec)?;
        Self::schedule_timers(sh, txn, &rec, now);
        Self::queue_invitation(sh, txn, &rec, false, enrollment.is_none(), now)?;
        Ok(InviteResult {
            id: rec.id,
            state: rec.state_str().into(),
            existing: false,
        })
    }

    /// A record's link is live: arm its expiry (and reminder) and queue the email that carries it.
    pub(super) fn open_link(
        sh: &Shared,
        txn: &mut Txn,
        rec: &Record,
        now: Timestamp,
    ) -> Result<()> {
        Self::schedule_timers(sh, txn, rec, now);
        Self::queue_link_mail(sh, txn, rec, false, now)
    }

    /// One timer entry per record where it can be: an invitation's reminder comes first and
    /// arms the expiry when it runs (`run_timers`), so a bulk CSV writes one timer key a row,
    /// not two (store format 4).
    pub(super) fn schedule_timers(sh: &Shared, txn: &mut Txn, rec: &Record, now: Timestamp) {
        let remind_at = (rec.kind() == Kind::ProviderAuthorization
            && sh.cfg.reminder_after < sh.cfg.invitation_ttl)
            .then(|| now + to_chrono(sh.cfg.reminder_after));
        match (rec.expires_at, remind_at) {
            (Some(expire), Some(remind)) if remind < expire => {
                txn.schedule(&remind, &rec.id, TimerKind::Remind);
            }
            (expire, remind) => {
                if let Some(at) = expire {
                    txn.schedule(&at, &rec.id, TimerKind::Expire);
                }
                if let Some(at) = remind {
                    txn.schedule(&at, &rec.id, TimerKind::Remind);
                }
            }
        }
    }

    pub async fn invite(
        &self,
        provider: &str,
        row: InviteRow,
        by: impl Into<Actor>,
        now: Timestamp,
    ) -> Result<InviteResult> {
        let by = by.into();
        let sh = self.shared();
        let p = Self::provider(&sh, provider)?;
        let r = self
            .store
            .write(|txn| self.invite_in(&sh, txn, p, &row, &by, now))?;
        self.commit().await?;
        Ok(r)
    }

    /// Many rows (a chunk of a CSV): a bad row is reported and never stops the rest. The rows
    /// are written in store batches of [`BULK_BATCH_ROWS`], each on the blocking pool, so the
    /// write lock (and sled's, which holds every reader back while a batch is applied) is only
    /// ever held for a few milliseconds and pages keep answering; a row and its mail are always
    /// in the same batch. The whole chunk is flushed before the answer: durable when
    /// acknowledged. Should a batch fail, the batches before it stand (unflushed) and the
    /// error is the answer; a row already invited (live authorization) is `existing`, so
    /// sending the same CSV again completes it without inviting anyone twice.
    pub async fn invite_bulk(
        self: &Arc<Self>,
        provider: &str,
        rows: Vec<(u64, InviteRow)>,
        by: impl Into<Actor>,
        now: Timestamp,
    ) -> Result<BulkResult> {
        let by = by.into();
        let sh = self.shared();
        Self::provider(&sh, provider)?;
        let mut out = BulkResult::default();
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let batch: Vec<(u64, InviteRow)> = rows.by_ref().take(BULK_BATCH_ROWS).collect();
            let (app, sh, provider, by) =
                (self.clone(), sh.clone(), provider.to_string(), by.clone());
            let part = tokio::task::spawn_blocking(move || {
                app.invite_batch(&sh, &provider, &batch, &by, now)
            })
            .await
            .map_err(|e| AppError::Store(StoreError::Other(format!("bulk invite task: {e}"))))??;
            out.append(part);
        }
        self.commit().await?;
        Ok(out)
    }

    /// One store batch of bulk rows (blocking: sled).
    fn invite_batch(
        &self,
        sh: &Shared,
        provider: &str,
        rows: &[(u64, InviteRow)],
        by: &Actor,
        now: Timestamp,
    ) -> Result<BulkResult> {
        let p = Self::provider(sh, provider)?;
        self.store.write(|txn| -> Result<BulkResult> {
            let mut out = BulkResult::default();
            for (line, row) in rows {
                let email = row.email.trim().to_string();
                let (outcome, id, reason) = match self.invite_in(sh, txn, p, row, by, now) {
                    Ok(r) if r.existing => {
                        out.existing += 1;
                        ("existing", Some(r.id), None)
                    }
                    Ok(r) => {
                        out.queued += 1;
                        ("queued", Some(r.id), None)
                    }
                    Err(AppError::Store(e)) => return Err(AppError::Store(e)),
                    Err(AppError::Suppressed { since, why, .. }) => {
                        out.suppressed += 1;
                        let why = format!(
                            "on the provider's suppression list since {since} ({why}); nothing sent"
                        );
                        ("suppressed", None, Some(why))
                    }
                    Err(e) => {
                        out.rejected += 1;
                        ("rejected", None, Some(e.to_string()))
                    }
                };
                out.rows.push(BulkRow {
                    line: *line,
                    email,
                    outcome,
                    id,
                    reason,
                });
            }
            Ok(out)
        })
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
            self.save_new(txn, &rec)?;
            Self::open_link(&sh, txn, &rec, now)?;
            Ok(rec)
        })?;
        self.commit().await?;
        Ok(rec)
    }

    // ---- enrollments ---------------------------------------------------------------------

    pub(super) fn enroll_in(
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
        self.save_new(txn, &rec).map_err(store_err)?;
        Self::open_link(sh, txn, &rec, now).map_err(store_err)?;
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
        by: impl Into<Actor>,
        now: Timestamp,
    ) -> Result<Record> {
        let by = by.into();
        let channel = by.channel;
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
            let since = rec.history.len();
            let effects = if approve {
                rec.approve(channel, now + to_chrono(sh.cfg.invitation_ttl), now)?
            } else {
                rec.reject(reason.trim(), channel, now)?
            };
            by.stamp(&mut rec, since);
            self.carry_out(&sh, txn, &rec, effects, now)?;
            Ok(rec)
        })?;
        self.commit().await?;
        Ok(rec)
    }
}
