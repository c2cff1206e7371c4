//! Page view models and their localized strings: pure functions from a record (and what the
//! visitor sent) to the context a page template renders.

use serde::Serialize;
use std::collections::BTreeMap;

use crate::app::{Action, NotDone, Shared};
use crate::model::{Purpose, Record};
use crate::outbox::format_expiry;
use crate::rules::{EnrollFields, FieldError, FORM_FIELDS};

#[derive(Debug, Serialize, Default)]
pub struct PageContext {
    pub lang: String,
    pub switch_url: String,
    pub action_url: String,
    pub provider_name: String,
    pub from_name: String,
    pub company: String,
    pub country: String,
    pub recipient_email: String,
    pub reseller_company: String,
    pub admin_access: bool,
    pub in_markets: bool,
    pub markets: String,
    pub expires_at: String,
    pub consent_error: bool,
    pub errors: BTreeMap<String, String>,
    pub values: BTreeMap<String, String>,
    pub result: String,
    pub result_title: String,
    pub result_message: String,
    /// unsubscribe page: the address is already on the provider's suppression list
    pub suppressed: bool,
    /// unsubscribe page: an invitation of this provider waits for an answer (and is declined)
    pub pending: bool,
}

pub fn other_locale(l: &str) -> &'static str {
    if l == "ko-KR" {
        "en-US"
    } else {
        "ko-KR"
    }
}

/// The base context for any page about `rec` reached through `token`.
pub fn context(
    sh: &Shared,
    rec: Option<&Record>,
    token: &str,
    locale: &str,
    reseller_company: &str,
) -> PageContext {
    let mut c = PageContext {
        lang: locale.to_string(),
        switch_url: format!("/t/{token}?lang={}", other_locale(locale)),
        action_url: format!("/t/{token}?lang={locale}"),
        from_name: sh.cfg.from_name.clone(),
        reseller_company: reseller_company.to_string(),
        ..Default::default()
    };
    for f in FORM_FIELDS.iter().chain(["form"].iter()) {
        c.errors.insert(f.to_string(), String::new());
        if *f != "form" {
            c.values.insert(f.to_string(), String::new());
        }
    }
    if let Some(r) = rec {
        c.company = r.company().to_string();
        c.recipient_email = r.recipient().to_string();
        c.expires_at = r
            .expires_at
            .map(|t| format_expiry(t.timestamp(), locale))
            .unwrap_or_default();
        if let Some(p) = r.provider().and_then(|p| sh.cfg.provider(p)) {
            c.provider_name = p.name.clone();
            c.markets = p.markets.join(", ");
        }
        if let Some(e) = r.enrollment() {
            c.country = e.country.clone();
        }
        if let Some(a) = r.authorization() {
            c.country = a.country.clone();
            c.admin_access = a.admin_access;
            c.in_markets = sh
                .cfg
                .provider(&a.provider)
                .is_some_and(|p| p.markets.contains(&a.country));
            // the enrollment form starts with the name the provider's CSV gave
            c.values
                .insert("contact_name".into(), a.contact_name.clone());
        }
        c.values.insert("company".into(), c.company.clone());
        c.values.insert("country".into(), c.country.clone());
        c.values.insert("locale".into(), r.locale.clone());
    }
    c
}

pub fn keep_values(c: &mut PageContext, v: &EnrollFields) {
    let pairs = [
        ("company", &v.company),
        ("country", &v.country),
        ("street", &v.street),
        ("city", &v.city),
        ("postal_code", &v.postal_code),
        ("contact_name", &v.contact_name),
        ("contact_phone", &v.contact_phone),
        ("support_email", &v.support_email),
        ("support_phone", &v.support_phone),
        ("website", &v.website),
        ("mpn_id", &v.mpn_id),
        ("mpn_country", &v.mpn_country),
        ("locale", &v.locale),
    ];
    for (k, val) in pairs {
        c.values.insert(k.to_string(), val.clone());
    }
}

