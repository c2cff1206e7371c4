//! The store: records and their indexes, the outbox, inbound outcomes, suppressions, timers,
//! behind one door. [`Store`] and [`Txn`] are what `App` uses (nothing else in the crate opens a
//! transaction); each is an enum over the two backends, and every method means the same on both:
//! - `embedded`: sled, the embedded default; one daemon per store; the only module that knows
//!   sled's key layout.
//! - `postgres`: PostgreSQL; several daemons may share one database (claims with leases, row
//!   locks, unique keys: see that module).
//!
//! A write is `store.write(|txn| ...)`: the closure's reads see its own writes, and everything it
//! wrote lands at once if it returns `Ok` (a sled batch; a PostgreSQL transaction), or not at all.

#[cfg(test)]
mod console_tests;
mod copy;
mod embedded;
mod postgres;

pub use copy::{copy, Copied};

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::funnel::{DayCount, ProviderFunnel, RecordPage, RecordQuery};
use crate::model::{Channel, Email, Purpose, Record, RecordId, Timestamp};
use crate::outbox::OutboxItem;
use crate::staff::{Session, Staff};

pub use embedded::FORMAT;
pub use postgres::SCHEMA_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    /// PostgreSQL unreachable, or a statement failed (the message names which).
    #[error("store (PostgreSQL): {0}")]
    Postgres(String),
    #[error("store: corrupt entry {key}: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
    #[error("store: {0}")]
    Other(String),
    #[error(
        "store format {found} is newer than this invited {version} understands (format {format}): \
         run the newer invited, or restore a backup made by this version into an empty directory"
    , version = env!("CARGO_PKG_VERSION"), format = embedded::FORMAT)]
    TooNew { found: u32 },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where a reply's `<ref>` (plus address / Message-ID) points: one message about one record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageRef {
    pub record: RecordId,
    pub purpose: Option<Purpose>,
    pub generation: u32,
    pub message_id: String,
}

impl MessageRef {
    /// What a reply's `<ref>` points to, read from the message's outbox item (format 4 and the
    /// PostgreSQL store); a test email points to no record.
    pub(crate) fn of_item(item: OutboxItem) -> Option<MessageRef> {
        if item.kind == crate::outbox::MailKind::TestEmail {
            return None;
        }
        Some(MessageRef {
            record: item.record,
            purpose: item.link.as_ref().map(|l| l.purpose),
            // read only for a message with a link (a notice has no purpose to check)
            generation: item.link.as_ref().map_or(0, |l| l.generation),
            message_id: item.message_id,
        })
    }
}

/// What became of one inbound message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboundRecord {
    pub message_id: String,
    pub from: String,
    pub received_at: String,
    pub outcome: String,
    pub record: Option<RecordId>,
    pub effect: String,
}

/// One address on a provider's suppression list: no invitation or reminder from that provider
/// goes to it until staff lift it. Keyed by (provider, canonical email).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suppression {
    pub provider: String,
    pub email: Email,
    pub at: Timestamp,
    /// why, for people: "one-click unsubscribe", "hard bounce: 550 5.1.1 …"
    pub reason: String,
    /// how it came: `link` (List-Unsubscribe POST), `reply` (the mailto), `bounce`
    pub channel: Channel,
    /// the record whose email led here (the invitation unsubscribed from, or the one that bounced)
    pub record: Option<RecordId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    Expire,
    Remind,
}

impl TimerKind {
    pub(crate) fn from_code(c: &str) -> Option<TimerKind> {
        match c {
            "x" => Some(TimerKind::Expire),
            "r" => Some(TimerKind::Remind),
            _ => None,
        }
    }

    pub(crate) fn code(self) -> char {
        match self {
            TimerKind::Expire => 'x',
            TimerKind::Remind => 'r',
        }
    }
}

#[derive(Debug, Clone)]
pub struct DueTimer {
    /// the sled key (empty with PostgreSQL)
    pub key: Vec<u8>,
    /// when it was due, milliseconds since the epoch
    pub at_ms: i64,
    pub record: RecordId,
    pub kind: TimerKind,
}

