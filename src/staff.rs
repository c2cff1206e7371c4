//! Staff accounts and their console sessions, as data: roles, Argon2id password hashes (RFC 9106,
//! PHC strings), session ids whose SHA-256 is all the store keeps. Pure except for the random
//! salts and ids.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use data_encoding::BASE64URL_NOPAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{Email, Timestamp};

/// Shortest and longest password accepted (characters). Long passphrases welcome; the cap keeps
/// hashing bounded.
pub const PASSWORD_MIN: usize = 12;
pub const PASSWORD_MAX: usize = 1024;

/// What a staff member may do: a viewer reads; a reviewer also approves and rejects
/// enrollments; an admin also invites, resends, revokes, retries and manages staff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Reviewer,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "reviewer" => Some(Role::Reviewer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Reviewer => "reviewer",
            Role::Admin => "admin",
        }
    }

    /// Whether this role includes `needed` (admin ⊇ reviewer ⊇ viewer).
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

/// One staff account as stored. The hash is a PHC string (`$argon2id$v=19$...`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Staff {
    pub email: Email,
    pub role: Role,
    pub password_hash: String,
    pub created_at: Timestamp,
    pub password_changed_at: Timestamp,
}

/// What `staff list` shows: never the hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StaffView {
    pub email: Email,
    pub role: Role,
    pub created_at: Timestamp,
    pub password_changed_at: Timestamp,
}

impl From<&Staff> for StaffView {
    fn from(s: &Staff) -> Self {
        StaffView {
            email: s.email.clone(),
            role: s.role,
            created_at: s.created_at,
            password_changed_at: s.password_changed_at,
        }
    }
}

/// A password that breaks the rules, said in words for the person typing it.
pub fn check_password(p: &str) -> Result<(), String> {
    let n = p.chars().count();
    if n < PASSWORD_MIN {
        return Err(format!(
            "too short: at least {PASSWORD_MIN} characters, this has {n}"
        ));
    }
    if n > PASSWORD_MAX {
        return Err(format!("too long: at most {PASSWORD_MAX} characters"));
    }
    if p.chars().any(|c| c.is_control()) {
        return Err("contains a control character (a line break?)".into());
    }
    Ok(())
}

fn hasher() -> Argon2<'static> {
    // Argon2id v19 with the crate's defaults (m = 19 MiB, t = 2, p = 1: OWASP's first choice)
    Argon2::default()
}

/// The Argon2id PHC string of `password` under a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing the password: {e}"))
}

/// Whether `password` matches the PHC string (constant-time comparison inside the crate). A hash
/// that does not parse matches nothing.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => hasher().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// A hash of a password nobody has, verified against when the account does not exist, so a
/// sign-in for an unknown address costs as long as one with a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let mut pw = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut pw);
        hash_password(&BASE64URL_NOPAD.encode(&pw)).unwrap_or_default()
    })
}

/// A console session as stored, under the SHA-256 of its cookie value (the cookie's value itself
/// is never stored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub staff: Email,
    pub created_at: Timestamp,
    /// last request; the session ends after `[console] session_idle` without one
    pub seen_at: Timestamp,
    /// the CSRF token of this session's forms
    pub csrf: String,
}

/// A new random token (32 bytes, base64url): session ids and CSRF tokens.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    BASE64URL_NOPAD.encode(&b)
}

/// The store key of a session: SHA-256 of the cookie value, hex.
pub fn session_key(cookie_value: &str) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(cookie_value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest() {
        assert!(Role::Admin.allows(Role::Reviewer));
        assert!(Role::Admin.allows(Role::Viewer));
        assert!(Role::Reviewer.allows(Role::Viewer));
        assert!(!Role::Reviewer.allows(Role::Admin));
        assert!(!Role::Viewer.allows(Role::Reviewer));
        for r in [Role::Viewer, Role::Reviewer, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let h = hash_password("correct horse battery").expect("hash");
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterz", &h));
        assert!(!verify_password("correct horse battery", "not a hash"));
        // a fresh salt each time
        assert_ne!(h, hash_password("correct horse battery").expect("hash"));
        assert!(!verify_password("", decoy_hash()));
    }

    #[test]
    fn password_rules() {
        assert!(check_password("short").is_err());
        assert!(check_password("twelve chars").is_ok());
        assert!(check_password("line\nbreak in it").is_err());
        assert!(check_password(&"x".repeat(PASSWORD_MAX + 1)).is_err());
    }

    #[test]
    fn session_keys_hide_the_cookie() {
        let t = new_token();
        assert_eq!(t.len(), 43);
        let k = session_key(&t);
        assert_eq!(k.len(), 64);
        assert!(!k.contains(&t));
        assert_ne!(new_token(), t);
    }
}
