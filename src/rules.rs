//! Input rules, as pure functions: enrollment fields, invitation rows, web-mail and market checks.
//! Each failure names the field it is about.

use serde::{Deserialize, Serialize};

use crate::config::{is_country, Config, LOCALES};
use crate::model::{
    check_text, Address, Contact, Email, Enrollment, EnrollmentState, Mpn, Support,
};

/// The enrollment form as a file (`invited enroll --file`) or an API body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentFile {
    pub company: String,
    pub country: String,
    #[serde(default)]
    pub locale: Option<String>,
    pub address: FileAddress,
    pub primary_contact: FileContact,
    pub support: FileSupport,
    pub mpn: FileMpn,
}
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAddress {
    pub street: String,
    pub city: String,
    pub postal_code: String,
}
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileContact {
    pub name: String,
    pub email: String,
    pub phone: String,
}
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSupport {
    pub email: String,
    pub phone: String,
    #[serde(default)]
    pub website: Option<String>,
}
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMpn {
    pub id: String,
    pub country: String,
}

/// The same fields, flat, as the web form posts them. `contact_email` is fixed to the invited
/// address when the form comes from an invitation page.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EnrollFields {
    pub company: String,
    pub country: String,
    pub street: String,
    pub city: String,
    pub postal_code: String,
    pub contact_name: String,
    pub contact_email: String,
    pub contact_phone: String,
    pub support_email: String,
    pub support_phone: String,
    pub website: String,
    pub mpn_id: String,
    pub mpn_country: String,
    pub locale: String,
}

pub const FORM_FIELDS: &[&str] = &[
    "company",
    "country",
    "street",
    "city",
    "postal_code",
    "contact_name",
    "contact_phone",
    "support_email",
    "support_phone",
    "website",
    "mpn_id",
    "mpn_country",
    "locale",
];

impl From<EnrollmentFile> for EnrollFields {
    fn from(f: EnrollmentFile) -> Self {
        EnrollFields {
            company: f.company,
            country: f.country,
            street: f.address.street,
            city: f.address.city,
            postal_code: f.address.postal_code,
            contact_name: f.primary_contact.name,
            contact_email: f.primary_contact.email,
            contact_phone: f.primary_contact.phone,
            support_email: f.support.email,
            support_phone: f.support.phone,
            website: f.support.website.unwrap_or_default(),
            mpn_id: f.mpn.id,
            mpn_country: f.mpn.country,
            locale: f.locale.unwrap_or_default(),
        }
    }
}

/// The key a flat field has in the enrollment file, for messages about `enroll --file`.
pub fn file_key(field: &str) -> &'static str {
    match field {
        "company" => "company",
        "country" => "country",
        "locale" => "locale",
        "street" => "address.street",
        "city" => "address.city",
        "postal_code" => "address.postal_code",
        "contact_name" => "primary_contact.name",
        "contact_email" => "primary_contact.email",
        "contact_phone" => "primary_contact.phone",
        "support_email" => "support.email",
        "support_phone" => "support.phone",
        "website" => "support.website",
        "mpn_id" => "mpn.id",
        "mpn_country" => "mpn.country",
        _ => "form",
    }
}

/// A rule broken by one field, as a stable code (pages translate it) and an English message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: &'static str,
    pub code: &'static str,
    pub message: String,
}

fn text(
    errors: &mut Vec<FieldError>,
    field: &'static str,
    value: &str,
    required: bool,
    max: usize,
) -> String {
    let v = value.trim();
    if let Err(m) = check_text(v) {
        errors.push(FieldError {
            field,
            code: "control",
            message: m,
        });
    } else if required && v.is_empty() {
        errors.push(FieldError {
            field,
            code: "required",
            message: "is required".into(),
        });
    } else if v.chars().count() > max {
        errors.push(FieldError {
            field,
            code: "too_long",
            message: format!("is longer than {max} characters"),
        });
    }
    v.to_string()
}