pub fn set_errors(c: &mut PageContext, errors: &[FieldError], locale: &str) {
    for e in errors {
        let field = if e.field == "contact_email" {
            "form"
        } else {
            e.field
        };
        c.errors.insert(field.to_string(), field_message(e, locale));
    }
    // a summary at the top, so a long form does not hide that something needs fixing
    if !errors.is_empty() && c.errors.get("form").is_none_or(|f| f.is_empty()) {
        let summary = if locale == "ko-KR" {
            "아래 표시된 항목을 고쳐 주세요."
        } else {
            "Please correct the fields marked below."
        };
        c.errors.insert("form".into(), summary.into());
    }
}

fn field_message(e: &FieldError, locale: &str) -> String {
    let ko = locale == "ko-KR";
    let s = match (e.code, ko) {
        ("required", false) => "This field is required.",
        ("required", true) => "필수 항목입니다.",
        ("control", false) => "Line breaks and control characters are not allowed.",
        ("control", true) => "줄 바꿈과 제어 문자는 사용할 수 없습니다.",
        ("too_long", false) => "This is too long.",
        ("too_long", true) => "너무 깁니다.",
        ("country", false) => "Enter a two-letter country code such as KR.",
        ("country", true) => "KR과 같은 두 글자 국가 코드를 입력하세요.",
        ("email", false) => "Enter a valid email address.",
        ("email", true) => "올바른 이메일 주소를 입력하세요.",
        ("webmail", false) => {
            "The primary contact must use a company address, not a web-based mail service."
        }
        ("webmail", true) => {
            "기본 연락처는 웹 기반 메일 서비스가 아닌 회사 주소를 사용해야 합니다."
        }
        ("phone", false) => "Use only digits, spaces and + - ( ) .",
        ("phone", true) => "숫자, 공백, + - ( ) . 만 사용할 수 있습니다.",
        ("url", false) => "The website must start with https:// or http://.",
        ("url", true) => "웹 사이트는 https:// 또는 http://로 시작해야 합니다.",
        ("mpn_id", false) => "The MPN ID is digits only.",
        ("mpn_id", true) => "MPN ID는 숫자만 입력할 수 있습니다.",
        ("mpn_country", false) => "The MPN ID's country must be the company's country.",
        ("mpn_country", true) => "MPN ID의 국가는 회사 국가와 같아야 합니다.",
        ("locale", false) => "Choose English or Korean.",
        ("locale", true) => "영어 또는 한국어를 선택하세요.",
        ("exists", false) => "This address already has an enrollment in progress.",
        ("exists", true) => "이 주소로 진행 중인 등록이 이미 있습니다.",
        _ => return e.message.clone(),
    };
    s.to_string()
}

