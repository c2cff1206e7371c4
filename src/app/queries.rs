//! Admin operations on records: show, lists, resend, revoke, remove admin access, outbox and inbound listings.

use super::*;

impl App {
    // ---- admin: records ------------------------------------------------------------------

    /// One record as it is now (the console's record page).
    pub fn record(&self, id: &RecordId) -> Result<Option<Record>> {
        Ok(self.store.read().record(id)?)
    }

    pub fn show(&self, id: &str) -> Result<Value> {
        let id = parse_id(id)?;
        let rec = self
            .store
            .read()
            .record(&id)?
            .ok_or_else(|| not_found(&id))?;
        Ok(record_json(&rec, true))
    }

    /// The records `list WHAT` shows, as its JSON, in its order (creation time), handed to
    /// `emit` one by one (blocking: call on the blocking pool). One pass keeps only (created_at,
    /// id) of each match, the second reads and emits them, so 100,000 records are never held
    /// at once. `what` may name several kinds (the export: enrollments, invitations, customers).
    pub fn emit_list(
        &self,
        what: &[&str],
        provider: Option<&str>,
        state: Option<&str>,
        emit: &mut dyn FnMut(Value) -> bool,
    ) -> Result<()> {
        let ids = self.list_ids(what, provider, state)?;
        let read = self.store.read();
        for id in ids {
            if let Some(r) = read.record(&id)? {
                if !emit(record_json(&r, false)) {
                    break; // the client went away
                }
            }
        }
        Ok(())
    }

    /// Checks a list's arguments; the ids it shows, in order (kinds in `what` order, then
    /// creation time).
    pub fn list_ids(
        &self,
        what: &[&str],
        provider: Option<&str>,
        state: Option<&str>,
    ) -> Result<Vec<RecordId>> {
        let mut kinds = Vec::new();
        for w in what {
            kinds.push(match *w {
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
            });
        }
        if let (Some(s), [kind]) = (state, kinds.as_slice()) {
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
        if let Some(p) = provider {
            Self::provider(&self.shared(), p)?;
        }
        let mut found: Vec<(usize, Timestamp, RecordId)> = Vec::new();
        self.store.each_record(provider, |r| {
            if let Some(k) = kinds.iter().position(|k| *k == r.kind()) {
                if state.is_none_or(|s| r.state_str() == s) {
                    found.push((k, r.created_at, r.id));
                }
            }
            Ok(())
        })?;
        found.sort();
        Ok(found.into_iter().map(|(_, _, id)| id).collect())
    }

    /// `list WHAT` as one vector (for callers that want it whole; the admin API streams).
    pub fn list(
        &self,
        what: &str,
        provider: Option<&str>,
        state: Option<&str>,
    ) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        self.emit_list(&[what], provider, state, &mut |v| {
            out.push(v);
            true
        })?;
        Ok(out)
    }

