//! The staff console (DESIGN "Console"): server-rendered pages on their own listener
//! (`[console] listen`), never on the public link listener. It talks to `App` like the admin API
//! does; every change a staff member makes enters the record's history with channel `console`
//! and their email (`app::Actor`).
//!
//! Security: a session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` when the console's public
//! URL is https) whose SHA-256 is the session's key in the store; every form carries a CSRF token
//! (the session's; on the sign-in form a double-submit cookie) and a POST without the right one
//! gets 403 and changes nothing; sign-in throttled per account and per client address
//! (`throttle`); roles checked on every page and action (a 403 page, not a hidden button alone);
//! the link pages' CSP (no script at all; charts are inline SVG with presentation attributes).

// a gate's early answer is the page itself: handlers return it at once, it is not passed along
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::Utc;
use serde_json::{json, Map, Value};

use crate::app::{Actor, App, AppError, SignedIn};
use crate::config::ConsoleConfig;
use crate::model::{Email, Kind};
use crate::staff::Role;
use crate::throttle::{self, Throttle};

const SESSION_COOKIE: &str = "invited_console";
const LOGIN_COOKIE: &str = "invited_console_login";
const LANG_COOKIE: &str = "invited_console_lang";
/// An uploaded CSV may be this large (a 100,000-row file is about 6 MiB); only /invite takes it.
const UPLOAD_LIMIT: usize = 16 * 1024 * 1024;
/// Every other form (sign-in, a rejection's reason) is small.
const FORM_LIMIT: usize = 64 * 1024;
pub const PER_PAGE: usize = 50;
/// Invite reports kept for their 303 → GET (per daemon, the newest).
const REPORTS_KEPT: usize = 64;

pub struct ConsoleState {
    pub app: Arc<App>,
    pub cfg: ConsoleConfig,
    accounts: Throttle,
    addresses: Throttle,
    /// the per-row report of an invite POST, read once by the GET it redirects to
    reports: Mutex<Vec<(String, Email, Value)>>,
}

impl ConsoleState {
    pub fn new(app: Arc<App>, cfg: ConsoleConfig) -> ConsoleState {
        ConsoleState {
            app,
            cfg,
            accounts: Throttle::new(throttle::ACCOUNT_LIMIT),
            addresses: Throttle::new(throttle::ADDRESS_LIMIT),
            reports: Mutex::new(Vec::new()),
        }
    }

    fn idle(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.cfg.session_idle).unwrap_or(chrono::Duration::minutes(30))
    }
}

type S = State<Arc<ConsoleState>>;

pub fn router(state: Arc<ConsoleState>) -> Router {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/", get(overview))
        .route(
            "/invite",
            get(invite_page)
                .post(invite)
                .layer(DefaultBodyLimit::max(UPLOAD_LIMIT)),
        )
        .route("/records", get(records))
        .route("/records/{id}", get(record_page))
        .route("/records/{id}/{op}", get(confirm_page).post(record_action))
        .route("/review", get(review_page))
        .route("/review/{id}/{decision}", post(review))
        .route("/outbox", get(outbox_page))
        .route("/outbox/{id}/retry", post(outbox_retry))
        .route("/inbound", get(inbound_page))
        .route("/export.csv", get(export))
        .route("/assets/console.css", get(style))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(FORM_LIMIT))
        .layer(axum::middleware::map_response(
            crate::http::security_headers,
        ))
        .with_state(state)
}

// ---- language, cookies, the page frame -----------------------------------------------------

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The page language: `?lang=` (remembered in a cookie), else the cookie, else the daemon's
/// default locale.
fn language(st: &ConsoleState, headers: &HeaderMap, q: &HashMap<String, String>) -> String {
    let asked = q
        .get("lang")
        .map(String::as_str)
        .or_else(|| cookie(headers, LANG_COOKIE));
    st.app.shared().cfg.locale(asked)
}

fn set_cookie(res: &mut Response, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn cookie_attrs(st: &ConsoleState) -> &'static str {
    if st.cfg.secure_cookies() {
        "; Path=/; HttpOnly; SameSite=Strict; Secure"
    } else {
        "; Path=/; HttpOnly; SameSite=Strict"
    }
}

fn see_other(to: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// One page: the named template rendered into the frame (header, navigation, language switch,
/// sign-out form).
struct Frame<'a> {
    st: &'a ConsoleState,
    lang: String,
    who: Option<&'a SignedIn>,
    /// the path and query this page was asked with (the language switch keeps it)
    here: String,
    nav: &'static str,
}

impl Frame<'_> {
    fn render(&self, status: StatusCode, page: &str, title_key: &str, mut ctx: Value) -> Response {
        let t = strings(&self.lang);
        let other = crate::pages::other_locale(&self.lang);
        let (path, query) = self.here.split_once('?').unwrap_or((&self.here, ""));
        let mut kept: Vec<String> = query
            .split('&')
            .filter(|kv| !kv.is_empty() && !kv.starts_with("lang="))
            .map(str::to_string)
            .collect();
        kept.push(format!("lang={other}"));
        let switch_url = format!("{path}?{}", kept.join("&"));
        let base = json!({
            "t": t,
            "lang": self.lang,
            "html_lang": &self.lang[..2],
            "switch_url": switch_url,
            "switch_label": if other == "ko-KR" { "한국어" } else { "English" },
            "switch_lang": &other[..2],
            "title": t[title_key],
            "signed_in": self.who.is_some(),
            "staff": self.who.map(|w| w.email.to_string()),
            "role": self.who.map(|w| w.role.as_str()),
            "role_name": self.who.map(|w| t[&format!("role_{}", w.role.as_str())].clone()),
            "csrf": self.who.map(|w| w.csrf.clone()),
            "is_admin": self.who.is_some_and(|w| w.role.allows(Role::Admin)),
            "is_reviewer": self.who.is_some_and(|w| w.role.allows(Role::Reviewer)),
            "nav": self.nav,
        });
        if let (Value::Object(c), Value::Object(b)) = (&mut ctx, &base) {
            for (k, v) in b {
                c.entry(k.clone()).or_insert(v.clone());
            }
        }
        let templates = &self.st.app.shared().templates;
        let body = templates
            .render_page(&format!("console_{page}"), &self.lang, &ctx)
            .and_then(|body| {
                let mut frame = base.clone();
                frame["body"] = json!(body);
                templates.render_page("console_layout", &self.lang, &frame)
            });
        match body {
            Ok(html) => {
                let mut res = (
                    status,
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    html,
                )
                    .into_response();
                set_cookie(
                    &mut res,
                    format!(
                        "{LANG_COOKIE}={}{}",
                        self.lang,
                        cookie_attrs(self.st).replace("; HttpOnly", "")
                    ),
                );
                res
            }
            Err(e) => {
                tracing::error!(error = %e, "rendering a console page");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
            }
        }
    }

    /// A page that says one thing: a refusal (403), nothing there (404), a state that does not
    /// allow it (409), too many attempts (429).
    fn message(&self, status: StatusCode, title_key: &str, text: String) -> Response {
        self.render(
            status,
            "message",
            title_key,
            json!({"message": text, "status": status.as_u16()}),
        )
    }
}

