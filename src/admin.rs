//! The admin API (JSON over HTTP) that the CLI and scripts use: on a Unix socket whose file
//! permissions are the access control, and optionally on TCP behind a bearer token. Also the
//! home of `GET /metrics`: on both admin listeners and on `[http] metrics_listen`, never on the
//! public listener.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::{App, AppError};
use crate::model::Channel;
use crate::rules::{EnrollmentFile, InviteRow};

pub struct AdminState {
    pub app: Arc<App>,
    pub http_addr: String,
    /// The bound addresses of the optional admin TCP and metrics listeners.
    pub admin_addr: Option<String>,
    pub metrics_addr: Option<String>,
    /// The console's bound address (`[console] listen`), when configured.
    pub console_addr: Option<String>,
    /// Present on the TCP listener: requests must carry `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

type S = State<Arc<AdminState>>;

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/invite", post(invite))
        .route("/v1/invite/bulk", post(invite_bulk))
        .route("/v1/enroll", post(enroll))
        .route("/v1/review/{id}/{decision}", post(review))
        .route("/v1/invite-customer", post(invite_customer))
        .route("/v1/list/{what}", get(list))
        .route("/v1/records/{id}", get(show))
        .route("/v1/records/{id}/{op}", post(record_op))
        .route("/v1/outbox", get(outbox))
        .route("/v1/outbox-summary", get(outbox_summary))
        .route("/v1/outbox/{id}", get(outbox_one))
        .route("/v1/outbox/{id}/retry", post(outbox_retry))
        .route("/v1/send-test-email", post(send_test_email))
        .route("/v1/inbound", get(inbound))
        .route("/v1/suppressions", get(suppressions))
        .route("/v1/suppressions/remove", post(suppression_remove))
        .route("/v1/export", get(export))
        .route("/v1/staff", get(staff_list).post(staff_add))
        .route("/v1/staff/remove", post(staff_remove))
        .route("/v1/staff/reset-password", post(staff_reset_password))
        .route("/v1/backup", get(backup))
        .route("/metrics", get(admin_metrics))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

async fn auth(State(st): S, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if let Some(expected) = &st.token {
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        use subtle::ConstantTimeEq;
        if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            return error(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required",
                None,
            );
        }
    }
    next.run(req).await
}

/// The `[http] metrics_listen` listener: `GET /metrics` and nothing else.
pub fn metrics_router(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(app): State<Arc<App>>| async move { metrics(&app) }),
        )
        .with_state(app)
}

async fn admin_metrics(State(st): S) -> Response {
    metrics(&st.app)
}

/// Prometheus text: outbox depth, sent / retried / failed, inbound by outcome, transitions by
/// kind, connections per listener, store flushes.
fn metrics(app: &App) -> Response {
    let (queued, dead) = app.outbox_gauges();
    let mut body = app.metrics.render(queued, dead);
    let (flushes, waits) = app.store_flush_counts();
    crate::metrics::Metrics::render_store(&mut body, flushes, waits);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn error(status: StatusCode, message: &str, field: Option<&str>) -> Response {
    (status, Json(json!({"error": message, "field": field}))).into_response()
}

/// The one place that maps errors to HTTP statuses.
impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match &self {
            AppError::NotFound(m) => error(StatusCode::NOT_FOUND, m, None),
            AppError::Invalid { field, .. } => {
                error(StatusCode::BAD_REQUEST, &self.to_string(), Some(field))
            }
            AppError::Refused(m) => error(StatusCode::CONFLICT, m, None),
            AppError::Suppressed { .. } => {
                error(StatusCode::CONFLICT, &self.to_string(), Some("email"))
            }
            AppError::Store(e) => {
                tracing::error!(error = %e, "store error");
                error(StatusCode::INTERNAL_SERVER_ERROR, &self.to_string(), None)
            }
        }
    }
}

type R = Result<Json<Value>, AppError>;

fn channel(h: &HeaderMap) -> Channel {
    match h.get("x-invited-client").and_then(|v| v.to_str().ok()) {
        Some("cli") => Channel::Cli,
        _ => Channel::Api,
    }
}

fn to_value<T: serde::Serialize>(v: T) -> R {
    Ok(Json(serde_json::to_value(v).unwrap_or(Value::Null)))
}