fn country(errors: &mut Vec<FieldError>, field: &'static str, value: &str) -> String {
    let v = value.trim().to_ascii_uppercase();
    if v.is_empty() {
        errors.push(FieldError {
            field,
            code: "required",
            message: "is required".into(),
        });
    } else if !is_country(&v) {
        errors.push(FieldError {
            field,
            code: "country",
            message: format!(
                "{:?} is not an ISO 3166-1 alpha-2 country code (like KR)",
                value.trim()
            ),
        });
    }
    v
}

fn email(errors: &mut Vec<FieldError>, field: &'static str, value: &str) -> Option<Email> {
    if value.trim().is_empty() {
        errors.push(FieldError {
            field,
            code: "required",
            message: "is required".into(),
        });
        return None;
    }
    match Email::parse(value) {
        Ok(e) => Some(e),
        Err(m) => {
            errors.push(FieldError {
                field,
                code: "email",
                message: format!("{:?} {m}", value.trim()),
            });
            None
        }
    }
}

pub fn webmail_error(cfg: &Config, field: &'static str, e: &Email) -> Option<FieldError> {
    cfg.is_webmail(e.domain()).then(|| FieldError {
        field,
        code: "webmail",
        message: format!(
            "{e} is on a web-based mail service ({}); the primary contact must use a company address",
            e.domain()
        ),
    })
}

/// Validates an enrollment; returns every field error at once.
pub fn validate_enrollment(
    cfg: &Config,
    f: &EnrollFields,
) -> Result<(Enrollment, String), Vec<FieldError>> {
    let mut errors = Vec::new();
    let company = text(&mut errors, "company", &f.company, true, 200);
    let company_country = country(&mut errors, "country", &f.country);
    let street = text(&mut errors, "street", &f.street, true, 200);
    let city = text(&mut errors, "city", &f.city, true, 100);
    let postal_code = text(&mut errors, "postal_code", &f.postal_code, true, 20);
    let contact_name = text(&mut errors, "contact_name", &f.contact_name, true, 200);
    let contact_email = email(&mut errors, "contact_email", &f.contact_email);
    if let Some(e) = &contact_email {
        if let Some(err) = webmail_error(cfg, "contact_email", e) {
            errors.push(err);
        }
    }
    let contact_phone = phone(&mut errors, "contact_phone", &f.contact_phone);
    let support_email = email(&mut errors, "support_email", &f.support_email);
    let support_phone = phone(&mut errors, "support_phone", &f.support_phone);
    let website = text(&mut errors, "website", &f.website, false, 300);
    if !(website.is_empty() || website.starts_with("https://") || website.starts_with("http://")) {
        errors.push(FieldError {
            field: "website",
            code: "url",
            message: "must start with https:// or http://".into(),
        });
    }
    let mpn_id = text(&mut errors, "mpn_id", &f.mpn_id, true, 20);
    if !mpn_id.is_empty() && !mpn_id.chars().all(|c| c.is_ascii_digit()) {
        errors.push(FieldError {
            field: "mpn_id",
            code: "mpn_id",
            message: "must be digits only".into(),
        });
    }
    let mpn_country = country(&mut errors, "mpn_country", &f.mpn_country);
    if is_country(&mpn_country) && is_country(&company_country) && mpn_country != company_country {
        errors.push(FieldError {
            field: "mpn_country",
            code: "mpn_country",
            message: format!("{mpn_country} must equal the company's country {company_country}"),
        });
    }
    let locale = f.locale.trim();
    let locale = if locale.is_empty() {
        cfg.default_locale.clone()
    } else if LOCALES.contains(&locale) {
        locale.to_string()
    } else {
        errors.push(FieldError {
            field: "locale",
            code: "locale",
            message: format!("{locale:?} is not one of {LOCALES:?}"),
        });
        cfg.default_locale.clone()
    };
    match (contact_email, support_email) {
        (Some(ce), Some(se)) if errors.is_empty() => Ok((
            Enrollment {
                state: EnrollmentState::PendingVerification,
                company,
                country: company_country,
                address: Address {
                    street,
                    city,
                    postal_code,
                },
                primary_contact: Contact {
                    name: contact_name,
                    email: ce,
                    phone: contact_phone,
                },
                support: Support {
                    email: se,
                    phone: support_phone,
                    website: (!website.is_empty()).then_some(website),
                },
                mpn: Mpn {
                    id: mpn_id,
                    country: mpn_country,
                },
            },
            locale,
        )),
        _ => Err(errors),
    }
}

