//! Handlebars templates: mail (subject / text / HTML per kind and locale) and pages. Built-in
//! copies are compiled in; a configured directory overrides any of them. Strict mode throughout.

use std::path::Path;

use handlebars::Handlebars;
use serde::Serialize;

use crate::config::LOCALES;

pub const MAIL_KINDS: &[&str] = &[
    "contact_verification",
    "enrollment_status",
    "agreement_request",
    "provider_invitation",
    "invitation_reminder",
    "provider_notice",
    "customer_invitation",
    "test_email",
];

pub const PAGES: &[&str] = &[
    "page_verify_contact",
    "page_accept_agreement",
    "page_authorize_provider",
    "page_enroll",
    "page_accept_customer",
    "page_result",
    "page_invalid",
    "page_unsubscribe",
];

macro_rules! locale_files {
    ($loc:literal: $($name:literal),* $(,)?) => {
        &[$((concat!($loc, "/", $name), include_str!(concat!("../templates/", $loc, "/", $name)))),*]
    };
}

macro_rules! all_files {
    ($loc:literal) => {
        locale_files!($loc:
            "contact_verification.subject.hbs", "contact_verification.txt.hbs", "contact_verification.html.hbs",
            "enrollment_status.subject.hbs", "enrollment_status.txt.hbs", "enrollment_status.html.hbs",
            "agreement_request.subject.hbs", "agreement_request.txt.hbs", "agreement_request.html.hbs",
            "provider_invitation.subject.hbs", "provider_invitation.txt.hbs", "provider_invitation.html.hbs",
            "invitation_reminder.subject.hbs", "invitation_reminder.txt.hbs", "invitation_reminder.html.hbs",
            "provider_notice.subject.hbs", "provider_notice.txt.hbs", "provider_notice.html.hbs",
            "customer_invitation.subject.hbs", "customer_invitation.txt.hbs", "customer_invitation.html.hbs",
            "test_email.subject.hbs", "test_email.txt.hbs", "test_email.html.hbs",
            "page_verify_contact.html.hbs", "page_accept_agreement.html.hbs", "page_authorize_provider.html.hbs",
            "page_enroll.html.hbs", "page_accept_customer.html.hbs", "page_result.html.hbs", "page_invalid.html.hbs",
            "page_unsubscribe.html.hbs",
        )
    };
}

/// The console's pages: one template each for both locales (the words come from
/// `console::strings`); a directory overrides them as `console/NAME.html.hbs`.
macro_rules! console_files {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../templates/console/", $name, ".html.hbs")))),*]
    };
}

pub const CONSOLE_PAGES: &[(&str, &str)] = console_files!(
    "layout", "login", "message", "overview", "invite", "records", "record", "confirm", "review",
    "outbox", "inbound",
);
const CONSOLE_CSS: &str = include_str!("../templates/console/console.css");

const EN_US: &[(&str, &str)] = all_files!("en-US");
const KO_KR: &[(&str, &str)] = all_files!("ko-KR");
pub const STYLE_CSS: &str = include_str!("../templates/style.css");

/// Rendered mail parts.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {name}: {message}")]
    Load { name: String, message: String },
    #[error("rendering {name}: {message}")]
    Render { name: String, message: String },
}

/// Two registries because handlebars has one escape function per registry: text parts and
/// subjects are not HTML-escaped, HTML parts and pages are.
pub struct Templates {
    text: Handlebars<'static>,
    html: Handlebars<'static>,
    pub style_css: String,
    pub console_css: String,
}

/// The file `rel` under the templates directory if it is there, else the built-in copy.
fn overridden(dir: Option<&Path>, rel: &str, builtin: &str) -> Result<String, TemplateError> {
    match dir.map(|d| d.join(rel)) {
        Some(p) if p.exists() => std::fs::read_to_string(&p).map_err(|e| TemplateError::Load {
            name: p.display().to_string(),
            message: e.to_string(),
        }),
        _ => Ok(builtin.to_string()),
    }
}

