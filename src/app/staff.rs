//! Staff accounts (`invited staff …` over the admin API) and console sessions (sign-in, the
//! session check of every console request, sign-out).

use chrono::Utc;
use serde_json::{json, Value};

use super::{App, AppError, Result};
use crate::model::{Email, Timestamp};
use crate::staff::{self, Role, Session, Staff, StaffView};

fn email_field(email: &str) -> Result<Email> {
    Email::parse(email).map_err(|m| AppError::Invalid {
        field: "email".into(),
        message: m,
    })
}

fn password_field(password: &str) -> Result<()> {
    staff::check_password(password).map_err(|m| AppError::Invalid {
        field: "password".into(),
        message: m,
    })
}

/// Hashing costs tens of milliseconds of CPU and 19 MiB: off the runtime's workers.
async fn hash(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || staff::hash_password(&password))
        .await
        .map_err(|e| AppError::Refused(format!("hashing the password: {e}")))?
        .map_err(AppError::Refused)
}

async fn verify(password: String, phc: String) -> bool {
    tokio::task::spawn_blocking(move || staff::verify_password(&password, &phc))
        .await
        .unwrap_or(false)
}

/// Ends every session of `email` (in the caller's transaction).
fn end_sessions(t: &mut crate::store::Txn, email: &Email) -> Result<()> {
    for (k, sess) in t.all_sessions()? {
        if &sess.staff == email {
            t.remove_session(&k);
        }
    }
    Ok(())
}

/// A signed-in staff member, as a console request sees them.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub email: Email,
    pub role: Role,
    /// the session's CSRF token
    pub csrf: String,
    /// the session's store key (sign-out removes it)
    pub key: String,
}

impl App {
    pub async fn staff_add(&self, email: &str, role: &str, password: &str) -> Result<Value> {
        let email = email_field(email)?;
        let role = Role::parse(role).ok_or_else(|| AppError::Invalid {
            field: "role".into(),
            message: format!("{role:?}: one of admin, reviewer, viewer"),
        })?;
        password_field(password)?;
        let hash = hash(password.to_string()).await?;
        let now = Utc::now();
        let s = Staff {
            email: email.clone(),
            role,
            password_hash: hash,
            created_at: now,
            password_changed_at: now,
        };
        self.store.write(|t| -> Result<()> {
            if t.staff(&email)?.is_some() {
                return Err(AppError::Refused(format!(
                    "{email} is already a staff account (`invited staff reset-password {email}` sets a new password)"
                )));
            }
            t.put_staff(&s);
            Ok(())
        })?;
        self.commit().await?;
        tracing::info!(role = role.as_str(), "staff account added");
        Ok(json!(StaffView::from(&s)))
    }

    pub fn staff_list(&self) -> Result<Value> {
        let all = self.store.read().all_staff()?;
        Ok(json!(all.iter().map(StaffView::from).collect::<Vec<_>>()))
    }

    /// Removes an account and ends its sessions.
    pub async fn staff_remove(&self, email: &str) -> Result<Value> {
        let email = email_field(email)?;
        let s = self.store.write(|t| -> Result<Staff> {
            let s = t
                .staff(&email)?
                .ok_or_else(|| AppError::NotFound(format!("no staff account {email}")))?;
            t.remove_staff(&email);
            end_sessions(t, &email)?;
            Ok(s)
        })?;
        self.commit().await?;
        tracing::info!("staff account removed");
        Ok(json!(StaffView::from(&s)))
    }

    /// A new password; the account's sessions end.
    pub async fn staff_reset_password(&self, email: &str, password: &str) -> Result<Value> {
        let email = email_field(email)?;
        password_field(password)?;
        let hash = hash(password.to_string()).await?;
        let s = self.store.write(|t| -> Result<Staff> {
            let mut s = t
                .staff(&email)?
                .ok_or_else(|| AppError::NotFound(format!("no staff account {email}")))?;
            s.password_hash = hash;
            s.password_changed_at = Utc::now();
            t.put_staff(&s);
            end_sessions(t, &email)?;
            Ok(s)
        })?;
        self.commit().await?;
        tracing::info!("staff password reset");
        Ok(json!(StaffView::from(&s)))
    }

    /// Checks a password; an unknown address costs as long as a wrong password (a decoy hash).
    pub async fn staff_check_password(&self, email: &str, password: &str) -> Result<Option<Staff>> {
        let found = match Email::parse(email) {
            Ok(e) => self.store.read().staff(&e)?,
            Err(_) => None,
        };
        let phc = found.as_ref().map_or_else(
            || staff::decoy_hash().to_string(),
            |s| s.password_hash.clone(),
        );
        let ok = verify(password.to_string(), phc).await;
        Ok(found.filter(|_| ok))
    }

    /// A new session for `who`: the cookie value to hand out (only its SHA-256 is stored).
    /// Sessions idle longer than `idle` are removed on the way (abandoned ones do not pile up).
    pub async fn console_session_start(
        &self,
        who: &Staff,
        idle: chrono::Duration,
    ) -> Result<String> {
        let pruned = self.console_prune_sessions(idle)?;
        if pruned > 0 {
            tracing::debug!(pruned, "idle console sessions removed");
        }
        let cookie = staff::new_token();
        let now = Utc::now();
        let s = Session {
            staff: who.email.clone(),
            created_at: now,
            seen_at: now,
            csrf: staff::new_token(),
        };
        let key = staff::session_key(&cookie);
        self.store.write(|t| -> Result<()> {
            t.put_session(&key, &s);
            Ok(())
        })?;
        self.commit().await?;
        Ok(cookie)
    }

    /// The staff member behind a session cookie, if the session is live: it exists, has not been
    /// idle longer than `idle`, and its account still exists (with its current role). The
    /// session's last-seen time moves at most once a minute (not a write per request).
    pub fn console_session(
        &self,
        cookie: &str,
        idle: chrono::Duration,
    ) -> Result<Option<SignedIn>> {
        let key = staff::session_key(cookie);
        let now = Utc::now();
        let read = self.store.read();
        let Some(sess) = read.session(&key)? else {
            return Ok(None);
        };
        if now - sess.seen_at > idle {
            drop(read);
            self.store.write(|t| -> Result<()> {
                t.remove_session(&key);
                Ok(())
            })?;
            return Ok(None);
        }
        let Some(member) = read.staff(&sess.staff)? else {
            return Ok(None);
        };
        drop(read);
        if now - sess.seen_at > chrono::Duration::seconds(60) {
            let mut s = sess.clone();
            s.seen_at = now;
            self.store.write(|t| -> Result<()> {
                // only if it was not ended meanwhile
                if t.session(&key)?.is_some() {
                    t.put_session(&key, &s);
                }
                Ok(())
            })?;
        }
        Ok(Some(SignedIn {
            email: member.email,
            role: member.role,
            csrf: sess.csrf,
            key,
        }))
    }

    /// Ends a session (sign-out).
    pub async fn console_sign_out(&self, key: &str) -> Result<()> {
        self.store.write(|t| -> Result<()> {
            t.remove_session(key);
            Ok(())
        })?;
        self.commit().await?;
        Ok(())
    }

    /// Removes sessions idle longer than `idle` (run now and then by the console).
    pub fn console_prune_sessions(&self, idle: chrono::Duration) -> Result<usize> {
        let now: Timestamp = Utc::now();
        self.store.write(|t| -> Result<usize> {
            let mut n = 0;
            for (k, s) in t.all_sessions()? {
                if now - s.seen_at > idle {
                    t.remove_session(&k);
                    n += 1;
                }
            }
            Ok(n)
        })
    }
}
