//! The public HTTP edge: link pages (`/t/{token}`), one-click unsubscribe (`/u/{token}`, RFC
//! 8058), health, readiness. GET and HEAD never change state; every invalid link gets the same
//! page and status, and so does every unknown path, a malformed `/t/…` or `/u/…` and (with status
//! 414) an over-long URI. `/metrics` is not here (see `admin`); connection limits are in
//! `listener`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::{FormRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use chrono::Utc;

use crate::app::{App, LinkCheck, LinkForm, PostOutcome, UnsubscribeCheck, UnsubscribeOutcome};
use crate::model::{Purpose, Record};
use crate::pages::{self, PageContext};
use crate::rules::EnrollFields;

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router(app: Arc<App>) -> Router {
    let limit = app.shared().cfg.body_limit;
    Router::new()
        .route("/t/{token}", get(open).post(submit))
        .route("/u/{token}", get(unsubscribe_page).post(unsubscribe_post))
        .route("/link-invalid", get(link_invalid))
        .route("/assets/style.css", get(style))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(app.clone(), limit_uri))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(app)
}

/// Any path we do not serve (`/metrics` included) gets the generic invalid page.
async fn not_found(State(app): State<Arc<App>>) -> Response {
    invalid(&app, None)
}

/// A request target longer than `MAX_URI_BYTES` gets the generic page with status 414, before
/// routing. Longer heads than hyper's buffer (`listener::MAX_HEAD_BYTES`) never get here: hyper
/// answers those with a bare 431 itself.
async fn limit_uri(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let uri = req.uri();
    let len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    if len > crate::listener::MAX_URI_BYTES {
        let mut res = invalid(&app, None);
        *res.status_mut() = StatusCode::URI_TOO_LONG;
        return res;
    }
    next.run(req).await
}

/// The headers on every page of the public listener and of the console: no caching, no
/// referrer, the strict CSP (no script), no sniffing, no framing.
pub async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

async fn link_invalid(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    invalid(&app, q.get("lang").map(String::as_str))
}

async fn style(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        app.shared().templates.style_css.clone(),
    )
        .into_response()
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    if app.store_is_open() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "store not open\n").into_response()
    }
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn page(app: &App, name: &str, ctx: &PageContext) -> Response {
    match app.shared().templates.render_page(name, &ctx.lang, ctx) {
        Ok(body) => html(StatusCode::OK, body),
        Err(e) => {
            tracing::error!(error = %e, "rendering a page");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        }
    }
}

/// The one page for every link that does not work, whatever the reason.
fn invalid(app: &App, locale: Option<&str>) -> Response {
    let sh = app.shared();
    let locale = sh.cfg.locale(locale);
    let mut ctx = pages::context(&sh, None, "", &locale, "");
    // the switch shows this same generic page in the other language, whatever link led here, so
    // every invalid link gets a byte-identical page
    ctx.switch_url = format!("/link-invalid?lang={}", pages::other_locale(&locale));
    let mut res = page(app, "page_invalid", &ctx);
    *res.status_mut() = StatusCode::NOT_FOUND;
    res
}

fn locale_for(app: &App, q: &HashMap<String, String>, rec: &Record) -> String {
    app.shared().cfg.locale(
        q.get("lang")
            .map(String::as_str)
            .or(Some(rec.locale.as_str())),
    )
}

fn page_name(app: &App, rec: &Record, purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::VerifyContact => "page_verify_contact",
        Purpose::AcceptAgreement => "page_accept_agreement",
        Purpose::AcceptCustomer => "page_accept_customer",
        // never open on `/t/` (`check_link` refuses the purpose there)
        Purpose::Unsubscribe => "page_invalid",
        Purpose::AuthorizeProvider => {
            let active = app.recipient_is_active_reseller(rec.recipient());
            if active {
                "page_authorize_provider"
            } else {
                "page_enroll"
            }
        }
    }
}

/// A query string that does not decode is ignored (the page falls back to the record's locale).
fn query(q: Result<Query<HashMap<String, String>>, QueryRejection>) -> HashMap<String, String> {
    q.map(|Query(q)| q).unwrap_or_default()
}

