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
];

pub const PAGES: &[&str] = &[
    "page_verify_contact",
    "page_accept_agreement",
    "page_authorize_provider",
    "page_enroll",
    "page_accept_customer",
    "page_result",
    "page_invalid",
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
            "page_verify_contact.html.hbs", "page_accept_agreement.html.hbs", "page_authorize_provider.html.hbs",
            "page_enroll.html.hbs", "page_accept_customer.html.hbs", "page_result.html.hbs", "page_invalid.html.hbs",
        )
    };
}

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
}

impl Templates {
    pub fn load(dir: Option<&Path>) -> Result<Templates, TemplateError> {
        let mut text = Handlebars::new();
        text.set_strict_mode(true);
        text.register_escape_fn(handlebars::no_escape);
        let mut html = Handlebars::new();
        html.set_strict_mode(true);
        let mut style_css = STYLE_CSS.to_string();
        if let Some(d) = dir {
            if let Ok(s) = std::fs::read_to_string(d.join("style.css")) {
                style_css = s;
            }
        }
        for (path, builtin) in EN_US.iter().chain(KO_KR.iter()) {
            let source = match dir.map(|d| d.join(path)) {
                Some(p) if p.exists() => {
                    std::fs::read_to_string(&p).map_err(|e| TemplateError::Load {
                        name: p.display().to_string(),
                        message: e.to_string(),
                    })?
                }
                _ => builtin.to_string(),
            };
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
        Ok(Templates {
            text,
            html,
            style_css,
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
