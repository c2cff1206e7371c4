//! Inbound mail: one outcome per message, and the transition a reply or bounce asks for.
//!
//! What is stored for people (the outcome's `message_id`, `from`, `effect`) has its control
//! characters escaped; only the store key stays the exact Message-ID.

use super::*;
use crate::text::escape_controls;

/// One inbound message as a source read it.
#[derive(Debug, Clone, Copy)]
pub enum Inbound<'a> {
    /// The whole message (one over `classify::MAX_MESSAGE_BYTES` is handled from its head).
    Whole(&'a [u8]),
    /// A message of `size` bytes over the cap, of which only `head` was read.
    TooLarge { head: &'a [u8], size: u64 },
}

impl App {
    // ---- inbound -------------------------------------------------------------------------

    /// Handles one inbound message once: classification, the transition it asks for, and its
    /// outcome, in one batch. Returns None when this message (by Message-ID) was handled before.
    /// A message over `classify::MAX_MESSAGE_BYTES` is handled as [`App::handle_inbound_too_large`]
    /// would, from its first `classify::MAX_HEAD_BYTES`.
    pub async fn handle_inbound(
        &self,
        raw: &[u8],
        now: Timestamp,
    ) -> Result<Option<InboundRecord>> {
        let out = self.apply_inbound(&self.shared(), Inbound::Whole(raw), now)?;
        if out.is_some() {
            self.commit().await?;
        }
        Ok(out)
    }

    /// Several messages, in order, each applied in its own atomic batch (one that fails changes
    /// nothing and does not stop the others), all made durable by one flush at the end: what one
    /// IMAP fetch or one maildir group brought. One result per message; when the flush fails,
    /// every one is an error (nothing is known durable, all are handled again).
    pub async fn handle_inbound_batch(
        &self,
        messages: &[Inbound<'_>],
        now: Timestamp,
    ) -> Vec<Result<Option<InboundRecord>>> {
        let sh = self.shared();
        let out: Vec<Result<Option<InboundRecord>>> = messages
            .iter()
            .map(|m| self.apply_inbound(&sh, *m, now))
            .collect();
        if out.iter().any(|r| matches!(r, Ok(Some(_)))) {
            if let Err(e) = self.commit().await {
                let e = e.to_string();
                return messages
                    .iter()
                    .map(|_| Err(AppError::Store(StoreError::Other(e.clone()))))
                    .collect();
            }
        }
        out
    }

    fn apply_inbound(
        &self,
        sh: &Shared,
        m: Inbound<'_>,
        now: Timestamp,
    ) -> Result<Option<InboundRecord>> {
        match m {
            Inbound::Whole(raw) if raw.len() > classify::MAX_MESSAGE_BYTES => {
                self.apply_too_large(sh, &raw[..classify::MAX_HEAD_BYTES], raw.len() as u64, now)
            }
            Inbound::Whole(raw) => {
                let msg = classify::classify(raw, sh.cfg.reply_to.local());
                let key = inbound_key(&msg, raw);
                self.record_inbound(sh, &msg, key, now)
            }
            Inbound::TooLarge { head, size } => self.apply_too_large(sh, head, size, now),
        }
    }

    /// A message of `size` bytes, over `classify::MAX_MESSAGE_BYTES`, of which the source read
    /// only `head` (its first bytes or its header section): one `unrecognised` outcome, "too
    /// large", keyed by the Message-ID of its header (without one, by a hash of `head` and
    /// `size`, so a source that reads the same head again finds it handled).
    pub async fn handle_inbound_too_large(
        &self,
        head: &[u8],
        size: u64,
        now: Timestamp,
    ) -> Result<Option<InboundRecord>> {
        let out = self.apply_too_large(&self.shared(), head, size, now)?;
        if out.is_some() {
            self.commit().await?;
        }
        Ok(out)
    }

    fn apply_too_large(
        &self,
        sh: &Shared,
        head: &[u8],
        size: u64,
        now: Timestamp,
    ) -> Result<Option<InboundRecord>> {
        let head = &head[..head.len().min(classify::MAX_HEAD_BYTES)];
        let msg = classify::classify_too_large(head, size, sh.cfg.reply_to.local());
        let mut hashed = head.to_vec();
        hashed.extend_from_slice(format!("\0size={size}").as_bytes());
        let key = inbound_key(&msg, &hashed);
        self.record_inbound(sh, &msg, key, now)
    }

    /// The outcome and its transition in one atomic batch; not yet durable (the caller commits).
    fn record_inbound(
        &self,
        sh: &Shared,
        msg: &classify::Inbound,
        key: String,
        now: Timestamp,
    ) -> Result<Option<InboundRecord>> {
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
                self.inbound_effect(sh, txn, msg, found.as_ref(), now)?;
            let rec = InboundRecord {
                message_id: escape_controls(&key),
                from: msg.from.clone().unwrap_or_default(),
                received_at: rfc3339(&now),
                outcome: outcome.to_string(),
                record,
                effect: escape_controls(&effect),
            };
            txn.put_inbound(&key, seq, &rec);
            Ok(Some(rec))
        })?;
        if let Some(r) = &out {
            self.metrics.inbound(&r.outcome);
        }
        Ok(out)
    }

    pub(super) fn inbound_effect(
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
            bounce @ Classification::Bounce {
                permanent,
                diagnostic,
                report,
            } => {
                let delayed =
                    |words: &str| format!("delivery delayed, no change ({})", short(words));
                let (Some(m), Some(mut rec)) = (mref, load(txn)?) else {
                    let effect = if *permanent {
                        "no record matches this bounce".into()
                    } else {
                        delayed(diagnostic)
                    };
                    return Ok(("bounce", effect, None));
                };
                if m.purpose.is_none() {
                    return Ok((
                        "bounce",
                        format!("a notice bounced ({}); no record change", short(diagnostic)),
                        record,
                    ));
                }
                // Anyone can mail our plus address something that looks like a bounce: it counts
                // only if it reports on this record's recipient, for the email now in force.
                let Some((permanent, words)) = bounce.bounce_about(rec.recipient().as_str()) else {
                    let why = match report {
                        classify::BounceReport::Dsn(_) => {
                            "the delivery report is about another recipient"
                        }
                        classify::BounceReport::Notice(_) => {
                            "the failure notice does not name the record's recipient as failed"
                        }
                    };
                    return Ok(("bounce", format!("no change: {why}"), record));
                };
                if m.generation != rec.generation {
                    return Ok((
                        "bounce",
                        "no change: a newer email (resend) replaced the one that bounced".into(),
                        record,
                    ));
                }
                if !permanent {
                    return Ok(("bounce", delayed(words), record));
                }
                let detail = format!("hard bounce: {}", short(words));
                match rec.bounce(&detail, words, now) {
                    Ok(effects) => {
                        let to = rec.state_str();
                        self.carry_out(sh, txn, &rec, effects, now)?;
                        let suppressed = self
                            .suppress_after_bounce(sh, txn, &rec, &detail, now)?
                            .unwrap_or_default();
                        (
                            "bounce",
                            format!(
                                "{} -> {to}{suppressed}",
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
            Classification::Unrecognised { reason } if msg.unsubscribe_request => {
                self.inbound_unsubscribe(sh, txn, msg, mref, reason, now)?
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
                let from = msg.from.as_deref().and_then(|f| Email::parse(f).ok());
                let Some(from) = from.filter(|f| f == rec.recipient()) else {
                    return Ok((
                        "command",
                        format!(
                            "ignored: From \"{}\" is not the record's recipient",
                            msg.from.as_deref().unwrap_or_default()
                        ),
                        record,
                    ));
                };
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
                                from.domain(),
                            ) =>
                        {
                            return Ok((
                                "command",
                                format!(
                                    "ignored: no dmarc=pass for header.from={} from {}",
                                    from.domain(),
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
}

/// The outcome's key: the exact Message-ID, or without one a hash of `bytes`.
fn inbound_key(msg: &classify::Inbound, bytes: &[u8]) -> String {
    match &msg.message_id {
        Some(id) if !id.is_empty() => id.clone(),
        _ => {
            use sha2::Digest;
            format!(
                "sha256:{}",
                data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(bytes))
            )
        }
    }
}
