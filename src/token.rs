//! Signed link tokens: HMAC-SHA256 under rotating key ids, bound to purpose, record, recipient,
//! generation and expiry. Pure apart from `Keys::load`, which reads (or once creates) key files.

use std::collections::BTreeMap;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::model::{Email, Purpose, RecordId, Timestamp};

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const MAC_LEN: usize = 32;
const DOMAIN_TAG: &[u8] = b"invited-link-v1";

/// The secrets that sign and verify links. `Debug` never prints key bytes.
#[derive(Clone)]
pub struct Keys {
    active: String,
    keys: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("active", &self.active)
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What a token claims; checked against the stored record after the MAC verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub purpose: Purpose,
    pub record: RecordId,
    pub generation: u32,
    pub expires_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {message}")]
    File { path: String, message: String },
}

impl Keys {
    /// Loads every listed key; the active one is generated (32 random bytes, mode 0600) if missing.
    pub fn load(
        active: &str,
        files: &BTreeMap<String, std::path::PathBuf>,
    ) -> Result<Keys, KeyError> {
        let mut keys = BTreeMap::new();
        for (kid, path) in files {
            let credential =
                std::env::var_os("CREDENTIALS_DIRECTORY").is_some_and(|dir| path.starts_with(dir));
            if kid == active && !path.exists() && !credential {
                // the embedded default: a key of our own, made once. Never inside systemd's
                // credentials directory (read-only, and a missing credential is a setup error).
                create_key_file(path)?;
            }
            let bytes = std::fs::read(path).map_err(|e| KeyError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            let key = decode_key(&bytes).ok_or_else(|| KeyError::File {
                path: path.display().to_string(),
                message: "must hold at least 32 bytes (raw, or 64+ hex characters)".into(),
            })?;
            keys.insert(kid.clone(), key);
        }
        Ok(Keys {
            active: active.to_string(),
            keys,
        })
    }

    pub fn from_bytes(active: &str, keys: BTreeMap<String, Vec<u8>>) -> Keys {
        Keys {
            active: active.to_string(),
            keys,
        }
    }

    fn mac(key: &[u8], claims: &Claims, recipient: &Email) -> HmacSha256 {
        // new_from_slice accepts any key length for HMAC; the fallback is unreachable.
        let mut m = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable_mac());
        for field in [
            DOMAIN_TAG,
            claims.purpose.as_str().as_bytes(),
            &claims.record.0,
            recipient.as_str().as_bytes(),
            &claims.generation.to_be_bytes(),
            &claims.expires_at.to_be_bytes(),
        ] {
            m.update(&(field.len() as u32).to_be_bytes());
            m.update(field);
        }
        m
    }

    /// A URL-safe token: version, key id, claims, then the MAC over them and the recipient.
    pub fn sign(&self, claims: &Claims, recipient: &Email) -> String {
        let key = self
            .keys
            .get(&self.active)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut out = Vec::with_capacity(72);
        out.push(VERSION);
        out.push(self.active.len() as u8);
        out.extend_from_slice(self.active.as_bytes());
        out.push(claims.purpose.code());
        out.extend_from_slice(&claims.record.0);
        out.extend_from_slice(&claims.generation.to_be_bytes());
        out.extend_from_slice(&claims.expires_at.to_be_bytes());
        out.extend_from_slice(&Self::mac(key, claims, recipient).finalize().into_bytes());
        data_encoding::BASE64URL_NOPAD.encode(&out)
    }

    /// Splits a token into its claims and key id without trusting them yet.
    pub fn decode(token: &str) -> Option<(String, Claims, Vec<u8>)> {
        if token.len() > 200 {
            return None;
        }
        let raw = data_encoding::BASE64URL_NOPAD
            .decode(token.as_bytes())
            .ok()?;
        let (&version, rest) = raw.split_first()?;
        if version != VERSION {
            return None;
        }
        let (&kid_len, rest) = rest.split_first()?;
        let kid_len = kid_len as usize;
        if rest.len() != kid_len + 1 + 16 + 4 + 8 + MAC_LEN {
            return None;
        }
        let kid = std::str::from_utf8(&rest[..kid_len]).ok()?.to_string();
        let rest = &rest[kid_len..];
        let purpose = Purpose::from_code(rest[0])?;
        let record = RecordId(rest[1..17].try_into().ok()?);
        let generation = u32::from_be_bytes(rest[17..21].try_into().ok()?);
        let expires_at = i64::from_be_bytes(rest[21..29].try_into().ok()?);
        let mac = rest[29..].to_vec();
        Some((
            kid,
            Claims {
                purpose,
                record,
                generation,
                expires_at,
            },
            mac,
        ))
    }

