//! The suppression list: how an address gets on it for a provider (a one-click unsubscribe POST,
//! an unsubscribe mail to the `List-Unsubscribe` mailto, a hard bounce), what it stops (that
//! provider's invitations and reminders to that address; nothing else), and the staff commands
//! that list and lift it.

use super::*;
use crate::store::Suppression;

/// Result of the read-only check of an unsubscribe token (`GET`/`HEAD /u/{token}`).
pub enum UnsubscribeCheck {
    Invalid(token::Invalid),
    /// A good token for this provider authorization. `pending`: an invitation of that provider
    /// to that address waits for an answer (it is declined by unsubscribing); `suppressed`: the
    /// address is already on the list.
    Valid {
        record: Box<Record>,
        pending: bool,
        suppressed: bool,
    },
}

/// What a one-click unsubscribe POST did.
pub enum UnsubscribeOutcome {
    Invalid,
    /// Now suppressed; `declined`: an invitation was pending and is declined now.
    Done {
        record: Record,
        declined: bool,
    },
    /// Already suppressed: nothing changed.
    Already {
        record: Record,
    },
}

/// What [`App::suppress_in`] did.
pub(super) enum Suppressed {
    Already,
    /// `declined`: the invitation that was pending and is declined now, if one was
    New {
        declined: Option<RecordId>,
    },
}

impl App {
    /// Read-only check of an unsubscribe token: GET and HEAD use only this.
    pub fn check_unsubscribe(&self, tok: &str, now: Timestamp) -> Result<UnsubscribeCheck> {
        self.check_unsubscribe_in(&self.store.read(), tok, now)
    }

    fn check_unsubscribe_in(
        &self,
        txn: &Txn,
        tok: &str,
        now: Timestamp,
    ) -> Result<UnsubscribeCheck> {
        let sh = self.shared();
        let Some((kid, claims, mac)) = Keys::decode(tok) else {
            return Ok(UnsubscribeCheck::Invalid(token::Invalid::Malformed));
        };
        // an acting token (`/t/…`) is no unsubscribe token, and the other way round
        if claims.purpose != Purpose::Unsubscribe {
            return Ok(UnsubscribeCheck::Invalid(token::Invalid::BadMac));
        }
        let Some(record) = txn.record(&claims.record)? else {
            return Ok(UnsubscribeCheck::Invalid(token::Invalid::BadMac));
        };
        let Some(a) = record.authorization() else {
            return Ok(UnsubscribeCheck::Invalid(token::Invalid::BadMac));
        };
        // the generation is not checked for this purpose: a resend does not kill the link
        if let Err(e) = token::check(
            &sh.keys,
            &kid,
            &claims,
            &mac,
            &token::Expected {
                recipient: &a.email,
                generation: record.generation,
                now,
            },
        ) {
            return Ok(UnsubscribeCheck::Invalid(e));
        }
        let pending = Self::pending_invitation(txn, &a.provider, &a.email)?.is_some();
        let suppressed = Self::is_suppressed(txn, &a.provider, &a.email)?;
        Ok(UnsubscribeCheck::Valid {
            record: Box::new(record),
            pending,
            suppressed,
        })
    }

    /// The one-click unsubscribe (RFC 8058 POST, or the confirm page's button): the address goes
    /// on the provider's suppression list and its pending invitation is declined, in one batch.
    pub async fn unsubscribe(&self, tok: &str, now: Timestamp) -> Result<UnsubscribeOutcome> {
        let sh = self.shared();
        let out = self.store.write(|txn| -> Result<UnsubscribeOutcome> {
            // the check reads through the batch, under the write lock: of concurrent posts one
            // suppresses, the others find it done
            let record = match self.check_unsubscribe_in(txn, tok, now)? {
                UnsubscribeCheck::Invalid(_) => return Ok(UnsubscribeOutcome::Invalid),
                UnsubscribeCheck::Valid { record, .. } => record,
            };
            let Some(a) = record.authorization() else {
                return Ok(UnsubscribeOutcome::Invalid);
            };
            let (provider, email) = (a.provider.clone(), a.email.clone());
            Ok(
                match self.suppress_in(
                    &sh,
                    txn,
                    &provider,
                    &email,
                    Channel::Link,
                    "one-click unsubscribe (List-Unsubscribe link)",
                    Some(record.id),
                    now,
                )? {
                    Suppressed::Already => UnsubscribeOutcome::Already { record: *record },
                    Suppressed::New { declined } => UnsubscribeOutcome::Done {
                        record: *record,
                        declined: declined.is_some(),
                    },
                },
            )
        })?;
        if matches!(out, UnsubscribeOutcome::Done { .. }) {
            self.commit().await?;
        }
        Ok(out)
    }