/// The request as a console page sees it: who (if signed in), in which language, its query.
/// Every handler takes it as an extractor.
struct Visit {
    who: Option<SignedIn>,
    lang: String,
    here: String,
    q: HashMap<String, String>,
}

impl axum::extract::FromRequestParts<Arc<ConsoleState>> for Visit {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &Arc<ConsoleState>,
    ) -> Result<Visit, Self::Rejection> {
        let q = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map(|Query(q)| q)
            .unwrap_or_default();
        Ok(visit(st, &parts.headers, &parts.uri, q))
    }
}

fn visit(
    st: &ConsoleState,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    q: HashMap<String, String>,
) -> Visit {
    let who = cookie(headers, SESSION_COOKIE).and_then(|c| {
        st.app.console_session(c, st.idle()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading a console session");
            None
        })
    });
    Visit {
        who,
        lang: language(st, headers, &q),
        here: uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        q,
    }
}

impl Visit {
    fn frame<'a>(&'a self, st: &'a ConsoleState, nav: &'static str) -> Frame<'a> {
        Frame {
            st,
            lang: self.lang.clone(),
            who: self.who.as_ref(),
            here: self.here.clone(),
            nav,
        }
    }

    /// The signed-in member if their role allows `needed`; else the answer: to the sign-in page,
    /// or a 403 page naming the role needed.
    fn gate(
        &self,
        st: &ConsoleState,
        needed: Role,
        nav: &'static str,
    ) -> Result<&SignedIn, Response> {
        let Some(who) = &self.who else {
            return Err(see_other("/login"));
        };
        if !who.role.allows(needed) {
            let t = strings(&self.lang);
            let text = t["forbidden_text"]
                .as_str()
                .unwrap_or_default()
                .replace(
                    "{role}",
                    t[&format!("role_{}", who.role.as_str())]
                        .as_str()
                        .unwrap_or_default(),
                )
                .replace(
                    "{needed}",
                    t[&format!("role_{}", needed.as_str())]
                        .as_str()
                        .unwrap_or_default(),
                );
            return Err(self.frame(st, nav).message(
                StatusCode::FORBIDDEN,
                "forbidden_title",
                text,
            ));
        }
        Ok(who)
    }

    /// A form's CSRF token must be the session's; else 403 and nothing happens.
    fn check_csrf(
        &self,
        st: &ConsoleState,
        given: Option<&str>,
        nav: &'static str,
    ) -> Result<(), Response> {
        use subtle::ConstantTimeEq;
        let ok = match (&self.who, given) {
            (Some(w), Some(g)) => bool::from(w.csrf.as_bytes().ct_eq(g.as_bytes())),
            _ => false,
        };
        if ok {
            return Ok(());
        }
        let t = strings(&self.lang);
        Err(self.frame(st, nav).message(
            StatusCode::FORBIDDEN,
            "csrf_title",
            t["csrf_text"].as_str().unwrap_or_default().to_string(),
        ))
    }

    /// An `App` error as a page: a refusal or a bad field 409/400 with its words, a missing
    /// record 404, the store 503.
    fn failed(&self, st: &ConsoleState, nav: &'static str, e: AppError) -> Response {
        let (status, key) = match &e {
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found_title"),
            AppError::Invalid { .. } => (StatusCode::BAD_REQUEST, "refused_title"),
            AppError::Refused(_) | AppError::Suppressed { .. } => {
                (StatusCode::CONFLICT, "refused_title")
            }
            AppError::Store(err) => {
                tracing::error!(error = %err, "console: store");
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable_title")
            }
        };
        let text = match &e {
            AppError::Store(_) => strings(&self.lang)["unavailable_text"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            other => other.to_string(),
        };
        self.frame(st, nav).message(status, key, text)
    }
}

/// An `App` result, or the page that says what went wrong.
macro_rules! or_page {
    ($v:expr, $st:expr, $nav:literal, $e:expr) => {
        match $e {
            Ok(x) => x,
            Err(e) => return $v.failed(&$st, $nav, e),
        }
    };
}

/// Store work off the runtime's workers (lists and counts read many entries).
async fn off<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AppError> + Send + 'static,
) -> Result<T, AppError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(AppError::Refused(format!("console task: {e}"))))
}

macro_rules! gate {
    ($v:expr, $st:expr, $role:expr, $nav:literal) => {
        match $v.gate(&$st, $role, $nav) {
            Ok(w) => w.clone(),
            Err(res) => return res,
        }
    };
}

async fn style(State(st): S) -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        st.app.shared().templates.console_css.clone(),
    )
        .into_response()
}

async fn fallback(State(st): S, v: Visit) -> Response {
    if v.who.is_none() {
        return see_other("/login");
    }
    let t = strings(&v.lang);
    v.frame(&st, "").message(
        StatusCode::NOT_FOUND,
        "not_found_title",
        t["not_found_text"].as_str().unwrap_or_default().into(),
    )
}

// ---- sign-in, sign-out ---------------------------------------------------------------------

async fn login_page(State(st): S, v: Visit, headers: HeaderMap) -> Response {
    if v.who.is_some() {
        return see_other("/");
    }
    login_form(&st, &v, &headers, StatusCode::OK, "", None)
}

