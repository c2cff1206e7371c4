//! Inbound parsing and classification (`invited::classify`) on arbitrary bytes.
//!
//! A finding is: any panic in our code (libfuzzer-sys aborts on a panic even where `classify`
//! would contain it, so one in our own code under its `catch_unwind` is found too), a panic
//! anywhere that escapes `classify`, or an output that breaks
//! what the module promises — refs in our format and at most `MAX_REFS`, at most 16
//! Authentication-Results, text for people (from, subject, reasons, diagnostics) free of the
//! characters `text::escape_controls` escapes, the addresses a bounce names lowercase.
#![no_main]

use std::collections::HashSet;
use std::sync::{Mutex, Once};

use invited::classify::{self, BounceReport, Classification, MAX_HEAD_BYTES, MAX_REFS};
use invited::text::is_escaped;
use libfuzzer_sys::fuzz_target;

/// mail-parser 0.11 panics on some malformed MIME ("Invalid part ID, could not find
/// multipart", message.rs:485, found here); `classify` runs it under `catch_unwind` by design
/// and the message ends `unrecognised` ("the mail parser panicked"). Those panics, and only
/// those, are let through to that `catch_unwind` instead of aborting (FUZZ_STRICT=1: abort on
/// them too); each place is printed once.
fn contain_parser_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("FUZZ_STRICT").is_some() {
            return;
        }
        // libfuzzer-sys's hook (print, then abort), set before the first input
        let abort = std::panic::take_hook();
        let seen = Mutex::new(HashSet::new());
        std::panic::set_hook(Box::new(move |info| {
            let place = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()));
            match place {
                Some(p) if p.contains("/mail-parser-") => {
                    if seen
                        .lock()
                        .map(|mut s| s.insert(p.clone()))
                        .unwrap_or(false)
                    {
                        eprintln!("contained mail-parser panic at {p}: {info}");
                    }
                }
                _ => abort(info),
            }
        }));
    });
}

fn clean(what: &str, s: &str) {
    assert!(
        !s.chars().any(is_escaped),
        "{what} has a raw control character: {s:?}"
    );
}

fn lower(what: &str, s: &str) {
    assert!(
        !s.bytes().any(|b| b.is_ascii_uppercase()),
        "{what} not lowercase: {s:?}"
    );
}

fn check(inb: &classify::Inbound) {
    assert!(inb.refs.len() <= MAX_REFS, "{} refs", inb.refs.len());
    for r in &inb.refs {
        assert!(
            r.len() == 26 && r.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7')),
            "ref {r:?}"
        );
    }
    assert!(inb.authentication_results.len() <= 16);
    if let Some(f) = &inb.from {
        clean("from", f);
    }
    clean("subject", &inb.subject);
    match &inb.classification {
        Classification::Bounce {
            diagnostic, report, ..
        } => {
            clean("diagnostic", diagnostic);
            match report {
                BounceReport::Dsn(statuses) => {
                    for s in statuses {
                        // addresses are for matching, not for display: lowercase, not escaped
                        lower("dsn address", &s.address);
                        clean("dsn diagnostic", &s.diagnostic);
                        let _ = inb.classification.bounce_about(&s.address);
                    }
                }
                BounceReport::Notice(addresses) => {
                    assert!(addresses.len() <= 64);
                    for a in addresses {
                        lower("notice address", a);
                    }
                }
            }
        }
        Classification::AutoReply { reason } | Classification::Unrecognised { reason } => {
            clean("reason", reason)
        }
        Classification::Command { .. } => {}
    }
    let domain = inb
        .from
        .as_deref()
        .and_then(|f| f.rsplit_once('@'))
        .map_or("", |(_, d)| d);
    let _ = classify::dmarc_pass(&inb.authentication_results, "mx.invited.test", domain);
}

fuzz_target!(|data: &[u8]| {
    contain_parser_panics();
    let inb = classify::classify(data, "replies");
    check(&inb);
    // the path of a message over the size cap, of which a source read only the head
    let head = &data[..data.len().min(MAX_HEAD_BYTES)];
    let big = classify::classify_too_large(head, 20 << 20, "replies");
    check(&big);
    assert!(matches!(
        big.classification,
        Classification::Unrecognised { .. }
    ));
    let _ = classify::command_keyword(&String::from_utf8_lossy(data));
});