fn phone(errors: &mut Vec<FieldError>, field: &'static str, value: &str) -> String {
    let v = text(errors, field, value, true, 40);
    if !v.is_empty()
        && !v
            .chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c))
    {
        errors.push(FieldError {
            field,
            code: "phone",
            message: "may hold only digits, spaces and + - ( ) .".into(),
        });
    }
    v
}

/// One invitation row (CLI `--email` or a CSV line).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InviteRow {
    pub email: String,
    pub company: String,
    pub country: String,
    #[serde(default)]
    pub contact_name: String,
    #[serde(default)]
    pub locale: String,
}

pub struct ValidInvite {
    pub email: Email,
    pub company: String,
    pub country: String,
    pub contact_name: String,
    pub locale: String,
}

pub fn validate_invite(
    cfg: &Config,
    markets: &[String],
    row: &InviteRow,
) -> Result<ValidInvite, FieldError> {
    let mut errors = Vec::new();
    let email = email(&mut errors, "email", &row.email);
    let company = text(&mut errors, "company", &row.company, true, 200);
    let country = country(&mut errors, "country", &row.country);
    let contact_name = text(&mut errors, "contact_name", &row.contact_name, false, 200);
    let locale = row.locale.trim();
    if !locale.is_empty() && !LOCALES.contains(&locale) {
        errors.push(FieldError {
            field: "locale",
            code: "locale",
            message: format!("{locale:?} is not one of {LOCALES:?}"),
        });
    }
    if let Some(e) = &email {
        if let Some(err) = webmail_error(cfg, "email", e) {
            errors.push(err);
        }
    }
    if errors.is_empty() && !markets.contains(&country) {
        errors.push(market_error(&country, markets));
    }
    match (errors.into_iter().next(), email) {
        (None, Some(email)) => Ok(ValidInvite {
            email,
            company,
            country,
            contact_name,
            locale: cfg.locale(Some(locale).filter(|l| !l.is_empty())),
        }),
        (Some(e), _) => Err(e),
        (None, None) => Err(FieldError {
            field: "email",
            code: "required",
            message: "is required".into(),
        }),
    }
}

/// An invitation CSV as `invited invite --csv` reads it: each row with the line it starts on
/// (1-based; the header is line 1), and the lines the CSV reader could not read, with why.
#[derive(Debug, Default)]
pub struct InviteCsv {
    pub rows: Vec<(u64, InviteRow)>,
    pub unreadable: Vec<(u64, String)>,
}