impl Templates {
    pub fn load(dir: Option<&Path>) -> Result<Templates, TemplateError> {
        let mut text = Handlebars::new();
        text.set_strict_mode(true);
        text.register_escape_fn(handlebars::no_escape);
        let mut html = Handlebars::new();
        html.set_strict_mode(true);
        let style_css = overridden(dir, "style.css", STYLE_CSS)?;
        for (path, builtin) in EN_US.iter().chain(KO_KR.iter()) {
            let source = overridden(dir, path, builtin)?;
            let name = path.trim_end_matches(".hbs");
            let reg = if name.ends_with(".html") {
                &mut html
            } else {
                &mut text
            };
            reg.register_template_string(name, source)
                .map_err(|e| TemplateError::Load {
                    name: path.to_string(),
                    message: e.to_string(),
                })?;
        }
        let console_css = overridden(dir, "console/console.css", CONSOLE_CSS)?;
        for (name, builtin) in CONSOLE_PAGES {
            let source = overridden(dir, &format!("console/{name}.html.hbs"), builtin)?;
            for loc in LOCALES {
                html.register_template_string(&format!("{loc}/console_{name}.html"), &source)
                    .map_err(|e| TemplateError::Load {
                        name: format!("console/{name}.html.hbs"),
                        message: e.to_string(),
                    })?;
            }
        }
        Ok(Templates {
            text,
            html,
            style_css,
            console_css,
        })
    }

    fn locale(locale: &str) -> &str {
        if LOCALES.contains(&locale) {
            locale
        } else {
            LOCALES[0]
        }
    }

    pub fn render_mail<C: Serialize>(
        &self,
        kind: &str,
        locale: &str,
        ctx: &C,
    ) -> Result<Rendered, TemplateError> {
        let loc = Self::locale(locale);
        let r = |reg: &Handlebars, part: &str| {
            let name = format!("{loc}/{kind}.{part}");
            reg.render(&name, ctx).map_err(|e| TemplateError::Render {
                name,
                message: e.to_string(),
            })
        };
        let subject = r(&self.text, "subject")?;
        // A subject is one line: fold whatever a template or value put in it.
        let subject = subject.split_whitespace().collect::<Vec<_>>().join(" ");
        Ok(Rendered {
            subject,
            text: r(&self.text, "txt")?,
            html: r(&self.html, "html")?,
        })
    }