/// Runs blocking store work without blocking a runtime worker: on a multi-threaded runtime
/// through `block_in_place` (the worker's other tasks move to another thread first, so pages
/// and the sender keep running while this waits for the write lock or the disk); outside a
/// runtime, or on a single-threaded one (some tests and benches), in place.
pub fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// What one pruning pass removed (`Txn::prune_sent`, `Txn::prune_inbound`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pruned {
    /// sent outbox items, with their reply references
    pub sent: usize,
    pub inbound: usize,
}

/// The store a daemon (or a command) opened: the embedded sled store or PostgreSQL.
#[derive(Clone)]
pub enum Store {
    Sled(embedded::Store),
    Postgres(postgres::Store),
}

/// One transaction (`Store::write`) or a read-only view (`Store::read`). (The PostgreSQL one
/// holds its pooled connection inline: a `Txn` lives on one stack frame for one transaction.)
#[allow(clippy::large_enum_variant)]
pub enum Txn<'a> {
    Sled(embedded::Txn<'a>),
    Postgres(postgres::Txn<'a>),
}

/// Holds the right to read one mailbox while several daemons share a database
/// ([`Store::lead`]); dropped, the next daemon may take it.
pub enum Leader {
    /// the embedded store has one daemon: it always reads
    Sole,
    Postgres(postgres::Leader),
}

impl Leader {
    /// Whether this daemon still holds it (the database connection that holds the lock is alive).
    pub fn holds(&mut self) -> bool {
        match self {
            Leader::Sole => true,
            Leader::Postgres(l) => l.holds(),
        }
    }
}

macro_rules! each {
    ($self:expr, $t:ident => $e:expr) => {
        match $self {
            Txn::Sled($t) => $e,
            Txn::Postgres($t) => $e,
        }
    };
}

macro_rules! both {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Store::Sled($s) => $e,
            Store::Postgres($s) => $e,
        }
    };
}

impl Store {
    /// Opens the configured backend: sled at `store.path` (made private first), or PostgreSQL
    /// (connects, applies the embedded schema migrations, records the version).
    pub fn open(cfg: &crate::config::Config) -> Result<Store> {
        match &cfg.store_backend {
            crate::config::StoreBackend::Sled => Ok(Store::Sled(embedded::Store::open(
                &cfg.store_path,
                cfg.cache_capacity,
            )?)),
            crate::config::StoreBackend::Postgres(pg) => {
                let owner = cfg.admin_socket.display().to_string();
                Ok(Store::Postgres(postgres::Store::open(pg, &owner)?))
            }
        }
    }

    /// The embedded store at `path` (tests, benches, `restore`).
    pub fn open_sled(path: &Path, cache_capacity: u64) -> Result<Store> {
        Ok(Store::Sled(embedded::Store::open(path, cache_capacity)?))
    }