    pub fn resellers(&self, provider: &str) -> Result<Vec<Value>> {
        Self::provider(&self.shared(), provider)?;
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

    pub async fn resend(&self, id: &str, by: impl Into<Actor>, now: Timestamp) -> Result<Record> {
        let by = by.into();
        let channel = by.channel;
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
            let since = rec.history.len();
            let effects = rec.resend(now + to_chrono(ttl), channel, now);
            by.stamp(&mut rec, since);
            self.carry_out(&sh, txn, &rec, effects, now)?;
            Ok(rec)
        })?;
        self.commit().await?;
        Ok(rec)
    }

    pub async fn revoke(&self, id: &str, by: impl Into<Actor>, now: Timestamp) -> Result<Record> {
        let by = by.into();
        let channel = by.channel;
        let id = parse_id(id)?;
        let sh = self.shared();
        let rec = self.store.write(|txn| -> Result<Record> {
            let mut rec = txn.record(&id)?.ok_or_else(|| not_found(&id))?;
            if rec.kind() == Kind::Enrollment {
                return Err(AppError::Refused(format!("{id} is an enrollment; enrollments are rejected with `review reject`, not revoked")));
            }
            let since = rec.history.len();
            let effects = rec.revoke(channel, now)?;
            by.stamp(&mut rec, since);
            self.carry_out(&sh, txn, &rec, effects, now)?;
            if rec.kind() == Kind::ProviderAuthorization {
                self.revoke_pending_customers(txn, &rec, channel, now)?;
            }
            Ok(rec)
        })?;
        self.commit().await?;
        Ok(rec)
    }

    pub async fn remove_admin_access(
        &self,
        id: &str,
        by: impl Into<Actor>,
        now: Timestamp,
    ) -> Result<Record> {
        let by = by.into();
        let id = parse_id(id)?;
        let sh = self.shared();
        let rec = self.store.write(|txn| -> Result<Record> {
            let mut rec = txn.record(&id)?.ok_or_else(|| not_found(&id))?;
            let since = rec.history.len();
            let effects = rec.remove_admin_access(by.channel, now)?;
            by.stamp(&mut rec, since);
            self.carry_out(&sh, txn, &rec, effects, now)?;
            Ok(rec)
        })?;
        self.commit().await?;
        Ok(rec)
    }

    /// A consistent copy of the whole store as a backup file (see `backup`), taken off the async
    /// runtime: it reads every entry under the write lock.
    pub async fn backup(&self, now: Timestamp) -> Result<Vec<u8>> {
        let store = self.store.clone();
        let entries = tokio::task::spawn_blocking(move || store.snapshot())
            .await
            .map_err(|e| {
                AppError::Store(crate::store::StoreError::Other(format!("backup task: {e}")))
            })??;
        let header = crate::backup::Header {
            store_format: crate::store::FORMAT,
            version: env!("CARGO_PKG_VERSION").to_string(),
            created_at: rfc3339(&now),
            entries: 0,
        };
        Ok(crate::backup::encode(header, &entries))
    }

    /// `outbox --summary`: what is queued, sent this UTC day and dead, the configured pace, and
    /// when the queue will have gone out at that pace (null when nothing limits it).
    pub fn outbox_summary(&self, now: Timestamp) -> Result<Value> {
        let sh = self.shared();
        let (queued, dead) = self.outbox_gauges();
        let day = crate::pacing::start_of_day(now);
        let sent_today = self.store.read().sent_since(&day)?;
        // queued items waiting on the transport (login, TLS, connection) or on a server that
        // asked us to slow down, and the latest such answer: the operator's problem, said here.
        // Read from the queue index (the first 10,000 queued items), not from every item.
        let mut waiting_on_transport = 0;
        let mut transport_error: Option<(Timestamp, String)> = None;
        let horizon = now + chrono::Duration::days(3650);
        for i in self.store.read().outbox_due(&horizon, 10_000)? {
            if let Some(e) = i
                .last_error
                .as_deref()
                .filter(|e| e.starts_with("transport:") || e.starts_with("throttled:"))
            {
                waiting_on_transport += 1;
                if transport_error
                    .as_ref()
                    .is_none_or(|(at, _)| i.next_attempt_at > *at)
                {
                    transport_error = Some((i.next_attempt_at, e.to_string()));
                }
            }
        }
        let finish = sh
            .cfg
            .pace()
            .estimated_finish(now, queued as u64, sent_today as u64);
        Ok(json!({
            "queued": queued,
            "sent_today": sent_today,
            "dead": dead,
            "rate_per_second": sh.cfg.rate_per_second,
            "rate_per_minute": sh.cfg.rate_per_minute,
            "daily_limit": sh.cfg.daily_limit,
            "estimated_finish": finish.map(|t| rfc3339(&t)),
            "waiting_on_transport": waiting_on_transport,
            "transport_error": transport_error.map(|(_, e)| e),
        }))
    }

    /// (queued, dead) outbox items, for STATUS and `/metrics`.
    pub fn outbox_gauges(&self) -> (usize, usize) {
        (self.store.outbox_depth(), self.store.outbox_dead_count())
    }

    // ---- for the edges: what HTTP, IMAP, the admin API and the daemon ask of the store ------

    /// Whether the store answers (`/readyz`).
    pub fn store_is_open(&self) -> bool {
        self.store.is_open()
    }

    /// Whether a failed write may succeed if tried again soon: a database on the network
    /// (PostgreSQL restarting, a fail-over), not a local disk.
    pub fn store_is_remote(&self) -> bool {
        matches!(self.store, crate::store::Store::Postgres(_))
    }

    /// The right to read the mailbox `name`: always with the embedded store; with several
    /// daemons on PostgreSQL one holds it at a time (blocking).
    pub fn lead_mailbox(&self, name: &str) -> Result<Option<crate::store::Leader>> {
        Ok(self.store.lead(name)?)
    }

    /// The store's flushes so far and the callers that waited on one (for `/metrics`).
    pub fn store_flush_counts(&self) -> (u64, u64) {
        self.store.flush_counts()
    }

    /// Makes everything written so far durable (at a stop).
    pub async fn flush_store(&self) -> Result<()> {
        Ok(self.store.flush().await?)
    }

    /// The company of the reseller enrollment behind a customer invitation (its pages name
    /// it), or "" for other records or when it is gone.
    pub fn reseller_company(&self, rec: &Record) -> String {
        rec.customer()
            .and_then(|c| {
                self.store
                    .read()
                    .record(&c.reseller_enrollment)
                    .ok()
                    .flatten()
            })
            .map(|e| e.company().to_string())
            .unwrap_or_default()
    }

    /// Whether the address already has an active enrollment (a provider invitation's page
    /// then asks to authorize, not to enroll).
    pub fn recipient_is_active_reseller(&self, email: &crate::model::Email) -> bool {
        self.store
            .read()
            .records_for_recipient(email)
            .map(|rs| {
                rs.iter().any(|r| {
                    r.enrollment()
                        .is_some_and(|e| e.state == crate::model::EnrollmentState::Active)
                })
            })
            .unwrap_or(false)
    }

    /// An inbound mailbox's position (UIDVALIDITY, last handled UID), kept under `key`.
    pub fn inbound_position(&self, key: &str) -> Option<(u32, u32)> {
        let v = self.store.read().meta(key).ok().flatten()?;
        let (a, b) = v.split_once(':')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    }

    /// Records an inbound mailbox's position, durably.
    pub async fn set_inbound_position(&self, key: &str, validity: u32, uid: u32) -> Result<()> {
        self.store
            .write(|txn| -> Result<(), crate::store::StoreError> {
                txn.set_meta(key, &format!("{validity}:{uid}"));
                Ok(())
            })?;
        self.flush_store().await
    }

    /// The outbox as `outbox` prints it, item by item (blocking); `--dead` reads the
    /// dead-letter index, not every item.
    pub fn emit_outbox(&self, dead_only: bool, emit: &mut dyn FnMut(Value) -> bool) -> Result<()> {
        let mut open = true;
        self.store.each_outbox(dead_only, |i| {
            if open {
                open = emit(json!({
                    "id": i.id, "message_id": i.message_id, "to": i.to, "kind": i.kind,
                    "state": i.state, "attempts": i.attempts, "last_error": i.last_error,
                    "record": i.record, "created_at": rfc3339(&i.created_at),
                }));
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Checks an `inbound --outcome` filter before anything is streamed.
    pub fn check_outcome(outcome: Option<&str>) -> Result<()> {
        if let Some(o) = outcome {
            if ![
                "bounce",
                "auto_reply",
                "command",
                "unsubscribe",
                "unrecognised",
            ]
            .contains(&o)
            {
                return Err(AppError::Invalid {
                    field: "outcome".into(),
                    message: format!(
                        "{o:?} is not bounce, auto_reply, command, unsubscribe or unrecognised"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Every inbound outcome (of one kind), in arrival order, one by one (blocking).
    pub fn emit_inbound(
        &self,
        outcome: Option<&str>,
        emit: &mut dyn FnMut(Value) -> bool,
    ) -> Result<()> {
        Self::check_outcome(outcome)?;
        let mut open = true;
        self.store.each_inbound(|r| {
            if open && outcome.is_none_or(|o| r.outcome == o) {
                open = emit(serde_json::to_value(&r).unwrap_or(Value::Null));
            }
            Ok(())
        })?;
        Ok(())
    }
}