/// Title and message of the result page after a POST.
pub fn result_text(
    locale: &str,
    purpose: Purpose,
    action: Option<Action>,
    why: Option<&NotDone>,
    already: bool,
) -> (String, String) {
    let ko = locale == "ko-KR";
    let t = |en: &str, k: &str| if ko { k.to_string() } else { en.to_string() };
    if already {
        return (
            t("Already done", "이미 처리되었습니다"),
            t(
                "This was already done. Nothing else is needed.",
                "이미 처리된 요청입니다. 더 하실 일은 없습니다.",
            ),
        );
    }
    if let Some(why) = why {
        return match why {
            NotDone::NotInMarkets { country, markets } => (
                t(
                    "Cannot authorize this provider",
                    "이 공급자를 승인할 수 없습니다",
                ),
                if ko {
                    format!("회사 국가({country})가 공급자의 시장({markets})에 포함되지 않습니다.")
                } else {
                    format!("Your company's country ({country}) is not in this provider's markets ({markets}).")
                },
            ),
            NotDone::ProviderNotAuthorized => (
                t("Cannot accept this invitation", "이 초대를 수락할 수 없습니다"),
                t(
                    "The reseller no longer works with this provider, so the invitation is no longer valid. Nothing was changed.",
                    "리셀러가 더 이상 이 공급자와 협력하지 않으므로 초대가 유효하지 않습니다. 변경된 내용은 없습니다.",
                ),
            ),
            NotDone::NoDecline => (
                t("Nothing to decline", "거절할 항목이 없습니다"),
                t(
                    "This request cannot be declined.",
                    "이 요청은 거절할 수 없습니다.",
                ),
            ),
            _ => (
                t("Not done", "처리되지 않았습니다"),
                t(
                    "This action does not apply to this link.",
                    "이 링크에는 적용되지 않는 작업입니다.",
                ),
            ),
        };
    }
    match (purpose, action) {
        (Purpose::VerifyContact, _) => (
            t("Contact verified", "연락처가 확인되었습니다"),
            t("Thank you. Your enrollment is now in review; we will email you when it is approved.", "감사합니다. 등록이 검토 중이며 승인되면 이메일로 알려 드립니다."),
        ),
        (Purpose::AcceptAgreement, _) => (
            t("Partner agreement accepted", "파트너 계약에 동의했습니다"),
            t("Your enrollment is active.", "등록이 활성화되었습니다."),
        ),
        (Purpose::AuthorizeProvider, Some(Action::Decline)) | (Purpose::AcceptCustomer, Some(Action::Decline)) => (
            t("Invitation declined", "초대를 거절했습니다"),
            t("We have let the sender know. Nothing was granted.", "보낸 사람에게 알렸습니다. 어떤 권한도 부여되지 않았습니다."),
        ),
        (Purpose::AuthorizeProvider, _) => (
            t("Provider authorized", "공급자를 승인했습니다"),
            t("The provider can now work with you. You can remove its admin access or the relationship later.", "이제 공급자가 귀사와 협력할 수 있습니다. 관리자 액세스나 관계는 나중에 제거할 수 있습니다."),
        ),
        (Purpose::AcceptCustomer, _) => (
            t("Invitation accepted", "초대를 수락했습니다"),
            t("You now have a relationship with the reseller and its provider.", "이제 재판매인 및 해당 공급자와 관계가 생성되었습니다."),
        ),
        // not a `/t/` purpose (see `unsubscribe_text`); here only to be complete
        (Purpose::Unsubscribe, _) => (
            t("Done", "처리되었습니다"),
            t("Nothing else is needed.", "더 하실 일은 없습니다."),
        ),
    }
}

/// Title and message of the page after an unsubscribe POST: `declined` when a pending
/// invitation was declined by it.
pub fn unsubscribe_text(locale: &str, provider_name: &str, declined: bool) -> (String, String) {
    if locale == "ko-KR" {
        (
            "수신 거부되었습니다".into(),
            format!(
                "{provider_name}의 초대와 알림을 이 주소로 더 이상 보내지 않습니다.{}",
                if declined {
                    " 답변을 기다리던 초대는 거절 처리되었습니다."
                } else {
                    ""
                }
            ),
        )
    } else {
        (
            "Unsubscribed".into(),
            format!(
                "No further invitations or reminders from {provider_name} will be sent to this address.{}",
                if declined {
                    " The invitation that was waiting for an answer has been declined."
                } else {
                    ""
                }
            ),
        )
    }
}

/// Title and message when the address was already unsubscribed.
pub fn already_unsubscribed_text(locale: &str, provider_name: &str) -> (String, String) {
    if locale == "ko-KR" {
        (
            "이미 수신 거부되었습니다".into(),
            format!("이 주소는 이미 {provider_name}의 초대를 받지 않도록 설정되어 있습니다. 더 하실 일은 없습니다."),
        )
    } else {
        (
            "Already unsubscribed".into(),
            format!("This address already receives no invitations from {provider_name}. Nothing else is needed."),
        )
    }
}

pub fn enrolled_text(locale: &str, email: &str) -> (String, String) {
    if locale == "ko-KR" {
        (
            "등록 정보를 받았습니다".into(),
            format!("{email}(으)로 확인 이메일을 보냈습니다. 연락처를 확인하고 등록이 승인되면 이 초대를 승인할 수 있습니다."),
        )
    } else {
        (
            "Enrollment received".into(),
            format!("We sent a verification email to {email}. Once the contact is verified and the enrollment approved, you can authorize this invitation."),
        )
    }
}