    /// The invitation of `provider` to `email` that waits for an answer, if any.
    fn pending_invitation(txn: &Txn, provider: &str, email: &Email) -> Result<Option<Record>> {
        let Some(id) = txn.live_authorization(provider, email)? else {
            return Ok(None);
        };
        Ok(txn.record(&id)?.filter(|r| {
            r.authorization()
                .is_some_and(|a| a.state == AuthorizationState::Invited)
        }))
    }

    /// Puts (`provider`, `email`) on the suppression list unless it is there already, and
    /// declines the invitation that waits on that pair (its provider is told, as for any
    /// decline). Part of the caller's batch.
    #[allow(clippy::too_many_arguments)] // the entry's fields; a struct would only rename them
    pub(super) fn suppress_in(
        &self,
        sh: &Shared,
        txn: &mut Txn,
        provider: &str,
        email: &Email,
        channel: Channel,
        reason: &str,
        record: Option<RecordId>,
        now: Timestamp,
    ) -> Result<Suppressed> {
        if txn.suppression(provider, email)?.is_some() {
            return Ok(Suppressed::Already);
        }
        txn.put_suppression(&Suppression {
            provider: provider.to_string(),
            email: email.clone(),
            at: now,
            reason: reason.to_string(),
            channel,
            record,
        });
        let mut declined = None;
        if let Some(mut rec) = Self::pending_invitation(txn, provider, email)? {
            let words = if sh.cfg.default_locale == "ko-KR" {
                "수신자가 초대 메일 수신을 거부했습니다. 담당자가 차단을 해제하기 전에는 이 주소로 초대를 보내지 않습니다."
            } else {
                "The contact unsubscribed from invitations. No further invitation goes to this address unless staff lift the suppression."
            };
            let effects = rec.decline_suppressed(reason, words, channel, now)?;
            self.carry_out(sh, txn, &rec, effects, now)?;
            self.revoke_pending_customers(txn, &rec, channel, now)?;
            declined = Some(rec.id);
        }
        tracing::info!(provider, channel = ?channel, "address suppressed");
        Ok(Suppressed::New { declined })
    }

    /// After a hard bounce made `rec` undeliverable: a provider invitation's address goes on that
    /// provider's list. Returns the text to add to the effect, if it was put on the list now.
    pub(super) fn suppress_after_bounce(
        &self,
        sh: &Shared,
        txn: &mut Txn,
        rec: &Record,
        reason: &str,
        now: Timestamp,
    ) -> Result<Option<String>> {
        let Some(a) = rec.authorization() else {
            return Ok(None);
        };
        let (provider, email) = (a.provider.clone(), a.email.clone());
        Ok(
            match self.suppress_in(
                sh,
                txn,
                &provider,
                &email,
                Channel::Bounce,
                reason,
                Some(rec.id),
                now,
            )? {
                Suppressed::New { .. } => Some(format!("; address suppressed for {provider}")),
                Suppressed::Already => None,
            },
        )
    }

