//! The sled store: records and their indexes, the outbox, reply references, inbound outcomes,
//! timers. The only module that knows sled. Every change is one atomic batch under one write lock,
//! and callers flush (`Store::flush`) before they acknowledge anything.
//!
//! Off the async runtime: a batch (waiting for the write lock included) and the sender's queue
//! scans run through [`off_runtime`], which hands the runtime worker's other tasks to another
//! thread first; flushes run on the blocking pool. Group commit: [`Store::flush`] waits for one
//! sled flush that starts after the call, and every caller waiting meanwhile shares that flush.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use serde::{de::DeserializeOwned, Serialize};

use crate::funnel::{self, DayCount, ListEntry, ProviderFunnel, RecordPage, RecordQuery, Share};
use crate::model::{Body, Email, Record, RecordId, Timestamp};
use crate::outbox::OutboxItem;
use crate::staff::{Session, Staff};

use super::{
    off_runtime, DueTimer, InboundRecord, MessageRef, Result, StoreError, Suppression, TimerKind,
};

/// (sled) The key layout this binary reads and writes, recorded under `k/format`. Format 1 is what
/// invited 0.1.0 wrote (no mark); 2 adds the mark; 3 adds the suppression list (`s/…`), which an
/// older binary would silently ignore and so mail unsubscribed addresses again. A newer binary
/// migrates an older store once when it opens it; an older binary refuses a newer store instead
/// of misreading it. 4 drops the reply references (`m/<ref>`): a reply's `<ref>` resolves
/// through its outbox item (`o/<ref>`), which holds everything the reference did, so a queued
/// message is one key fewer; and an outbox item leaves out empty template fields (a sent item
/// has none), which a format-3 binary could not read; and an invitation's reminder timer arms
/// its expiry timer when it runs (one timer key where there were two), which a format-3 binary
/// would not do. 5 adds what the staff console reads without a scan (`f/<provider>` the funnel
/// counts, `y/<day>` the activity per day, `n/<i64::MAX - last-change-ms>/<id>` the records
/// newest change first), kept by every record write: a format-4 binary would write records without keeping
/// them, and the counts would be wrong from then on.
pub const FORMAT: u32 = 5;
const FORMAT_KEY: &[u8] = b"k/format";

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
    write_lock: Arc<FairLock>,
    /// Queued (`q/`) and dead (`d/`) outbox items, counted once at open and kept by every batch
    /// (`Txn::put_outbox`), so the gauges, STATUS and a bulk command's progress never scan.
    counts: Arc<OutboxCounts>,
    group: Arc<GroupCommit>,
}

/// The write lock, first come first served: a long run of batches (a bulk CSV in chunks) cannot
/// starve the sender's result batches or a link confirmation; each waits at most for the
/// batches that were already waiting.
#[derive(Default)]
struct FairLock {
    /// (next ticket to hand out, ticket being served)
    tickets: Mutex<(u64, u64)>,
    turn: Condvar,
}

struct FairGuard<'a>(&'a FairLock);

impl FairLock {
    fn lock(&self) -> FairGuard<'_> {
        let mut t = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        let mine = t.0;
        t.0 += 1;
        while t.1 != mine {
            t = self.turn.wait(t).unwrap_or_else(|p| p.into_inner());
        }
        FairGuard(self)
    }
}

impl Drop for FairGuard<'_> {
    fn drop(&mut self) {
        let mut t = self.0.tickets.lock().unwrap_or_else(|p| p.into_inner());
        t.1 += 1;
        drop(t);
        self.0.turn.notify_all();
    }
}

/// Group commit: callers of [`Store::flush`] queue here; one flusher on the blocking pool runs
/// while anyone waits, takes every waiter queued so far, flushes once and answers them all.
#[derive(Default)]
struct GroupCommit {
    state: Mutex<GroupState>,
    flushes: AtomicU64,
    waits: AtomicU64,
}

#[derive(Default)]
struct GroupState {
    running: bool,
    waiting: Vec<tokio::sync::oneshot::Sender<Result<(), String>>>,
}

/// The flusher's run; whoever drops it (normally the flusher itself, with nobody waiting; or the
/// runtime, if it shuts down before the task ran) answers anyone still queued, so no caller waits
/// forever.
struct Flusher(Store);

impl Flusher {
    fn run(&self) {
        while let Some(waiting) = self.take() {
            let r = self.0.db.flush().map(drop).map_err(|e| e.to_string());
            self.0.group.flushes.fetch_add(1, Ordering::Relaxed);
            self.0
                .group
                .waits
                .fetch_add(waiting.len() as u64, Ordering::Relaxed);
            for w in waiting {
                let _ = w.send(r.clone());
            }
        }
    }

    /// Everyone queued now; None (and the flusher ends) when nobody is.
    fn take(&self) -> Option<Vec<tokio::sync::oneshot::Sender<Result<(), String>>>> {
        let mut st = self.0.group.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.waiting.is_empty() {
            st.running = false;
            None
        } else {
            Some(std::mem::take(&mut st.waiting))
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        let left = {
            let mut st = self.0.group.state.lock().unwrap_or_else(|p| p.into_inner());
            st.running = false;
            std::mem::take(&mut st.waiting)
        };
        if !left.is_empty() {
            let r = self.0.db.flush().map(drop).map_err(|e| e.to_string());
            for w in left {
                let _ = w.send(r.clone());
            }
        }
    }
}

/// Marks that the customer index (`c/<authorization>/<customer>`) covers every customer invitation.
const CUSTOMER_INDEX_KEY: &[u8] = b"k/customer-index";

fn customer_key(authorization: &RecordId, customer: &RecordId) -> String {
    format!("c/{authorization}/{customer}")
}

#[derive(Default)]
struct OutboxCounts {
    queued: AtomicI64,
    dead: AtomicI64,
}

/// Marks that the sent-time index (`t/<sent-ms>/<ref>`) covers every sent item: built once
/// from the items when a store written without it is opened.
const SENT_INDEX_KEY: &[u8] = b"k/sent-index";

fn ms_key(t: &Timestamp) -> String {
    format!("{:020}", t.timestamp_millis().max(0))
}

fn decode<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|source| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising our own plain structs to JSON cannot fail (no maps with non-string keys).
    serde_json::to_vec(v).unwrap_or_default()
}