/// The sign-in form. Its token is the browser's login cookie when it has one (a second tab, or a
/// request the browser makes by itself such as /favicon.ico, must not invalidate the form on
/// screen), else a new one.
fn login_form(
    st: &ConsoleState,
    v: &Visit,
    headers: &HeaderMap,
    status: StatusCode,
    email: &str,
    error: Option<String>,
) -> Response {
    let token = cookie(headers, LOGIN_COOKIE)
        .filter(|t| {
            t.len() == 43
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map_or_else(crate::staff::new_token, str::to_string);
    let mut res = v.frame(st, "login").render(
        status,
        "login",
        "login_title",
        json!({"login_csrf": token, "email": email, "error": error}),
    );
    set_cookie(
        &mut res,
        format!("{LOGIN_COOKIE}={token}{}", cookie_attrs(st)),
    );
    res
}

async fn login(
    State(st): S,
    v: Visit,
    headers: HeaderMap,
    peer: Option<axum::Extension<crate::listener::Peer>>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let t = strings(&v.lang);
    // the double-submit check: the form's token must be the one in its cookie
    use subtle::ConstantTimeEq;
    let given = f.get("csrf").map(String::as_str).unwrap_or("");
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if expected.is_empty() || !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        return v.frame(&st, "login").message(
            StatusCode::FORBIDDEN,
            "csrf_title",
            t["csrf_text"].as_str().unwrap_or_default().into(),
        );
    }
    let email = f
        .get("email")
        .map(|e| e.trim().to_lowercase())
        .unwrap_or_default();
    let password = f.get("password").cloned().unwrap_or_default();
    let address = peer.map(|p| p.0 .0).unwrap_or_else(|| "unknown".into());
    let now = Instant::now();
    let held = st
        .addresses
        .held(&format!("addr:{address}"), now)
        .or_else(|| st.accounts.held(&format!("acct:{email}"), now));
    if let Some(wait) = held {
        let secs = wait.as_secs().max(1);
        tracing::warn!(retry_after = secs, "console sign-in throttled");
        let text = t["throttled_text"]
            .as_str()
            .unwrap_or_default()
            .replace("{s}", &secs.to_string());
        let mut res =
            v.frame(&st, "login")
                .message(StatusCode::TOO_MANY_REQUESTS, "throttled_title", text);
        if let Ok(h) = HeaderValue::from_str(&secs.to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, h);
        }
        return res;
    }
    match st.app.staff_check_password(&email, &password).await {
        Ok(Some(member)) => {
            st.accounts.succeeded(&format!("acct:{email}"));
            st.addresses.succeeded(&format!("addr:{address}"));
            match st.app.console_session_start(&member, st.idle()).await {
                Ok(cookie_value) => {
                    tracing::info!(role = member.role.as_str(), "console sign-in");
                    let mut res = see_other("/");
                    set_cookie(
                        &mut res,
                        format!("{SESSION_COOKIE}={cookie_value}{}", cookie_attrs(&st)),
                    );
                    set_cookie(
                        &mut res,
                        format!("{LOGIN_COOKIE}=; Max-Age=0{}", cookie_attrs(&st)),
                    );
                    res
                }
                Err(e) => v.failed(&st, "login", e),
            }
        }
        Ok(None) => {
            st.accounts.failed(&format!("acct:{email}"), now);
            st.addresses.failed(&format!("addr:{address}"), now);
            tracing::info!("console sign-in failed (wrong email or password)");
            let err = t["login_failed"].as_str().unwrap_or_default().to_string();
            login_form(
                &st,
                &v,
                &headers,
                StatusCode::UNAUTHORIZED,
                &email,
                Some(err),
            )
        }
        Err(e) => v.failed(&st, "login", e),
    }
}

async fn logout(State(st): S, v: Visit, Form(f): Form<HashMap<String, String>>) -> Response {
    let Some(who) = &v.who else {
        return see_other("/login");
    };
    if let Err(res) = v.check_csrf(&st, f.get("csrf").map(String::as_str), "") {
        return res;
    }
    if let Err(e) = st.app.console_sign_out(&who.key).await {
        return v.failed(&st, "", e);
    }
    let mut res = see_other("/login");
    set_cookie(
        &mut res,
        format!("{SESSION_COOKIE}=; Max-Age=0{}", cookie_attrs(&st)),
    );
    res
}

// ---- overview ------------------------------------------------------------------------------

async fn overview(State(st): S, v: Visit) -> Response {
    let _who = gate!(v, st, Role::Viewer, "overview");
    let app = st.app.clone();
    // four independent reads, side by side (on PostgreSQL each is a query of its own)
    let (a, b, c) = (app.clone(), app.clone(), app.clone());
    let (funnels, days, outbox, unrecognised) = tokio::join!(
        off(move || a.funnel()),
        off(move || b.activity(30)),
        off(move || c.outbox_summary(Utc::now())),
        off(move || {
            let mut n = 0u64;
            app.emit_inbound(Some("unrecognised"), &mut |_| {
                n += 1;
                true
            })?;
            Ok(n)
        }),
    );
    let data = (|| -> Result<Value, AppError> {
        Ok(
            json!({"funnels": funnels?, "days": days?, "outbox": outbox?, "unrecognised": unrecognised?}),
        )
    })();
    let data = or_page!(v, st, "overview", data);
    let t = strings(&v.lang);
    let sh = st.app.shared();
    let providers: Vec<Value> = data["funnels"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let id = f["provider"].as_str().unwrap_or_default();
            let name = sh
                .cfg
                .providers
                .iter()
                .find(|p| p.id == id)
                .map_or(id.to_string(), |p| p.name.clone());
            funnel_view(&t, id, &name, f)
        })
        .collect();
    let chart = day_chart(&t, &data["days"]);
    v.frame(&st, "overview").render(
        StatusCode::OK,
        "overview",
        "overview_title",
        json!({
            "providers": providers,
            "chart": chart,
            "outbox": data["outbox"],
            "unrecognised": data["unrecognised"],
        }),
    )
}

const BAR_MAX: f64 = 360.0;

/// One provider's funnel: the table cells carry `data-provider`/`data-stage` (DESIGN), the SVG
/// draws each stage as a bar with its number written on it.
fn funnel_view(t: &Value, id: &str, name: &str, f: &Value) -> Value {
    let stages = crate::funnel::STAGES;
    let current = crate::funnel::CURRENT;
    let counts: Vec<u64> = (0..stages.len())
        .map(|i| f["stages"][i].as_u64().unwrap_or(0))
        .collect();
    let top = counts.first().copied().unwrap_or(0).max(1) as f64;
    let bars: Vec<Value> = stages
        .iter()
        .zip(&counts)
        .enumerate()
        .map(|(i, (s, n))| {
            let w = ((*n as f64 / top) * BAR_MAX)
                .round()
                .max(if *n > 0 { 2.0 } else { 0.0 });
            json!({
                "stage": s,
                "label": t[&format!("stage_{s}")],
                "count": n,
                "y": 8 + i * 30,
                "text_y": 8 + i * 30 + 16,
                "width": w,
                "count_x": 150.0 + w + 6.0,
            })
        })
        .collect();
    let others: Vec<Value> = current
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"stage": s, "label": t[&format!("stage_{s}")], "count": f["current"][i].as_u64().unwrap_or(0)}))
        .collect();
    json!({"id": id, "name": name, "bars": bars, "others": others, "height": 8 + stages.len() * 30})
}