    pub fn render_page<C: Serialize>(
        &self,
        page: &str,
        locale: &str,
        ctx: &C,
    ) -> Result<String, TemplateError> {
        let name = format!("{}/{page}.html", Self::locale(locale));
        self.html
            .render(&name, ctx)
            .map_err(|e| TemplateError::Render {
                name,
                message: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::MailFieldsV1;

    #[derive(Serialize)]
    struct Ctx<'a> {
        kind: &'a str,
        #[serde(flatten)]
        f: &'a MailFieldsV1,
        link: String,
        expires_at: String,
        unsubscribe: String,
    }

    fn variants() -> Vec<MailFieldsV1> {
        let base = MailFieldsV1 {
            from_name: "Contoso Distribution".into(),
            recipient_name: "Kim Minji".into(),
            recipient_email: "minji.kim@fabrikam.test".into(),
            company: "Fabrikam <Korea> & Co".into(),
            country: "KR".into(),
            provider_name: "Contoso Distribution Korea".into(),
            provider_email: "ops@contoso.test".into(),
            reseller_company: "Fabrikam Korea Ltd.".into(),
            reseller_email: "minji.kim@fabrikam.test".into(),
            reply_enabled: true,
            admin_access: true,
            in_markets: true,
            state: "in_review".into(),
            reason: String::new(),
            needs_enrollment: false,
        };
        let mut out = vec![base.clone()];
        for state in [
            "pending_verification",
            "approved",
            "active",
            "rejected",
            "expired",
            "undeliverable",
            "authorized",
            "declined",
            "revoked",
        ] {
            let mut v = base.clone();
            v.state = state.into();
            v.reason = "incomplete company details".into();
            out.push(v);
        }
        let mut off = base.clone();
        off.reply_enabled = false;
        off.admin_access = false;
        off.in_markets = false;
        off.needs_enrollment = true;
        off.recipient_name = String::new();
        out.push(off);
        out
    }

    #[test]
    fn every_mail_template_renders_in_every_locale() {
        let t = Templates::load(None).unwrap_or_else(|e| panic!("{e}"));
        let token = "AQJrMQI-secret-token-value_0123456789";
        let unsub_token = "AQJrMQU-unsubscribe-token_0123456789";
        for locale in LOCALES {
            for kind in MAIL_KINDS {
                for f in variants() {
                    let ctx = Ctx {
                        kind,
                        f: &f,
                        link: format!("http://127.0.0.1:8080/t/{token}"),
                        expires_at: "2026-12-08 14:00 UTC".into(),
                        unsubscribe: if matches!(
                            *kind,
                            "provider_invitation" | "invitation_reminder"
                        ) {
                            format!("http://127.0.0.1:8080/u/{unsub_token}")
                        } else {
                            String::new()
                        },
                    };
                    let r = t
                        .render_mail(kind, locale, &ctx)
                        .unwrap_or_else(|e| panic!("{locale} {kind}: {e}"));
                    assert!(
                        !r.subject.is_empty()
                            && !r.text.trim().is_empty()
                            && !r.html.trim().is_empty(),
                        "{locale} {kind}"
                    );
                    assert!(
                        !r.subject.contains(token),
                        "{locale} {kind}: the token is never in a subject"
                    );
                    assert!(
                        !r.subject.contains('\n'),
                        "{locale} {kind}: one-line subject"
                    );
                    assert!(
                        !r.html.contains("<Korea>"),
                        "{locale} {kind}: HTML is escaped"
                    );
                    let linked = matches!(
                        *kind,
                        "contact_verification"
                            | "agreement_request"
                            | "provider_invitation"
                            | "invitation_reminder"
                            | "customer_invitation"
                    );
                    if linked {
                        assert!(
                            r.text.contains(token) && r.html.contains(token),
                            "{locale} {kind}: the link is in both parts"
                        );
                    }
                    if matches!(*kind, "provider_invitation" | "invitation_reminder") {
                        assert!(
                            r.text.contains(unsub_token) && r.html.contains(unsub_token),
                            "{locale} {kind}: the unsubscribe link is in both parts"
                        );
                        assert!(!r.subject.contains(unsub_token), "{locale} {kind}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_page_renders_in_every_locale() {
        let t = Templates::load(None).unwrap_or_else(|e| panic!("{e}"));
        let mut errors = serde_json::Map::new();
        let mut values = serde_json::Map::new();
        for f in crate::rules::FORM_FIELDS {
            errors.insert(f.to_string(), "".into());
            values.insert(f.to_string(), "v".into());
        }
        errors.insert("form".into(), "".into());
        for locale in LOCALES {
            for page in PAGES {
                for flag in [true, false] {
                    let ctx = serde_json::json!({
                        "lang": locale, "switch_url": "/t/x?lang=en-US", "action_url": "/t/x",
                        "provider_name": "Contoso <Korea>", "from_name": "Contoso", "company": "Fabrikam",
                        "country": "KR", "recipient_email": "a@b.test", "reseller_company": "R",
                        "admin_access": flag, "in_markets": flag, "markets": "KR", "expires_at": "soon",
                        "consent_error": flag, "errors": errors, "values": values,
                        "result": "done", "result_title": "T", "result_message": "M",
                        "suppressed": flag, "pending": flag,
                    });
                    let html = t
                        .render_page(page, locale, &ctx)
                        .unwrap_or_else(|e| panic!("{locale} {page}: {e}"));
                    assert!(html.contains("<html"), "{locale} {page}");
                    assert!(!html.contains("<script"), "{locale} {page}: no scripts");
                    assert!(!html.contains("<Korea>"), "{locale} {page}: escaped");
                }
            }
        }
    }
}