impl Store {
    pub fn open(path: &Path, cache_capacity: u64) -> Result<Store> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity)
            .flush_every_ms(Some(500))
            .open()?;
        let tree = db.open_tree("invited")?;
        let store = Store {
            db,
            tree,
            write_lock: Arc::default(),
            counts: Arc::default(),
            group: Arc::default(),
        };
        store.check_format()?;
        store.build_customer_index()?;
        store.build_sent_index()?;
        store.count_outbox();
        Ok(store)
    }

    /// Counts the queued and dead items once (a key scan each), for the counters.
    fn count_outbox(&self) {
        let queued = self.tree.scan_prefix(b"q/").keys().count();
        let dead = self.tree.scan_prefix(b"d/").keys().count();
        self.counts.queued.store(queued as i64, Ordering::Relaxed);
        self.counts.dead.store(dead as i64, Ordering::Relaxed);
    }

    /// A store written before the sent-time index: every sent item gets its `t/` entry (in
    /// batches), then the mark. Without it those items would never be pruned nor counted as
    /// sent today; an older binary that ignores the index leaves only that, so no format bump.
    fn build_sent_index(&self) -> Result<()> {
        self.build_index(SENT_INDEX_KEY, b"o/", "sent-time", |k, v| {
            let item: OutboxItem = decode(k, v)?;
            Ok(match (item.state, item.sent_at) {
                (crate::outbox::OutboxState::Sent, Some(at)) => Some(sent_key(&at, &item.id)),
                _ => None,
            })
        })
    }

    /// Builds an index once, for a store written before it: scans `prefix`, inserts the key
    /// `entry` gives for each entry (an empty value) in batches of 1,000, then `mark`, and
    /// flushes. A store that has `mark` is left alone.
    fn build_index(
        &self,
        mark: &[u8],
        prefix: &[u8],
        what: &str,
        mut entry: impl FnMut(&[u8], &[u8]) -> Result<Option<String>>,
    ) -> Result<()> {
        if self.tree.contains_key(mark)? {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let mut n = 0usize;
        for kv in self.tree.scan_prefix(prefix) {
            let (k, v) = kv?;
            if let Some(key) = entry(&k, &v)? {
                batch.insert(key.into_bytes(), Vec::new());
                n += 1;
                if n.is_multiple_of(1000) {
                    self.tree.apply_batch(std::mem::take(&mut batch))?;
                }
            }
        }
        batch.insert(mark, b"1".to_vec());
        self.tree.apply_batch(batch)?;
        self.flush_blocking()?;
        if n > 0 {
            tracing::info!(entries = n, index = what, "store: index built");
        }
        Ok(())
    }

    /// The store's format, migrated to [`FORMAT`] if older (once: the mark is written with the
    /// last step and flushed); refused if newer.
    fn check_format(&self) -> Result<()> {
        let found = match self.tree.get(FORMAT_KEY)? {
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
                .ok_or_else(|| {
                    StoreError::Other("the format mark k/format is unreadable".into())
                })?,
            None if self.tree.is_empty() => FORMAT, // a new store
            None => 1,
        };
        if found > FORMAT {
            return Err(StoreError::TooNew { found });
        }
        if found == FORMAT && self.tree.get(FORMAT_KEY)?.is_some() {
            return Ok(());
        }
        // 1 → 2: nothing in the layout changed; the store gets its mark. 2 → 3: the suppression
        // list is new and starts empty; nothing to convert. 3 → 4: the reply references go
        // (`drop_message_refs`). 4 → 5: the console's counts and last-change index are built
        // (`build_console_counts`). Later formats add their steps here, in order; each step can run
        // again if a stop interrupts it (the mark is written last).
        if found < 4 {
            self.drop_message_refs()?;
        }
        if found < 5 {
            self.build_console_counts()?;
        }
        self.tree
            .insert(FORMAT_KEY, FORMAT.to_string().as_bytes())?;
        self.flush_blocking()?;
        if found < FORMAT {
            tracing::info!(
                from = found,
                to = FORMAT,
                "store migrated to the current format"
            );
        }
        Ok(())
    }

    /// Format 3 → 4: removes every reply reference (`m/<ref>`) whose outbox item is there to
    /// answer for it ([`Txn::message_ref`] reads the item); one without its item (none is
    /// expected: both went together) stays and is still read. In batches of 1,000.
    fn drop_message_refs(&self) -> Result<()> {
        let mut batch = sled::Batch::default();
        let mut n = 0usize;
        for k in self.tree.scan_prefix(b"m/").keys() {
            let k = k?;
            let mut item_key = b"o/".to_vec();
            item_key.extend_from_slice(&k[2..]);
            if self.tree.contains_key(&item_key)? {
                batch.remove(k);
                n += 1;
                if n.is_multiple_of(1000) {
                    self.tree.apply_batch(std::mem::take(&mut batch))?;
                }
            }
        }
        self.tree.apply_batch(batch)?;
        if n > 0 {
            tracing::info!(
                refs = n,
                "store: reply references folded into their outbox items"
            );
        }
        Ok(())
    }

    /// Format 4 → 5: the console's counts and last-change index from the records. Whatever a
    /// stopped earlier run left of them goes first (the format mark comes only after this), then
    /// one pass over the records writes the index entries in batches of 1,000 and the counts at
    /// the end.
    fn build_console_counts(&self) -> Result<()> {
        for prefix in [&b"n/"[..], b"f/", b"y/"] {
            let mut batch = sled::Batch::default();
            for (i, k) in self.tree.scan_prefix(prefix).keys().enumerate() {
                batch.remove(k?);
                if (i + 1).is_multiple_of(1000) {
                    self.tree.apply_batch(std::mem::take(&mut batch))?;
                }
            }
            self.tree.apply_batch(batch)?;
        }
        let mut recount = funnel::Recount::default();
        let mut batch = sled::Batch::default();
        let mut n = 0usize;
        for kv in self.tree.scan_prefix(b"r/") {
            let (k, v) = kv?;
            let r: Record = decode(&k, &v)?;
            recount.add(&r);
            batch.insert(change_key(&r).into_bytes(), encode(&ListEntry::of(&r)));
            n += 1;
            if n.is_multiple_of(1000) {
                self.tree.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        for f in recount.funnel() {
            batch.insert(format!("f/{}", f.provider).into_bytes(), encode(&f));
        }
        for d in recount.days() {
            batch.insert(format!("y/{}", d.date).into_bytes(), encode(&d));
        }
        self.tree.apply_batch(batch)?;
        if n > 0 {
            tracing::info!(
                records = n,
                "store: console counts and last-change index built"
            );
        }
        Ok(())
    }

    /// A store written before the customer index (`c/<authorization>/<customer>`): every customer
    /// invitation gets its entry, then the mark. Adding entries an older binary ignores needs no
    /// format change.
    fn build_customer_index(&self) -> Result<()> {
        self.build_index(CUSTOMER_INDEX_KEY, b"r/", "customer", |k, v| {
            let r: Record = decode(k, v)?;
            Ok(match &r.body {
                Body::CustomerInvitation(c) => Some(customer_key(&c.authorization, &r.id)),
                _ => None,
            })
        })
    }

    /// Makes everything written so far durable, on this thread (sled's `flush_async` has a known
    /// deadlock). For code outside the runtime; async code awaits [`Store::flush`].
    pub fn flush_blocking(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Makes every batch applied before this call durable (sled writes its log and waits for the
    /// disk). Group commit: the call queues, and one flush that starts after it answers it and
    /// everyone else who queued meanwhile; the flusher runs on the blocking pool while anyone
    /// waits (see [`GroupCommit`]).
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut st = self.group.state.lock().unwrap_or_else(|p| p.into_inner());
            st.waiting.push(tx);
            !std::mem::replace(&mut st.running, true)
        };
        if start {
            let flusher = Flusher(self.clone());
            // a runtime shutting down drops the closure unrun: `Flusher::drop` answers then
            drop(tokio::task::spawn_blocking(move || flusher.run()));
        }
        match rx.await {
            Ok(r) => r.map_err(StoreError::Other),
            Err(_) => Err(StoreError::Other("the store flusher stopped".into())),
        }
    }

    /// Flushes so far and callers they served (one flush serves every caller queued before it
    /// started): `/metrics`.
    pub fn flush_counts(&self) -> (u64, u64) {
        (
            self.group.flushes.load(Ordering::Relaxed),
            self.group.waits.load(Ordering::Relaxed),
        )
    }

    /// Runs `f` under the write lock; its writes are applied as one atomic batch if it returns Ok.
    /// Off the runtime's workers ([`off_runtime`]): waiting for the lock, `f`'s reads and the
    /// batch itself.
    pub fn write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut super::Txn) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        off_runtime(|| {
            let _guard = self.write_lock.lock();
            let mut txn = super::Txn::Sled(Txn::new(&self.tree));
            let out = f(&mut txn)?;
            let super::Txn::Sled(txn) = txn else {
                return Err(StoreError::Other("a sled batch changed backend".into()).into());
            };
            let mut batch = sled::Batch::default();
            for (k, v) in txn.overlay {
                match v {
                    Some(v) => batch.insert(k, v),
                    None => batch.remove(k),
                }
            }
            self.tree.apply_batch(batch).map_err(StoreError::from)?;
            self.counts.add(txn.counted);
            Ok(out)
        })
    }

    /// Every entry, read under the write lock so no batch lands halfway through: a consistent
    /// copy for a backup. Holds the lock for one pass over the store.
    pub fn snapshot(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        off_runtime(|| {
            let _guard = self.write_lock.lock();
            let mut out = Vec::new();
            for kv in self.tree.iter() {
                let (k, v) = kv?;
                out.push((k.to_vec(), v.to_vec()));
            }
            Ok(out)
        })
    }

    /// Creates a store at `path` (which must not hold one) from backup entries, flushed. The
    /// entries carry their own format mark: an older one is migrated on the next open.
    pub fn restore(path: &Path, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        let db = sled::Config::new().path(path).open()?;
        let tree = db.open_tree("invited")?;
        if !tree.is_empty() {
            return Err(StoreError::Other(format!(
                "{} already holds a store",
                path.display()
            )));
        }
        for chunk in entries.chunks(10_000) {
            let mut batch = sled::Batch::default();
            for (k, v) in chunk {
                batch.insert(k.as_slice(), v.as_slice());
            }
            tree.apply_batch(batch)?;
        }
        db.flush()?;
        Ok(())
    }

    /// A read-only view of committed data.
    pub fn read(&self) -> Txn<'_> {
        Txn::new(&self.tree)
    }

    pub fn is_open(&self) -> bool {
        self.tree.contains_key(b"k/probe").is_ok()
    }
}

