//! Links: the read-only check GET and HEAD use, and the POSTed forms that act.

use super::*;

impl App {
    /// Read-only check of a link; GET and HEAD use only this.
    pub fn check_link(&self, tok: &str, now: Timestamp) -> LinkCheck {
        self.check_link_on(tok, now, |id| {
            crate::store::off_runtime(|| self.store.read().record(id))
        })
    }

    /// [`check_link`](Self::check_link) against the record as `read` gives it: committed data,
    /// or (a POST) the transaction's own locked copy, so the check and the transition see the
    /// same record even when several daemons take the same link at once.
    fn check_link_on(
        &self,
        tok: &str,
        now: Timestamp,
        read: impl FnOnce(&RecordId) -> std::result::Result<Option<Record>, crate::store::StoreError>,
    ) -> LinkCheck {
        let sh = self.shared();
        let Some((kid, claims, mac)) = Keys::decode(tok) else {
            return LinkCheck::Invalid(token::Invalid::Malformed);
        };
        let rec = match read(&claims.record) {
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
            let (record, purpose) = match self.check_link_on(tok, now, |id| txn.record(id)) {
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
            // the check above read the record inside this transaction (locked on PostgreSQL)
            let mut rec = record;
            // Each purpose takes exactly its own action words (DESIGN, HTTP): "confirm" on an
            // agreement link must not stand in for "accept" and skip the consent it needs.
            let action = match (purpose, form.action.as_str()) {
                (Purpose::VerifyContact, "confirm") => Action::Confirm,
                (Purpose::AcceptAgreement | Purpose::AcceptCustomer, "accept") => Action::Accept,
                (Purpose::AuthorizeProvider, "authorize") => Action::Authorize,
                (Purpose::AuthorizeProvider | Purpose::AcceptCustomer, "decline") => {
                    Action::Decline
                }
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
            if action.needs_consent() && !form.consent {
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
    pub(super) fn done_by(rec: &Record, purpose: Purpose, action: &str) -> bool {
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
}
