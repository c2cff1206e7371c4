//! Timers: expiry of what waits too long, and one reminder before an invitation expires.

use super::*;

impl App {
    // ---- timers --------------------------------------------------------------------------

    /// Expires and reminds whatever is due; returns how many timers ran.
    pub async fn run_timers(&self, now: Timestamp) -> Result<usize> {
        let sh = self.shared();
        // a cheap look first: most ticks find nothing due
        if self.store.read().due_timers(&now, 1)?.is_empty() {
            return Ok(0);
        }
        // Taken inside the transaction that runs them: on PostgreSQL the rows are locked until
        // it ends and timers another daemon is running are skipped; one already gone is not run.
        let ran = self.store.write(|txn| -> Result<usize> {
            let due = txn.due_timers(&now, 1000)?;
            let mut ran = 0;
            for t in &due {
                if !txn.remove_timer(t)? {
                    continue;
                }
                ran += 1;
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
                        if expired && expirable {
                            if let Ok(effects) = rec.expire(now) {
                                self.carry_out(&sh, txn, &rec, effects, now)?;
                            }
                        }
                    }
                    TimerKind::Remind => {
                        let lead =
                            to_chrono(sh.cfg.invitation_ttl.saturating_sub(sh.cfg.reminder_after));
                        let due_now = rec.expires_at.is_some_and(|e| e > now && now >= e - lead);
                        let mut effects = Effects::default();
                        if rec.awaiting() == Some(Purpose::AuthorizeProvider)
                            && !rec.reminded
                            && due_now
                        {
                            effects = rec.remind(now);
                        }
                        // the reminder stood for the expiry too (`schedule_timers`): arm it now.
                        // A store written before format 4 has it already: the same key.
                        if let (Some(at), Some(_)) = (rec.expires_at, rec.awaiting()) {
                            effects.expire_at = Some(at);
                        }
                        if effects.mails.is_empty() {
                            // nothing to send: the record is unchanged, only the expiry is armed
                            if let Some(at) = effects.expire_at {
                                txn.schedule(&at, &rec.id, TimerKind::Expire);
                            }
                        } else {
                            self.carry_out(&sh, txn, &rec, effects, now)?;
                        }
                    }
                }
            }
            Ok(ran)
        })?;
        self.commit().await?;
        Ok(ran)
    }
}