/// Invitations and confirmations per day as SVG bars (two per day), with the totals in words.
fn day_chart(t: &Value, days: &Value) -> Value {
    let days = days.as_array().cloned().unwrap_or_default();
    let max = days
        .iter()
        .flat_map(|d| {
            [
                d["invitations"].as_u64().unwrap_or(0),
                d["confirmations"].as_u64().unwrap_or(0),
            ]
        })
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    const H: f64 = 120.0;
    let bars: Vec<Value> = days
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let inv = d["invitations"].as_u64().unwrap_or(0);
            let conf = d["confirmations"].as_u64().unwrap_or(0);
            let hi = (inv as f64 / max * H).round();
            let hc = (conf as f64 / max * H).round();
            let x = 40 + i * 20;
            json!({
                "date": d["date"], "invitations": inv, "confirmations": conf,
                "x_inv": x, "x_conf": x + 8, "h_inv": hi, "h_conf": hc,
                "y_inv": 10.0 + H - hi, "y_conf": 10.0 + H - hc,
                "label": i % 5 == 0 || i + 1 == days.len(),
                "label_x": x + 8,
                "short": d["date"].as_str().map(|s| s.get(5..).unwrap_or(s).to_string()),
            })
        })
        .collect();
    let sum = |k: &str| days.iter().map(|d| d[k].as_u64().unwrap_or(0)).sum::<u64>();
    json!({
        "bars": bars, "max": max as u64, "width": 40 + days.len() * 20 + 10,
        "invitations": sum("invitations"), "confirmations": sum("confirmations"),
        "title": t["chart_title"],
    })
}

// ---- invite --------------------------------------------------------------------------------

fn providers_json(st: &ConsoleState, selected: Option<&str>) -> Value {
    json!(st
        .app
        .shared()
        .cfg
        .providers
        .iter()
        .map(|p| json!({"id": p.id, "name": p.name, "selected": selected == Some(p.id.as_str())}))
        .collect::<Vec<_>>())
}

async fn invite_page(State(st): S, v: Visit) -> Response {
    let who = gate!(v, st, Role::Admin, "invite");
    let report = v.q.get("report").and_then(|id| {
        let reports = st.reports.lock().unwrap_or_else(|e| e.into_inner());
        reports
            .iter()
            .find(|(rid, owner, _)| rid == id && *owner == who.email)
            .map(|(_, _, r)| r.clone())
    });
    // the outcomes in the page's language (the report may be read in another than it was made in)
    let t = strings(&v.lang);
    let report = report.map(|mut r| {
        if let Some(rows) = r["rows"].as_array_mut() {
            for row in rows {
                let o = row["outcome"].as_str().unwrap_or_default().to_string();
                row["outcome_label"] = t[&format!("outcome_{o}")].clone();
            }
        }
        r
    });
    let provider = report
        .as_ref()
        .and_then(|r| r["provider"].as_str().map(str::to_string));
    v.frame(&st, "invite").render(
        StatusCode::OK,
        "invite",
        "invite_title",
        json!({"providers": providers_json(&st, provider.as_deref()), "report": report}),
    )
}

async fn invite(State(st): S, v: Visit, mut form: Multipart) -> Response {
    let who = gate!(v, st, Role::Admin, "invite");
    let mut fields: HashMap<String, Vec<u8>> = HashMap::new();
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_string();
                match field.bytes().await {
                    Ok(b) => {
                        fields.insert(name, b.to_vec());
                    }
                    Err(e) => return bad_form(&st, &v, e.to_string()),
                }
            }
            Ok(None) => break,
            Err(e) => return bad_form(&st, &v, e.to_string()),
        }
    }
    let text = |k: &str| {
        fields
            .get(k)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    if let Err(res) = v.check_csrf(&st, text("csrf").as_deref(), "invite") {
        return res;
    }
    let provider = text("provider").unwrap_or_default();
    let data = match fields.get("csv").filter(|b| !b.is_empty()) {
        Some(file) => file.clone(),
        None => text("csv_text").unwrap_or_default().into_bytes(),
    };
    let t = strings(&v.lang);
    if data.iter().all(|b| b.is_ascii_whitespace()) {
        return bad_form(
            &st,
            &v,
            t["invite_empty"].as_str().unwrap_or_default().into(),
        );
    }
    let csv = match crate::rules::read_invite_csv(&data) {
        Ok(c) => c,
        Err(e) => return bad_form(&st, &v, format!("CSV: {e}")),
    };
    let mut rows: Vec<Value> = csv
        .unreadable
        .iter()
        .map(|(line, why)| json!({"line": line, "email": "", "outcome": "rejected", "reason": format!("unreadable CSV row: {why}")}))
        .collect();
    let total = csv.rows.len() + csv.unreadable.len();
    let result = st
        .app
        .invite_bulk(&provider, csv.rows, Actor::console(&who.email), Utc::now())
        .await;
    let result = or_page!(v, st, "invite", result);
    let unreadable = rows.len();
    rows.extend(result.rows.iter().map(|r| json!(r)));
    rows.sort_by_key(|r| r["line"].as_u64().unwrap_or(0));
    for r in &mut rows {
        let o = r["outcome"].as_str().unwrap_or_default().to_string();
        r["problem"] = json!(o == "rejected" || o == "suppressed");
        for k in ["id", "reason", "email"] {
            if r.get(k).is_none() {
                r[k] = Value::Null;
            }
        }
    }
    let report = json!({
        "provider": provider,
        "total": total,
        "queued": result.queued,
        "existing": result.existing,
        "suppressed": result.suppressed,
        "rejected": result.rejected as usize + unreadable,
        "rows": rows,
    });
    let id = crate::staff::new_token();
    {
        let mut reports = st.reports.lock().unwrap_or_else(|e| e.into_inner());
        if reports.len() >= REPORTS_KEPT {
            reports.remove(0);
        }
        reports.push((id.clone(), who.email.clone(), report));
    }
    see_other(&format!("/invite?report={id}"))
}

fn bad_form(st: &ConsoleState, v: &Visit, why: String) -> Response {
    v.frame(st, "invite")
        .message(StatusCode::BAD_REQUEST, "refused_title", why)
}

// ---- records -------------------------------------------------------------------------------

fn kind_of(s: &str) -> Option<Kind> {
    match s {
        "invitations" => Some(Kind::ProviderAuthorization),
        "enrollments" => Some(Kind::Enrollment),
        "customers" => Some(Kind::CustomerInvitation),
        _ => None,
    }
}

fn states_of(kind: Option<Kind>) -> Vec<&'static str> {
    use crate::model::{AuthorizationState, CustomerState, EnrollmentState};
    let mut all: Vec<&'static str> = match kind {
        Some(Kind::Enrollment) => EnrollmentState::ALL.to_vec(),
        Some(Kind::ProviderAuthorization) => AuthorizationState::ALL.to_vec(),
        Some(Kind::CustomerInvitation) => CustomerState::ALL.to_vec(),
        None => EnrollmentState::ALL
            .iter()
            .chain(AuthorizationState::ALL)
            .chain(CustomerState::ALL)
            .copied()
            .collect(),
    };
    all.sort_unstable();
    all.dedup();
    all
}