    /// An unsubscribe request by mail (the `List-Unsubscribe` mailto: Subject "unsubscribe" to
    /// the message's own reply address). It acts when it carries the ref of an invitation or
    /// reminder and comes from that invitation's recipient: the address is suppressed for the
    /// provider and the pending invitation declined (channel `reply`); outcome `unsubscribe`.
    /// Unlike a keyword reply, it acts for any generation (an old email's mailto still works)
    /// and even when marked auto-submitted (mail clients send these for their users, and all it
    /// can do is stop mail). Anything else stays `unrecognised`, left for a human.
    pub(super) fn inbound_unsubscribe(
        &self,
        sh: &Shared,
        txn: &mut Txn,
        msg: &classify::Inbound,
        mref: Option<&MessageRef>,
        reason: &str,
        now: Timestamp,
    ) -> Result<(&'static str, String, Option<RecordId>)> {
        let human = |why: &str| format!("left for a human: {reason} ({why})");
        let Some(m) = mref else {
            return Ok(("unrecognised", human("no record matches"), None));
        };
        let Some(rec) = txn.record(&m.record)? else {
            return Ok(("unrecognised", human("no record matches"), None));
        };
        let record = Some(rec.id);
        let Some(a) = rec
            .authorization()
            .filter(|_| m.purpose == Some(Purpose::AuthorizeProvider))
        else {
            return Ok((
                "unrecognised",
                human("not about a provider invitation"),
                record,
            ));
        };
        let from = msg.from.as_deref().and_then(|f| Email::parse(f).ok());
        if from.as_ref() != Some(&a.email) {
            return Ok((
                "unrecognised",
                human(&format!(
                    "From \"{}\" is not the invitation's recipient",
                    msg.from.as_deref().unwrap_or_default()
                )),
                record,
            ));
        }
        let (provider, email) = (a.provider.clone(), a.email.clone());
        let effect = match self.suppress_in(
            sh,
            txn,
            &provider,
            &email,
            Channel::Reply,
            "unsubscribe request by mail (List-Unsubscribe mailto)",
            record,
            now,
        )? {
            Suppressed::Already => format!("already suppressed for {provider}; no change"),
            Suppressed::New { declined: Some(d) } => {
                format!("suppressed for {provider}; invitation {d} invited -> declined")
            }
            Suppressed::New { declined: None } => {
                format!("suppressed for {provider}; no invitation was pending")
            }
        };
        Ok(("unsubscribe", effect, record))
    }

    /// `suppress list [--provider ID]`: oldest first.
    pub fn suppressions(&self, provider: Option<&str>) -> Result<Vec<Value>> {
        if let Some(p) = provider {
            Self::provider(&self.shared(), p)?;
        }
        let mut list = self.store.read().suppressions(provider)?;
        list.sort_by_key(|s| s.at);
        Ok(list.iter().map(suppression_json).collect())
    }

    /// `suppress remove --provider ID --email ADDR`: staff lift the suppression; later
    /// invitations are sent again. The declined invitation stays declined (invite again).
    pub async fn unsuppress(&self, provider: &str, email: &str) -> Result<Value> {
        let p = Self::provider(&self.shared(), provider)?.id.clone();
        let email = Email::parse(email).map_err(|m| AppError::Invalid {
            field: "email".into(),
            message: m,
        })?;
        let removed = self.store.write(|txn| -> Result<Suppression> {
            let s = txn
                .suppression(&p, &email)?
                .ok_or_else(|| AppError::Invalid {
                    field: "email".into(),
                    message: format!("{email} is not on the suppression list of provider {p}"),
                })?;
            txn.remove_suppression(&p, &email);
            Ok(s)
        })?;
        self.commit().await?;
        tracing::info!(provider = %p, "suppression lifted by staff");
        Ok(suppression_json(&removed))
    }

    /// Whether invitations of `provider` to `email` are suppressed (part of a batch).
    pub(super) fn is_suppressed(txn: &Txn, provider: &str, email: &Email) -> Result<bool> {
        Ok(txn.suppression(provider, email)?.is_some())
    }
}

impl AppError {
    /// The refusal of an invitation to a suppressed address.
    pub(super) fn suppressed(s: &Suppression) -> AppError {
        AppError::Suppressed {
            provider: s.provider.clone(),
            email: s.email.to_string(),
            since: rfc3339(&s.at),
            why: s.reason.clone(),
        }
    }
}

/// The JSON shape of one entry (`suppress list`, `suppress remove`).
pub fn suppression_json(s: &Suppression) -> Value {
    json!({
        "provider": s.provider,
        "email": s.email,
        "at": rfc3339(&s.at),
        "reason": s.reason,
        "channel": s.channel,
        "record": s.record,
    })
}
