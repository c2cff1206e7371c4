//! The enrollment form and the invitation CSV (`invited::rules`) on arbitrary input.
//!
//! The first byte picks the input: an invitation CSV (read as `invited invite --csv` reads it,
//! every row then validated), the flat form fields (NUL-separated, as the web form posts them),
//! or the enrollment file as JSON or TOML (`invited enroll --file`). A finding is any panic, or
//! an accepted value that breaks a rule it was accepted under: line numbers out of order or past
//! the file, a required field empty, a field too long or with control characters, a country or
//! locale not in the lists, an address on a web-mail domain, a country outside the markets.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use invited::config::{is_country, Config, LOCALES};
use invited::rules::{self, EnrollFields, EnrollmentFile};
use invited::text::is_escaped;
use libfuzzer_sys::fuzz_target;

fn cfg() -> &'static Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(|| {
        Config::parse(
            include_str!("../../config/invited.toml"),
            Path::new("/fuzz/config/invited.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    })
}

fn text_ok(what: &str, s: &str, max: usize, required: bool) {
    assert!(s.chars().count() <= max, "{what} longer than {max}: {s:?}");
    assert!(!required || !s.is_empty(), "{what} empty");
    assert!(
        !s.chars().any(is_escaped),
        "{what} with a control character: {s:?}"
    );
    assert_eq!(s, s.trim(), "{what} not trimmed");
}

fn enrollment(f: &EnrollFields) {
    let Ok((e, locale)) = rules::validate_enrollment(cfg(), f) else {
        return;
    };
    text_ok("company", &e.company, 200, true);
    text_ok("street", &e.address.street, 200, true);
    text_ok("city", &e.address.city, 100, true);
    text_ok("postal_code", &e.address.postal_code, 20, true);
    text_ok("contact_name", &e.primary_contact.name, 200, true);
    text_ok("contact_phone", &e.primary_contact.phone, 40, true);
    text_ok("support_phone", &e.support.phone, 40, true);
    text_ok("mpn_id", &e.mpn.id, 20, true);
    assert!(
        e.mpn.id.chars().all(|c| c.is_ascii_digit()),
        "{:?}",
        e.mpn.id
    );
    assert!(is_country(&e.country) && e.country == e.mpn.country);
    assert!(LOCALES.contains(&locale.as_str()), "{locale}");
    assert!(!cfg().is_webmail(e.primary_contact.email.domain()));
    if let Some(w) = &e.support.website {
        text_ok("website", w, 300, true);
        assert!(w.starts_with("https://") || w.starts_with("http://"));
    }
}

fn csv(data: &[u8]) {
    let Ok(read) = rules::read_invite_csv(data) else {
        return;
    };
    // an upper bound: every \n and every \r ends a line (a CRLF counts once in the reader)
    let lines = data.iter().filter(|&&b| b == b'\n' || b == b'\r').count() as u64 + 1;
    // every record starts on a line of its own, after the header's (line 1 or later)
    let mut last = 1;
    let mut all: Vec<u64> = read.rows.iter().map(|(l, _)| *l).collect();
    all.extend(read.unreadable.iter().map(|(l, _)| *l));
    all.sort_unstable();
    for l in all {
        assert!(l > last, "line {l} after {last}");
        assert!(l <= lines, "line {l} of a file of {lines} lines");
        last = l;
    }
    let markets = vec!["KR".to_string(), "JP".to_string()];
    for (_, row) in &read.rows {
        if let Ok(v) = rules::validate_invite(cfg(), &markets, row) {
            text_ok("company", &v.company, 200, true);
            text_ok("contact_name", &v.contact_name, 200, false);
            assert!(markets.contains(&v.country), "{}", v.country);
            assert!(LOCALES.contains(&v.locale.as_str()), "{}", v.locale);
            assert!(!cfg().is_webmail(v.email.domain()));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => csv(rest),
        1 => {
            let s = String::from_utf8_lossy(rest);
            let mut f = s.split('\0').map(str::to_string);
            let mut next = || f.next().unwrap_or_default();
            let fields = EnrollFields {
                company: next(),
                country: next(),
                street: next(),
                city: next(),
                postal_code: next(),
                contact_name: next(),
                contact_email: next(),
                contact_phone: next(),
                support_email: next(),
                support_phone: next(),
                website: next(),
                mpn_id: next(),
                mpn_country: next(),
                locale: next(),
            };
            enrollment(&fields);
        }
        2 => {
            if let Ok(f) = serde_json::from_slice::<EnrollmentFile>(rest) {
                enrollment(&f.into());
            }
        }
        _ => {
            if let Ok(f) = toml::from_str::<EnrollmentFile>(&String::from_utf8_lossy(rest)) {
                enrollment(&f.into());
            }
        }
    }
});