async fn open(
    State(app): State<Arc<App>>,
    token: Result<Path<String>, PathRejection>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let q = query(q);
    // a token that does not even decode (`/t/%ff%fe`) is just another invalid link
    let Ok(Path(token)) = token else {
        return invalid(&app, q.get("lang").map(String::as_str));
    };
    match app.check_link(&token, Utc::now()) {
        LinkCheck::Open { record, purpose } => {
            let locale = locale_for(&app, &q, &record);
            let sh = app.shared();
            let ctx = pages::context(
                &sh,
                Some(&record),
                &token,
                &locale,
                &app.reseller_company(&record),
            );
            page(&app, page_name(&app, &record, purpose), &ctx)
        }
        LinkCheck::Invalid(why) => {
            tracing::debug!(?why, "invalid link opened");
            invalid(&app, q.get("lang").map(String::as_str))
        }
        LinkCheck::Used { .. } => invalid(&app, q.get("lang").map(String::as_str)),
    }
}

async fn submit(
    State(app): State<Arc<App>>,
    token: Result<Path<String>, PathRejection>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let q = query(q);
    let Ok(Path(token)) = token else {
        return invalid(&app, q.get("lang").map(String::as_str));
    };
    let form = match form {
        Ok(Form(form)) => form,
        // a body that could not be read (too large: 413, or cut off) is refused as such
        Err(FormRejection::BytesRejection(e)) => return e.into_response(),
        // a body that is not a form is an empty form: the token decides (generic page, or the
        // "not done" page for a live link); nothing changes either way
        Err(_) => HashMap::new(),
    };
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    let link_form = LinkForm {
        action: get("action"),
        consent: form
            .get("consent")
            .is_some_and(|v| v == "on" || v == "true" || v == "yes"),
        enroll: EnrollFields {
            company: get("company"),
            country: get("country"),
            street: get("street"),
            city: get("city"),
            postal_code: get("postal_code"),
            contact_name: get("contact_name"),
            contact_email: String::new(),
            contact_phone: get("contact_phone"),
            support_email: get("support_email"),
            support_phone: get("support_phone"),
            website: get("website"),
            mpn_id: get("mpn_id"),
            mpn_country: get("mpn_country"),
            locale: get("locale"),
        },
    };
    let outcome = match app.post_link(&token, &link_form, Utc::now()).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "processing a link form");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; nothing was changed or it was saved: reload to see\n",
            )
                .into_response();
        }
    };
    let sh = app.shared();
    let result = |rec: &Record, result: &str, (title, message): (String, String)| {
        let locale = locale_for(&app, &q, rec);
        let mut ctx = pages::context(&sh, Some(rec), &token, &locale, "");
        ctx.result = result.to_string();
        // the link is used now: a GET in the other language would only show the generic page
        ctx.switch_url = String::new();
        ctx.result_title = title;
        ctx.result_message = message;
        page(&app, "page_result", &ctx)
    };
    match outcome {
        PostOutcome::Invalid => invalid(&app, q.get("lang").map(String::as_str)),
        PostOutcome::Done {
            record,
            purpose,
            action,
        } => {
            let locale = locale_for(&app, &q, &record);
            result(
                &record,
                "done",
                pages::result_text(&locale, purpose, Some(action), None, false),
            )
        }
        PostOutcome::Already { record, purpose } => {
            let locale = locale_for(&app, &q, &record);
            result(
                &record,
                "already",
                pages::result_text(&locale, purpose, None, None, true),
            )
        }
        PostOutcome::NotDone {
            record,
            purpose,
            why,
        } => {
            let locale = locale_for(&app, &q, &record);
            result(
                &record,
                "invalid",
                pages::result_text(&locale, purpose, None, Some(&why), false),
            )
        }
        PostOutcome::Enrolled { record, enrollment } => {
            let locale = locale_for(&app, &q, &record);
            result(
                &record,
                "done",
                pages::enrolled_text(&locale, enrollment.recipient().as_str()),
            )
        }
        PostOutcome::ConsentMissing { record, purpose } => {
            let locale = locale_for(&app, &q, &record);
            let mut ctx = pages::context(
                &sh,
                Some(&record),
                &token,
                &locale,
                &app.reseller_company(&record),
            );
            ctx.consent_error = true;
            let mut res = page(&app, page_name(&app, &record, purpose), &ctx);
            *res.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            res
        }
        PostOutcome::EnrollErrors {
            record,
            errors,
            values,
        } => {
            let locale = locale_for(&app, &q, &record);
            let mut ctx = pages::context(&sh, Some(&record), &token, &locale, "");
            pages::keep_values(&mut ctx, &values);
            pages::set_errors(&mut ctx, &errors, &locale);
            let mut res = page(&app, "page_enroll", &ctx);
            *res.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            res
        }
    }
}

