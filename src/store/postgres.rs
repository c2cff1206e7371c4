//! The PostgreSQL store: the same records, outbox, inbound outcomes, suppressions and timers as
//! the sled store, in tables, for one or several daemons on one database.
//!
//! - Every `Store::write` is one transaction (READ COMMITTED) on one pooled connection; a record
//!   or outbox item read inside it is locked (`FOR UPDATE`) until it ends, so two daemons acting
//!   on one record (a link POST, a result, a timer) take turns, and the second sees the first's
//!   change: one transition.
//! - The sender claims due items ([`Store::claim_due`]): `FOR UPDATE SKIP LOCKED`, each marked
//!   with this daemon's name and a lease (`[store] lease`). No other daemon claims a leased item
//!   until the lease ends; a result (sent after the server's 250, retried, dead) clears it. A
//!   daemon that dies loses its leases when they expire and another one sends.
//! - Timers are taken the same way inside the transaction that runs them (`due_timers` locks
//!   with `SKIP LOCKED`, `remove_timer` says whether the row was still there): each fires once.
//! - An inbound message's outcome is keyed by its key (Message-ID, or a hash) with a primary key;
//!   `inbound_seen` in a write takes a transaction lock on the key first. Which daemon reads a
//!   mailbox is decided by a session advisory lock ([`Store::lead`]).
//!
//! The pool's connections live on a small runtime of the store's own, so the blocking calls
//! (`Txn` is synchronous, like sled's) work from any thread: a call hands its future to that
//! runtime and waits for the answer off the caller's runtime ([`off_runtime`]).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{
    off_runtime, DueTimer, InboundRecord, MessageRef, Result, StoreError, Suppression, TimerKind,
};
use crate::funnel::{self, DayCount, ProviderFunnel, RecordPage, RecordQuery};
use crate::model::{Body, Email, Record, RecordId, Timestamp};
use crate::outbox::{OutboxItem, OutboxState};
use crate::staff::{Session, Staff};

/// The schema this binary writes, recorded in `invited_schema`. Migrations are applied on start
/// in order, each in its own transaction with the version row; a database with a newer version is
/// refused.
pub const SCHEMA_VERSION: i32 = 3;

const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE records (
    id text PRIMARY KEY,
    kind text NOT NULL,
    state text NOT NULL,
    recipient text NOT NULL,
    provider text,
    authorization_id text,
    -- "provider/email" while a provider authorization is live (invited or authorized): one
    live_key text UNIQUE,
    body text NOT NULL
);
CREATE INDEX records_recipient ON records (recipient);
CREATE INDEX records_provider ON records (provider);
CREATE INDEX records_authorization ON records (authorization_id);
CREATE TABLE outbox (
    ref text PRIMARY KEY,
    record_id text NOT NULL,
    state text NOT NULL,
    due_at bigint NOT NULL,
    sent_at bigint,
    lease_owner text,
    lease_until bigint,
    item text NOT NULL
);
CREATE INDEX outbox_queued ON outbox (due_at) WHERE state = 'queued';
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE state = 'sent';
CREATE INDEX outbox_dead ON outbox (ref) WHERE state = 'dead';
CREATE TABLE message_refs (
    ref text PRIMARY KEY,
    body text NOT NULL
);
CREATE TABLE inbound (
    key text PRIMARY KEY,
    seq bigint NOT NULL UNIQUE,
    received_ms bigint,
    body text NOT NULL
);
CREATE SEQUENCE inbound_seq;
CREATE TABLE suppressions (
    provider text NOT NULL,
    email text NOT NULL,
    body text NOT NULL,
    PRIMARY KEY (provider, email)
);
CREATE TABLE timers (
    record_id text NOT NULL,
    kind text NOT NULL,
    at bigint NOT NULL,
    PRIMARY KEY (record_id, kind, at)
);
CREATE INDEX timers_at ON timers (at);
CREATE TABLE meta (
    name text PRIMARY KEY,
    value text NOT NULL
);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE staff (
    email text PRIMARY KEY,
    body text NOT NULL
);
CREATE TABLE sessions (
    key text PRIMARY KEY,
    staff text NOT NULL,
    body text NOT NULL
);
CREATE INDEX sessions_staff ON sessions (staff);
"#,
    ),
    // `migrate` applies every migration the database lacks, by version (2 and 3 were made side by
    // side: a database that got 3 first still gets 2)
    (3, MIGRATION_3_CONSOLE),
];

/// Migration 3: what the staff console reads without a scan. Columns `created_ms` (activity),
/// `changed_ms` (the last change: the last history entry's time, `funnel::last_change`) and
/// `company` (the records list's search), filled from the stored records; indexes for the
/// records list by last change (with provider and state) and for the funnel's aggregate; and
/// `confirmations`, one row per history entry that is a confirmation (`funnel::is_confirmation`),
/// filled from the histories, so the days count confirmations without reading records.
const MIGRATION_3_CONSOLE: &str = r#"
ALTER TABLE records ADD COLUMN created_ms bigint, ADD COLUMN changed_ms bigint,
    ADD COLUMN company text;
UPDATE records SET
    created_ms = (extract(epoch FROM (body::jsonb ->> 'created_at')::timestamptz) * 1000)::bigint,
    changed_ms = (extract(epoch FROM coalesce(body::jsonb -> 'history' -> -1 ->> 'at',
                                              body::jsonb ->> 'created_at')::timestamptz) * 1000)::bigint,
    company = coalesce(body::jsonb -> 'body' ->> 'company', '');
CREATE INDEX records_changed ON records (changed_ms DESC, id COLLATE "C");
CREATE INDEX records_provider_state_changed ON records (provider, state, changed_ms DESC);
CREATE INDEX records_created ON records (created_ms) WHERE kind <> 'enrollment';
CREATE INDEX records_funnel ON records (kind, provider, state, recipient);
CREATE TABLE confirmations (
    record_id text NOT NULL,
    -- the entry's place in the record's history (from 0)
    seq integer NOT NULL,
    at_ms bigint NOT NULL,
    PRIMARY KEY (record_id, seq)
);
CREATE INDEX confirmations_at ON confirmations (at_ms);
INSERT INTO confirmations (record_id, seq, at_ms)
SELECT r.id, (h.n - 1)::integer,
       (extract(epoch FROM (h.e ->> 'at')::timestamptz) * 1000)::bigint