/// Reads an invitation CSV: a header row naming `email`, `company` and `country` (any order, any
/// case, a BOM allowed; `contact_name` and `locale` optional, other columns ignored), then one
/// row per line; fields trimmed, short rows allowed (missing fields are empty). Pure: no rule is
/// checked here ([`validate_invite`] does that per row). Err only when the header row is
/// unusable.
pub fn read_invite_csv(data: &[u8]) -> Result<InviteCsv, String> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(data);
    // The line a row starts on, counted from its byte offset: the csv crate's own line count
    // is one short per row in a file with CRLF endings (as Excel saves it).
    let mut lines = LineCounter::default();
    let headers: Vec<String> = rdr
        .headers()
        .map_err(|e| format!("header row: {e}"))?
        .iter()
        .map(|h| h.trim().trim_start_matches('\u{feff}').to_ascii_lowercase())
        .collect();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let (Some(ce), Some(cc), Some(cn)) = (col("email"), col("company"), col("country")) else {
        return Err(format!(
            "the header row must name the columns email, company and country (found: {})",
            headers.join(",")
        ));
    };
    let (cname, cloc) = (col("contact_name"), col("locale"));
    let mut out = InviteCsv::default();
    for rec in rdr.records() {
        match rec {
            Ok(r) => {
                let line = lines.line_at(data, r.position().map_or(0, |p| p.byte()));
                let get = |i: Option<usize>| i.and_then(|i| r.get(i)).unwrap_or("").to_string();
                out.rows.push((
                    line,
                    InviteRow {
                        email: get(Some(ce)),
                        company: get(Some(cc)),
                        country: get(Some(cn)),
                        contact_name: get(cname),
                        locale: get(cloc),
                    },
                ));
            }
            Err(e) => {
                let line = lines.line_at(data, e.position().map_or(0, |p| p.byte()));
                out.unreadable.push((line, e.to_string()));
            }
        }
    }
    Ok(out)
}

/// Turns byte offsets of a file read front to back into 1-based line numbers. A line ends at
/// `\n`, `\r\n` or a lone `\r` (as the CSV reader ends its records, and as old Mac CSV files
/// end their lines), each counted once.
#[derive(Default)]
struct LineCounter {
    offset: usize,
    breaks: u64,
}

impl LineCounter {
    fn line_at(&mut self, data: &[u8], offset: u64) -> u64 {
        let mut offset = (offset as usize).min(data.len());
        // a record may be reported as starting on the terminator before it (the LF of a CRLF)
        while matches!(data.get(offset), Some(b'\r' | b'\n')) {
            offset += 1;
        }
        if offset >= self.offset {
            self.breaks += line_breaks(data, self.offset, offset);
        } else {
            // not expected (rows come in order), but stay right if it happens
            self.breaks = line_breaks(data, 0, offset);
        }
        self.offset = offset;
        self.breaks + 1
    }
}

/// The line breaks in `data[from..to]`: each `\n`, and each `\r` not followed by `\n`.
fn line_breaks(data: &[u8], from: usize, to: usize) -> u64 {
    (from..to)
        .filter(|&i| match data[i] {
            b'\n' => true,
            b'\r' => data.get(i + 1) != Some(&b'\n'),
            _ => false,
        })
        .count() as u64
}