// ---- one-click unsubscribe ------------------------------------------------------------------

/// The context of the unsubscribe pages: the `/t/` context with `/u/` URLs.
fn unsubscribe_context(
    app: &App,
    rec: &Record,
    token: &str,
    locale: &str,
    pending: bool,
    suppressed: bool,
) -> PageContext {
    let sh = app.shared();
    let mut ctx = pages::context(&sh, Some(rec), token, locale, "");
    ctx.switch_url = format!("/u/{token}?lang={}", pages::other_locale(locale));
    ctx.action_url = format!("/u/{token}?lang={locale}");
    ctx.pending = pending;
    ctx.suppressed = suppressed;
    ctx
}

fn internal_error(e: &crate::app::AppError) -> Response {
    tracing::error!(error = %e, "unsubscribe");
    (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
}

/// `GET /u/{token}` (and HEAD): says what unsubscribing does, with a button that POSTs the
/// one-click form. Changes nothing: mail scanners open these links too.
async fn unsubscribe_page(
    State(app): State<Arc<App>>,
    token: Result<Path<String>, PathRejection>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let q = query(q);
    let lang = q.get("lang").map(String::as_str);
    let Ok(Path(token)) = token else {
        return invalid(&app, lang);
    };
    match app.check_unsubscribe(&token, Utc::now()) {
        Ok(UnsubscribeCheck::Valid {
            record,
            pending,
            suppressed,
        }) => {
            let locale = locale_for(&app, &q, &record);
            let ctx = unsubscribe_context(&app, &record, &token, &locale, pending, suppressed);
            page(&app, "page_unsubscribe", &ctx)
        }
        Ok(UnsubscribeCheck::Invalid(why)) => {
            tracing::debug!(?why, "invalid unsubscribe link opened");
            invalid(&app, lang)
        }
        Err(e) => internal_error(&e),
    }
}

/// `POST /u/{token}`: RFC 8058 one-click. The body must say `List-Unsubscribe=One-Click`
/// (form-urlencoded or multipart/form-data, as mail providers send it; our page's button sends
/// the same); no cookie, no consent box, no CSRF token: the signed link is the authority, and all
/// it can do is stop mail. Without that body nothing changes and the confirm page is shown.
async fn unsubscribe_post(
    State(app): State<Arc<App>>,
    token: Result<Path<String>, PathRejection>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: axum::http::HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let q = query(q);
    let lang = q.get("lang").map(String::as_str);
    let Ok(Path(token)) = token else {
        return invalid(&app, lang);
    };
    let body = match body {
        Ok(b) => b,
        // too large (413) or cut off: refused as such
        Err(e) => return e.into_response(),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if !one_click(content_type, &body) {
        let mut res = unsubscribe_page(State(app), Ok(Path(token)), Ok(Query(q))).await;
        if res.status() == StatusCode::OK {
            *res.status_mut() = StatusCode::BAD_REQUEST;
        }
        return res;
    }
    let sh = app.shared();
    let result = |rec: &Record, result: &str, (title, message): (String, String)| {
        let locale = locale_for(&app, &q, rec);
        let mut ctx = unsubscribe_context(&app, rec, &token, &locale, false, true);
        ctx.result = result.to_string();
        ctx.switch_url = String::new();
        ctx.result_title = title;
        ctx.result_message = message;
        page(&app, "page_result", &ctx)
    };
    let provider_name = |rec: &Record| {
        rec.provider()
            .and_then(|p| sh.cfg.provider(p))
            .map(|p| p.name.clone())
            .unwrap_or_default()
    };
    match app.unsubscribe(&token, Utc::now()).await {
        Ok(UnsubscribeOutcome::Invalid) => invalid(&app, lang),
        Ok(UnsubscribeOutcome::Done { record, declined }) => {
            let locale = locale_for(&app, &q, &record);
            let text = pages::unsubscribe_text(&locale, &provider_name(&record), declined);
            result(&record, "done", text)
        }
        Ok(UnsubscribeOutcome::Already { record }) => {
            let locale = locale_for(&app, &q, &record);
            let text = pages::already_unsubscribed_text(&locale, &provider_name(&record));
            result(&record, "already", text)
        }
        Err(e) => internal_error(&e),
    }
}

/// Whether a POST body is RFC 8058's `List-Unsubscribe=One-Click`: a form field of that name and
/// value, form-urlencoded or (RFC 8058 prefers it) multipart/form-data. Any other content type
/// is read as form-urlencoded, the shape of the text itself.
fn one_click(content_type: Option<&str>, body: &[u8]) -> bool {
    const NAME: &str = "List-Unsubscribe";
    const VALUE: &str = "One-Click";
    let ct = content_type.unwrap_or("");
    let mut params = ct.split(';').map(str::trim);
    let mime = params.next().unwrap_or("");
    if mime.eq_ignore_ascii_case("multipart/form-data") {
        let boundary = params.find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("boundary")
                .then(|| v.trim().trim_matches('"').to_string())
        });
        let Some(boundary) = boundary.filter(|b| !b.is_empty()) else {
            return false;
        };
        let text = String::from_utf8_lossy(body);
        return text.split(&format!("--{boundary}")).any(|part| {
            let part = part.trim_start_matches(['\r', '\n']);
            let Some((head, value)) = part
                .split_once("\r\n\r\n")
                .or_else(|| part.split_once("\n\n"))
            else {
                return false;
            };
            let named = head.lines().any(|l| {
                let Some((k, v)) = l.split_once(':') else {
                    return false;
                };
                k.trim().eq_ignore_ascii_case("content-disposition")
                    && v.split(';').skip(1).any(|p| {
                        p.split_once('=').is_some_and(|(k, v)| {
                            k.trim().eq_ignore_ascii_case("name")
                                && v.trim().trim_matches('"') == NAME
                        })
                    })
            });
            named && value.trim_end_matches(['\r', '\n']) == VALUE
        });
    }
    body.split(|b| *b == b'&').any(|pair| {
        let pair = percent_decode(pair.trim_ascii());
        pair.split_once('=') == Some((NAME, VALUE))
    })
}