FROM records r, jsonb_array_elements(r.body::jsonb -> 'history') WITH ORDINALITY AS h(e, n)
WHERE h.e ->> 'channel' IN ('link', 'reply') AND h.e ->> 'from' <> h.e ->> 'to'
  AND h.e ->> 'to' IN ('in_review', 'active', 'authorized', 'accepted');
"#;

/// Held by every daemon that migrates: one migrates, the others wait and find it done.
const MIGRATION_LOCK: i64 = 0x696e_7669_7465_6400; // "invited\0"

fn pg_err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Postgres(format!("{what}: {e}"))
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// the runtime the pool's connections run on; shut down without waiting when dropped
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    /// this daemon's name on its leases
    owner: String,
    lease_ms: i64,
    /// queued and dead counts, read at most every half second (`outbox_depth` is a gauge)
    counts: Mutex<Option<(Instant, usize, usize)>>,
    commits: AtomicU64,
    /// the last readiness check: when, and whether the database answered
    checked: Mutex<Option<(Instant, bool)>>,
    /// Write transactions at once, at most half the pool: a transaction's closure may read
    /// committed data (`Store::read`, a connection of its own) while it holds its own connection
    /// and row locks; with every connection held by writers queued behind its locks, that read
    /// would wait for a connection until the pool's time-out.
    writers: Writers,
}

/// A counting semaphore for threads (`write` blocks, off the runtime).
struct Writers {
    free: Mutex<usize>,
    freed: std::sync::Condvar,
}

impl Writers {
    fn acquire(&self) -> WriterPermit<'_> {
        let mut n = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *n == 0 {
            n = self.freed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n -= 1;
        WriterPermit(self)
    }
}

struct WriterPermit<'a>(&'a Writers);

impl Drop for WriterPermit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

macro_rules! params {
    ($($p:expr),* $(,)?) => {
        vec![$(Box::new($p) as Box<dyn ToSql + Sync + Send>),*]
    };
}

async fn connection(pool: &Pool) -> Result<Object> {
    match tokio::time::timeout(Duration::from_secs(10), pool.get()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(pg_err("connecting", e)),
        Err(_) => Err(StoreError::Postgres(
            "connecting: no connection within 10 s".into(),
        )),
    }
}

/// What a statement gives back: its rows, or how many rows it changed.
enum Answer {
    Rows(Vec<Row>),
    Count(u64),
}

impl Answer {
    fn rows(self) -> Vec<Row> {
        match self {
            Answer::Rows(r) => r,
            Answer::Count(_) => Vec::new(),
        }
    }

    fn count(self) -> u64 {
        match self {
            Answer::Rows(r) => r.len() as u64,
            Answer::Count(n) => n,
        }
    }
}

/// One statement (prepared once per connection), for its rows or its count.
async fn run(c: &Object, sql: &str, params: &Params, rows: bool) -> Result<Answer> {
    let stmt = c
        .prepare_cached(sql)
        .await
        .map_err(|e| pg_err("preparing", e))?;
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let out = if rows {
        c.query(&stmt, &refs).await.map(Answer::Rows)
    } else {
        c.execute(&stmt, &refs).await.map(Answer::Count)
    };
    out.map_err(|e| pg_err(sql_name(sql), e))
}

/// The first words of a statement, to name it in an error.
fn sql_name(sql: &str) -> &str {
    let s = sql.trim_start();
    let end = s
        .char_indices()
        .filter(|(_, c)| c.is_whitespace())
        .nth(2)
        .map_or(s.len(), |(i, _)| i);
    &s[..end]
}

fn ms(t: &Timestamp) -> i64 {
    t.timestamp_millis()
}

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, v: &str) -> Result<T> {
    serde_json::from_str(v).map_err(|source| StoreError::Corrupt {
        key: what.to_string(),
        source,
    })
}

fn encode<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn outbox_state(s: OutboxState) -> &'static str {
    match s {
        OutboxState::Queued => "queued",
        OutboxState::Sent => "sent",
        OutboxState::Dead => "dead",
    }
}

fn items(rows: Vec<Row>) -> Result<Vec<OutboxItem>> {
    rows.iter()
        .map(|r| decode::<OutboxItem>("outbox item", r.get::<_, &str>(0)))
        .collect()
}

fn records(rows: Vec<Row>) -> Result<Vec<Record>> {
    rows.iter()
        .map(|r| decode::<Record>("record", r.get::<_, &str>(0)))
        .collect()
}

fn live_key(r: &Record) -> Option<String> {
    match &r.body {
        Body::ProviderAuthorization(a)
            if matches!(
                a.state,
                crate::model::AuthorizationState::Invited
                    | crate::model::AuthorizationState::Authorized
            ) =>
        {
            Some(format!("{}/{}", a.provider, a.email))
        }
        _ => None,
    }
}