async fn status(State(st): S) -> R {
    to_value(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "http": st.http_addr,
        "admin_http": st.admin_addr,
        "console": st.console_addr,
        "metrics": st.metrics_addr,
        "outbox_depth": st.app.outbox_gauges().0,
    }))
}

#[derive(Deserialize)]
struct InviteBody {
    provider: String,
    #[serde(flatten)]
    row: InviteRow,
}

async fn invite(State(st): S, h: HeaderMap, Json(b): Json<InviteBody>) -> R {
    to_value(
        st.app
            .invite(&b.provider, b.row, channel(&h), Utc::now())
            .await?,
    )
}

#[derive(Deserialize)]
struct BulkBody {
    provider: String,
    rows: Vec<BulkRowIn>,
}
#[derive(Deserialize)]
struct BulkRowIn {
    line: u64,
    #[serde(flatten)]
    row: InviteRow,
}

async fn invite_bulk(State(st): S, h: HeaderMap, Json(b): Json<BulkBody>) -> R {
    let rows = b.rows.into_iter().map(|r| (r.line, r.row)).collect();
    to_value(
        st.app
            .invite_bulk(&b.provider, rows, channel(&h), Utc::now())
            .await?,
    )
}

async fn enroll(State(st): S, h: HeaderMap, Json(f): Json<EnrollmentFile>) -> R {
    let rec = st.app.enroll(f.into(), channel(&h), Utc::now()).await?;
    to_value(crate::app::record_json(&rec, true))
}

#[derive(Deserialize, Default)]
struct ReviewBody {
    #[serde(default)]
    reason: String,
}

async fn review(
    State(st): S,
    h: HeaderMap,
    Path((id, decision)): Path<(String, String)>,
    body: Option<Json<ReviewBody>>,
) -> R {
    let reason = body.map(|b| b.0.reason).unwrap_or_default();
    let approve = match decision.as_str() {
        "approve" => true,
        "reject" => false,
        other => {
            return Err(AppError::Invalid {
                field: "decision".into(),
                message: format!("{other:?} is not approve or reject"),
            })
        }
    };
    let rec = st
        .app
        .review(&id, approve, &reason, channel(&h), Utc::now())
        .await?;
    to_value(crate::app::record_json(&rec, true))
}

async fn invite_customer(
    State(st): S,
    h: HeaderMap,
    Json(b): Json<crate::app::CustomerRequest>,
) -> R {
    let rec = st.app.invite_customer(&b, channel(&h), Utc::now()).await?;
    to_value(crate::app::record_json(&rec, true))
}

async fn list(
    State(st): S,
    Path(what): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let provider = q.get("provider").map(String::as_str);
    let out = match what.as_str() {
        "resellers" => {
            let p = provider.ok_or_else(|| AppError::Invalid {
                field: "provider".into(),
                message: "list resellers needs --provider".into(),
            })?;
            st.app.resellers(p)?
        }
        "providers" => {
            let e = q.get("reseller_email").ok_or_else(|| AppError::Invalid {
                field: "reseller_email".into(),
                message: "list providers needs --reseller-email".into(),
            })?;
            st.app.providers_of(e)?
        }
        _ => {
            let (app, state) = (st.app.clone(), q.get("state").cloned());
            let provider = provider.map(str::to_string);
            // the arguments are checked before the answer starts
            app.list_ids(&[what.as_str()], provider.as_deref(), state.as_deref())?;
            return Ok(stream_array(move |emit| {
                app.emit_list(
                    &[what.as_str()],
                    provider.as_deref(),
                    state.as_deref(),
                    emit,
                )
            }));
        }
    };
    Ok(Json(out).into_response())
}