async fn records(State(st): S, v: Visit) -> Response {
    let _who = gate!(v, st, Role::Viewer, "records");
    let get = |k: &str| {
        v.q.get(k)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let kind_s = get("kind").unwrap_or_else(|| "invitations".into());
    let Some(kind) = kind_of(&kind_s) else {
        return v.failed(
            &st,
            "records",
            AppError::Invalid {
                field: "kind".into(),
                message: format!("{kind_s:?} is not invitations, enrollments or customers"),
            },
        );
    };
    let state = get("state");
    if let Some(s) = &state {
        if !states_of(Some(kind)).contains(&s.as_str()) {
            return v.failed(
                &st,
                "records",
                AppError::Invalid {
                    field: "state".into(),
                    message: format!("{s:?} is not a state of {kind_s}"),
                },
            );
        }
    }
    let provider = get("provider");
    let text = get("q");
    let page: u32 = get("page")
        .and_then(|p| p.parse().ok())
        .filter(|p| *p >= 1)
        .unwrap_or(1);
    let query = crate::funnel::RecordQuery {
        kind: Some(kind),
        state: state.clone(),
        provider: provider.clone(),
        text: text.clone(),
        page,
        per_page: PER_PAGE,
    };
    let app = st.app.clone();
    let found = off(move || app.records_page(&query)).await;
    let found = or_page!(v, st, "records", found);
    let t = strings(&v.lang);
    let rows: Vec<Value> = found
        .records
        .iter()
        .map(|r| {
            json!({
                "id": r.id.to_string(), "state": r.state_str(),
                "state_label": t.get(format!("state_{}", r.state_str())).cloned().unwrap_or(json!(r.state_str())),
                "email": r.recipient().to_string(), "company": r.company(),
                "provider": r.provider(), "updated_at": crate::model::rfc3339(&r.updated_at),
            })
        })
        .collect();
    let link = |p: u32| {
        let mut parts = vec![format!("kind={kind_s}")];
        for (k, val) in [("state", &state), ("provider", &provider), ("q", &text)] {
            if let Some(x) = val {
                parts.push(format!("{k}={}", urlenc(x)));
            }
        }
        parts.push(format!("page={p}"));
        format!("/records?{}", parts.join("&"))
    };
    let kinds: Vec<Value> = ["invitations", "enrollments", "customers"]
        .iter()
        .map(|k| json!({"id": k, "label": t[&format!("kind_{k}")], "selected": *k == kind_s}))
        .collect();
    let states: Vec<Value> = states_of(Some(kind))
        .iter()
        .map(|s| json!({"id": s, "label": t.get(format!("state_{s}")).cloned().unwrap_or(json!(s)), "selected": state.as_deref() == Some(*s)}))
        .collect();
    v.frame(&st, "records").render(
        StatusCode::OK,
        "records",
        "records_title",
        json!({
            "rows": rows, "kinds": kinds, "states": states,
            "providers": providers_json(&st, provider.as_deref()),
            "q": text, "page": found.page,
            "prev": (found.page > 1).then(|| link(found.page - 1)),
            "next": found.has_next.then(|| link(found.page + 1)),
            "empty": found.records.is_empty(),
        }),
    )
}

/// What a record's page shows and may offer (resend, revoke, remove admin access).
fn record_view(t: &Value, r: &crate::model::Record) -> Value {
    use crate::model::{AuthorizationState, Body, CustomerState};
    let mut fields = Vec::new();
    flatten("", &crate::app::record_json(r, false), &mut fields);
    let history: Vec<Value> = r
        .history
        .iter()
        .rev()
        .map(|h| {
            json!({
                "at": h.at, "from": h.from, "to": h.to,
                "channel": t.get(format!("channel_{}", serde_json::to_value(h.channel).ok().and_then(|c| c.as_str().map(str::to_string)).unwrap_or_default())).cloned(),
                "detail": h.detail, "staff": h.staff.as_ref().map(|s| s.to_string()),
            })
        })
        .collect();
    let revocable = match &r.body {
        Body::ProviderAuthorization(a) => matches!(
            a.state,
            AuthorizationState::Invited | AuthorizationState::Authorized
        ),
        Body::CustomerInvitation(c) => c.state == CustomerState::Invited,
        Body::Enrollment(_) => false,
    };
    let admin_access = matches!(&r.body, Body::ProviderAuthorization(a) if a.state == AuthorizationState::Authorized && a.admin_access);
    json!({
        "id": r.id.to_string(), "kind": r.kind().as_str(), "state": r.state_str(),
        "email": r.recipient().to_string(), "company": r.company(),
        "fields": fields.into_iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
        "history": history,
        "can_resend": r.awaiting().is_some(), "can_revoke": revocable, "can_remove_admin": admin_access,
    })
}

/// A JSON value as (dotted key, text) pairs, for a definition list.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        Value::Null => {}
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        Value::Array(a) if a.is_empty() => {}
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

fn load_record(st: &ConsoleState, id: &str) -> Result<crate::model::Record, AppError> {
    let id = crate::model::RecordId::parse(id)
        .ok_or_else(|| AppError::NotFound(format!("no record {id}")))?;
    st.app
        .record(&id)?
        .ok_or_else(|| AppError::NotFound(format!("no record {id}")))
}

async fn record_page(State(st): S, v: Visit, Path(id): Path<String>) -> Response {
    let _who = gate!(v, st, Role::Viewer, "records");
    let r = or_page!(v, st, "records", load_record(&st, &id));
    let t = strings(&v.lang);
    let mut ctx = record_view(&t, &r);
    ctx["done"] =
        v.q.get("done")
            .and_then(|d| t.get(format!("done_{d}")).cloned())
            .unwrap_or_default();
    v.frame(&st, "records")
        .render(StatusCode::OK, "record", "record_title", ctx)
}

fn op_allowed(view: &Value, op: &str) -> Option<bool> {
    match op {
        "resend" => Some(view["can_resend"] == json!(true)),
        "revoke" => Some(view["can_revoke"] == json!(true)),
        "remove-admin-access" => Some(view["can_remove_admin"] == json!(true)),
        _ => None,
    }
}

/// The confirmation before a record action (no script: a page with the one button).
async fn confirm_page(State(st): S, v: Visit, Path((id, op)): Path<(String, String)>) -> Response {
    let _who = gate!(v, st, Role::Admin, "records");
    let r = or_page!(v, st, "records", load_record(&st, &id));
    let t = strings(&v.lang);
    let view = record_view(&t, &r);
    if op_allowed(&view, &op).is_none() {
        return fallback(State(st.clone()), v).await;
    }
    v.frame(&st, "records").render(
        StatusCode::OK,
        "confirm",
        "confirm_title",
        json!({
            "record": view, "op": op,
            "question": t[&format!("confirm_{}", op.replace('-', "_"))],
            "button": t[&format!("action_{}", op.replace('-', "_"))],
        }),
    )
}

async fn record_action(
    State(st): S,
    v: Visit,
    Path((id, op)): Path<(String, String)>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let who = gate!(v, st, Role::Admin, "records");
    if let Err(res) = v.check_csrf(&st, f.get("csrf").map(String::as_str), "records") {
        return res;
    }
    let by = Actor::console(&who.email);
    let now = Utc::now();
    let done = match op.as_str() {
        "resend" => st.app.resend(&id, by, now).await,
        "revoke" => st.app.revoke(&id, by, now).await,
        "remove-admin-access" => st.app.remove_admin_access(&id, by, now).await,
        _ => Err(AppError::NotFound(format!("no action {op:?}"))),
    };
    match done {
        Ok(r) => {
            tracing::info!(record = %r.id, action = op, "console: record action");
            see_other(&format!("/records/{}?done={}", r.id, op.replace('-', "_")))
        }
        Err(e) => v.failed(&st, "records", e),
    }
}

// ---- review ------------------------------------------------------------------------------

async fn review_page(State(st): S, v: Visit) -> Response {
    let _who = gate!(v, st, Role::Viewer, "review");
    let app = st.app.clone();
    let found = off(move || app.list("enrollments", None, Some("in_review"))).await;
    let list = or_page!(v, st, "review", found);
    let t = strings(&v.lang);
    let items: Vec<Value> = list
        .iter()
        .map(|e| {
            let mut fields = Vec::new();
            flatten("", &e["enrollment"], &mut fields);
            fields.retain(|(k, _)| k != "state");
            json!({
                "id": e["id"], "company": e["company"], "email": e["email"], "country": e["country"],
                "updated_at": e["updated_at"],
                "fields": fields.into_iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let done =
        v.q.get("done")
            .and_then(|d| t.get(format!("done_{d}")).cloned())
            .unwrap_or_default();
    v.frame(&st, "review").render(
        StatusCode::OK,
        "review",
        "review_title",
        json!({"items": items, "empty": items.is_empty(), "done": done}),
    )
}

async fn review(
    State(st): S,
    v: Visit,
    Path((id, decision)): Path<(String, String)>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let who = gate!(v, st, Role::Reviewer, "review");
    if let Err(res) = v.check_csrf(&st, f.get("csrf").map(String::as_str), "review") {
        return res;
    }
    let approve = match decision.as_str() {
        "approve" => true,
        "reject" => false,
        _ => {
            return v.failed(
                &st,
                "review",
                AppError::NotFound(format!("no decision {decision:?}")),
            )
        }
    };
    let reason = f.get("reason").map(String::as_str).unwrap_or("");
    match st
        .app
        .review(&id, approve, reason, Actor::console(&who.email), Utc::now())
        .await
    {
        Ok(r) => {
            tracing::info!(record = %r.id, decision, "console: review");
            see_other(&format!(
                "/review?done={}",
                if approve { "approved" } else { "rejected" }
            ))
        }
        Err(e) => v.failed(&st, "review", e),
    }
}

// ---- outbox, inbound, export -----------------------------------------------------------------

async fn outbox_page(State(st): S, v: Visit) -> Response {
    let _who = gate!(v, st, Role::Viewer, "outbox");
    let app = st.app.clone();
    let found = off(move || -> Result<(Vec<Value>, Value), AppError> {
        let mut dead = Vec::new();
        app.emit_outbox(true, &mut |i| {
            dead.push(i);
            dead.len() < 1000
        })?;
        Ok((dead, app.outbox_summary(Utc::now())?))
    })
    .await;
    let (dead, summary) = or_page!(v, st, "outbox", found);
    let t = strings(&v.lang);
    let done =
        v.q.get("done")
            .and_then(|d| t.get(format!("done_{d}")).cloned())
            .unwrap_or_default();
    v.frame(&st, "outbox").render(
        StatusCode::OK,
        "outbox",
        "outbox_title",
        json!({"dead": dead, "empty": dead.is_empty(), "summary": summary, "done": done}),
    )
}

async fn outbox_retry(
    State(st): S,
    v: Visit,
    Path(id): Path<String>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let _who = gate!(v, st, Role::Admin, "outbox");
    if let Err(res) = v.check_csrf(&st, f.get("csrf").map(String::as_str), "outbox") {
        return res;
    }
    let now = Utc::now();
    let ids: Vec<String> = if id == "all" {
        let app = st.app.clone();
        let found = off(move || -> Result<Vec<String>, AppError> {
            let mut ids = Vec::new();
            app.emit_outbox(true, &mut |i| {
                if let Some(s) = i["id"].as_str() {
                    ids.push(s.to_string());
                }
                true
            })?;
            Ok(ids)
        })
        .await;
        or_page!(v, st, "outbox", found)
    } else {
        vec![id]
    };
    for id in &ids {
        if let Err(e) = st.app.outbox_retry(id, now).await {
            return v.failed(&st, "outbox", e);
        }
    }
    tracing::info!(items = ids.len(), "console: dead letters queued again");
    st.app.outbox_wake.notify_one();
    see_other("/outbox?done=retried")
}

async fn inbound_page(State(st): S, v: Visit) -> Response {
    let _who = gate!(v, st, Role::Viewer, "inbound");
    let page: usize =
        v.q.get("page")
            .and_then(|p| p.parse().ok())
            .filter(|p| *p >= 1)
            .unwrap_or(1);
    let app = st.app.clone();
    let found = off(move || -> Result<(Vec<Value>, bool, usize), AppError> {
        // unrecognised first (they wait for a person), each group newest first
        let (mut first, mut rest) = (Vec::new(), Vec::new());
        app.emit_inbound(None, &mut |i| {
            if i["outcome"] == "unrecognised" {
                first.push(i);
            } else {
                rest.push(i);
            }
            true
        })?;
        let unrecognised = first.len();
        first.reverse();
        rest.reverse();
        let skip = (page - 1) * PER_PAGE;
        let all: Vec<Value> = first
            .into_iter()
            .chain(rest)
            .skip(skip)
            .take(PER_PAGE + 1)
            .collect();
        let more = all.len() > PER_PAGE;
        Ok((all.into_iter().take(PER_PAGE).collect(), more, unrecognised))
    })
    .await;
    let (items, more, unrecognised) = or_page!(v, st, "inbound", found);
    let t = strings(&v.lang);
    let items: Vec<Value> = items
        .into_iter()
        .map(|mut i| {
            let o = i["outcome"].as_str().unwrap_or_default().to_string();
            i["outcome_label"] = t.get(format!("inbound_{o}")).cloned().unwrap_or(json!(o));
            i["human"] = json!(o == "unrecognised");
            i
        })
        .collect();
    v.frame(&st, "inbound").render(
        StatusCode::OK,
        "inbound",
        "inbound_title",
        json!({
            "items": items, "empty": items.is_empty(), "unrecognised": unrecognised, "page": page,
            "prev": (page > 1).then(|| format!("/inbound?page={}", page - 1)),
            "next": more.then(|| format!("/inbound?page={}", page + 1)),
        }),
    )
}

async fn export(State(st): S, v: Visit) -> Response {
    let _who = gate!(v, st, Role::Viewer, "");
    let app = st.app.clone();
    let found = off(move || -> Result<Vec<Value>, AppError> {
        let mut all = Vec::new();
        app.emit_list(
            &["enrollments", "invitations", "customers"],
            None,
            None,
            &mut |r| {
                all.push(r);
                true
            },
        )?;
        Ok(all)
    })
    .await;
    let all = or_page!(v, st, "", found);
    match crate::export::csv(&Value::Array(all)) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"invited-export.csv\"",
                ),
            ],
            body,
        )
            .into_response(),
        Err(e) => v.failed(&st, "", AppError::Refused(e.to_string())),
    }
}

fn urlenc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---- words -----------------------------------------------------------------------------------

/// Every word the console shows, en-US and ko-KR (the templates are shared; the text is here).
const WORDS: &[(&str, &str, &str)] = &[
    ("brand", "invited console", "invited 콘솔"),
    ("skip", "Skip to content", "본문으로 건너뛰기"),
    ("nav_label", "Console", "콘솔"),
    ("overview_title", "Overview", "개요"),
    ("invite_title", "Invite", "초대"),
    ("records_title", "Records", "레코드"),
    ("record_title", "Record", "레코드"),
    ("review_title", "Review queue", "검토 대기열"),
    ("outbox_title", "Outbox", "발송함"),
    ("inbound_title", "Inbound mail", "수신 메일"),
    ("export", "Export CSV", "CSV 내보내기"),
    ("sign_out", "Sign out", "로그아웃"),
    ("signed_in_as", "Signed in as", "로그인:"),
    ("language", "Language", "언어"),
    ("login_title", "Sign in", "로그인"),
    ("email", "Email", "이메일"),
    ("password", "Password", "비밀번호"),
    ("sign_in", "Sign in", "로그인"),
    ("login_failed", "Wrong email or password.", "이메일 또는 비밀번호가 올바르지 않습니다."),
    ("role_viewer", "viewer", "조회자"),
    ("role_reviewer", "reviewer", "검토자"),
    ("role_admin", "admin", "관리자"),
    ("forbidden_title", "Not allowed", "권한 없음"),
    ("forbidden_text", "Your role ({role}) cannot do this: it needs {needed}. Nothing was changed.", "현재 역할({role})로는 할 수 없습니다. {needed} 역할이 필요합니다. 아무것도 변경되지 않았습니다."),
    ("csrf_title", "Form expired", "양식이 만료됨"),
    ("csrf_text", "This form was not sent from this console session (missing or wrong security token). Nothing was changed; open the page again and retry.", "이 양식은 현재 콘솔 세션에서 보낸 것이 아닙니다(보안 토큰 없음 또는 불일치). 아무것도 변경되지 않았습니다. 페이지를 다시 열고 다시 시도하세요."),
    ("throttled_title", "Too many attempts", "시도 횟수 초과"),
    ("throttled_text", "Too many failed sign-ins. Try again in {s} seconds.", "로그인 실패가 너무 많습니다. {s}초 후에 다시 시도하세요."),
    ("not_found_title", "Not found", "찾을 수 없음"),
    ("not_found_text", "There is no such page here.", "해당 페이지가 없습니다."),
    ("refused_title", "Not possible", "처리할 수 없음"),
    ("unavailable_title", "Store unavailable", "저장소를 사용할 수 없음"),
    ("unavailable_text", "The store did not answer. Nothing was changed; try again shortly.", "저장소가 응답하지 않았습니다. 아무것도 변경되지 않았습니다. 잠시 후 다시 시도하세요."),
    ("back", "Back", "뒤로"),
    ("funnel_title", "Funnel per provider", "공급자별 퍼널"),
    ("funnel_caption", "Provider invitations by the furthest stage reached", "도달한 단계별 공급자 초대 수"),
    ("stage", "Stage", "단계"),
    ("count", "Count", "수"),
    ("now_label", "Now", "현재"),
    ("stage_invited", "Invited", "초대됨"),
    ("stage_enrolled", "Enrolled", "등록함"),
    ("stage_contact_verified", "Contact verified", "연락처 확인됨"),
    ("stage_approved", "Approved", "승인됨"),
    ("stage_active", "Active", "활성"),
    ("stage_authorized", "Authorized", "권한 부여됨"),
    ("stage_declined", "Declined", "거절함"),
    ("stage_expired", "Expired", "만료됨"),
    ("stage_undeliverable", "Undeliverable", "전달 불가"),
    ("stage_revoked", "Revoked", "철회됨"),
    ("no_providers", "No provider invitations yet.", "아직 공급자 초대가 없습니다."),
    ("chart_title", "Invitations and confirmations per day, last 30 days", "최근 30일 일별 초대 및 확인"),
    ("invitations", "Invitations", "초대"),
    ("confirmations", "Confirmations", "확인"),
    ("total_30", "Last 30 days", "최근 30일 합계"),
    ("queued", "Queued", "대기 중"),
    ("sent_today", "Sent today", "오늘 발송"),
    ("dead", "Dead letters", "발송 실패"),
    ("estimated_finish", "Estimated finish", "예상 완료"),
    ("no_pace", "no pace limit: as fast as the server takes them", "발송 속도 제한 없음"),
    ("inbound_left", "Inbound messages left for a person", "사람이 확인해야 할 수신 메일"),
    ("provider", "Provider", "공급자"),
    ("any", "Any", "전체"),
    ("csv_file", "CSV file", "CSV 파일"),
    ("csv_text", "…or paste the CSV here", "…또는 CSV를 여기에 붙여넣기"),
    ("csv_help", "Header row with email, company, country (contact_name and locale optional). Sending the same file again invites nobody twice.", "머리글 행: email, company, country (contact_name, locale 선택). 같은 파일을 다시 보내도 중복 초대하지 않습니다."),
    ("send_invitations", "Send invitations", "초대 보내기"),
    ("invite_empty", "The CSV is empty: choose a file or paste rows.", "CSV가 비어 있습니다. 파일을 선택하거나 행을 붙여넣으세요."),
    ("report_title", "Report", "결과"),
    ("rows", "rows", "행"),
    ("line", "Line", "줄"),
    ("outcome", "Outcome", "결과"),
    ("reason", "Reason", "사유"),
    ("outcome_queued", "queued", "대기열에 추가됨"),
    ("outcome_existing", "existing invitation", "기존 초대"),
    ("outcome_rejected", "refused", "거부됨"),
    ("outcome_suppressed", "suppressed", "수신 거부됨"),
    ("kind", "Kind", "종류"),
    ("kind_invitations", "Invitations", "초대"),
    ("kind_enrollments", "Enrollments", "등록"),
    ("kind_customers", "Customers", "고객"),
    ("state", "State", "상태"),
    ("search", "Email or company", "이메일 또는 회사"),
    ("filter", "Filter", "필터"),
    ("company", "Company", "회사"),
    ("updated", "Last change", "마지막 변경"),
    ("page", "Page", "페이지"),
    ("previous", "Previous", "이전"),
    ("next", "Next", "다음"),
    ("nothing_found", "Nothing matches.", "일치하는 항목이 없습니다."),
    ("details", "Details", "상세"),
    ("timeline", "History", "이력"),
    ("actions", "Actions", "작업"),
    ("admins_only", "Only admins can resend, revoke or remove admin access.", "재발송, 철회, 관리자 권한 제거는 관리자만 할 수 있습니다."),
    ("no_actions", "No action applies in this state.", "이 상태에서 할 수 있는 작업이 없습니다."),
    ("action_resend", "Resend the link", "링크 재발송"),
    ("action_revoke", "Revoke", "철회"),
    ("action_remove_admin_access", "Remove admin access", "관리자 권한 제거"),
    ("confirm_title", "Confirm", "확인"),
    ("confirm_resend", "Send a new link? The link sent before stops working.", "새 링크를 보낼까요? 이전에 보낸 링크는 더 이상 작동하지 않습니다."),
    ("confirm_revoke", "Revoke this? It cannot be undone.", "철회할까요? 되돌릴 수 없습니다."),
    ("confirm_remove_admin_access", "Remove the provider's admin access? The authorization stays.", "공급자의 관리자 권한을 제거할까요? 권한 부여는 유지됩니다."),
    ("cancel", "Cancel", "취소"),
    ("done_resend", "A new link was sent; the old one no longer works.", "새 링크를 보냈습니다. 이전 링크는 더 이상 작동하지 않습니다."),
    ("done_revoke", "Revoked.", "철회했습니다."),
    ("done_remove_admin_access", "Admin access removed.", "관리자 권한을 제거했습니다."),
    ("done_approved", "Approved: the contact gets the agreement by email.", "승인했습니다. 담당자에게 계약서 이메일이 발송됩니다."),
    ("done_rejected", "Rejected: the contact gets the reason by email.", "거부했습니다. 담당자에게 사유가 이메일로 발송됩니다."),
    ("done_retried", "Queued again.", "다시 대기열에 추가했습니다."),
    ("at", "When", "시각"),
    ("change", "Change", "변경"),
    ("by", "By", "수행"),
    ("channel_cli", "command line", "명령줄"),
    ("channel_api", "admin API", "관리 API"),
    ("channel_link", "link", "링크"),
    ("channel_reply", "reply", "회신"),
    ("channel_bounce", "bounce", "반송"),
    ("channel_timer", "timer", "타이머"),
    ("channel_console", "console", "콘솔"),
    ("review_empty", "No enrollment waits for review.", "검토를 기다리는 등록이 없습니다."),
    ("approve", "Approve", "승인"),
    ("reject", "Reject", "거부"),
    ("reject_reason", "Reason (goes into the email to the contact)", "사유 (담당자에게 보내는 이메일에 포함됨)"),
    ("reviewers_only", "Only reviewers and admins can approve or reject.", "승인과 거부는 검토자와 관리자만 할 수 있습니다."),
    ("dead_title", "Dead letters", "발송 실패 메일"),
    ("dead_empty", "No dead letters.", "발송 실패 메일이 없습니다."),
    ("to", "To", "받는 사람"),
    ("attempts", "Attempts", "시도"),
    ("server_answer", "Server's answer", "서버 응답"),
    ("retry", "Retry", "재시도"),
    ("retry_all", "Retry all", "모두 재시도"),
    ("admins_retry", "Only admins can retry.", "재시도는 관리자만 할 수 있습니다."),
    ("received", "Received", "수신"),
    ("from", "From", "보낸 사람"),
    ("effect", "What happened", "처리 결과"),
    ("inbound_empty", "No inbound mail yet.", "아직 수신 메일이 없습니다."),
    ("inbound_bounce", "bounce", "반송"),
    ("inbound_auto_reply", "auto-reply", "자동 회신"),
    ("inbound_command", "command", "명령"),
    ("inbound_unsubscribe", "unsubscribe", "수신 거부"),
    ("inbound_unrecognised", "unrecognised: needs a person", "인식 불가: 확인 필요"),
    ("state_invited", "invited", "초대됨"),
    ("state_authorized", "authorized", "권한 부여됨"),
    ("state_declined", "declined", "거절됨"),
    ("state_expired", "expired", "만료됨"),
    ("state_undeliverable", "undeliverable", "전달 불가"),
    ("state_revoked", "revoked", "철회됨"),
    ("state_pending_verification", "pending verification", "확인 대기"),
    ("state_in_review", "in review", "검토 중"),
    ("state_approved", "approved", "승인됨"),
    ("state_active", "active", "활성"),
    ("state_rejected", "rejected", "거부됨"),
    ("state_accepted", "accepted", "수락됨"),
];

/// The words of `lang` as one JSON object (built once per language).
pub fn strings(lang: &str) -> Value {
    static EN: OnceLock<Value> = OnceLock::new();
    static KO: OnceLock<Value> = OnceLock::new();
    let (cell, ko) = if lang == "ko-KR" {
        (&KO, true)
    } else {
        (&EN, false)
    };
    cell.get_or_init(|| {
        let mut m = Map::new();
        for (k, en, kr) in WORDS {
            m.insert((*k).to_string(), json!(if ko { kr } else { en }));
        }
        Value::Object(m)
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_in_both_languages_once() {
        let mut seen = std::collections::HashSet::new();
        for (k, en, ko) in WORDS {
            assert!(seen.insert(*k), "{k} twice");
            assert!(!en.is_empty() && !ko.is_empty(), "{k}");
        }
        for s in crate::funnel::STAGES
            .iter()
            .chain(crate::funnel::CURRENT.iter())
        {
            assert!(seen.contains(format!("stage_{s}").as_str()), "stage_{s}");
        }
    }

    #[test]
    fn cookies_and_flattening() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; invited_console=xyz; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "c"), None);
        let mut out = Vec::new();
        flatten(
            "",
            &json!({"a": {"b": "x", "c": null, "d": 3}, "e": []}),
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                ("a.b".to_string(), "x".to_string()),
                ("a.d".to_string(), "3".to_string())
            ]
        );
        assert_eq!(urlenc("a b&c@d"), "a%20b%26c@d");
    }
}
