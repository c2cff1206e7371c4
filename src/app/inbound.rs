//! Inbound mail: one outcome per message, and the transition a reply or bounce asks for.

use super::*;

impl App {
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
}