/// A JSON array made on the blocking pool and sent while it is made, in chunks of about
/// 64 KiB: a list or export of 100,000 records is never held whole, by the daemon nor by a
/// slow reader (the channel holds at most four chunks). `produce` hands each element to
/// `emit`, which says false once the client has gone. A store error after the first byte can
/// only cut the answer short, which the client sees as a broken response.
fn stream_array(
    produce: impl FnOnce(&mut dyn FnMut(Value) -> bool) -> Result<(), AppError> + Send + 'static,
) -> Response {
    use axum::body::{Body, Bytes};
    const CHUNK: usize = 64 * 1024;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let mut buf = Vec::with_capacity(CHUNK + 4096);
        buf.push(b'[');
        let mut first = true;
        let mut open = true;
        let result = produce(&mut |v: Value| {
            if !first {
                buf.push(b',');
            }
            first = false;
            // our own values: serialising cannot fail
            let _ = serde_json::to_writer(&mut buf, &v);
            if buf.len() >= CHUNK {
                let chunk = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK + 4096));
                open = tx.blocking_send(Ok(Bytes::from(chunk))).is_ok();
            }
            open
        });
        match result {
            Ok(()) => {
                buf.push(b']');
                let _ = tx.blocking_send(Ok(Bytes::from(buf)));
            }
            Err(e) => {
                tracing::error!(error = %e, "a streamed answer was cut short");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn show(State(st): S, Path(id): Path<String>) -> R {
    to_value(st.app.show(&id)?)
}

async fn record_op(State(st): S, h: HeaderMap, Path((id, op)): Path<(String, String)>) -> R {
    let now = Utc::now();
    let rec = match op.as_str() {
        "resend" => st.app.resend(&id, channel(&h), now).await?,
        "revoke" => st.app.revoke(&id, channel(&h), now).await?,
        "remove-admin-access" => st.app.remove_admin_access(&id, channel(&h), now).await?,
        other => return Err(AppError::NotFound(format!("no operation {other:?}"))),
    };
    to_value(crate::app::record_json(&rec, true))
}

async fn outbox(State(st): S, Query(q): Query<HashMap<String, String>>) -> Response {
    let (app, dead) = (st.app.clone(), q.get("dead").is_some_and(|v| v == "true"));
    stream_array(move |emit| app.emit_outbox(dead, emit))
}

async fn outbox_summary(State(st): S) -> R {
    to_value(st.app.outbox_summary(Utc::now())?)
}

async fn outbox_one(State(st): S, Path(id): Path<String>) -> R {
    to_value(st.app.outbox_one(&id)?)
}

#[derive(Deserialize)]
struct TestEmailBody {
    to: String,
}

async fn send_test_email(State(st): S, Json(b): Json<TestEmailBody>) -> R {
    to_value(st.app.send_test_email(&b.to, Utc::now()).await?)
}

async fn outbox_retry(State(st): S, Path(id): Path<String>) -> R {
    to_value(st.app.outbox_retry(&id, Utc::now()).await?)
}

async fn inbound(
    State(st): S,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let (app, outcome) = (st.app.clone(), q.get("outcome").cloned());
    App::check_outcome(outcome.as_deref())?;
    Ok(stream_array(move |emit| {
        app.emit_inbound(outcome.as_deref(), emit)
    }))
}

async fn suppressions(State(st): S, Query(q): Query<HashMap<String, String>>) -> R {
    to_value(st.app.suppressions(q.get("provider").map(String::as_str))?)
}

#[derive(Deserialize)]
struct SuppressionRemoveBody {
    provider: String,
    email: String,
}

async fn suppression_remove(State(st): S, Json(b): Json<SuppressionRemoveBody>) -> R {
    to_value(st.app.unsuppress(&b.provider, &b.email).await?)
}

#[derive(Deserialize)]
struct StaffBody {
    email: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    password: String,
}

async fn staff_list(State(st): S) -> R {
    to_value(st.app.staff_list()?)
}

async fn staff_add(State(st): S, Json(b): Json<StaffBody>) -> R {
    to_value(st.app.staff_add(&b.email, &b.role, &b.password).await?)
}

async fn staff_remove(State(st): S, Json(b): Json<StaffBody>) -> R {
    to_value(st.app.staff_remove(&b.email).await?)
}

async fn staff_reset_password(State(st): S, Json(b): Json<StaffBody>) -> R {
    to_value(st.app.staff_reset_password(&b.email, &b.password).await?)
}

/// The backup file's bytes; the CLI writes them where its user asked (the daemon may not be
/// allowed to write there).
async fn backup(State(st): S) -> Result<Response, AppError> {
    let bytes = st.app.backup(Utc::now()).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        bytes,
    )
        .into_response())
}

/// Every record: enrollments, invitations, customers, each in creation order; streamed.
async fn export(State(st): S) -> Response {
    let app = st.app.clone();
    stream_array(move |emit| {
        app.emit_list(
            &["enrollments", "invitations", "customers"],
            None,
            None,
            emit,
        )
    })
}
