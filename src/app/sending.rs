//! What the sender reports back: sent, retried, dead; dead letters requeued; test emails.

use super::*;

impl App {
    /// Up to `limit` queued items due at `now`, oldest due first, claimed for this daemon
    /// (several daemons on PostgreSQL: see [`crate::store::Store::claim_due`]). Blocking: the
    /// sender calls it through [`crate::store::off_runtime`].
    pub fn outbox_due(&self, now: &Timestamp, limit: usize) -> Result<Vec<OutboxItem>> {
        Ok(self.store.claim_due(now, limit)?)
    }

    /// Gives back claimed items this daemon will not send now (blocking).
    pub fn release_claims(&self, ids: &[String]) -> Result<()> {
        Ok(self.store.release(ids)?)
    }

    /// When the next queued item can be claimed (milliseconds since the epoch), if any
    /// (blocking).
    pub fn outbox_next_due(&self) -> Result<Option<i64>> {
        Ok(self.store.next_claimable()?)
    }

    /// How many messages were sent since `since` (the sender's `daily_limit` count at start).
    pub fn sent_since(&self, since: &Timestamp) -> Result<usize> {
        Ok(self.store.read().sent_since(since)?)
    }

    /// Records what the sender did with a batch and makes it durable: [`App::apply_sends`], then
    /// [`App::commit`].
    pub async fn record_sends(
        &self,
        results: Vec<(
            OutboxItem,
            std::result::Result<(), crate::outbox::SendError>,
        )>,
        now: Timestamp,
    ) -> Result<()> {
        if results.is_empty() {
            return Ok(());
        }
        self.apply_sends(results, now)?;
        self.commit().await
    }

    /// Writes what the sender did with a batch, as one store batch (not yet durable: the caller
    /// awaits [`App::commit`] before it treats the results as recorded): sent, rescheduled, or
    /// dead (and then the record becomes undeliverable, with the server's reply in its history).
    pub fn apply_sends(
        &self,
        results: Vec<(
            OutboxItem,
            std::result::Result<(), crate::outbox::SendError>,
        )>,
        now: Timestamp,
    ) -> Result<()> {
        use crate::outbox::SendError;
        if results.is_empty() {
            return Ok(());
        }
        let sh = self.shared();
        self.store.write(|txn| -> Result<()> {
            for (mut item, res) in results {
                // as the dispatcher read it: queued, due then (`Txn::put_queued_outbox`)
                let was_due = item.next_attempt_at;
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
                        item.next_attempt_at = now + to_chrono(crate::outbox::backoff(item.attempts));
                        crate::metrics::Metrics::inc(&self.metrics.retried);
                    }
                    Err(SendError::Throttled(e)) => {
                        // The server asked us to slow down: no retry used up, the dispatcher
                        // pauses; the message goes again right after.
                        item.attempts -= 1;
                        item.last_error = Some(format!("throttled: {e}"));
                        item.next_attempt_at = now + chrono::Duration::seconds(1);
                        crate::metrics::Metrics::inc(&self.metrics.throttled);
                    }
                    Err(SendError::Transport(e)) => {
                        // Not this message's fault (connect, TLS, AUTH, 421, ...): it stays
                        // queued past max_age and its recipient is never made undeliverable.
                        tracing::warn!(message = %item.id, attempts = item.attempts, error = %e, "the SMTP transport failed, not this message: it stays queued and backs off");
                        item.last_error = Some(format!("transport: {e}"));
                        item.next_attempt_at = now + to_chrono(crate::outbox::backoff(item.attempts));
                        crate::metrics::Metrics::inc(&self.metrics.retried);
                    }
                    Err(SendError::Build(e)) => {
                        // our template or key, not the recipient: a dead letter that names it,
                        // the record untouched, nobody notified; `outbox retry` once fixed
                        tracing::error!(message = %item.id, kind = item.kind.as_str(), error = %e, "message not built: fix the template (or DKIM key), reload with SIGHUP, then `invited outbox retry {}`", item.id);
                        item.last_error = Some(format!(
                            "{e} — the operator's to fix (template or key); the record is unchanged: fix it, reload (SIGHUP), then `invited outbox retry {}`",
                            item.id
                        ));
                        item.state = OutboxState::Dead;
                        crate::metrics::Metrics::inc(&self.metrics.failed);
                    }
                    Err(e) => {
                        tracing::warn!(message = %item.id, attempts = item.attempts, error = %e, "send failed for good");
                        let detail = format!("delivery failed: {e}");
                        item.last_error = Some(e.to_string());
                        item.state = OutboxState::Dead;
                        crate::metrics::Metrics::inc(&self.metrics.failed);
                        if item.link.is_some() {
                            if let Some(mut rec) = txn.record(&item.record)? {
                                if let Ok(effects) = rec.bounce(&detail, e.words(), now) {
                                    self.carry_out(&sh, txn, &rec, effects, now)?;
                                    // a 5xx is a hard bounce: the address goes on the list
                                    if matches!(e, SendError::Permanent(_)) {
                                        self.suppress_after_bounce(&sh, txn, &rec, &detail, now)?;
                                    }
                                }
                            }
                        }
                    }
                }
                txn.put_queued_outbox(&was_due, &item)?;
            }
            Ok(())
        })
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