    /// Constant-time MAC check of a decoded token against the stored record's recipient.
    pub fn verify_mac(&self, kid: &str, claims: &Claims, mac: &[u8], recipient: &Email) -> bool {
        match self.keys.get(kid) {
            Some(key) => Self::mac(key, claims, recipient).verify_slice(mac).is_ok(),
            None => false,
        }
    }
}

/// Everything a link check needs from the stored record.
pub struct Expected<'a> {
    pub recipient: &'a Email,
    pub generation: u32,
    pub now: Timestamp,
}

/// Why a token failed; only for logs and tests — every failure shows the same page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    Malformed,
    BadMac,
    Expired,
    OldGeneration,
}

/// Full check of a decoded token against the record it names (the record lookup is the caller's).
/// The generation is checked only for purposes bound to it (an unsubscribe link outlives resends).
pub fn check(
    keys: &Keys,
    kid: &str,
    claims: &Claims,
    mac: &[u8],
    exp: &Expected,
) -> Result<(), Invalid> {
    if !keys.verify_mac(kid, claims, mac, exp.recipient) {
        return Err(Invalid::BadMac);
    }
    if claims.expires_at <= exp.now.timestamp() {
        return Err(Invalid::Expired);
    }
    if claims.purpose.bound_to_generation() && claims.generation != exp.generation {
        return Err(Invalid::OldGeneration);
    }
    Ok(())
}

fn unreachable_mac() -> HmacSha256 {
    // HMAC takes keys of any length, so this is never reached; a fixed key keeps it total.
    match HmacSha256::new_from_slice(&[0u8; 32]) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts 32-byte keys"),
    }
}

fn decode_key(bytes: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(bytes).map(str::trim).unwrap_or("");
    if text.len() >= 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return data_encoding::HEXLOWER_PERMISSIVE
            .decode(text.as_bytes())
            .ok();
    }
    (bytes.len() >= 32).then(|| bytes.to_vec())
}