/// Reads see the batch's own pending writes; writes go to the batch.
pub struct Txn<'a> {
    tree: &'a sled::Tree,
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// How this batch changes the queued and dead counts, applied once it is written.
    counted: (i64, i64),
}

impl OutboxCounts {
    fn add(&self, (queued, dead): (i64, i64)) {
        self.queued.fetch_add(queued, Ordering::Relaxed);
        self.dead.fetch_add(dead, Ordering::Relaxed);
    }
}

/// A sent item is never rendered again (only dead ones are retried), so its template fields
/// are not kept: about half of what a sent item weighs until it is pruned.
pub(super) fn encode_outbox(item: &OutboxItem) -> Vec<u8> {
    if item.state == crate::outbox::OutboxState::Sent {
        let mut kept = item.clone();
        kept.fields = crate::outbox::MailFieldsV1::default();
        kept.to_name.clear();
        encode(&kept)
    } else {
        encode(item)
    }
}

fn sent_key(at: &Timestamp, id: &str) -> String {
    format!("t/{}/{id}", ms_key(at))
}

/// A record's entry in the last-change index: `n/<i64::MAX - last-change-ms>/<id>`, so the
/// newest comes first in key order (sled walks forwards faster than backwards) and records
/// changed in the same millisecond come by id.
fn change_key(r: &Record) -> String {
    let ms = funnel::last_change(r).timestamp_millis().max(0);
    format!("n/{:020}/{}", i64::MAX - ms, r.id)
}

