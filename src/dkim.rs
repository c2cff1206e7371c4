//! DKIM signing (RFC 6376; Ed25519 per RFC 8463): the private key, loaded once from its PEM file,
//! the DNS TXT record that publishes its public half, and a pure function that puts a
//! `DKIM-Signature` on top of the finished bytes of a message.
//!
//! Why not lettre's `dkim` feature: it hashes the headers in `Message::headers()`, but the
//! `Content-Type` of a multipart message is written by the `MultiPart` part, so a signature whose
//! `h=` names `content-type` (which we must sign) never verifies (seen with dkimpy against lettre
//! 0.11.23); it reads RSA keys only as PKCS#1 and Ed25519 keys only as a bare base64 seed; and it
//! pulls in the `rsa` crate (RUSTSEC-2023-0071, no fixed version), which our audit refuses.
//! Here we sign exactly the bytes the transport sends, with `ring` (already our TLS provider).

use data_encoding::BASE64;
use ring::digest::{digest, SHA256};
use ring::signature::{Ed25519KeyPair, KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use crate::config::{DkimAlgorithm, DkimConfig};

/// Header fields covered by the signature, in `h=` order. Each is listed even when the message
/// lacks it, so that one added later (a second From, a List-Unsubscribe) breaks the signature
/// (RFC 6376 §5.4: a name in `h=` with no field behind it signs its absence). The first eight
/// are the ones every message of ours has; the last three are signed when present, as RFC 8058
/// requires of `List-Unsubscribe` and `List-Unsubscribe-Post`.
pub const SIGNED_HEADERS: &[&str] = &[
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "mime-version",
    "content-type",
    "auto-submitted",
    "list-unsubscribe",
    "list-unsubscribe-post",
];

enum Key {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A loaded signing key with its domain (`d=`) and selector (`s=`). `Debug` never shows the key.
pub struct Signer {
    domain: String,
    selector: String,
    key: Key,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The TXT record to publish: `name` (`SELECTOR._domainkey.DOMAIN`) and its `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    pub name: String,
    pub value: String,
}

/// Why a key did not load. The messages describe the file, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, thiserror::Error)]
#[error("DKIM: {0}")]
pub struct SignError(String);

const PEM_FORMS: &str = "expected PEM \"-----BEGIN PRIVATE KEY-----\" (PKCS#8, RSA or Ed25519, as `openssl genpkey` writes it) or \"-----BEGIN RSA PRIVATE KEY-----\" (PKCS#1)";

impl Signer {
    /// Reads and parses `[mail.dkim] key_file` (done once, when the configuration loads).
    pub fn load(cfg: &DkimConfig) -> Result<Signer, KeyError> {
        let path = cfg.key_file.display().to_string();
        let pem = std::fs::read(&cfg.key_file).map_err(|cause| KeyError::Read {
            path: path.clone(),
            cause,
        })?;
        Signer::from_pem(&cfg.domain, &cfg.selector, cfg.algorithm, &pem)
            .map_err(|message| KeyError::Invalid { path, message })
    }

    /// Parses a PEM private key of the configured algorithm: RSA as PKCS#1 or PKCS#8, Ed25519
    /// as PKCS#8 (v1 as OpenSSL writes it, or v2).
    pub fn from_pem(
        domain: &str,
        selector: &str,
        algorithm: DkimAlgorithm,
        pem: &[u8],
    ) -> Result<Signer, String> {
        let der = match PrivateKeyDer::from_pem_slice(pem) {
            Ok(der) => der,
            Err(_) if contains(pem, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") => {
                return Err(
                    "an encrypted private key: give the key without a passphrase (`openssl pkey -in KEY -out PLAIN`)"
                        .into(),
                )
            }
            Err(rustls_pki_types::pem::Error::NoItemsFound) => {
                return Err(format!("no private key in the file: {PEM_FORMS}"))
            }
            // the parser's own message may quote the file: say only what was wrong with it
            Err(_) => return Err(format!("not a readable PEM private key: {PEM_FORMS}")),
        };
        let ed25519 = |pkcs8: &[u8]| Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8);
        let key = match (algorithm, &der) {
            (DkimAlgorithm::RsaSha256, PrivateKeyDer::Pkcs1(k)) => {
                Key::Rsa(RsaKeyPair::from_der(k.secret_pkcs1_der()).map_err(rsa_rejected)?)
            }
            (DkimAlgorithm::RsaSha256, PrivateKeyDer::Pkcs8(k)) => {
                let pkcs8 = k.secret_pkcs8_der();
                match RsaKeyPair::from_pkcs8(pkcs8) {
                    Ok(k) => Key::Rsa(k),
                    Err(_) if ed25519(pkcs8).is_ok() => {
                        return Err(
                            "an Ed25519 key, but mail.dkim.algorithm is \"rsa-sha256\"".into()
                        )
                    }
                    Err(e) => return Err(rsa_rejected(e)),
                }
            }
            (DkimAlgorithm::Ed25519Sha256, PrivateKeyDer::Pkcs8(k)) => {
                let pkcs8 = k.secret_pkcs8_der();
                match ed25519(pkcs8) {
                    Ok(k) => Key::Ed25519(k),
                    Err(_) if RsaKeyPair::from_pkcs8(pkcs8).is_ok() => {
                        return Err(
                            "an RSA key, but mail.dkim.algorithm is \"ed25519-sha256\"".into()
                        )
                    }
                    Err(e) => return Err(format!("not a usable Ed25519 PKCS#8 key ({e})")),
                }
            }
            (DkimAlgorithm::Ed25519Sha256, PrivateKeyDer::Pkcs1(_)) => {
                return Err(
                    "an RSA (PKCS#1) key, but mail.dkim.algorithm is \"ed25519-sha256\"".into(),
                )
            }
            (_, PrivateKeyDer::Sec1(_)) => {
                return Err("an EC (SEC1) key: DKIM signs with RSA or Ed25519".into())
            }
            (_, _) => return Err(format!("an unsupported kind of key: {PEM_FORMS}")),
        };
        Ok(Signer {
            domain: domain.to_string(),
            selector: selector.to_string(),
            key,
        })
    }

    pub fn algorithm(&self) -> DkimAlgorithm {
        match self.key {
            Key::Rsa(_) => DkimAlgorithm::RsaSha256,
            Key::Ed25519(_) => DkimAlgorithm::Ed25519Sha256,
        }
    }

    /// `SELECTOR._domainkey.DOMAIN TXT "v=DKIM1; k=rsa; p=…"`. An RSA key is published as its
    /// SubjectPublicKeyInfo (what `openssl pkey -pubout` writes), an Ed25519 key as its 32 raw
    /// bytes (RFC 8463 §4.2).
    pub fn dns_record(&self) -> DnsRecord {
        let (k, p) = match &self.key {
            Key::Rsa(k) => ("rsa", rsa_spki(k.public().as_ref())),
            Key::Ed25519(k) => ("ed25519", k.public_key().as_ref().to_vec()),
        };
        DnsRecord {
            name: format!("{}._domainkey.{}", self.selector, self.domain),
            value: format!("v=DKIM1; k={k}; p={}", BASE64.encode(&p)),
        }
    }

    /// `message` (CRLF line ends, as lettre formats it) with a `DKIM-Signature` field on top:
    /// relaxed/relaxed canonicalization, `t=` = `now` (Unix seconds).
    pub fn sign(&self, message: &[u8], now: i64) -> Result<Vec<u8>, SignError> {
        let (head, body) = split_message(message)
            .ok_or_else(|| SignError("the message has no empty line after its header".into()))?;
        let body_hash = BASE64.encode(digest(&SHA256, &relaxed_body(body)).as_ref());
        let algorithm = match self.key {
            Key::Rsa(_) => "rsa-sha256",
            Key::Ed25519(_) => "ed25519-sha256",
        };
        // Every tag but the signature itself, folded to lines of at most 78 characters; the
        // signature is computed over this text with `b=` empty and then appended.
        let mut f = Folder::new("DKIM-Signature:");
        for tag in [
            "v=1;".to_string(),
            format!("a={algorithm};"),
            "c=relaxed/relaxed;".to_string(),
            format!("d={};", self.domain),
            format!("s={};", self.selector),
            format!("t={now};"),
        ] {
            f.push(" ", &tag);
        }
        for (i, name) in SIGNED_HEADERS.iter().enumerate() {
            match i {
                0 => f.push(" ", &format!("h={name}:")),
                _ if i + 1 == SIGNED_HEADERS.len() => f.push("", &format!("{name};")),
                _ => f.push("", &format!("{name}:")),
            }
        }
        f.push(" ", &format!("bh={body_hash};"));
        f.push(" ", "b=");
        let unsigned = f.text.clone();

        let mut hashed = Vec::with_capacity(1024);
        for field in select_fields(head, SIGNED_HEADERS) {
            hashed.extend_from_slice(&relaxed_header(field));
        }
        let mut own = relaxed_header(unsigned.as_bytes());
        own.truncate(own.len() - 2); // RFC 6376 §3.7: the signature field is hashed without its CRLF
        hashed.extend_from_slice(&own);

        let signature = match &self.key {
            Key::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(
                    &RSA_PKCS1_SHA256,
                    &ring::rand::SystemRandom::new(),
                    &hashed,
                    &mut sig,
                )
                .map_err(|_| SignError("RSA signing failed".into()))?;
                sig
            }
            // RFC 8463 §3: Ed25519 signs the SHA-256 hash of the canonicalized header fields
            Key::Ed25519(k) => k.sign(digest(&SHA256, &hashed).as_ref()).as_ref().to_vec(),
        };
        let b64 = BASE64.encode(&signature);
        let mut rest = b64.as_str();
        while !rest.is_empty() {
            // chunks on ASCII: any split point is a char boundary
            let room = 78usize.saturating_sub(f.line).max(1).min(rest.len());
            let (chunk, tail) = rest.split_at(room);
            f.push("", chunk);
            rest = tail;
        }
        let mut out = Vec::with_capacity(f.text.len() + 2 + message.len());
        out.extend_from_slice(f.text.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(message);
        Ok(out)
    }
}

fn rsa_rejected(e: ring::error::KeyRejected) -> String {
    format!("not a usable RSA key ({e}; RSA keys must be 2048 to 8192 bits)")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// An RSAPublicKey (PKCS#1) wrapped as a SubjectPublicKeyInfo:
/// `SEQUENCE { SEQUENCE { rsaEncryption, NULL }, BIT STRING { 0 unused bits, key } }`.
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    const ALGORITHM: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0u8];
    bits.extend_from_slice(pkcs1);
    let mut inner = ALGORITHM.to_vec();
    inner.extend(der(0x03, &bits));
    der(0x30, &inner)
}

/// One DER element: tag, definite length, contents.
fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(contents);
    out
}

/// Builds a header field folded before a token when the line would pass 78 characters.
struct Folder {
    text: String,
    line: usize,
}

impl Folder {
    fn new(start: &str) -> Folder {
        Folder {
            text: start.to_string(),
            line: start.len(),
        }
    }

    /// Appends `token` after `sep` (`" "` or `""`), or on a new folded line.
    fn push(&mut self, sep: &str, token: &str) {
        if self.line + sep.len() + token.len() > 78 && self.line > 1 {
            self.text.push_str("\r\n ");
            self.line = 1;
        } else {
            self.text.push_str(sep);
            self.line += sep.len();
        }
        self.text.push_str(token);
        self.line += token.len();
    }
}

/// The header block (each field with its CRLF) and the body after the empty line.
fn split_message(message: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = message.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((&message[..end + 2], &message[end + 4..]))
}

/// The header fields of a header block, each with its continuation lines and final CRLF.
fn fields(head: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < head.len() {
        if head[i] == b'\r' && head[i + 1] == b'\n' {
            let next = head.get(i + 2).copied();
            if !matches!(next, Some(b' ' | b'\t')) {
                out.push(&head[start..i + 2]);
                start = i + 2;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    if start < head.len() {
        out.push(&head[start..]);
    }
    out
}

fn field_name(field: &[u8]) -> &[u8] {
    let colon = field.iter().position(|b| *b == b':').unwrap_or(field.len());
    field[..colon].trim_ascii_end()
}

/// For each name in `h=`, the last field of that name not used yet (RFC 6376 §5.4.2); a name
/// with no such field contributes nothing.
fn select_fields<'a>(head: &'a [u8], names: &[&str]) -> Vec<&'a [u8]> {
    let all = fields(head);
    let mut used = vec![false; all.len()];
    let mut out = Vec::new();
    for name in names {
        let found = (0..all.len())
            .rev()
            .find(|&i| !used[i] && field_name(all[i]).eq_ignore_ascii_case(name.as_bytes()));
        if let Some(i) = found {
            used[i] = true;
            out.push(all[i]);
        }
    }
    out
}

/// Relaxed header canonicalization (RFC 6376 §3.4.2): name lowercased, no whitespace around the
/// colon, folds unfolded, runs of whitespace as one space, none at the end; then CRLF.
fn relaxed_header(field: &[u8]) -> Vec<u8> {
    let colon = field.iter().position(|b| *b == b':').unwrap_or(field.len());
    let mut out = field[..colon].trim_ascii_end().to_ascii_lowercase();
    out.push(b':');
    let mut space = false;
    let mut started = false;
    for &b in field.get(colon + 1..).unwrap_or_default() {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => space = true,
            c => {
                if space && started {
                    out.push(b' ');
                }
                space = false;
                started = true;
                out.push(c);
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Relaxed body canonicalization (RFC 6376 §3.4.4): no whitespace at line ends, runs of
/// whitespace as one space, no empty lines at the end; a non-empty body ends with CRLF.
fn relaxed_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut kept = 0; // length of `out` up to the end of the last line that is not empty
    for line in body.split_inclusive(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut space = false;
        for &b in line {
            match b {
                b' ' | b'\t' => space = true,
                c => {
                    if space {
                        out.push(b' ');
                    }
                    space = false;
                    out.push(c);
                }
            }
        }
        out.extend_from_slice(b"\r\n");
        if !line.iter().all(|b| matches!(b, b' ' | b'\t')) {
            kept = out.len();
        }
    }
    out.truncate(kept);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const RSA_PKCS8: &str = include_str!("../tests/data/dkim/rsa2048-pkcs8.pem");
    const RSA_PKCS1: &str = include_str!("../tests/data/dkim/rsa2048-pkcs1.pem");
    const ED25519: &str = include_str!("../tests/data/dkim/ed25519.pem");
    const RSA_1024: &str = include_str!("../tests/data/dkim/rsa1024.pem");
    const EC_P256: &str = include_str!("../tests/data/dkim/ec.pem");
    /// `openssl pkey -in rsa2048-pkcs8.pem -pubout -outform DER | base64 -w0`
    const RSA_PUBLIC: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAm006ItG3al+y51UTRSJHj/kF6OHwfW4M9vKMmTYRgYdAoV+xmawdPtRiaI0h2Y8KSeTiF+1EnJp2zcZZFu6GRTbbmwh+cyZ16wMk8mBgj1w9RhGDCzywgIHtYo6v8SCKfFdfzqRO3Kw26MHSuHKP73WIBK9mYdCXMDg7PGUv4hkyFGCcLj9+rc+RyKFoBS1rNVmSpnLYDWaXxdtrdniFW0x8DPv6i+slDFKOANGMfdYvdeyfG5DFNLOQ8mq2RmYBLUwo/1qSCiI7AL73pCLfQJ+2ADEcOFcz37tTxWLxIJmr0WWE0SoccS1PC+6diefXzjKxJdgjSacZrrMWp3QnZwIDAQAB";
    /// the last 32 bytes of `openssl pkey -in ed25519.pem -pubout -outform DER`, base64
    const ED25519_PUBLIC: &str = "6qrRTlIYDOK4YKM00F0RR0MvNtbZL08u7QHp878QmIE=";

    fn signer(alg: DkimAlgorithm, pem: &str) -> Signer {
        Signer::from_pem("contoso.test", "invited", alg, pem.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn rsa_pkcs1_and_pkcs8_and_ed25519_pkcs8_load_and_publish_their_public_key() {
        let rsa = format!("v=DKIM1; k=rsa; p={RSA_PUBLIC}");
        for pem in [RSA_PKCS8, RSA_PKCS1] {
            let r = signer(DkimAlgorithm::RsaSha256, pem).dns_record();
            assert_eq!(r.name, "invited._domainkey.contoso.test");
            assert_eq!(r.value, rsa);
        }
        let r = signer(DkimAlgorithm::Ed25519Sha256, ED25519).dns_record();
        assert_eq!(r.name, "invited._domainkey.contoso.test");
        assert_eq!(r.value, format!("v=DKIM1; k=ed25519; p={ED25519_PUBLIC}"));
    }

    #[test]
    fn keys_that_do_not_fit_are_refused_with_the_reason_and_without_the_key() {
        let truncated = &RSA_PKCS8[..RSA_PKCS8.len() - 40];
        let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let public = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA6qrRTlIYDOK4YKM00F0RR0MvNtbZL08u7QHp878QmIE=\n-----END PUBLIC KEY-----\n";
        let cases = [
            (DkimAlgorithm::RsaSha256, ED25519, "an Ed25519 key, but"),
            (DkimAlgorithm::Ed25519Sha256, RSA_PKCS8, "an RSA key, but"),
            (
                DkimAlgorithm::Ed25519Sha256,
                RSA_PKCS1,
                "an RSA (PKCS#1) key",
            ),
            (DkimAlgorithm::RsaSha256, RSA_1024, "2048 to 8192 bits"),
            (DkimAlgorithm::RsaSha256, EC_P256, "not a usable RSA key"),
            (
                DkimAlgorithm::Ed25519Sha256,
                EC_P256,
                "not a usable Ed25519",
            ),
            (DkimAlgorithm::RsaSha256, truncated, "not a readable PEM"),
            (DkimAlgorithm::RsaSha256, encrypted, "encrypted private key"),
            (DkimAlgorithm::Ed25519Sha256, public, "no private key"),
            (DkimAlgorithm::RsaSha256, "", "no private key"),
        ];
        for (alg, pem, reason) in cases {
            let err = Signer::from_pem("contoso.test", "invited", alg, pem.as_bytes())
                .err()
                .unwrap_or_else(|| panic!("{alg:?} accepted {pem:.40}"));
            assert!(err.contains(reason), "{alg:?} {pem:.40}: {err}");
            for line in pem.lines().filter(|l| !l.starts_with("-----")) {
                assert!(!err.contains(line), "the error quotes the key: {err}");
            }
        }
        let dbg = format!("{:?}", signer(DkimAlgorithm::RsaSha256, RSA_PKCS8));
        assert!(dbg.contains("<redacted>") && !dbg.contains("MII"), "{dbg}");
    }

    /// RFC 6376 §3.4.5, both canonicalizations of its example.
    #[test]
    fn relaxed_canonicalization_matches_the_rfc_example() {
        let message = b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n";
        let (head, body) = split_message(message).unwrap_or_else(|| panic!("split"));
        let canon: Vec<u8> = fields(head).into_iter().flat_map(relaxed_header).collect();
        assert_eq!(canon, b"a:X\r\nb:Y Z\r\n");
        assert_eq!(relaxed_body(body), b" C\r\nD E\r\n");
        assert_eq!(relaxed_body(b""), b"");
        assert_eq!(relaxed_body(b"\r\n\r\n"), b"");
        assert_eq!(relaxed_body(b"no end"), b"no end\r\n");
    }

    #[test]
    fn the_last_unused_field_of_each_name_is_signed() {
        let head = b"To: a\r\nSubject: one\r\nsubject: two\r\n folded\r\nFrom: f\r\n";
        let got: Vec<&[u8]> = select_fields(head, &["subject", "cc", "from", "subject", "subject"]);
        let want: Vec<&[u8]> = vec![
            b"subject: two\r\n folded\r\n",
            b"From: f\r\n",
            b"Subject: one\r\n",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn spki_lengths_use_long_form_der() {
        assert_eq!(der(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        assert_eq!(der(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(der(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
    }

    /// The tags of the topmost DKIM-Signature, unfolded.
    pub(crate) fn tags(signed: &[u8]) -> std::collections::BTreeMap<String, String> {
        let (head, _) = split_message(signed).unwrap_or_else(|| panic!("split"));
        let field = fields(head)
            .into_iter()
            .find(|f| field_name(f).eq_ignore_ascii_case(b"dkim-signature"))
            .unwrap_or_else(|| panic!("no DKIM-Signature"));
        let text = String::from_utf8_lossy(&field[field_name(field).len() + 1..]).to_string();
        text.split(';')
            .filter_map(|t| t.split_once('='))
            .map(|(k, v)| {
                let v: String = v.chars().filter(|c| !c.is_whitespace()).collect();
                (k.trim().to_string(), v)
            })
            .collect()
    }

    /// A verifier for these tests (the real check is dkimpy's, in tests/it/dkim.rs): body hash,
    /// then the signature over the `h=` fields and the signature field with `b=` emptied.
    fn verifies(signed: &[u8], public_key: &[u8], alg: DkimAlgorithm) -> bool {
        use ring::signature::{UnparsedPublicKey, ED25519, RSA_PKCS1_2048_8192_SHA256};
        let t = tags(signed);
        let (head, body) = split_message(signed).unwrap_or_else(|| panic!("split"));
        if BASE64.encode(digest(&SHA256, &relaxed_body(body)).as_ref()) != t["bh"] {
            return false;
        }
        let all = fields(head);
        let sig_field = all[0];
        let names: Vec<&str> = t["h"].split(':').collect();
        let mut hashed: Vec<u8> = select_fields(&head[sig_field.len()..], &names)
            .into_iter()
            .flat_map(relaxed_header)
            .collect();
        let text = String::from_utf8_lossy(sig_field).to_string();
        // `b=` is the last tag: its value is what follows the last ';', FWS and "b="
        let last = text.rfind(';').unwrap_or_else(|| panic!("tags"));
        let b = text[last..].find("b=").unwrap_or_else(|| panic!("b="));
        let at = last + b + 2;
        let mut own = relaxed_header(&text.as_bytes()[..at]);
        own.truncate(own.len() - 2);
        hashed.extend(own);
        let sig = BASE64
            .decode(t["b"].as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        match alg {
            DkimAlgorithm::RsaSha256 => {
                UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_key)
                    .verify(&hashed, &sig)
                    .is_ok()
            }
            DkimAlgorithm::Ed25519Sha256 => UnparsedPublicKey::new(&ED25519, public_key)
                .verify(digest(&SHA256, &hashed).as_ref(), &sig)
                .is_ok(),
        }
    }

    #[test]
    fn a_signed_message_verifies_and_an_altered_one_does_not() {
        let message = b"From: Contoso <partners@contoso.test>\r\nTo: a@fabrikam.test\r\nSubject: Hello\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@contoso.test>\r\nReply-To: replies+x@contoso.test\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello  there \r\n\r\n";
        for (alg, pem) in [
            (DkimAlgorithm::RsaSha256, RSA_PKCS1),
            (DkimAlgorithm::Ed25519Sha256, ED25519),
        ] {
            let s = signer(alg, pem);
            let public = match &s.key {
                Key::Rsa(k) => k.public().as_ref().to_vec(),
                Key::Ed25519(k) => k.public_key().as_ref().to_vec(),
            };
            let signed = s
                .sign(message, 1_796_000_000)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(signed.starts_with(b"DKIM-Signature: v=1; a="), "on top");
            assert!(signed.ends_with(message), "the message follows unchanged");
            let head = &signed[..signed.len() - message.len()];
            assert!(
                head.split(|b| *b == b'\n').all(|l| l.len() <= 79),
                "folded: {}",
                String::from_utf8_lossy(head)
            );
            assert!(verifies(&signed, &public, alg), "{alg:?}");
            let text = String::from_utf8_lossy(&signed).to_string();
            for altered in [
                text.replace("Subject: Hello", "Subject: Hullo"),
                text.replace("Hello  there", "Hello there!"),
                text.replace("To: a@", "To: b@"),
            ] {
                assert_ne!(altered, text);
                assert!(
                    !verifies(altered.as_bytes(), &public, alg),
                    "{alg:?} {altered}"
                );
            }
            // whitespace that relaxed canonicalization ignores, and an unsigned header, do not matter
            let relayed = text
                .replace("Subject: Hello", "Subject:   Hello ")
                .replace("\r\nFrom:", "\r\nReceived: by mx\r\nFrom:");
            assert!(verifies(relayed.as_bytes(), &public, alg), "{alg:?}");
        }
    }
}
