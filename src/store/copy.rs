//! `invited store copy --from CONFIG_A --to CONFIG_B`: everything in one store into another,
//! through the same [`Store`] interface the daemon uses (so it works between any two backends),
//! in transactions of 1,000 entries. The target must hold no records or outbox items yet; the
//! daemons on both stores must be stopped.

use serde::Serialize;

use super::{Result, Store, StoreError, TimerKind};

/// What `store copy` moved (`--json`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Copied {
    pub records: usize,
    pub outbox_items: usize,
    pub timers: usize,
    /// reply references kept apart from their outbox items (a format-3 sled store)
    pub refs: usize,
    pub inbound: usize,
    pub suppressions: usize,
    /// staff accounts (console sessions are not copied: staff sign in again)
    pub staff: usize,
    pub meta: usize,
}

const BATCH: usize = 1000;

/// Copies `from` into `to`; `progress` hears each kind's running count.
pub fn copy(from: &Store, to: &Store, mut progress: impl FnMut(&str, usize)) -> Result<Copied> {
    if to.holds_data()? {
        return Err(StoreError::Other(
            "the target store already holds records or outbox items: copy into an empty one".into(),
        ));
    }
    let mut n = Copied::default();

    let mut batch = Vec::with_capacity(BATCH);
    let flush_records = |batch: &mut Vec<crate::model::Record>, n: &mut usize| -> Result<()> {
        to.write(|t| -> Result<()> {
            for r in batch.iter() {
                t.put_record(r)?;
            }
            Ok(())
        })?;
        *n += batch.len();
        batch.clear();
        Ok(())
    };
    from.each_record(None, |r| {
        batch.push(r);
        if batch.len() >= BATCH {
            flush_records(&mut batch, &mut n.records)?;
            progress("records", n.records);
        }
        Ok(())
    })?;
    flush_records(&mut batch, &mut n.records)?;
    progress("records", n.records);

    let mut items = Vec::with_capacity(BATCH);
    let flush_items = |items: &mut Vec<crate::outbox::OutboxItem>, n: &mut usize| -> Result<()> {
        to.write(|t| -> Result<()> {
            for i in items.iter() {
                t.put_outbox(i)?;
            }
            Ok(())
        })?;
        *n += items.len();
        items.clear();
        Ok(())
    };
    from.each_outbox(false, |i| {
        items.push(i);
        if items.len() >= BATCH {
            flush_items(&mut items, &mut n.outbox_items)?;
            progress("outbox items", n.outbox_items);
        }
        Ok(())
    })?;
    flush_items(&mut items, &mut n.outbox_items)?;
    progress("outbox items", n.outbox_items);

    let mut timers: Vec<(i64, crate::model::RecordId, TimerKind)> = Vec::new();
    from.each_timer(|t| {
        timers.push((t.at_ms, t.record, t.kind));
        Ok(())
    })?;
    for chunk in timers.chunks(BATCH) {
        to.write(|t| -> Result<()> {
            for (at, record, kind) in chunk {
                let at = chrono::DateTime::from_timestamp_millis(*at).ok_or_else(|| {
                    StoreError::Other(format!("a timer of record {record} has no valid time"))
                })?;
                t.schedule(&at, record, *kind);
            }
            Ok(())
        })?;
        n.timers += chunk.len();
    }
    progress("timers", n.timers);

    let mut refs = Vec::new();
    from.each_ref(|r, m| {
        refs.push((r, m));
        Ok(())
    })?;
    for chunk in refs.chunks(BATCH) {
        to.write(|t| -> Result<()> {
            for (r, m) in chunk {
                t.put_ref(r, m);
            }
            Ok(())
        })?;
        n.refs += chunk.len();
    }

    // Inbound outcomes keep their order, numbered again by the target (its own sequence).
    let mut inbound = Vec::new();
    from.each_inbound_keyed(|k, rec| {
        inbound.push((k, rec));
        Ok(())
    })?;
    for chunk in inbound.chunks(BATCH) {
        let seqs = chunk
            .iter()
            .map(|_| to.next_seq())
            .collect::<Result<Vec<u64>>>()?;
        to.write(|t| -> Result<()> {
            for ((k, rec), seq) in chunk.iter().zip(seqs) {
                t.put_inbound(k, seq, rec);
            }
            Ok(())
        })?;
        n.inbound += chunk.len();
    }
    progress("inbound outcomes", n.inbound);

    let suppressions = from.read().suppressions(None)?;
    for chunk in suppressions.chunks(BATCH) {
        to.write(|t| -> Result<()> {
            for s in chunk {
                t.put_suppression(s);
            }
            Ok(())
        })?;
        n.suppressions += chunk.len();
    }

    let staff = from.read().all_staff()?;
    to.write(|t| -> Result<()> {
        for s in &staff {
            t.put_staff(s);
        }
        Ok(())
    })?;
    n.staff = staff.len();

    let mut meta = Vec::new();
    from.each_meta(|k, v| {
        meta.push((k, v));
        Ok(())
    })?;
    to.write(|t| -> Result<()> {
        for (k, v) in &meta {
            t.set_meta(k, v);
        }
        Ok(())
    })?;
    n.meta = meta.len();
    to.flush_blocking()?;
    Ok(n)
}