/// `application/x-www-form-urlencoded` decoding of one `key=value` pair (`+` is a space; a `%`
/// without two hex digits stays as it is).
fn percent_decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = s
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (s[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(v)) => {
                out.push(v);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::one_click;

    #[test]
    fn one_click_bodies_as_mail_providers_send_them() {
        let form = Some("application/x-www-form-urlencoded");
        let yes: &[(Option<&str>, &str)] = &[
            (form, "List-Unsubscribe=One-Click"),
            (form, "List-Unsubscribe=One-Click\r\n"),
            (form, "a=b&List-Unsubscribe=One-Click"),
            (form, "List%2DUnsubscribe=One%2dClick"),
            (None, "List-Unsubscribe=One-Click"),
            (Some("text/plain"), "List-Unsubscribe=One-Click"),
            (
                Some("multipart/form-data; boundary=XyZ"),
                "--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--XyZ--\r\n",
            ),
            (
                Some("Multipart/Form-Data; boundary=\"----b 1\""),
                "preamble\r\n------b 1\r\nContent-Disposition: form-data; name=other\r\n\r\nx\r\n------b 1\r\ncontent-disposition: form-data; name=List-Unsubscribe\r\n\r\nOne-Click\r\n------b 1--",
            ),
        ];
        for (ct, body) in yes {
            assert!(one_click(*ct, body.as_bytes()), "{ct:?} {body:?}");
        }
        let no: &[(Option<&str>, &str)] = &[
            (form, ""),
            (form, "action=decline"),
            (form, "List-Unsubscribe=One-Click-Not"),
            (form, "List-Unsubscribe="),
            (form, "list-unsubscribe=one-click"),
            (form, "%"),
            (form, "List-Unsubscribe=One-Click%"),
            (Some("multipart/form-data"), "--x\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--x--"),
            (
                Some("multipart/form-data; boundary=x"),
                "--x\r\nContent-Disposition: form-data; name=\"Other\"\r\n\r\nOne-Click\r\n--x--",
            ),
            (
                Some("multipart/form-data; boundary=x"),
                "--x\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nno\r\n--x--",
            ),
        ];
        for (ct, body) in no {
            assert!(!one_click(*ct, body.as_bytes()), "{ct:?} {body:?}");
        }
    }
}