impl<'a> Txn<'a> {
    fn new(tree: &'a sled::Tree) -> Txn<'a> {
        Txn {
            tree,
            overlay: BTreeMap::new(),
            counted: (0, 0),
        }
    }
}

impl Txn<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }
    fn insert(&mut self, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        self.overlay.insert(key.into(), Some(value));
    }
    fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.overlay.insert(key.into(), None);
    }
    /// Committed entries under `prefix` merged with this batch's pending writes, in key order.
    fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for kv in self.tree.scan_prefix(prefix) {
            let (k, v) = kv?;
            out.insert(k.to_vec(), v.to_vec());
        }
        for (k, v) in self.overlay.range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            match v {
                Some(v) => out.insert(k.clone(), v.clone()),
                None => out.remove(k),
            };
        }
        Ok(out.into_iter().collect())
    }
    fn get_json<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        match self.get(key)? {
            Some(v) => Ok(Some(decode(key, &v)?)),
            None => Ok(None),
        }
    }

    // ---- records -------------------------------------------------------------------------

    pub fn record(&self, id: &RecordId) -> Result<Option<Record>> {
        self.get_json(format!("r/{id}").as_bytes())
    }

    /// Writes a record and keeps its indexes: by recipient, by provider, and the one live
    /// authorization per (provider, email).
    pub fn put_record(&mut self, r: &Record) -> Result<()> {
        let key = format!("r/{}", r.id);
        // the copy it replaces: its last-change key goes, and the counts move from it to `r`
        let old = self.get_json::<Record>(key.as_bytes())?;
        self.write_record(r, key, old.as_ref())
    }

    /// [`put_record`](Self::put_record) for a record made in this batch (`Record::new`: a fresh
    /// random id), without looking for an older copy: a bulk CSV writes 100,000 of these.
    pub fn put_new_record(&mut self, r: &Record) -> Result<()> {
        self.write_record(r, format!("r/{}", r.id), None)
    }

    fn write_record(&mut self, r: &Record, key: String, old: Option<&Record>) -> Result<()> {
        let new = old.is_none();
        self.keep_console(old, r)?;
        if new {
            self.insert(format!("e/{}/{}", r.recipient(), r.id), Vec::new());
            if let Some(p) = r.provider() {
                self.insert(format!("p/{p}/{}", r.id), Vec::new());
            }
            if let Body::CustomerInvitation(c) = &r.body {
                self.insert(customer_key(&c.authorization, &r.id), Vec::new());
            }
        }
        if let Body::ProviderAuthorization(a) = &r.body {
            let live_key = format!("l/{}/{}", a.provider, a.email);
            let live = matches!(
                a.state,
                crate::model::AuthorizationState::Invited
                    | crate::model::AuthorizationState::Authorized
            );
            if live {
                self.insert(live_key, r.id.0.to_vec());
            } else if !new && self.get(live_key.as_bytes())?.as_deref() == Some(&r.id.0[..]) {
                self.remove(live_key);
            }
        }
        self.insert(key, encode(r));
        Ok(())
    }

    // ---- the console's counts and last-change index (format 5) ------------------------------

    /// Keeps what the console reads as `old` becomes `r` (None: a new record), in this batch:
    /// the record's last-change entry (`n/`), the days (`y/`) and the funnel counts (`f/`).
    fn keep_console(&mut self, old: Option<&Record>, r: &Record) -> Result<()> {
        if let Some(o) = old {
            self.remove(change_key(o));
        }
        self.insert(change_key(r), encode(&ListEntry::of(r)));
        for (day, invitations, confirmations) in funnel::activity_delta(old, r) {
            let key = format!("y/{day}");
            let mut d = self
                .get_json::<DayCount>(key.as_bytes())?
                .unwrap_or_else(|| DayCount {
                    date: day,
                    ..DayCount::default()
                });
            d.invitations += invitations;
            d.confirmations += confirmations;
            self.insert(key, encode(&d));
        }
        match &r.body {
            Body::ProviderAuthorization(a) => {
                let was = old.and_then(Record::authorization).map(|o| o.state);
                if was == Some(a.state) {
                    return Ok(());
                }
                let rank = self.enrollment_rank(&a.email, None)?;
                self.tally(
                    &a.provider,
                    was.map(|s| Share::of(s, rank)),
                    Some(Share::of(a.state, rank)),
                )?;
            }
            Body::Enrollment(e) => {
                let was = old
                    .and_then(Record::enrollment)
                    .map_or(0, |o| funnel::enrollment_rank(o.state));
                let now = funnel::enrollment_rank(e.state);
                if was == now {
                    return Ok(());
                }
                // the address's best enrollment before and after: its invitations move with it
                let email = &e.primary_contact.email;
                let others = self.enrollment_rank(email, Some(&r.id))?;
                let (before, after) = (others.max(was), others.max(now));
                if before == after {
                    return Ok(());
                }
                for inv in self.records_for_recipient(email)? {
                    if let Body::ProviderAuthorization(a) = &inv.body {
                        self.tally(
                            &a.provider,
                            Some(Share::of(a.state, before)),
                            Some(Share::of(a.state, after)),
                        )?;
                    }
                }
            }
            Body::CustomerInvitation(_) => {}
        }
        Ok(())
    }

    /// The best [`funnel::enrollment_rank`] of the enrollments for `email` (0: none), leaving
    /// out `except`.
    fn enrollment_rank(&self, email: &Email, except: Option<&RecordId>) -> Result<u8> {
        let mut rank = 0;
        for r in self.records_for_recipient(email)? {
            if let Body::Enrollment(e) = &r.body {
                if Some(&r.id) != except {
                    rank = rank.max(funnel::enrollment_rank(e.state));
                }
            }
        }
        Ok(rank)
    }

    /// Moves one invitation in its provider's funnel counts: `remove` taken out, `add` put in.
    fn tally(&mut self, provider: &str, remove: Option<Share>, add: Option<Share>) -> Result<()> {
        let key = format!("f/{provider}");
        let mut f = self
            .get_json::<ProviderFunnel>(key.as_bytes())?
            .unwrap_or_else(|| ProviderFunnel {
                provider: provider.to_string(),
                ..ProviderFunnel::default()
            });
        if let Some(s) = remove {
            f.remove(s);
        }
        if let Some(s) = add {
            f.add(s);
        }
        self.insert(key, encode(&f));
        Ok(())
    }

    /// The kept funnel counts of every provider with invitations, by provider id.
    pub fn funnel(&self) -> Result<Vec<ProviderFunnel>> {
        let mut out = Vec::new();
        for (k, v) in self.scan(b"f/")? {
            let f: ProviderFunnel = decode(&k, &v)?;
            if !f.is_empty() {
                out.push(f);
            }
        }
        Ok(out)
    }

    /// The kept counts of the days from `first` on, oldest first; days without any are left
    /// out.
    pub fn days_since(&self, first: chrono::NaiveDate) -> Result<Vec<DayCount>> {
        let start = format!("y/{}", first.format("%Y-%m-%d"));
        let mut out = Vec::new();
        for kv in self.tree.range(start.into_bytes()..b"y0".to_vec()) {
            let (k, v) = kv?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    /// One page of the records list, walking the last-change index from the newest (ties by
    /// id): entries
    /// are filtered on what the index keeps beside them (no record is read unless shown), and the
    /// walk stops once the page and one more match are found.
    pub fn records_page(&self, q: &RecordQuery) -> Result<RecordPage> {
        let text = q.text_lower();
        let filtered =
            q.kind.is_some() || q.state.is_some() || q.provider.is_some() || text.is_some();
        let (mut skip, per_page) = (q.skip(), q.per_page());
        let mut page = RecordPage {
            records: Vec::with_capacity(per_page),
            page: q.page(),
            has_next: false,
        };
        // Each filter's text stands in the entry's JSON as it is unless JSON escapes it: an entry
        // without one of these cannot match and is passed over without being decoded.
        let needles: Vec<&[u8]> = [q.provider.as_deref(), q.state.as_deref(), text.as_deref()]
            .into_iter()
            .flatten()
            .filter(|n| !n.is_empty() && !n.chars().any(|c| c == '"' || c == '\\' || c < ' '))
            .map(str::as_bytes)
            .collect();
        for kv in self.tree.scan_prefix(b"n/") {
            let (k, v) = kv?;
            if filtered
                && (!needles.iter().all(|n| v.windows(n.len()).any(|w| w == *n))
                    || !decode::<ListEntry>(&k, &v)?.matches(q, text.as_deref()))
            {
                continue;
            }
            if skip > 0 {
                skip -= 1;
                continue;
            }
            if page.records.len() == per_page {
                page.has_next = true;
                break;
            }
            // n/<20 digits>/<id>
            let id = std::str::from_utf8(&k[23..]).ok().and_then(RecordId::parse);
            if let Some(r) = id.map(|id| self.record(&id)).transpose()?.flatten() {
                page.records.push(r);
            }
        }
        Ok(page)
    }

    /// Adds a queued message's Message-ID to the record's latest history entry (the change that
    /// caused it), so the history keeps it after the outbox item and its reference are pruned.
    pub fn note_message(&mut self, id: &RecordId, message_id: &str) -> Result<()> {
        let key = format!("r/{id}");
        let Some(mut r) = self.get_json::<Record>(key.as_bytes())? else {
            return Ok(()); // a test email: no record
        };
        if let Some(last) = r.history.last_mut() {
            last.message_ids.push(message_id.to_string());
            self.insert(key, encode(&r));
        }
        Ok(())
    }

    pub fn live_authorization(&self, provider: &str, email: &Email) -> Result<Option<RecordId>> {
        Ok(self
            .get(format!("l/{provider}/{email}").as_bytes())?
            .and_then(|v| v.try_into().ok().map(RecordId)))
    }

    fn records_under(&self, prefix: &str) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        for (k, _) in self.scan(prefix.as_bytes())? {
            let id = std::str::from_utf8(&k[prefix.len()..])
                .ok()
                .and_then(RecordId::parse);
            if let Some(id) = id {
                if let Some(r) = self.record(&id)? {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    pub fn records_for_recipient(&self, email: &Email) -> Result<Vec<Record>> {
        self.records_under(&format!("e/{email}/"))
    }

    pub fn records_for_provider(&self, provider: &str) -> Result<Vec<Record>> {
        self.records_under(&format!("p/{provider}/"))
    }

    /// The customer invitations made under one provider authorization (index `c/`).
    pub fn customers_of(&self, authorization: &RecordId) -> Result<Vec<Record>> {
        self.records_under(&format!("c/{authorization}/"))
    }

    pub fn all_records(&self) -> Result<Vec<Record>> {
        self.scan(b"r/")?
            .into_iter()
            .map(|(k, v)| decode(&k, &v))
            .collect()
    }

    // ---- outbox --------------------------------------------------------------------------

    /// Queues a message; it becomes due at `item.next_attempt_at`. Keeps the queue schedule
    /// (`q/`), the dead-letter index (`d/`), the sent-time index (`t/`) and the counts.
    pub fn put_outbox(&mut self, item: &OutboxItem) -> Result<()> {
        use crate::outbox::OutboxState;
        let key = format!("o/{}", item.id);
        if let Some(old) = self.get_json::<OutboxItem>(key.as_bytes())? {
            match (old.state, old.sent_at) {
                (OutboxState::Queued, _) => {
                    self.remove(format!("q/{}/{}", ms_key(&old.next_attempt_at), old.id));
                    self.counted.0 -= 1;
                }
                (OutboxState::Dead, _) => {
                    self.remove(format!("d/{}", old.id));
                    self.counted.1 -= 1;
                }
                (OutboxState::Sent, Some(at)) => self.remove(sent_key(&at, &old.id)),
                (OutboxState::Sent, None) => {}
            }
        }
        self.index_outbox(item);
        self.insert(key, encode_outbox(item));
        Ok(())
    }

    /// [`put_outbox`](Self::put_outbox) for an item the caller read as queued, due at
    /// `was_due` (the sender's results): while that queue key is there the stored item is
    /// queued at `was_due` (the key and the item change in the same batches), so the old item
    /// is not read and decoded again; otherwise as `put_outbox`.
    pub fn put_queued_outbox(&mut self, was_due: &Timestamp, item: &OutboxItem) -> Result<()> {
        let queued = format!("q/{}/{}", ms_key(was_due), item.id);
        let still_queued = match self.overlay.get(queued.as_bytes()) {
            Some(v) => v.is_some(),
            None => self.tree.contains_key(queued.as_bytes())?,
        };
        if !still_queued {
            return self.put_outbox(item);
        }
        self.remove(queued);
        self.counted.0 -= 1;
        self.index_outbox(item);
        self.insert(format!("o/{}", item.id), encode_outbox(item));
        Ok(())
    }

    /// [`put_outbox`](Self::put_outbox) for a message made in this batch (a fresh random
    /// `<ref>`), without looking for an older copy.
    pub fn put_new_outbox(&mut self, item: &OutboxItem) {
        self.index_outbox(item);
        self.insert(format!("o/{}", item.id), encode_outbox(item));
    }

    fn index_outbox(&mut self, item: &OutboxItem) {
        use crate::outbox::OutboxState;
        match (item.state, item.sent_at) {
            (OutboxState::Queued, _) => {
                self.insert(
                    format!("q/{}/{}", ms_key(&item.next_attempt_at), item.id),
                    Vec::new(),
                );
                self.counted.0 += 1;
            }
            (OutboxState::Dead, _) => {
                self.insert(format!("d/{}", item.id), Vec::new());
                self.counted.1 += 1;
            }
            (OutboxState::Sent, Some(at)) => self.insert(sent_key(&at, &item.id), Vec::new()),
            (OutboxState::Sent, None) => {}
        }
    }

    /// How many items were sent at or after `since` (a key count over the sent-time index).
    pub fn sent_since(&self, since: &Timestamp) -> Result<usize> {
        let start = format!("t/{}", ms_key(since));
        let mut n = 0;
        for k in self.tree.range(start.into_bytes()..b"t0".to_vec()).keys() {
            k?;
            n += 1;
        }
        Ok(n)
    }

    pub fn outbox_item(&self, id: &str) -> Result<Option<OutboxItem>> {
        self.get_json(format!("o/{id}").as_bytes())
    }

    /// Queued items due at or before `now`, oldest first, at most `limit`.
    pub fn outbox_due(&self, now: &Timestamp, limit: usize) -> Result<Vec<OutboxItem>> {
        let end = format!("q/{}~", ms_key(now));
        let mut out = Vec::new();
        for kv in self.tree.range(b"q/".to_vec()..end.into_bytes()) {
            let (k, _) = kv?;
            let id = String::from_utf8_lossy(&k[23..]).into_owned();
            if let Some(item) = self.outbox_item(&id)? {
                out.push(item);
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// When the next queued item is due, if any.
    pub fn outbox_next_due(&self) -> Result<Option<i64>> {
        match self.tree.scan_prefix(b"q/").next() {
            Some(kv) => {
                let (k, _) = kv?;
                Ok(std::str::from_utf8(&k[2..22])
                    .ok()
                    .and_then(|s| s.parse().ok()))
            }
            None => Ok(None),
        }
    }

    pub fn outbox_all(&self) -> Result<Vec<OutboxItem>> {
        self.scan(b"o/")?
            .into_iter()
            .map(|(k, v)| decode(&k, &v))
            .collect()
    }

    // ---- reply references ----------------------------------------------------------------

    /// What a reply's `<ref>` points to: read from its outbox item (format 4), or from a
    /// reference a format-3 store kept without its item. A test email points to no record.
    pub fn message_ref(&self, reference: &str) -> Result<Option<MessageRef>> {
        if let Some(item) = self.outbox_item(reference)? {
            return Ok(MessageRef::of_item(item));
        }
        self.get_json(format!("m/{reference}").as_bytes())
    }

    // ---- inbound outcomes ----------------------------------------------------------------

    pub fn inbound_seen(&self, key: &str) -> Result<bool> {
        Ok(self.get(format!("i/{key}").as_bytes())?.is_some())
    }

    pub fn put_inbound(&mut self, key: &str, seq: u64, rec: &InboundRecord) {
        self.insert(format!("i/{key}"), seq.to_be_bytes().to_vec());
        self.insert(format!("j/{seq:020}"), encode(rec));
    }

    pub fn inbound_all(&self) -> Result<Vec<InboundRecord>> {
        self.scan(b"j/")?
            .into_iter()
            .map(|(k, v)| decode(&k, &v))
            .collect()
    }

    // ---- pruning (`[store] retention`) -----------------------------------------------------

    /// Removes up to `limit` items sent before `before`: the outbox item, its reply reference
    /// (`m/`) and its `t/` entry. Oldest first, from the sent-time index.
    pub fn prune_sent(&mut self, before: &Timestamp, limit: usize) -> Result<usize> {
        let end = format!("t/{}", ms_key(before));
        let mut keys = Vec::new();
        for k in self.tree.range(b"t/".to_vec()..end.into_bytes()).keys() {
            keys.push(k?);
            if keys.len() >= limit {
                break;
            }
        }
        for k in &keys {
            // t/<20-digit ms>/<ref>
            let reference = String::from_utf8_lossy(&k[23..]).into_owned();
            self.remove(format!("o/{reference}"));
            self.remove(format!("m/{reference}"));
            self.remove(k.to_vec());
        }
        Ok(keys.len())
    }

    /// Removes up to `limit` inbound outcomes received before `before`, oldest first (`j/` is in
    /// arrival order), with their "seen" marks (`i/`). A message delivered again after that is
    /// handled as new; the retention is meant to be far longer than any re-delivery.
    pub fn prune_inbound(&mut self, before: &Timestamp, limit: usize) -> Result<usize> {
        let mut seqs = HashSet::new();
        for kv in self.tree.scan_prefix(b"j/") {
            let (k, v) = kv?;
            let rec: InboundRecord = decode(&k, &v)?;
            let received = chrono::DateTime::parse_from_rfc3339(&rec.received_at)
                .map(|t| t.with_timezone(&chrono::Utc))
                .ok();
            // an unreadable time is kept: it cannot be known old
            if received.is_none_or(|t| t >= *before) || seqs.len() >= limit {
                break;
            }
            let seq = std::str::from_utf8(&k[2..])
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            if let Some(seq) = seq {
                seqs.insert(seq);
                self.remove(k.to_vec());
            }
        }
        if seqs.is_empty() {
            return Ok(0);
        }
        // `i/<key>` → seq: the key (a Message-ID, or a hash) is not in the outcome, so the marks
        // are found by their value; one pass over them per pruning batch.
        for kv in self.tree.scan_prefix(b"i/") {
            let (k, v) = kv?;
            let seq = <[u8; 8]>::try_from(&v[..]).ok().map(u64::from_be_bytes);
            if seq.is_some_and(|s| seqs.contains(&s)) {
                self.remove(k.to_vec());
            }
        }
        Ok(seqs.len())
    }

    // ---- staff accounts and console sessions ---------------------------------------------
    // `a/<email>` an account, `w/<sha256 of the cookie>` a session (its staff member inside)

    pub fn staff(&self, email: &Email) -> Result<Option<Staff>> {
        self.get_json(format!("a/{email}").as_bytes())
    }

    pub fn put_staff(&mut self, s: &Staff) {
        self.insert(format!("a/{}", s.email), encode(s));
    }

    pub fn remove_staff(&mut self, email: &Email) {
        self.remove(format!("a/{email}"));
    }

    /// Every account, by address.
    pub fn all_staff(&self) -> Result<Vec<Staff>> {
        self.scan(b"a/")?
            .into_iter()
            .map(|(k, v)| decode(&k, &v))
            .collect()
    }

    pub fn session(&self, key: &str) -> Result<Option<Session>> {
        self.get_json(format!("w/{key}").as_bytes())
    }

    pub fn put_session(&mut self, key: &str, s: &Session) {
        self.insert(format!("w/{key}"), encode(s));
    }

    pub fn remove_session(&mut self, key: &str) {
        self.remove(format!("w/{key}"));
    }

    /// Every session as (key, session): ending one member's sessions, pruning idle ones.
    pub fn all_sessions(&self) -> Result<Vec<(String, Session)>> {
        self.scan(b"w/")?
            .into_iter()
            .map(|(k, v)| {
                let s = decode(&k, &v)?;
                Ok((String::from_utf8_lossy(&k[2..]).into_owned(), s))
            })
            .collect()
    }

    // ---- suppression list ----------------------------------------------------------------

    fn suppression_key(provider: &str, email: &Email) -> String {
        format!("s/{provider}/{email}")
    }

    pub fn suppression(&self, provider: &str, email: &Email) -> Result<Option<Suppression>> {
        self.get_json(Self::suppression_key(provider, email).as_bytes())
    }

    pub fn put_suppression(&mut self, s: &Suppression) {
        self.insert(Self::suppression_key(&s.provider, &s.email), encode(s));
    }

    pub fn remove_suppression(&mut self, provider: &str, email: &Email) {
        self.remove(Self::suppression_key(provider, email));
    }

    /// Every suppression, or one provider's, in key order (provider, then address).
    pub fn suppressions(&self, provider: Option<&str>) -> Result<Vec<Suppression>> {
        let prefix = match provider {
            Some(p) => format!("s/{p}/"),
            None => "s/".to_string(),
        };
        self.scan(prefix.as_bytes())?
            .into_iter()
            .map(|(k, v)| decode(&k, &v))
            .collect()
    }

    // ---- timers --------------------------------------------------------------------------

    pub fn schedule(&mut self, at: &Timestamp, record: &RecordId, kind: TimerKind) {
        self.insert(
            format!("u/{}/{}/{}", ms_key(at), record, kind.code()),
            Vec::new(),
        );
    }

    pub fn due_timers(&self, now: &Timestamp, limit: usize) -> Result<Vec<DueTimer>> {
        let end = format!("u/{}~", ms_key(now));
        let mut out = Vec::new();
        for kv in self.tree.range(b"u/".to_vec()..end.into_bytes()) {
            let (k, _) = kv?;
            let s = String::from_utf8_lossy(&k).into_owned();
            let mut parts = s.split('/').skip(2);
            let id = parts.next().and_then(RecordId::parse);
            let kind = match parts.next() {
                Some("x") => Some(TimerKind::Expire),
                Some("r") => Some(TimerKind::Remind),
                _ => None,
            };
            let at_ms = s
                .get(2..22)
                .and_then(|n| n.parse::<i64>().ok())
                .unwrap_or(0);
            if let (Some(record), Some(kind)) = (id, kind) {
                out.push(DueTimer {
                    key: k.to_vec(),
                    at_ms,
                    record,
                    kind,
                });
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub fn remove_timer(&mut self, t: &DueTimer) -> Result<bool> {
        let there = self.get(&t.key)?.is_some();
        self.remove(t.key.clone());
        Ok(there)
    }

    // ---- small state (IMAP positions and the like) ---------------------------------------

    pub fn meta(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .get(format!("k/{name}").as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn set_meta(&mut self, name: &str, value: &str) {
        self.insert(format!("k/{name}"), value.as_bytes().to_vec());
    }

    /// `store copy`: a reply reference kept without its item (format 3), as it was.
    pub fn put_ref(&mut self, reference: &str, m: &MessageRef) {
        self.insert(format!("m/{reference}"), encode(m));
    }
}

/// One entry at a time, for lists and exports that stream instead of holding everything.
impl Store {
    /// Every record (or one provider's, through its index), in key order.
    pub fn each_record(
        &self,
        provider: Option<&str>,
        mut f: impl FnMut(Record) -> Result<()>,
    ) -> Result<()> {
        match provider {
            None => {
                for kv in self.tree.scan_prefix(b"r/") {
                    let (k, v) = kv?;
                    f(decode(&k, &v)?)?;
                }
            }
            Some(p) => {
                let prefix = format!("p/{p}/");
                let read = self.read();
                for k in self.tree.scan_prefix(prefix.as_bytes()).keys() {
                    let k = k?;
                    let id = std::str::from_utf8(&k[prefix.len()..])
                        .ok()
                        .and_then(RecordId::parse);
                    if let Some(r) = id.map(|id| read.record(&id)).transpose()?.flatten() {
                        f(r)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Every outbox item in key order, or the dead letters from their index.
    pub fn each_outbox(
        &self,
        dead_only: bool,
        mut f: impl FnMut(OutboxItem) -> Result<()>,
    ) -> Result<()> {
        if dead_only {
            let read = self.read();
            for k in self.tree.scan_prefix(b"d/").keys() {
                let k = k?;
                if let Some(item) = read.outbox_item(&String::from_utf8_lossy(&k[2..]))? {
                    f(item)?;
                }
            }
        } else {
            for kv in self.tree.scan_prefix(b"o/") {
                let (k, v) = kv?;
                f(decode(&k, &v)?)?;
            }
        }
        Ok(())
    }

    /// Whether the store holds any record or outbox item (`store copy` refuses such a target).
    pub fn holds_data(&self) -> Result<bool> {
        Ok(self.tree.scan_prefix(b"r/").next().is_some()
            || self.tree.scan_prefix(b"o/").next().is_some())
    }

    /// Every inbound outcome with the key it is found by, in arrival order.
    pub fn each_inbound_keyed(
        &self,
        mut f: impl FnMut(String, InboundRecord) -> Result<()>,
    ) -> Result<()> {
        let mut keys = std::collections::HashMap::new();
        for kv in self.tree.scan_prefix(b"i/") {
            let (k, v) = kv?;
            if let Ok(seq) = <[u8; 8]>::try_from(&v[..]) {
                keys.insert(
                    u64::from_be_bytes(seq),
                    String::from_utf8_lossy(&k[2..]).into_owned(),
                );
            }
        }
        for kv in self.tree.scan_prefix(b"j/") {
            let (k, v) = kv?;
            let seq = std::str::from_utf8(&k[2..])
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            if let Some(key) = seq.and_then(|s| keys.remove(&s)) {
                f(key, decode(&k, &v)?)?;
            }
        }
        Ok(())
    }

    /// Every small named value (`Txn::set_meta`: IMAP positions and the like), without the
    /// store's own marks (format, index marks).
    pub fn each_meta(&self, mut f: impl FnMut(String, String) -> Result<()>) -> Result<()> {
        for kv in self.tree.scan_prefix(b"k/") {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k[2..]).into_owned();
            if ["format", "customer-index", "sent-index", "probe"].contains(&name.as_str()) {
                continue;
            }
            f(name, String::from_utf8_lossy(&v).into_owned())?;
        }
        Ok(())
    }

    /// Every reply reference kept without its outbox item (`m/`, format 3).
    pub fn each_ref(&self, mut f: impl FnMut(String, MessageRef) -> Result<()>) -> Result<()> {
        for kv in self.tree.scan_prefix(b"m/") {
            let (k, v) = kv?;
            f(
                String::from_utf8_lossy(&k[2..]).into_owned(),
                decode(&k, &v)?,
            )?;
        }
        Ok(())
    }

    /// Every inbound outcome, in arrival order.
    pub fn each_inbound(&self, mut f: impl FnMut(InboundRecord) -> Result<()>) -> Result<()> {
        for kv in self.tree.scan_prefix(b"j/") {
            let (k, v) = kv?;
            f(decode(&k, &v)?)?;
        }
        Ok(())
    }
}

impl Store {
    pub fn outbox_depth(&self) -> usize {
        self.counts.queued.load(Ordering::Relaxed).max(0) as usize
    }

    pub fn outbox_dead_count(&self) -> usize {
        self.counts.dead.load(Ordering::Relaxed).max(0) as usize
    }

    pub fn next_seq(&self) -> Result<u64> {
        Ok(self.db.generate_id()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Purpose;
    use crate::outbox::{MailFieldsV1, MailKind, OutboxState};
    use chrono::{TimeZone, Utc};

    fn item(reference: &str, at: Timestamp) -> OutboxItem {
        let to = Email::parse("a@fabrikam.test").unwrap_or_else(|e| panic!("{e}"));
        OutboxItem::queued(
            reference.to_string(),
            "invited.test",
            &to,
            "",
            MailKind::ProviderNotice,
            "en-US",
            RecordId([0; 16]),
            MailFieldsV1::default(),
            None,
            at,
        )
    }

    fn open(dir: &Path) -> Store {
        Store::open(dir, 1 << 20).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The clock is a parameter: items "sent" on given days, pruned against a given cutoff.
    #[test]
    fn sent_items_and_their_refs_go_after_the_retention_and_the_counts_follow() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = open(dir.path());
        let day = |d: u32| {
            Utc.with_ymd_and_hms(2026, 11, d, 12, 0, 0)
                .single()
                .unwrap_or_else(|| panic!("day {d}"))
        };
        store
            .write(|txn| -> Result<()> {
                for (i, d) in [1u32, 2, 3, 20].iter().enumerate() {
                    let r = format!("ref{i}");
                    let mut it = item(&r, day(*d));
                    txn.put_new_outbox(&it);
                    it.state = OutboxState::Sent;
                    it.sent_at = Some(day(*d));
                    txn.put_outbox(&it)?;
                }
                txn.put_new_outbox(&item("queued", day(1)));
                let mut dead = item("dead", day(1));
                dead.state = OutboxState::Dead;
                txn.put_outbox(&dead)?;
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((store.outbox_depth(), store.outbox_dead_count()), (1, 1));
        assert_eq!(store.read().sent_since(&day(2)).unwrap_or(0), 3);

        // cutoff the 10th: the three sent before go with their refs, in batches of two
        let cutoff = day(10);
        let first = store
            .write(|txn| txn.prune_sent(&cutoff, 2))
            .unwrap_or_else(|e| panic!("{e}"));
        let second = store
            .write(|txn| txn.prune_sent(&cutoff, 2))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((first, second), (2, 1));
        let read = store.read();
        for r in ["ref0", "ref1", "ref2"] {
            assert!(read.outbox_item(r).unwrap_or_default().is_none(), "{r}");
            assert!(read.message_ref(r).unwrap_or_default().is_none(), "{r}");
        }
        // the newer sent item, the queued and the dead one stay
        for r in ["ref3", "queued", "dead"] {
            assert!(read.outbox_item(r).unwrap_or_default().is_some(), "{r}");
        }
        assert!(read.message_ref("ref3").unwrap_or_default().is_some());
        assert_eq!(read.sent_since(&day(1)).unwrap_or(0), 1);
        assert_eq!((store.outbox_depth(), store.outbox_dead_count()), (1, 1));

        // counted again from the keys when the store is opened next
        drop(read);
        drop(store);
        let store = open(dir.path());
        assert_eq!((store.outbox_depth(), store.outbox_dead_count()), (1, 1));
    }

    #[test]
    fn inbound_outcomes_go_after_the_retention_with_their_seen_marks() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = open(dir.path());
        let rec = |at: &str| InboundRecord {
            message_id: format!("m-{at}"),
            from: "a@fabrikam.test".into(),
            received_at: at.into(),
            outcome: "unrecognised".into(),
            record: None,
            effect: String::new(),
        };
        store
            .write(|txn| -> Result<()> {
                txn.put_inbound("old", 1, &rec("2026-11-01T00:00:00Z"));
                txn.put_inbound("new", 2, &rec("2026-11-20T00:00:00Z"));
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let cutoff = Utc
            .with_ymd_and_hms(2026, 11, 10, 0, 0, 0)
            .single()
            .unwrap_or_else(|| panic!("cutoff"));
        let n = store
            .write(|txn| txn.prune_inbound(&cutoff, 100))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, 1);
        let read = store.read();
        assert!(!read.inbound_seen("old").unwrap_or(true));
        assert!(read.inbound_seen("new").unwrap_or(false));
        let left = read.inbound_all().unwrap_or_default();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].message_id, "m-2026-11-20T00:00:00Z");
    }

    /// A store written before the sent-time index gets it when opened.
    #[test]
    fn the_sent_index_is_built_for_an_older_store() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let at = Utc
            .with_ymd_and_hms(2026, 11, 1, 12, 0, 0)
            .single()
            .unwrap_or_else(|| panic!("at"));
        {
            let store = open(dir.path());
            store
                .write(|txn| -> Result<()> {
                    let mut it = item("sent", at);
                    it.state = OutboxState::Sent;
                    it.sent_at = Some(at);
                    // as an older binary wrote it: the item, no `t/` entry
                    if let super::super::Txn::Sled(txn) = txn {
                        txn.insert("o/sent", encode(&it));
                        txn.remove(SENT_INDEX_KEY.to_vec());
                    }
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{e}"));
            store.flush_blocking().unwrap_or_else(|e| panic!("{e}"));
        }
        let store = open(dir.path());
        assert_eq!(store.read().sent_since(&at).unwrap_or(0), 1);
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = Store::open(&dir.path().join("store"), 1_000_000).unwrap_or_else(|e| panic!("{e}"));
        (dir, s)
    }

    fn put(s: &Store, name: &str) {
        s.write(|txn| -> Result<()> {
            txn.set_meta(name, "1");
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// One flush answers every caller queued before it started.
    #[test]
    fn one_flush_answers_everyone_queued() {
        let (_d, s) = store();
        let mut answers = Vec::new();
        {
            let mut st = s.group.state.lock().unwrap_or_else(|p| p.into_inner());
            for i in 0..10 {
                put(&s, &format!("w{i}"));
                let (tx, rx) = tokio::sync::oneshot::channel();
                st.waiting.push(tx);
                answers.push(rx);
            }
            st.running = true;
        }
        Flusher(s.clone()).run();
        for mut rx in answers {
            assert_eq!(rx.try_recv(), Ok(Ok(())));
        }
        assert_eq!(s.flush_counts(), (1, 10));
        assert!(
            !s.group
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .running
        );
    }

    /// A flusher dropped before it ran (the runtime shutting down) still answers its callers.
    #[test]
    fn a_flusher_that_never_ran_answers_on_drop() {
        let (_d, s) = store();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        {
            let mut st = s.group.state.lock().unwrap_or_else(|p| p.into_inner());
            st.waiting.push(tx);
            st.running = true;
        }
        drop(Flusher(s.clone()));
        assert_eq!(rx.try_recv(), Ok(Ok(())));
        assert!(
            !s.group
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .running
        );
    }

    /// Many writers flushing at once: every one is answered, each by a flush that started after
    /// its call, and they share flushes (never more flushes than callers).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_flushes() {
        let (_d, s) = store();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..64 {
            let s = s.clone();
            set.spawn(async move {
                put(&s, &format!("c{i}"));
                s.flush().await
            });
        }
        while let Some(r) = set.join_next().await {
            assert!(matches!(r, Ok(Ok(()))), "{r:?}");
        }
        let (flushes, waits) = s.flush_counts();
        assert_eq!(waits, 64);
        assert!((1..=64).contains(&flushes), "{flushes} flushes");
        for i in 0..64 {
            assert_eq!(
                s.read().meta(&format!("c{i}")).ok().flatten().as_deref(),
                Some("1")
            );
        }
    }

    /// The write lock serves writers in the order they came.
    #[test]
    fn the_write_lock_is_first_come_first_served() {
        let lock = Arc::new(FairLock::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = lock.lock();
        let mut threads = Vec::new();
        for n in 0..4u64 {
            let (l, order) = (lock.clone(), order.clone());
            threads.push(std::thread::spawn(move || {
                let _g = l.lock();
                order.lock().unwrap_or_else(|p| p.into_inner()).push(n);
            }));
            // the next thread starts only once this one holds its ticket
            while lock.tickets.lock().unwrap_or_else(|p| p.into_inner()).0 < n + 2 {
                std::thread::yield_now();
            }
        }
        drop(first);
        for t in threads {
            t.join()
                .unwrap_or_else(|_| panic!("writer thread panicked"));
        }
        assert_eq!(
            *order.lock().unwrap_or_else(|p| p.into_inner()),
            vec![0, 1, 2, 3]
        );
    }

    /// Format 3 → 4: a reference whose outbox item is there goes (the item answers for it), one
    /// without its item stays and is still read; a format-3 item (empty fields written out)
    /// reads as before; a 4 item leaves its empty fields out; the mark says the current format
    /// (the later steps ran too); once.
    #[test]
    fn a_format_3_store_loses_its_reply_references_to_the_outbox_items() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let at = Utc
            .with_ymd_and_hms(2026, 11, 1, 12, 0, 0)
            .single()
            .unwrap_or_else(|| panic!("time"));
        let mut with_link = item("linked", at);
        with_link.kind = MailKind::ProviderInvitation;
        with_link.record = RecordId([7; 16]);
        with_link.link = Some(crate::outbox::LinkSpec {
            purpose: Purpose::AuthorizeProvider,
            generation: 3,
            expires_at: 0,
        });
        let mref = |m: &OutboxItem, generation| MessageRef {
            record: m.record,
            purpose: m.link.as_ref().map(|l| l.purpose),
            generation,
            message_id: m.message_id.clone(),
        };
        {
            let db = sled::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
            let tree = db.open_tree("invited").unwrap_or_else(|e| panic!("{e}"));
            let put = |k: &str, v: Vec<u8>| {
                tree.insert(k.as_bytes(), v)
                    .unwrap_or_else(|e| panic!("{e}"));
            };
            put("k/format", b"3".to_vec());
            put("k/customer-index", Vec::new());
            put("k/sent-index", b"1".to_vec());
            // as format 3 wrote it: every field, empty or not
            let v3 = serde_json::to_value(&with_link).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                v3.get("fields").is_none(),
                "format 4 leaves empty fields out"
            );
            let mut v3 = v3;
            v3["fields"] =
                serde_json::to_value(MailFieldsV1::default()).unwrap_or_else(|e| panic!("{e}"));
            v3["to_name"] = "".into();
            put("o/linked", v3.to_string().into_bytes());
            put("m/linked", encode(&mref(&with_link, 3)));
            let orphan = item("orphan", at);
            put("m/orphan", encode(&mref(&orphan, 0)));
            db.flush().unwrap_or_else(|e| panic!("{e}"));
        }
        let store = open(dir.path());
        let read = store.read();
        assert_eq!(
            read.get(b"k/format").unwrap_or_default(),
            Some(FORMAT.to_string().into_bytes())
        );
        assert!(read.get(b"m/linked").unwrap_or_default().is_none());
        let m = read
            .message_ref("linked")
            .unwrap_or_default()
            .unwrap_or_else(|| panic!("the item answers for its reference"));
        assert_eq!(
            (m.record, m.purpose, m.generation, m.message_id.as_str()),
            (
                RecordId([7; 16]),
                Some(Purpose::AuthorizeProvider),
                3,
                "linked@invited.test"
            )
        );
        assert!(read.get(b"m/orphan").unwrap_or_default().is_some());
        assert!(read.message_ref("orphan").unwrap_or_default().is_some());
        assert_eq!(
            read.outbox_item("linked")
                .unwrap_or_default()
                .map(|i| i.fields),
            Some(MailFieldsV1::default())
        );
        drop(read);
        drop(store);
        let store = open(dir.path());
        assert!(store
            .read()
            .message_ref("orphan")
            .unwrap_or_default()
            .is_some());
    }

    /// Format 4 → 5: a store written without the console's counts and last-change index gets
    /// them on open, equal to what a format-5 store kept (and to a recount); the mark says 5.
    #[test]
    fn a_format_4_store_gets_the_console_counts_and_index() {
        use crate::funnel::RecordQuery;
        use crate::model::Channel;
        use crate::store::console_tests::{enrollment, invitation};
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let at = Utc
            .with_ymd_and_hms(2026, 11, 1, 12, 0, 0)
            .single()
            .unwrap_or_else(|| panic!("time"));
        let all = RecordQuery {
            page: 1,
            per_page: 100,
            ..RecordQuery::default()
        };
        let kept = {
            let store = super::super::Store::Sled(open(dir.path()));
            let mut e = enrollment("kim@fabrikam.test", "Fabrikam", at);
            let mut a = invitation("contoso-kr", "kim@fabrikam.test", "Fabrikam", at);
            let b = invitation("contoso-jp", "lee@adatum.test", "Adatum", at);
            store
                .write(|txn| -> Result<()> {
                    for r in [&e, &a, &b] {
                        txn.put_new_record(r)?;
                    }
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{e}"));
            let later = at + chrono::Duration::hours(1);
            let _effects = e.verify_contact(Channel::Link, later);
            let _effects = a.authorize(e.id, Channel::Reply, later + chrono::Duration::days(1));
            store
                .write(|txn| -> Result<()> {
                    txn.put_record(&e)?;
                    txn.put_record(&a)
                })
                .unwrap_or_else(|e| panic!("{e}"));
            let read = store.read();
            let kept = (
                read.funnel().unwrap_or_default(),
                read.days_since(at.date_naive()).unwrap_or_default(),
                read.records_page(&all)
                    .map(|p| p.records.iter().map(|r| r.id).collect::<Vec<_>>())
                    .unwrap_or_default(),
            );
            assert_eq!(kept.0.len(), 2);
            assert_eq!(kept.0[1].stages, [1, 1, 1, 1, 1, 1], "{:?}", kept.0);
            assert_eq!(kept.0[0].stages, [1, 0, 0, 0, 0, 0], "{:?}", kept.0);
            assert_eq!(kept.1.len(), 2, "{:?}", kept.1);
            assert_eq!(kept.2, vec![a.id, e.id, b.id]);
            // as a format-4 binary left it: no console keys, mark 4
            let super::super::Store::Sled(s) = &store else {
                panic!("sled")
            };
            for prefix in [&b"n/"[..], b"f/", b"y/"] {
                for k in s.tree.scan_prefix(prefix).keys() {
                    s.tree
                        .remove(k.unwrap_or_else(|e| panic!("{e}")))
                        .unwrap_or_else(|e| panic!("{e}"));
                }
            }
            s.tree
                .insert(FORMAT_KEY, b"4".to_vec())
                .unwrap_or_else(|e| panic!("{e}"));
            s.flush_blocking().unwrap_or_else(|e| panic!("{e}"));
            assert!(read.funnel().unwrap_or_default().is_empty());
            kept
        };
        let store = super::super::Store::Sled(open(dir.path()));
        let read = store.read();
        let super::super::Txn::Sled(raw) = &read else {
            panic!("sled")
        };
        assert_eq!(
            raw.get(b"k/format").unwrap_or_default(),
            Some(b"5".to_vec())
        );
        assert_eq!(read.funnel().unwrap_or_default(), kept.0);
        assert_eq!(read.days_since(at.date_naive()).unwrap_or_default(), kept.1);
        let listed = read
            .records_page(&all)
            .map(|p| p.records.iter().map(|r| r.id).collect::<Vec<_>>())
            .unwrap_or_default();
        assert_eq!(listed, kept.2);
    }
}