impl Store {
    /// Connects (retrying for up to 30 s: a database starting beside the daemon), applies the
    /// schema migrations this binary has and the database lacks, and checks the version.
    /// `owner` names this daemon on its leases: the same daemon (host and admin socket) gets the
    /// same name after a restart, so it can take back what it had claimed when it died
    /// ([`Store::recover_claims`]) instead of waiting for the leases to end.
    pub fn open(cfg: &crate::config::PostgresStore, owner: &str) -> Result<Store> {
        let mut pg: tokio_postgres::Config = cfg
            .url
            .parse()
            .map_err(|_| StoreError::Other("store.url is not a PostgreSQL URL".into()))?;
        if let Some(file) = &cfg.password_file {
            let pw = std::fs::read_to_string(file).map_err(|e| {
                StoreError::Other(format!("store.password_file {}: {e}", file.display()))
            })?;
            pg.password(pw.trim_end_matches(['\r', '\n']));
        }
        pg.application_name("invited");
        pg.connect_timeout(Duration::from_secs(5));
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config()?);
        let manager = Manager::from_config(
            pg,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("invited-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Other(format!("starting the store's runtime: {e}")))?;
        let handle = rt.handle().clone();
        let pool = {
            let _in = rt.enter();
            Pool::builder(manager)
                .max_size(cfg.pool_size)
                .build()
                .map_err(|e| StoreError::Other(format!("the PostgreSQL pool: {e}")))?
        };
        let owner = format!("{}:{owner}", hostname());
        let store = Store {
            inner: Arc::new(Inner {
                rt: Some(rt),
                handle,
                pool,
                owner,
                lease_ms: cfg.lease.as_millis() as i64,
                counts: Mutex::new(None),
                commits: AtomicU64::new(0),
                checked: Mutex::new(None),
                writers: Writers {
                    free: Mutex::new((cfg.pool_size / 2).max(1)),
                    freed: std::sync::Condvar::new(),
                },
            }),
        };
        let start = Instant::now();
        loop {
            match store.migrate() {
                Ok(()) => break,
                Err(e @ StoreError::TooNew { .. }) => return Err(e),
                Err(e) if start.elapsed() < Duration::from_secs(30) => {
                    tracing::warn!(error = %e, "the PostgreSQL store is not answering yet; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(store)
    }

    /// Runs `fut` on the store's runtime and waits for it (off the caller's runtime workers).
    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inner.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        off_runtime(|| rx.recv())
            .unwrap_or_else(|_| Err(StoreError::Other("the store's runtime stopped".into())))
    }

    /// One statement on a connection of its own (autocommit).
    fn statement(&self, sql: &'static str, params: Params, rows: bool) -> Result<Answer> {
        let pool = self.inner.pool.clone();
        self.block(async move {
            let c = connection(&pool).await?;
            run(&c, sql, &params, rows).await
        })
    }

    fn query(&self, sql: &'static str, params: Params) -> Result<Vec<Row>> {
        Ok(self.statement(sql, params, true)?.rows())
    }

    fn execute(&self, sql: &'static str, params: Params) -> Result<u64> {
        Ok(self.statement(sql, params, false)?.count())
    }

    fn migrate(&self) -> Result<()> {
        let pool = self.inner.pool.clone();
        self.block(async move {
            let mut c = connection(&pool).await?;
            let t = c.transaction().await.map_err(|e| pg_err("BEGIN", e))?;
            t.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(|e| pg_err("locking for migrations", e))?;
            t.batch_execute(
                "CREATE TABLE IF NOT EXISTS invited_schema (
                    version integer PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await
            .map_err(|e| pg_err("creating invited_schema", e))?;
            let applied: Vec<i32> = t
                .query("SELECT version FROM invited_schema", &[])
                .await
                .map_err(|e| pg_err("reading the schema version", e))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let found = applied.iter().copied().max().unwrap_or(0);
            if found > SCHEMA_VERSION {
                return Err(StoreError::TooNew {
                    found: found as u32,
                });
            }
            // every migration the database lacks, in order (not only those above its highest:
            // migrations made on two branches at once may land in either order)
            for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| !applied.contains(v)) {
                t.batch_execute(sql)
                    .await
                    .map_err(|e| pg_err(&format!("schema migration {version}"), e))?;
                t.execute(
                    "INSERT INTO invited_schema (version) VALUES ($1)",
                    &[version],
                )
                .await
                .map_err(|e| pg_err("recording the schema version", e))?;
                tracing::info!(version, "PostgreSQL store: schema migration applied");
            }
            t.commit().await.map_err(|e| pg_err("COMMIT", e))?;
            Ok(())
        })
    }

    /// One transaction: BEGIN, `f`, COMMIT if it returned `Ok` and every write succeeded, else
    /// ROLLBACK.
    pub fn write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut super::Txn) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        off_runtime(|| {
            let _permit = self.inner.writers.acquire();
            let pool = self.inner.pool.clone();
            let conn = self.block(async move {
                let c = connection(&pool).await?;
                c.batch_execute("BEGIN")
                    .await
                    .map_err(|e| pg_err("BEGIN", e))?;
                Ok(c)
            })?;
            let mut txn = super::Txn::Postgres(Txn {
                store: self,
                conn: std::cell::RefCell::new(Some(conn)),
                write: true,
                failed: std::cell::RefCell::new(None),
            });
            let out = f(&mut txn);
            let super::Txn::Postgres(txn) = txn else {
                return Err(
                    StoreError::Other("a PostgreSQL transaction changed backend".into()).into(),
                );
            };
            let failed = txn.failed.take();
            let Some(conn) = txn.conn.take() else {
                return Err(
                    StoreError::Postgres("the transaction lost its connection".into()).into(),
                );
            };
            let commit = out.is_ok() && failed.is_none();
            let end = self.block(async move {
                let sql = if commit { "COMMIT" } else { "ROLLBACK" };
                conn.batch_execute(sql).await.map_err(|e| pg_err(sql, e))
            });
            if let Some(e) = failed {
                return Err(e.into());
            }
            let out = out?;
            end?;
            self.inner.commits.fetch_add(1, Ordering::Relaxed);
            self.forget_counts();
            Ok(out)
        })
    }

    pub fn read(&self) -> Txn<'_> {
        Txn {
            store: self,
            conn: std::cell::RefCell::new(None),
            write: false,
            failed: std::cell::RefCell::new(None),
        }
    }

    pub fn flush_counts(&self) -> (u64, u64) {
        let n = self.inner.commits.load(Ordering::Relaxed);
        (n, n)
    }

    /// Whether the database answers (`/readyz`): a `SELECT 1`, at most one a second (the answer
    /// is kept that long).
    pub fn is_open(&self) -> bool {
        let mut last = self.inner.checked.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, ok)) = *last {
            if at.elapsed() < Duration::from_secs(1) {
                return ok;
            }
        }
        let ok = self.query("SELECT 1", params![]).is_ok();
        *last = Some((Instant::now(), ok));
        ok
    }

    fn forget_counts(&self) {
        *self.inner.counts.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn counts(&self) -> (usize, usize) {
        let mut c = self.inner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, q, d)) = *c {
            if at.elapsed() < Duration::from_millis(500) {
                return (q, d);
            }
        }
        let rows = self.query(
            "SELECT count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'dead') FROM outbox WHERE state <> 'sent'",
            params![],
        );
        let (q, d) = match rows.as_deref() {
            Ok([r, ..]) => (r.get::<_, i64>(0) as usize, r.get::<_, i64>(1) as usize),
            _ => return c.map_or((0, 0), |(_, q, d)| (q, d)),
        };
        *c = Some((Instant::now(), q, d));
        (q, d)
    }

    pub fn outbox_depth(&self) -> usize {
        self.counts().0
    }

    pub fn outbox_dead_count(&self) -> usize {
        self.counts().1
    }

    pub fn next_seq(&self) -> Result<u64> {
        let rows = self.query("SELECT nextval('inbound_seq')", params![])?;
        Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0)) as u64)
    }

    /// Claims up to `limit` due items for this daemon (see the module comment).
    pub fn claim_due(&self, now: &Timestamp, limit: usize) -> Result<Vec<OutboxItem>> {
        let wall = wall_ms();
        let rows = self.query(
            "UPDATE outbox SET lease_owner = $3, lease_until = $4 WHERE ref IN (
                SELECT ref FROM outbox
                WHERE state = 'queued' AND due_at <= $1 AND (lease_until IS NULL OR lease_until < $5)
                ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING item, due_at",
            params![
                ms(now),
                limit.min(256) as i64,
                self.inner.owner.clone(),
                wall + self.inner.lease_ms,
                wall
            ],
        )?;
        let mut out: Vec<(i64, OutboxItem)> = rows
            .iter()
            .map(|r| Ok((r.get(1), decode("outbox item", r.get::<_, &str>(0))?)))
            .collect::<Result<_>>()?;
        out.sort_by_key(|(due, _)| *due);
        Ok(out.into_iter().map(|(_, i)| i).collect())
    }

    /// At a daemon's start: the items its previous run claimed and did not finish are free again
    /// (nothing of this daemon is sending yet). How many.
    pub fn recover_claims(&self) -> Result<u64> {
        self.execute(
            "UPDATE outbox SET lease_owner = NULL, lease_until = NULL
             WHERE lease_owner = $1 AND state = 'queued'",
            params![self.inner.owner.clone()],
        )
    }

    pub fn release(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.execute(
            "UPDATE outbox SET lease_owner = NULL, lease_until = NULL
             WHERE ref = ANY($1) AND lease_owner = $2 AND state = 'queued'",
            params![ids.to_vec(), self.inner.owner.clone()],
        )?;
        Ok(())
    }

    pub fn next_claimable(&self) -> Result<Option<i64>> {
        let rows = self.query(
            "SELECT min(greatest(due_at, coalesce(lease_until, 0))) FROM outbox WHERE state = 'queued'",
            params![],
        )?;
        Ok(rows.first().and_then(|r| r.get::<_, Option<i64>>(0)))
    }

    /// Tries to take the advisory lock named `name` on a connection of its own, held until the
    /// [`Leader`] is dropped (the connection is closed then, which releases it).
    pub fn lead(&self, name: &str) -> Result<Option<Leader>> {
        let pool = self.inner.pool.clone();
        let name = format!("invited mailbox {name}");
        let got = self.block(async move {
            let c = connection(&pool).await?;
            let row = c
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                    &[&name],
                )
                .await
                .map_err(|e| pg_err("pg_try_advisory_lock", e))?;
            let held: bool = row.get(0);
            // taken out of the pool: dropping it closes the session and so frees the lock
            Ok(held.then(|| Object::take(c)))
        })?;
        Ok(got.map(|client| Leader {
            store: self.clone(),
            client: Some(client),
        }))
    }

    fn each_row(
        &self,
        sql: &'static str,
        key: impl Fn(&Row) -> String,
        mut f: impl FnMut(&Row) -> Result<()>,
    ) -> Result<()> {
        // in pages of 1,000 by primary key, so 100,000 rows never sit in memory at once
        let mut after = String::new();
        loop {
            let rows = self.query(sql, params![after.clone()])?;
            for r in &rows {
                f(r)?;
            }
            match rows.last() {
                Some(r) if rows.len() == 1000 => after = key(r),
                _ => return Ok(()),
            }
        }
    }

    pub fn each_record(
        &self,
        provider: Option<&str>,
        mut f: impl FnMut(Record) -> Result<()>,
    ) -> Result<()> {
        let provider = provider.map(str::to_string);
        self.each_row(
            "SELECT body, id, provider FROM records WHERE id > $1 ORDER BY id LIMIT 1000",
            |r| r.get::<_, String>(1),
            |r| {
                if provider.is_some() && r.get::<_, Option<String>>(2) != provider {
                    return Ok(());
                }
                f(decode("record", r.get::<_, &str>(0))?)
            },
        )
    }

    pub fn each_outbox(
        &self,
        dead_only: bool,
        mut f: impl FnMut(OutboxItem) -> Result<()>,
    ) -> Result<()> {
        self.each_row(
            "SELECT item, ref, state FROM outbox WHERE ref > $1 ORDER BY ref LIMIT 1000",
            |r| r.get::<_, String>(1),
            |r| {
                if dead_only && r.get::<_, &str>(2) != "dead" {
                    return Ok(());
                }
                f(decode("outbox item", r.get::<_, &str>(0))?)
            },
        )
    }

    pub fn each_inbound(&self, mut f: impl FnMut(InboundRecord) -> Result<()>) -> Result<()> {
        let mut after = -1i64;
        loop {
            let rows = self.query(
                "SELECT body, seq FROM inbound WHERE seq > $1 ORDER BY seq LIMIT 1000",
                params![after],
            )?;
            for r in &rows {
                f(decode("inbound outcome", r.get::<_, &str>(0))?)?;
            }
            match rows.last() {
                Some(r) if rows.len() == 1000 => after = r.get(1),
                _ => return Ok(()),
            }
        }
    }

    pub fn holds_data(&self) -> Result<bool> {
        let rows = self.query(
            "SELECT EXISTS (SELECT 1 FROM records) OR EXISTS (SELECT 1 FROM outbox)",
            params![],
        )?;
        Ok(rows.first().is_some_and(|r| r.get::<_, bool>(0)))
    }

    pub fn each_inbound_keyed(
        &self,
        mut f: impl FnMut(String, InboundRecord) -> Result<()>,
    ) -> Result<()> {
        let mut after = -1i64;
        loop {
            let rows = self.query(
                "SELECT body, seq, key FROM inbound WHERE seq > $1 ORDER BY seq LIMIT 1000",
                params![after],
            )?;
            for r in &rows {
                f(r.get(2), decode("inbound outcome", r.get::<_, &str>(0))?)?;
            }
            match rows.last() {
                Some(r) if rows.len() == 1000 => after = r.get(1),
                _ => return Ok(()),
            }
        }
    }

    pub fn each_meta(&self, mut f: impl FnMut(String, String) -> Result<()>) -> Result<()> {
        for r in self.query("SELECT name, value FROM meta ORDER BY name", params![])? {
            f(r.get(0), r.get(1))?;
        }
        Ok(())
    }

    pub fn each_ref(&self, mut f: impl FnMut(String, MessageRef) -> Result<()>) -> Result<()> {
        self.each_row(
            "SELECT body, ref FROM message_refs WHERE ref > $1 ORDER BY ref LIMIT 1000",
            |r| r.get::<_, String>(1),
            |r| f(r.get(1), decode("reply reference", r.get::<_, &str>(0))?),
        )
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

/// rustls with the usual web roots (ring), for `sslmode=require` and stricter.
fn tls_config() -> Result<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Other(format!("TLS for PostgreSQL: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// The mailbox reader's lock ([`Store::lead`]).
pub struct Leader {
    store: Store,
    client: Option<deadpool_postgres::ClientWrapper>,
}

impl Leader {
    /// Whether the session holding the lock is alive (one round trip).
    pub fn holds(&mut self) -> bool {
        let Some(client) = self.client.take() else {
            return false;
        };
        let r = self.store.block(async move {
            let ok = client.simple_query("SELECT 1").await.is_ok();
            Ok((ok, client))
        });
        match r {
            Ok((true, client)) => {
                self.client = Some(client);
                true
            }
            _ => false,
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            // the connection task runs on the store's runtime: drop the client there
            self.store.inner.handle.spawn(async move { drop(c) });
        }
    }
}

impl Drop for Txn<'_> {
    /// A transaction left with its connection (its closure panicked): the connection is taken
    /// out of the pool and closed, which rolls the transaction back, rather than handed to the
    /// next caller mid-transaction.
    fn drop(&mut self) {
        if let Some(c) = self.conn.get_mut().take() {
            let client = Object::take(c);
            self.store.inner.handle.spawn(async move { drop(client) });
        }
    }
}

/// A transaction (`write`) or autocommitted reads (`read`). The write methods that cannot fail
/// on sled (they only add to a batch) keep that signature here: a failure is kept and the
/// transaction rolls back at its end, and `write` returns it.
pub struct Txn<'a> {
    store: &'a Store,
    /// the transaction's connection (writes only)
    conn: std::cell::RefCell<Option<Object>>,
    write: bool,
    failed: std::cell::RefCell<Option<StoreError>>,
}

impl Txn<'_> {
    /// A statement in this transaction (on its connection), or autocommitted for a read.
    fn statement(&self, sql: &'static str, params: Params, rows: bool) -> Result<Answer> {
        if !self.write {
            return self.store.statement(sql, params, rows);
        }
        let conn =
            self.conn.borrow_mut().take().ok_or_else(|| {
                StoreError::Postgres("the transaction lost its connection".into())
            })?;
        let (conn, out) = self.store.block(async move {
            let out = run(&conn, sql, &params, rows).await;
            Ok((conn, out))
        })?;
        *self.conn.borrow_mut() = Some(conn);
        out
    }

    fn query(&self, sql: &'static str, params: Params) -> Result<Vec<Row>> {
        Ok(self.statement(sql, params, true)?.rows())
    }

    fn execute(&self, sql: &'static str, params: Params) -> Result<u64> {
        Ok(self.statement(sql, params, false)?.count())
    }

    /// A write whose failure is reported when the transaction ends.
    fn deferred(&self, sql: &'static str, params: Params) {
        if self.failed.borrow().is_some() {
            return;
        }
        if let Err(e) = self.execute(sql, params) {
            *self.failed.borrow_mut() = Some(e);
        }
    }

    // ---- records -------------------------------------------------------------------------

    pub fn record(&self, id: &RecordId) -> Result<Option<Record>> {
        let sql = if self.write {
            "SELECT body FROM records WHERE id = $1 FOR UPDATE"
        } else {
            "SELECT body FROM records WHERE id = $1"
        };
        Ok(records(self.query(sql, params![id.to_string()])?)?.pop())
    }

    pub fn put_record(&mut self, r: &Record) -> Result<()> {
        let authorization = match &r.body {
            Body::CustomerInvitation(c) => Some(c.authorization.to_string()),
            _ => None,
        };
        // the record's confirmations go in with it, in the same statement (no round trip of
        // their own); a set: those a previous write of the record put there stay as they are
        let (mut seqs, mut ats) = (Vec::<i32>::new(), Vec::<i64>::new());
        for (i, t) in r.history.iter().enumerate() {
            if let Some(at) = funnel::entry_time(t).filter(|_| funnel::is_confirmation(t)) {
                seqs.push(i as i32);
                ats.push(ms(&at));
            }
        }
        self.execute(
            "WITH record AS (
               INSERT INTO records (id, kind, state, recipient, provider, authorization_id,
                 live_key, body, created_ms, changed_ms, company)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
               ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, live_key = EXCLUDED.live_key,
                 body = EXCLUDED.body, changed_ms = EXCLUDED.changed_ms)
             INSERT INTO confirmations (record_id, seq, at_ms)
             SELECT $1, s, a FROM unnest($12::integer[], $13::bigint[]) AS t(s, a)
             ON CONFLICT DO NOTHING",
            params![
                r.id.to_string(),
                r.kind().as_str(),
                r.state_str(),
                r.recipient().to_string(),
                r.provider().map(str::to_string),
                authorization,
                live_key(r),
                encode(r),
                ms(&r.created_at),
                ms(&funnel::last_change(r)),
                r.company().to_string(),
                seqs,
                ats
            ],
        )?;
        Ok(())
    }

    pub fn put_new_record(&mut self, r: &Record) -> Result<()> {
        self.put_record(r)
    }

    pub fn note_message(&mut self, id: &RecordId, message_id: &str) -> Result<()> {
        let Some(mut r) = self.record(id)? else {
            return Ok(()); // a test email: no record
        };
        if let Some(last) = r.history.last_mut() {
            last.message_ids.push(message_id.to_string());
            self.execute(
                "UPDATE records SET body = $2 WHERE id = $1",
                params![id.to_string(), encode(&r)],
            )?;
        }
        Ok(())
    }

    pub fn live_authorization(&self, provider: &str, email: &Email) -> Result<Option<RecordId>> {
        let rows = self.query(
            "SELECT id FROM records WHERE live_key = $1",
            params![format!("{provider}/{email}")],
        )?;
        Ok(rows
            .first()
            .and_then(|r| RecordId::parse(r.get::<_, &str>(0))))
    }

    pub fn records_for_recipient(&self, email: &Email) -> Result<Vec<Record>> {
        records(self.query(
            "SELECT body FROM records WHERE recipient = $1 ORDER BY id",
            params![email.to_string()],
        )?)
    }

    pub fn records_for_provider(&self, provider: &str) -> Result<Vec<Record>> {
        records(self.query(
            "SELECT body FROM records WHERE provider = $1 ORDER BY id",
            params![provider.to_string()],
        )?)
    }

    pub fn customers_of(&self, authorization: &RecordId) -> Result<Vec<Record>> {
        records(self.query(
            "SELECT body FROM records WHERE authorization_id = $1 ORDER BY id",
            params![authorization.to_string()],
        )?)
    }

    pub fn all_records(&self) -> Result<Vec<Record>> {
        records(self.query("SELECT body FROM records ORDER BY id", params![])?)
    }

    // ---- the console's queries -------------------------------------------------------------

    /// The funnel in one aggregate over the invitations (an index-only scan of
    /// `records_funnel`), each joined to its address's best enrollment. The ranks and levels
    /// are `funnel::enrollment_rank` and `funnel::level` said in SQL.
    pub fn funnel(&self) -> Result<Vec<ProviderFunnel>> {
        let rows = self.query(
            "SELECT a.provider, CASE WHEN a.state = 'authorized' THEN 5 ELSE coalesce(e.rank, 0) END,
                    a.state, count(*)
             FROM records a
             LEFT JOIN (SELECT recipient, max(CASE state WHEN 'in_review' THEN 2 WHEN 'rejected' THEN 2 WHEN 'approved' THEN 3
                                                          WHEN 'active' THEN 4 ELSE 1 END) AS rank
                        FROM records WHERE kind = 'enrollment' GROUP BY recipient) e
               ON e.recipient = a.recipient
             WHERE a.kind = 'provider_authorization'
             GROUP BY 1, 2, 3",
            params![],
        )?;
        let mut by: std::collections::BTreeMap<String, ProviderFunnel> = Default::default();
        for row in &rows {
            let provider: Option<String> = row.get(0);
            let level: i32 = row.get(1);
            let Some(state) = crate::model::AuthorizationState::parse(row.get(2)) else {
                continue;
            };
            let n: i64 = row.get(3);
            let provider = provider.unwrap_or_default();
            by.entry(provider.clone())
                .or_insert_with(|| ProviderFunnel {
                    provider,
                    ..ProviderFunnel::default()
                })
                .add_n(
                    funnel::Share {
                        level: level.clamp(0, 5) as usize,
                        current: funnel::current_index(state),
                    },
                    n.max(0) as u64,
                );
        }
        Ok(by.into_values().collect())
    }

    /// Invitations by creation day (`records_created`) and confirmations by day
    /// (`confirmations_at`), from `first` on.
    pub fn days_since(&self, first: chrono::NaiveDate) -> Result<Vec<DayCount>> {
        const DAY_MS: i64 = 86_400_000;
        let since = first
            .and_hms_opt(0, 0, 0)
            .map_or(0, |t| t.and_utc().timestamp_millis());
        let mut days: std::collections::BTreeMap<i64, (u64, u64)> = Default::default();
        for row in self.query(
            "SELECT created_ms / 86400000, count(*) FROM records
             WHERE kind <> 'enrollment' AND created_ms >= $1 GROUP BY 1",
            params![since],
        )? {
            days.entry(row.get(0)).or_default().0 = row.get::<_, i64>(1).max(0) as u64;
        }
        for row in self.query(
            "SELECT at_ms / 86400000, count(*) FROM confirmations WHERE at_ms >= $1 GROUP BY 1",
            params![since],
        )? {
            days.entry(row.get(0)).or_default().1 = row.get::<_, i64>(1).max(0) as u64;
        }
        Ok(days
            .into_iter()
            .filter_map(|(d, (invitations, confirmations))| {
                let date = chrono::DateTime::from_timestamp_millis(d * DAY_MS)?;
                Some(DayCount {
                    date: funnel::day_of(&date),
                    invitations,
                    confirmations,
                })
            })
            .collect())
    }

    /// One page of the records list: the filters in SQL, newest `changed_ms` first (index
    /// `records_changed`, or `records_provider_state_changed` with a provider and a state).
    pub fn records_page(&self, q: &RecordQuery) -> Result<RecordPage> {
        let per_page = q.per_page();
        let rows = self.query(
            "SELECT body FROM records
             WHERE ($1::text IS NULL OR kind = $1) AND ($2::text IS NULL OR state = $2)
               AND ($3::text IS NULL OR provider = $3)
               AND ($4::text IS NULL OR strpos(lower(recipient), $4) > 0
                    OR strpos(lower(company), $4) > 0)
             ORDER BY changed_ms DESC, id COLLATE \"C\"
             LIMIT $5 OFFSET $6",
            params![
                q.kind.map(|k| k.as_str().to_string()),
                q.state.clone(),
                q.provider.clone(),
                q.text_lower(),
                per_page as i64 + 1,
                q.skip().min(i64::MAX as usize) as i64
            ],
        )?;
        let mut records = records(rows)?;
        let has_next = records.len() > per_page;
        records.truncate(per_page);
        Ok(RecordPage {
            records,
            page: q.page(),
            has_next,
        })
    }

    // ---- outbox --------------------------------------------------------------------------

    /// Writes an item and clears any lease on it: a result, a retry, a new message.
    pub fn put_outbox(&mut self, item: &OutboxItem) -> Result<()> {
        self.execute(
            "INSERT INTO outbox (ref, record_id, state, due_at, sent_at, item)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (ref) DO UPDATE SET state = EXCLUDED.state, due_at = EXCLUDED.due_at,
               sent_at = EXCLUDED.sent_at, item = EXCLUDED.item, lease_owner = NULL,
               lease_until = NULL",
            params![
                item.id.clone(),
                item.record.to_string(),
                outbox_state(item.state),
                ms(&item.next_attempt_at),
                item.sent_at.as_ref().map(ms),
                String::from_utf8_lossy(&super::embedded::encode_outbox(item)).into_owned()
            ],
        )?;
        Ok(())
    }

    pub fn put_queued_outbox(&mut self, _was_due: &Timestamp, item: &OutboxItem) -> Result<()> {
        self.put_outbox(item)
    }

    pub fn put_new_outbox(&mut self, item: &OutboxItem) {
        if self.failed.borrow().is_some() {
            return;
        }
        if let Err(e) = self.put_outbox(item) {
            *self.failed.borrow_mut() = Some(e);
        }
    }

    pub fn sent_since(&self, since: &Timestamp) -> Result<usize> {
        let rows = self.query(
            "SELECT count(*) FROM outbox WHERE state = 'sent' AND sent_at >= $1",
            params![ms(since)],
        )?;
        Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0)) as usize)
    }

    pub fn outbox_item(&self, id: &str) -> Result<Option<OutboxItem>> {
        let sql = if self.write {
            "SELECT item FROM outbox WHERE ref = $1 FOR UPDATE"
        } else {
            "SELECT item FROM outbox WHERE ref = $1"
        };
        Ok(items(self.query(sql, params![id.to_string()])?)?.pop())
    }

    pub fn outbox_due(&self, now: &Timestamp, limit: usize) -> Result<Vec<OutboxItem>> {
        items(self.query(
            "SELECT item FROM outbox WHERE state = 'queued' AND due_at <= $1 ORDER BY due_at LIMIT $2",
            params![ms(now), limit.min(i64::MAX as usize) as i64],
        )?)
    }

    pub fn outbox_all(&self) -> Result<Vec<OutboxItem>> {
        items(self.query("SELECT item FROM outbox ORDER BY ref", params![])?)
    }

    // ---- reply references ----------------------------------------------------------------

    pub fn message_ref(&self, reference: &str) -> Result<Option<MessageRef>> {
        if let Some(item) = self.outbox_item(reference)? {
            return Ok(MessageRef::of_item(item));
        }
        let rows = self.query(
            "SELECT body FROM message_refs WHERE ref = $1",
            params![reference.to_string()],
        )?;
        rows.first()
            .map(|r| decode("reply reference", r.get::<_, &str>(0)))
            .transpose()
    }

    pub fn put_ref(&mut self, reference: &str, m: &MessageRef) {
        self.deferred(
            "INSERT INTO message_refs (ref, body) VALUES ($1, $2)
             ON CONFLICT (ref) DO UPDATE SET body = EXCLUDED.body",
            params![reference.to_string(), encode(m)],
        );
    }

    // ---- inbound outcomes ----------------------------------------------------------------

    pub fn inbound_seen(&self, key: &str) -> Result<bool> {
        if self.write {
            // a second daemon with the same message waits here until the first one's
            // transaction ends, then sees its outcome
            self.query(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 1))",
                params![key.to_string()],
            )?;
        }
        Ok(!self
            .query(
                "SELECT 1 FROM inbound WHERE key = $1",
                params![key.to_string()],
            )?
            .is_empty())
    }

    pub fn put_inbound(&mut self, key: &str, seq: u64, rec: &InboundRecord) {
        let received = chrono::DateTime::parse_from_rfc3339(&rec.received_at)
            .ok()
            .map(|t| t.timestamp_millis());
        // a plain INSERT: the primary key refuses a second outcome for one message, and the
        // transaction that tried rolls back with everything it did
        self.deferred(
            "INSERT INTO inbound (key, seq, received_ms, body) VALUES ($1, $2, $3, $4)",
            params![key.to_string(), seq as i64, received, encode(rec)],
        );
    }

    pub fn inbound_all(&self) -> Result<Vec<InboundRecord>> {
        self.query("SELECT body FROM inbound ORDER BY seq", params![])?
            .iter()
            .map(|r| decode("inbound outcome", r.get::<_, &str>(0)))
            .collect()
    }

    // ---- pruning -------------------------------------------------------------------------

    pub fn prune_sent(&mut self, before: &Timestamp, limit: usize) -> Result<usize> {
        let rows = self.query(
            "DELETE FROM outbox WHERE ref IN (
                SELECT ref FROM outbox WHERE state = 'sent' AND sent_at < $1
                ORDER BY sent_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING ref",
            params![ms(before), limit as i64],
        )?;
        let refs: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        if !refs.is_empty() {
            self.execute(
                "DELETE FROM message_refs WHERE ref = ANY($1)",
                params![refs.clone()],
            )?;
        }
        Ok(refs.len())
    }

    pub fn prune_inbound(&mut self, before: &Timestamp, limit: usize) -> Result<usize> {
        let n = self.execute(
            "DELETE FROM inbound WHERE key IN (
                SELECT key FROM inbound WHERE received_ms < $1 ORDER BY seq LIMIT $2
                FOR UPDATE SKIP LOCKED)",
            params![ms(before), limit as i64],
        )?;
        Ok(n as usize)
    }

    // ---- staff accounts and console sessions ---------------------------------------------

    pub fn staff(&self, email: &Email) -> Result<Option<Staff>> {
        let rows = self.query(
            "SELECT body FROM staff WHERE email = $1",
            params![email.to_string()],
        )?;
        rows.first()
            .map(|r| decode("staff", r.get::<_, &str>(0)))
            .transpose()
    }

    pub fn put_staff(&mut self, s: &Staff) {
        self.deferred(
            "INSERT INTO staff (email, body) VALUES ($1, $2)
             ON CONFLICT (email) DO UPDATE SET body = EXCLUDED.body",
            params![s.email.to_string(), encode(s)],
        );
    }

    pub fn remove_staff(&mut self, email: &Email) {
        self.deferred(
            "DELETE FROM staff WHERE email = $1",
            params![email.to_string()],
        );
    }

    pub fn all_staff(&self) -> Result<Vec<Staff>> {
        let rows = self.query("SELECT body FROM staff ORDER BY email", params![])?;
        rows.iter()
            .map(|r| decode("staff", r.get::<_, &str>(0)))
            .collect()
    }

    pub fn session(&self, key: &str) -> Result<Option<Session>> {
        let rows = self.query(
            "SELECT body FROM sessions WHERE key = $1",
            params![key.to_string()],
        )?;
        rows.first()
            .map(|r| decode("session", r.get::<_, &str>(0)))
            .transpose()
    }

    pub fn put_session(&mut self, key: &str, s: &Session) {
        self.deferred(
            "INSERT INTO sessions (key, staff, body) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET staff = EXCLUDED.staff, body = EXCLUDED.body",
            params![key.to_string(), s.staff.to_string(), encode(s)],
        );
    }

    pub fn remove_session(&mut self, key: &str) {
        self.deferred(
            "DELETE FROM sessions WHERE key = $1",
            params![key.to_string()],
        );
    }

    pub fn all_sessions(&self) -> Result<Vec<(String, Session)>> {
        let rows = self.query("SELECT key, body FROM sessions ORDER BY key", params![])?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.get::<_, String>(0),
                    decode("session", r.get::<_, &str>(1))?,
                ))
            })
            .collect()
    }

    // ---- suppression list ----------------------------------------------------------------

    pub fn suppression(&self, provider: &str, email: &Email) -> Result<Option<Suppression>> {
        let rows = self.query(
            "SELECT body FROM suppressions WHERE provider = $1 AND email = $2",
            params![provider.to_string(), email.to_string()],
        )?;
        rows.first()
            .map(|r| decode("suppression", r.get::<_, &str>(0)))
            .transpose()
    }

    pub fn put_suppression(&mut self, s: &Suppression) {
        self.deferred(
            "INSERT INTO suppressions (provider, email, body) VALUES ($1, $2, $3)
             ON CONFLICT (provider, email) DO UPDATE SET body = EXCLUDED.body",
            params![s.provider.clone(), s.email.to_string(), encode(s)],
        );
    }

    pub fn remove_suppression(&mut self, provider: &str, email: &Email) {
        self.deferred(
            "DELETE FROM suppressions WHERE provider = $1 AND email = $2",
            params![provider.to_string(), email.to_string()],
        );
    }

    pub fn suppressions(&self, provider: Option<&str>) -> Result<Vec<Suppression>> {
        let rows = match provider {
            Some(p) => self.query(
                "SELECT body FROM suppressions WHERE provider = $1 ORDER BY provider, email",
                params![p.to_string()],
            )?,
            None => self.query(
                "SELECT body FROM suppressions ORDER BY provider, email",
                params![],
            )?,
        };
        rows.iter()
            .map(|r| decode("suppression", r.get::<_, &str>(0)))
            .collect()
    }

    // ---- timers --------------------------------------------------------------------------

    pub fn schedule(&mut self, at: &Timestamp, record: &RecordId, kind: TimerKind) {
        self.deferred(
            "INSERT INTO timers (record_id, kind, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            params![record.to_string(), kind.code().to_string(), ms(at)],
        );
    }

    pub fn due_timers(&self, now: &Timestamp, limit: usize) -> Result<Vec<DueTimer>> {
        let sql = if self.write {
            "SELECT record_id, kind, at FROM timers WHERE at <= $1 ORDER BY at LIMIT $2
             FOR UPDATE SKIP LOCKED"
        } else {
            "SELECT record_id, kind, at FROM timers WHERE at <= $1 ORDER BY at LIMIT $2"
        };
        let rows = self.query(sql, params![ms(now), limit.min(i64::MAX as usize) as i64])?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(DueTimer {
                    key: Vec::new(),
                    at_ms: r.get(2),
                    record: RecordId::parse(r.get::<_, &str>(0))?,
                    kind: TimerKind::from_code(r.get::<_, &str>(1))?,
                })
            })
            .collect())
    }

    pub fn remove_timer(&mut self, t: &DueTimer) -> Result<bool> {
        let n = self.execute(
            "DELETE FROM timers WHERE record_id = $1 AND kind = $2 AND at = $3",
            params![t.record.to_string(), t.kind.code().to_string(), t.at_ms],
        )?;
        Ok(n > 0)
    }

    // ---- small state ---------------------------------------------------------------------

    pub fn meta(&self, name: &str) -> Result<Option<String>> {
        let rows = self.query(
            "SELECT value FROM meta WHERE name = $1",
            params![name.to_string()],
        )?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    pub fn set_meta(&mut self, name: &str, value: &str) {
        self.deferred(
            "INSERT INTO meta (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            params![name.to_string(), value.to_string()],
        );
    }
}