pub fn market_error(country: &str, markets: &[String]) -> FieldError {
    FieldError {
        field: "country",
        code: "market",
        message: format!(
            "{country} is not in the provider's markets ({})",
            markets.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg() -> Config {
        Config::parse(
            include_str!("../config/invited.toml"),
            Path::new("/x/invited.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn good() -> EnrollFields {
        EnrollFields {
            company: "Fabrikam Korea Ltd.".into(),
            country: "kr".into(),
            street: "123 Teheran-ro".into(),
            city: "Seoul".into(),
            postal_code: "06236".into(),
            contact_name: "Kim Minji".into(),
            contact_email: "minji.kim@fabrikam.test".into(),
            contact_phone: "+82 2 555 0100".into(),
            support_email: "support@fabrikam.test".into(),
            support_phone: "+82 2 555 0199".into(),
            website: String::new(),
            mpn_id: "6543210".into(),
            mpn_country: "KR".into(),
            locale: "ko-KR".into(),
        }
    }

    #[test]
    fn a_good_enrollment_passes() {
        let (e, locale) = validate_enrollment(&cfg(), &good()).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(e.country, "KR");
        assert_eq!(locale, "ko-KR");
    }

    #[test]
    fn each_rule_names_its_field() {
        type Edit = fn(&mut EnrollFields);
        let cases: &[(Edit, &str, &str)] = &[
            (
                |f| f.contact_email = "minji@gmail.com".into(),
                "contact_email",
                "webmail",
            ),
            (
                |f| f.contact_email = "minji@yahoo.co.kr".into(),
                "contact_email",
                "webmail",
            ),
            (
                |f| f.mpn_country = "JP".into(),
                "mpn_country",
                "mpn_country",
            ),
            (
                |f| f.company = "Evil\r\nBcc: x@y.test".into(),
                "company",
                "control",
            ),
            (|f| f.city = String::new(), "city", "required"),
            (|f| f.country = "Korea".into(), "country", "country"),
            (
                |f| f.support_email = "nope".into(),
                "support_email",
                "email",
            ),
            (
                |f| f.contact_phone = "call me".into(),
                "contact_phone",
                "phone",
            ),
            (
                |f| f.website = "javascript:alert(1)".into(),
                "website",
                "url",
            ),
            (|f| f.locale = "fr-FR".into(), "locale", "locale"),
        ];
        for (edit, field, code) in cases {
            let mut f = good();
            edit(&mut f);
            let errs = validate_enrollment(&cfg(), &f).err().unwrap_or_default();
            assert!(
                errs.iter().any(|e| e.field == *field && e.code == *code),
                "{field}/{code}: got {errs:?}"
            );
        }
    }

    #[test]
    fn csv_rows_know_their_lines_whatever_ends_them() {
        let lines = |data: &str| -> Vec<(u64, String)> {
            let read = read_invite_csv(data.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            let mut all: Vec<(u64, String)> =
                read.rows.into_iter().map(|(l, r)| (l, r.email)).collect();
            all.extend(read.unreadable);
            all.sort();
            all
        };
        let want = |v: &[(u64, &str)]| -> Vec<(u64, String)> {
            v.iter().map(|(l, e)| (*l, e.to_string())).collect()
        };
        let three = want(&[(2, "a@f.test"), (3, "b@f.test"), (4, "c@f.test")]);
        let body = [
            "email,company,country",
            "a@f.test,A,KR",
            "b@f.test,B,KR",
            "c@f.test,C,KR",
        ];
        assert_eq!(lines(&body.join("\n")), three, "LF");
        assert_eq!(lines(&body.join("\r\n")), three, "CRLF");
        // Found by the fuzzer (fuzz/, target `rules`): with lone CRs (old Mac CSV) every row
        // was reported on line 2.
        assert_eq!(lines(&body.join("\r")), three, "CR");
        assert_eq!(
            lines("email,company,country\r\na@f.test,A,KR\rb@f.test,B,KR\n\n\"c@f.test\",\"C\r\nCo\",KR\r\nd@f.test,D,KR"),
            want(&[(2, "a@f.test"), (3, "b@f.test"), (5, "c@f.test"), (7, "d@f.test")]),
            "mixed, a blank line, a quoted line break"
        );
        // a BOM and the header's column order and case
        let read = read_invite_csv("\u{feff}Country,EMAIL,company\nKR,a@f.test,A".as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read.rows[0].1.email, "a@f.test");
        assert_eq!(read.rows[0].1.country, "KR");
        let err = read_invite_csv(b"company,country\nA,KR")
            .err()
            .unwrap_or_default();
        assert!(err.contains("must name the columns"), "{err}");
    }

    #[test]
    fn invite_rules() {
        let c = cfg();
        let markets = vec!["KR".to_string()];
        let row = |email: &str, country: &str| InviteRow {
            email: email.into(),
            company: "Fabrikam".into(),
            country: country.into(),
            ..Default::default()
        };
        assert!(validate_invite(&c, &markets, &row("a@fabrikam.test", "KR")).is_ok());
        let e = validate_invite(&c, &markets, &row("a@fabrikam.test", "JP")).err();
        assert_eq!(e.map(|e| e.code), Some("market"));
        let e = validate_invite(&c, &markets, &row("a@hotmail.com", "KR")).err();
        assert_eq!(e.map(|e| e.code), Some("webmail"));
        let e = validate_invite(&c, &markets, &row("not-an-address", "KR")).err();
        assert_eq!(e.map(|e| e.field), Some("email"));
    }
}
