//! One inbound message at the size cap costs bounded memory, and one over it is known by its
//! header alone. Each shape is classified in a child process (this test binary again, running
//! only this test) so its peak RSS (`VmHWM`) is its own; the parent asserts the growth of the
//! peak over what the message itself takes. No time is asserted.

use invited::classify::{self, Classification, MAX_MESSAGE_BYTES};

const CHILD_ENV: &str = "INVITED_BOUNDED_CHILD";
/// How much the peak RSS may grow while one message is classified: four times the cap (40 MiB).
/// Measured (2026-12-02, debug build): 2.1–2.9 MiB (plain, multipart, oversize), 7.9 MiB
/// (quoted-printable), 16.2 MiB (base64: the decoded copy).
const PEAK_GROWTH_LIMIT: u64 = 4 * MAX_MESSAGE_BYTES as u64;

const HEAD: &str = "From: Contact <big@fabrikam.test>\r\nTo: replies+aaaaaaaaaaaaaaaaaaaaaaaaa2@invited.test\r\nSubject: Re: invitation\r\nMessage-ID: <bounded@fabrikam.test>\r\nMIME-Version: 1.0\r\n";

/// A message of exactly `len` bytes (or `len` and then some filler) of the given shape.
fn message(shape: &str, len: usize) -> Vec<u8> {
    let mut raw = HEAD.as_bytes().to_vec();
    let fill = |raw: &mut Vec<u8>, unit: &[u8]| {
        while raw.len() + unit.len() <= len {
            raw.extend_from_slice(unit);
        }
        raw.resize(len, b'x');
    };
    match shape {
        // a reply with a long quote below its own line
        "plain" | "oversize" => {
            raw.extend_from_slice(
                b"Content-Type: text/plain; charset=utf-8\r\n\r\nYes, confirmed.\r\n\r\n",
            );
            fill(
                &mut raw,
                b"> quoted text quoted text quoted text quoted text quoted text\r\n",
            );
        }
        // quoted-printable made of soft line breaks and encoded bytes
        "qp" => {
            raw.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nYes=2C confirmed.\r\n\r\n");
            fill(&mut raw, b"=3E =EC=98=88 quoted=\r\n");
        }
        // one base64 body
        "base64" => {
            raw.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n");
            fill(
                &mut raw,
                b"WWVzLCBjb25maXJtZWQuID4gcXVvdGVkIHRleHQgcXVvdGVkIHRleHQgcXVvdGVk\r\n",
            );
        }
        // as many parts as the MIME limits let through, filling the message
        "multipart" => {
            raw.extend_from_slice(b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n");
            let close = b"\r\n--b--\r\n";
            for i in 0..30 {
                raw.extend_from_slice(
                    format!("--b\r\nContent-Type: text/plain\r\n\r\nYes, confirmed ({i})\r\n")
                        .as_bytes(),
                );
                // the last part takes what is left
                let end = if i == 29 {
                    len - close.len()
                } else {
                    raw.len() + len / 32
                };
                while raw.len() < end {
                    raw.extend_from_slice(b"> quoted text quoted text quoted text\r\n");
                }
                raw.truncate(end);
            }
            raw.extend_from_slice(close);
        }
        other => panic!("shape {other}"),
    }
    raw
}

fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn outcome(c: &Classification) -> String {
    match c {
        Classification::Command { keyword } => format!("command:{keyword:?}"),
        Classification::Unrecognised { reason } => format!("unrecognised:{reason}"),
        Classification::AutoReply { .. } => "auto_reply".into(),
        Classification::Bounce { .. } => "bounce".into(),
    }
}

/// The child: builds the message, then classifies it; prints the outcome and the peak's growth.
fn child(shape: &str) {
    let len = if shape == "oversize" {
        MAX_MESSAGE_BYTES + 1
    } else {
        MAX_MESSAGE_BYTES
    };
    let mut raw = message(shape, len);
    raw.shrink_to_fit();
    assert_eq!(raw.len(), len);
    let before = peak_rss();
    let inb = classify::classify(&raw, "replies");
    let after = peak_rss();
    println!(
        "BOUNDED shape={shape} growth={} refs={} outcome={}",
        after.saturating_sub(before),
        inb.refs.len(),
        outcome(&inb.classification)
    );
}

#[test]
fn one_message_at_the_size_cap_costs_bounded_memory() {
    if let Ok(shape) = std::env::var(CHILD_ENV) {
        return child(&shape);
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    for (shape, want) in [
        ("plain", "command:Yes"),
        ("qp", "command:Yes"),
        ("base64", "command:Yes"),
        ("multipart", "command:Yes"),
        ("oversize", "unrecognised:too large (10485761 bytes"),
    ] {
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "bounded::one_message_at_the_size_cap_costs_bounded_memory",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, shape)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{shape}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // libtest may print "test … ... " in front of the child's line
        let line = stdout
            .lines()
            .find_map(|l| l.find("BOUNDED ").map(|i| &l[i..]))
            .unwrap_or_else(|| panic!("{shape}: no result line in {stdout}"));
        println!("{line}");
        let field = |k: &str| {
            line.split(' ')
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("{k} in {line}"))
                .to_string()
        };
        let growth: u64 = field("growth=").parse().unwrap_or_else(|e| panic!("{e}"));
        let outcome = line.split(" outcome=").nth(1).unwrap_or_default();
        assert!(outcome.starts_with(want), "{shape}: {line}");
        assert_eq!(
            field("refs="),
            "1",
            "{shape}: the plus address is found: {line}"
        );
        assert!(
            growth <= PEAK_GROWTH_LIMIT,
            "{shape}: classifying one message raised the peak RSS by {growth} bytes (limit {PEAK_GROWTH_LIMIT}): {line}"
        );
    }
}