    /// "sled" or "postgres", for logs and STATUS.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sled(_) => "sled",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Runs `f` as one transaction: its writes land together if it returns `Ok`, else none do.
    /// Blocking (off the runtime's workers, see [`off_runtime`]).
    pub fn write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Txn) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        both!(self, s => s.write(f))
    }

    /// A read-only view of committed data.
    pub fn read(&self) -> Txn<'_> {
        match self {
            Store::Sled(s) => Txn::Sled(s.read()),
            Store::Postgres(s) => Txn::Postgres(s.read()),
        }
    }

    /// Makes every write so far durable (sled: group commit; PostgreSQL: a commit already is).
    pub async fn flush(&self) -> Result<()> {
        match self {
            Store::Sled(s) => s.flush().await,
            Store::Postgres(_) => Ok(()),
        }
    }

    pub fn flush_blocking(&self) -> Result<()> {
        match self {
            Store::Sled(s) => s.flush_blocking(),
            Store::Postgres(_) => Ok(()),
        }
    }

    /// (flushes, callers they served): sled's group commit; PostgreSQL counts commits as both.
    pub fn flush_counts(&self) -> (u64, u64) {
        both!(self, s => s.flush_counts())
    }

    /// Whether the store answers (`/readyz`).
    pub fn is_open(&self) -> bool {
        both!(self, s => s.is_open())
    }

    pub fn outbox_depth(&self) -> usize {
        both!(self, s => s.outbox_depth())
    }

    pub fn outbox_dead_count(&self) -> usize {
        both!(self, s => s.outbox_dead_count())
    }

    /// A number that grows with every call (inbound outcomes keep arrival order by it).
    pub fn next_seq(&self) -> Result<u64> {
        both!(self, s => s.next_seq())
    }

    /// Up to `limit` queued items due at `now`, oldest first, claimed for this daemon: with
    /// PostgreSQL each is leased (`[store] lease`) so no other daemon sends it meanwhile; on sled
    /// (one daemon) a plain read.
    pub fn claim_due(&self, now: &Timestamp, limit: usize) -> Result<Vec<OutboxItem>> {
        match self {
            Store::Sled(s) => s.read().outbox_due(now, limit),
            Store::Postgres(s) => s.claim_due(now, limit),
        }
    }

    /// At a daemon's start (PostgreSQL): frees the items its previous run had claimed and not
    /// finished, so a restarted daemon sends them at once rather than after their leases.
    pub fn recover_claims(&self) -> Result<u64> {
        match self {
            Store::Sled(_) => Ok(0),
            Store::Postgres(s) => s.recover_claims(),
        }
    }

    /// Ends this daemon's leases on `ids` (claimed, not sent): no-op on sled.
    pub fn release(&self, ids: &[String]) -> Result<()> {
        match self {
            Store::Sled(_) => Ok(()),
            Store::Postgres(s) => s.release(ids),
        }
    }

    /// When the next queued item can be sent (milliseconds since the epoch): due, and on
    /// PostgreSQL not leased by another daemon.
    pub fn next_claimable(&self) -> Result<Option<i64>> {
        match self {
            Store::Sled(s) => s.read().outbox_next_due(),
            Store::Postgres(s) => s.next_claimable(),
        }
    }

    /// The right to read the mailbox `name`, if no other daemon on this database holds it
    /// (a PostgreSQL session advisory lock; on sled always).
    pub fn lead(&self, name: &str) -> Result<Option<Leader>> {
        match self {
            Store::Sled(_) => Ok(Some(Leader::Sole)),
            Store::Postgres(s) => Ok(s.lead(name)?.map(Leader::Postgres)),
        }
    }

    /// Every record (or one provider's), streamed.
    pub fn each_record(
        &self,
        provider: Option<&str>,
        f: impl FnMut(Record) -> Result<()>,
    ) -> Result<()> {
        both!(self, s => s.each_record(provider, f))
    }

    /// Every outbox item, or the dead letters.
    pub fn each_outbox(
        &self,
        dead_only: bool,
        f: impl FnMut(OutboxItem) -> Result<()>,
    ) -> Result<()> {
        both!(self, s => s.each_outbox(dead_only, f))
    }

    /// Every inbound outcome, in arrival order.
    pub fn each_inbound(&self, f: impl FnMut(InboundRecord) -> Result<()>) -> Result<()> {
        both!(self, s => s.each_inbound(f))
    }

    /// Every legacy reply reference (`m/`, kept only by a format-3 sled store for an item that
    /// was gone), with its `<ref>`.
    pub fn each_ref(&self, f: impl FnMut(String, MessageRef) -> Result<()>) -> Result<()> {
        both!(self, s => s.each_ref(f))
    }

    /// Whether any record or outbox item is there (`store copy` refuses such a target).
    pub fn holds_data(&self) -> Result<bool> {
        both!(self, s => s.holds_data())
    }

    /// Every inbound outcome with its key (Message-ID or hash), in arrival order.
    pub fn each_inbound_keyed(
        &self,
        f: impl FnMut(String, InboundRecord) -> Result<()>,
    ) -> Result<()> {
        both!(self, s => s.each_inbound_keyed(f))
    }

    /// Every small named value (IMAP positions and the like).
    pub fn each_meta(&self, f: impl FnMut(String, String) -> Result<()>) -> Result<()> {
        both!(self, s => s.each_meta(f))
    }

    /// Every timer, in due order.
    pub fn each_timer(&self, mut f: impl FnMut(DueTimer) -> Result<()>) -> Result<()> {
        let end = chrono::DateTime::<chrono::Utc>::MAX_UTC;
        for t in self.read().due_timers(&end, usize::MAX)? {
            f(t)?;
        }
        Ok(())
    }

    /// sled only: every entry, for `backup` (PostgreSQL is backed up with its own tools).
    pub fn snapshot(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        match self {
            Store::Sled(s) => s.snapshot(),
            Store::Postgres(_) => Err(StoreError::Other(
                "invited backup copies the embedded store; back up PostgreSQL with pg_dump or \
                 its continuous archiving (or `invited store copy` into a sled store)"
                    .into(),
            )),
        }
    }

    pub fn restore(path: &Path, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        embedded::Store::restore(path, entries)
    }
}