fn create_key_file(path: &Path) -> Result<(), KeyError> {
    use std::io::Write;
    let err = |e: std::io::Error| KeyError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        crate::private::create_dir(dir).map_err(err)?;
    }
    let key: [u8; 32] = crate::model::random_bytes();
    let mut f = crate::private::create_file(path, true).map_err(err)?;
    f.write_all(data_encoding::HEXLOWER.encode(&key).as_bytes())
        .map_err(err)?;
    f.write_all(b"\n").map_err(err)?;
    f.sync_all().map_err(err)?;
    tracing::info!(path = %path.display(), "generated a new signing key");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(active: &str) -> Keys {
        let mut m = BTreeMap::new();
        m.insert("k1".to_string(), vec![1u8; 32]);
        m.insert("k2".to_string(), vec![2u8; 32]);
        Keys::from_bytes(active, m)
    }

    fn email(s: &str) -> Email {
        Email::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn claims() -> Claims {
        Claims {
            purpose: Purpose::AuthorizeProvider,
            record: RecordId([7; 16]),
            generation: 3,
            expires_at: 2_000_000_000,
        }
    }

    fn now() -> Timestamp {
        chrono::DateTime::from_timestamp(1_900_000_000, 0).unwrap_or_default()
    }

    fn run(keys: &Keys, token: &str, recipient: &str, generation: u32) -> Result<Claims, Invalid> {
        let (kid, c, mac) = Keys::decode(token).ok_or(Invalid::Malformed)?;
        let r = email(recipient);
        check(
            keys,
            &kid,
            &c,
            &mac,
            &Expected {
                recipient: &r,
                generation,
                now: now(),
            },
        )?;
        Ok(c)
    }

    #[test]
    fn sign_and_verify() {
        let k = keys("k1");
        let t = k.sign(&claims(), &email("a@b.test"));
        assert!(!t.contains('/') && !t.contains('+') && !t.contains('='));
        assert_eq!(run(&k, &t, "A@B.test", 3), Ok(claims()));
    }

    #[test]
    fn every_binding_is_checked() {
        let k = keys("k1");
        let t = k.sign(&claims(), &email("a@b.test"));
        assert_eq!(run(&k, &t, "other@b.test", 3), Err(Invalid::BadMac));
        assert_eq!(run(&k, &t, "a@b.test", 4), Err(Invalid::OldGeneration));
        let mut expired = claims();
        expired.expires_at = now().timestamp();
        let t2 = k.sign(&expired, &email("a@b.test"));
        assert_eq!(run(&k, &t2, "a@b.test", 3), Err(Invalid::Expired));
        // flip each byte of the token body: never accepted
        let raw = data_encoding::BASE64URL_NOPAD
            .decode(t.as_bytes())
            .unwrap_or_default();
        for i in 0..raw.len() {
            let mut r = raw.clone();
            r[i] ^= 0x01;
            let tampered = data_encoding::BASE64URL_NOPAD.encode(&r);
            assert!(run(&k, &tampered, "a@b.test", 3).is_err(), "byte {i}");
        }
        assert_eq!(run(&k, "garbage", "a@b.test", 3), Err(Invalid::Malformed));
    }

    #[test]
    fn an_unsubscribe_token_outlives_resends_but_nothing_else() {
        let k = keys("k1");
        let unsub = Claims {
            purpose: Purpose::Unsubscribe,
            ..claims()
        };
        let t = k.sign(&unsub, &email("a@b.test"));
        // the record moved on to generation 9 (resends): still good
        assert_eq!(run(&k, &t, "a@b.test", 9), Ok(unsub.clone()));
        // but still bound to recipient, expiry and MAC
        assert_eq!(run(&k, &t, "other@b.test", 3), Err(Invalid::BadMac));
        let expired = Claims {
            expires_at: now().timestamp(),
            ..unsub.clone()
        };
        let t2 = k.sign(&expired, &email("a@b.test"));
        assert_eq!(run(&k, &t2, "a@b.test", 3), Err(Invalid::Expired));
        // the purpose is under the MAC: an unsubscribe token re-labelled as another purpose fails
        let mut raw = data_encoding::BASE64URL_NOPAD
            .decode(t.as_bytes())
            .unwrap_or_default();
        let purpose_at = 2 + "k1".len();
        assert_eq!(raw[purpose_at], Purpose::Unsubscribe.code());
        raw[purpose_at] = Purpose::AuthorizeProvider.code();
        let relabelled = data_encoding::BASE64URL_NOPAD.encode(&raw);
        assert_eq!(run(&k, &relabelled, "a@b.test", 3), Err(Invalid::BadMac));
        // every acting purpose still dies with its generation
        for p in [
            Purpose::VerifyContact,
            Purpose::AuthorizeProvider,
            Purpose::AcceptAgreement,
            Purpose::AcceptCustomer,
        ] {
            let c = Claims {
                purpose: p,
                ..claims()
            };
            let t = k.sign(&c, &email("a@b.test"));
            assert_eq!(
                run(&k, &t, "a@b.test", 4),
                Err(Invalid::OldGeneration),
                "{p:?}"
            );
        }
    }

    #[test]
    fn old_key_still_verifies_unknown_key_does_not() {
        let old = keys("k1");
        let t = old.sign(&claims(), &email("a@b.test"));
        let rotated = keys("k2");
        assert!(run(&rotated, &t, "a@b.test", 3).is_ok());
        let mut only_k2 = BTreeMap::new();
        only_k2.insert("k2".to_string(), vec![2u8; 32]);
        let dropped = Keys::from_bytes("k2", only_k2);
        assert_eq!(run(&dropped, &t, "a@b.test", 3), Err(Invalid::BadMac));
    }

    #[test]
    fn generated_key_file_is_private() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut files = BTreeMap::new();
        files.insert("k1".to_string(), dir.path().join("keys/k1.key"));
        let k = Keys::load("k1", &files).unwrap_or_else(|e| panic!("{e}"));
        let again = Keys::load("k1", &files).unwrap_or_else(|e| panic!("{e}"));
        let t = k.sign(&claims(), &email("a@b.test"));
        assert!(
            run(&again, &t, "a@b.test", 3).is_ok(),
            "reloaded key verifies"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("keys/k1.key"))
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            assert_eq!(mode, 0o600);
        }
    }
}
