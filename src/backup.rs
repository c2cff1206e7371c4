//! The backup file: a consistent copy of every store entry, written by the running daemon and
//! read back by `invited restore`. Pure encode/decode; the store takes the snapshot and the CLI
//! does the file I/O.
//!
//! Layout: the line `INVITED-BACKUP 1`, one line of JSON ([`Header`]), then `entries` pairs of
//! `u32 big-endian length + key bytes, u32 length + value bytes`, then the SHA-256 of everything
//! before it. A truncated or altered file is refused before anything is restored.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const MAGIC: &[u8] = b"INVITED-BACKUP 1\n";

/// One store entry: key and value bytes.
pub type Entry = (Vec<u8>, Vec<u8>);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    /// the store format the entries are in (`store::FORMAT` of the daemon that wrote them)
    pub store_format: u32,
    /// the invited version that wrote the file
    pub version: String,
    pub created_at: String,
    pub entries: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackupError {
    #[error("not an invited backup file (it does not start with \"INVITED-BACKUP 1\")")]
    NotABackup,
    #[error("the backup file is damaged: {0}")]
    Damaged(String),
}

/// Encodes `entries` (key, value) under `header` (whose `entries` is set from the list).
pub fn encode(mut header: Header, entries: &[Entry]) -> Vec<u8> {
    header.entries = entries.len() as u64;
    let size: usize = entries.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
    let mut out = Vec::with_capacity(size + 256);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&serde_json::to_vec(&header).unwrap_or_default());
    out.push(b'\n');
    for (k, v) in entries {
        for part in [k, v] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// Decodes and checks a backup; the entries come back in the order written.
pub fn decode(bytes: &[u8]) -> Result<(Header, Vec<Entry>), BackupError> {
    let damaged = |m: &str| BackupError::Damaged(m.to_string());
    let body = bytes.strip_prefix(MAGIC).ok_or(BackupError::NotABackup)?;
    if bytes.len() < MAGIC.len() + 32 {
        return Err(damaged("too short"));
    }
    let (content, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(content).as_slice() != digest {
        return Err(damaged(
            "its checksum does not match (truncated or altered)",
        ));
    }
    let body = &body[..body.len() - 32];
    let nl = body
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| damaged("no header line"))?;
    let header: Header = serde_json::from_slice(&body[..nl])
        .map_err(|e| BackupError::Damaged(format!("header: {e}")))?;
    let mut rest = &body[nl + 1..];
    let take = |rest: &mut &[u8]| -> Result<Vec<u8>, BackupError> {
        let (len, tail) = rest
            .split_at_checked(4)
            .ok_or_else(|| damaged("entry cut short"))?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (part, tail) = tail
            .split_at_checked(len)
            .ok_or_else(|| damaged("entry cut short"))?;
        *rest = tail;
        Ok(part.to_vec())
    };
    let mut entries = Vec::new();
    while !rest.is_empty() {
        let k = take(&mut rest)?;
        let v = take(&mut rest)?;
        entries.push((k, v));
    }
    if entries.len() as u64 != header.entries {
        return Err(BackupError::Damaged(format!(
            "{} entries, the header says {}",
            entries.len(),
            header.entries
        )));
    }
    Ok((header, entries))
}

/// How many records and outbox items (sent or not) the entries hold (store key layout: `r/<id>`
/// and `o/<ref>`).
pub fn counts(entries: &[Entry]) -> (usize, usize) {
    let count = |prefix: &[u8]| {
        entries
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .count()
    };
    (count(b"r/"), count(b"o/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Header, Vec<Entry>) {
        let header = Header {
            store_format: 2,
            version: "0.1.0".into(),
            created_at: "2026-12-01T00:00:00Z".into(),
            entries: 0,
        };
        let entries = vec![
            (b"k/format".to_vec(), b"2".to_vec()),
            (b"o/abc".to_vec(), b"{}".to_vec()),
            (b"r/x".to_vec(), vec![0, 1, 2, 255]),
            (b"r/y".to_vec(), Vec::new()),
        ];
        (header, entries)
    }

    #[test]
    fn round_trip_and_counts() {
        let (header, entries) = sample();
        let bytes = encode(header.clone(), &entries);
        let (h, e) = decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e, entries);
        assert_eq!(h.entries, 4);
        assert_eq!(h.store_format, header.store_format);
        assert_eq!(counts(&e), (2, 1));
    }

    #[test]
    fn damage_is_refused() {
        let (header, entries) = sample();
        let bytes = encode(header, &entries);
        assert_eq!(decode(b"hello"), Err(BackupError::NotABackup));
        for cut in [bytes.len() - 1, bytes.len() - 40, MAGIC.len() + 5] {
            assert!(
                matches!(decode(&bytes[..cut]), Err(BackupError::Damaged(_))),
                "cut at {cut}"
            );
        }
        let mut flipped = bytes.clone();
        let i = flipped.len() / 2;
        flipped[i] ^= 1;
        assert!(matches!(decode(&flipped), Err(BackupError::Damaged(_))));
    }
}