impl Txn<'_> {
    pub fn record(&self, id: &RecordId) -> Result<Option<Record>> {
        each!(self, t => t.record(id))
    }
    /// Writes a record and keeps its indexes: by recipient, by provider, customers by
    /// authorization, and the one live authorization per (provider, email); and what the
    /// console reads (`crate::funnel`): on sled the kept funnel and day counts and the
    /// last-change index, on PostgreSQL the `changed_ms` column and the record's confirmations.
    pub fn put_record(&mut self, r: &Record) -> Result<()> {
        each!(self, t => t.put_record(r))
    }
    /// [`put_record`](Self::put_record) for a record made in this transaction (a fresh id).
    pub fn put_new_record(&mut self, r: &Record) -> Result<()> {
        each!(self, t => t.put_new_record(r))
    }
    /// Adds a queued message's Message-ID to the record's latest history entry.
    pub fn note_message(&mut self, id: &RecordId, message_id: &str) -> Result<()> {
        each!(self, t => t.note_message(id, message_id))
    }
    pub fn live_authorization(&self, provider: &str, email: &Email) -> Result<Option<RecordId>> {
        each!(self, t => t.live_authorization(provider, email))
    }
    pub fn records_for_recipient(&self, email: &Email) -> Result<Vec<Record>> {
        each!(self, t => t.records_for_recipient(email))
    }
    pub fn records_for_provider(&self, provider: &str) -> Result<Vec<Record>> {
        each!(self, t => t.records_for_provider(provider))
    }
    /// The customer invitations made under one provider authorization.
    pub fn customers_of(&self, authorization: &RecordId) -> Result<Vec<Record>> {
        each!(self, t => t.customers_of(authorization))
    }
    pub fn all_records(&self) -> Result<Vec<Record>> {
        each!(self, t => t.all_records())
    }
    /// Queues (or updates) a message; it becomes due at `item.next_attempt_at`.
    pub fn put_outbox(&mut self, item: &OutboxItem) -> Result<()> {
        each!(self, t => t.put_outbox(item))
    }
    /// [`put_outbox`](Self::put_outbox) for an item the caller read as queued, due at `was_due`.
    pub fn put_queued_outbox(&mut self, was_due: &Timestamp, item: &OutboxItem) -> Result<()> {
        each!(self, t => t.put_queued_outbox(was_due, item))
    }
    /// [`put_outbox`](Self::put_outbox) for a message made in this transaction (a fresh `<ref>`).
    pub fn put_new_outbox(&mut self, item: &OutboxItem) {
        each!(self, t => t.put_new_outbox(item))
    }
    /// How many items were sent at or after `since`.
    pub fn sent_since(&self, since: &Timestamp) -> Result<usize> {
        each!(self, t => t.sent_since(since))
    }
    pub fn outbox_item(&self, id: &str) -> Result<Option<OutboxItem>> {
        each!(self, t => t.outbox_item(id))
    }
    /// Queued items due at or before `now`, oldest first, at most `limit` (a read: the sender
    /// claims with [`Store::claim_due`]).
    pub fn outbox_due(&self, now: &Timestamp, limit: usize) -> Result<Vec<OutboxItem>> {
        each!(self, t => t.outbox_due(now, limit))
    }
    pub fn outbox_all(&self) -> Result<Vec<OutboxItem>> {
        each!(self, t => t.outbox_all())
    }
    /// What a reply's `<ref>` points to. A test email points to no record.
    pub fn message_ref(&self, reference: &str) -> Result<Option<MessageRef>> {
        each!(self, t => t.message_ref(reference))
    }
    /// Whether an inbound message (by its key) was handled. In a write on PostgreSQL the key is
    /// locked until the transaction ends, so a second daemon handling the same message waits and
    /// then sees it handled.
    pub fn inbound_seen(&self, key: &str) -> Result<bool> {
        each!(self, t => t.inbound_seen(key))
    }
    pub fn put_inbound(&mut self, key: &str, seq: u64, rec: &InboundRecord) {
        each!(self, t => t.put_inbound(key, seq, rec))
    }
    pub fn inbound_all(&self) -> Result<Vec<InboundRecord>> {
        each!(self, t => t.inbound_all())
    }
    /// Removes up to `limit` items sent before `before`, oldest first.
    pub fn prune_sent(&mut self, before: &Timestamp, limit: usize) -> Result<usize> {
        each!(self, t => t.prune_sent(before, limit))
    }
    /// Removes up to `limit` inbound outcomes received before `before`, oldest first.
    pub fn prune_inbound(&mut self, before: &Timestamp, limit: usize) -> Result<usize> {
        each!(self, t => t.prune_inbound(before, limit))
    }
    pub fn suppression(&self, provider: &str, email: &Email) -> Result<Option<Suppression>> {
        each!(self, t => t.suppression(provider, email))
    }
    pub fn put_suppression(&mut self, s: &Suppression) {
        each!(self, t => t.put_suppression(s))
    }
    pub fn remove_suppression(&mut self, provider: &str, email: &Email) {
        each!(self, t => t.remove_suppression(provider, email))
    }
    /// Every suppression, or one provider's, by provider then address.
    pub fn suppressions(&self, provider: Option<&str>) -> Result<Vec<Suppression>> {
        each!(self, t => t.suppressions(provider))
    }
    pub fn staff(&self, email: &Email) -> Result<Option<Staff>> {
        each!(self, t => t.staff(email))
    }
    pub fn put_staff(&mut self, s: &Staff) {
        each!(self, t => t.put_staff(s))
    }
    pub fn remove_staff(&mut self, email: &Email) {
        each!(self, t => t.remove_staff(email))
    }
    /// Every staff account, by address.
    pub fn all_staff(&self) -> Result<Vec<Staff>> {
        each!(self, t => t.all_staff())
    }
    /// A console session by its key (the SHA-256 of the cookie value, `staff::session_key`).
    pub fn session(&self, key: &str) -> Result<Option<Session>> {
        each!(self, t => t.session(key))
    }
    pub fn put_session(&mut self, key: &str, s: &Session) {
        each!(self, t => t.put_session(key, s))
    }
    pub fn remove_session(&mut self, key: &str) {
        each!(self, t => t.remove_session(key))
    }
    /// Every session with its key.
    pub fn all_sessions(&self) -> Result<Vec<(String, Session)>> {
        each!(self, t => t.all_sessions())
    }
    pub fn schedule(&mut self, at: &Timestamp, record: &RecordId, kind: TimerKind) {
        each!(self, t => t.schedule(at, record, kind))
    }
    /// Timers due at `now`, oldest first. In a write on PostgreSQL they are locked for this
    /// transaction and timers another daemon is running are skipped.
    pub fn due_timers(&self, now: &Timestamp, limit: usize) -> Result<Vec<DueTimer>> {
        each!(self, t => t.due_timers(now, limit))
    }
    /// Removes a timer; false if it was gone already (another daemon ran it).
    pub fn remove_timer(&mut self, t: &DueTimer) -> Result<bool> {
        each!(self, x => x.remove_timer(t))
    }
    pub fn meta(&self, name: &str) -> Result<Option<String>> {
        each!(self, t => t.meta(name))
    }
    pub fn set_meta(&mut self, name: &str, value: &str) {
        each!(self, t => t.set_meta(name, value))
    }
    /// The funnel of every provider with invitations, by provider id (`crate::funnel`): kept
    /// counts on sled, one aggregate on PostgreSQL.
    pub fn funnel(&self) -> Result<Vec<ProviderFunnel>> {
        each!(self, t => t.funnel())
    }
    /// The invitations and confirmations of each UTC day from `first` on, oldest first; days
    /// without any are left out.
    pub fn days_since(&self, first: chrono::NaiveDate) -> Result<Vec<DayCount>> {
        each!(self, t => t.days_since(first))
    }
    /// One page of the records list, newest last change first, from the last-change index.
    pub fn records_page(&self, q: &RecordQuery) -> Result<RecordPage> {
        each!(self, t => t.records_page(q))
    }
    /// `store copy`: a legacy reply reference, as it was.
    pub fn put_ref(&mut self, reference: &str, m: &MessageRef) {
        each!(self, t => t.put_ref(reference, m))
    }
}
