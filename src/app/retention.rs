//! The store stays bounded: what is older than `[store] retention` goes (sent outbox items with
//! their reply references, inbound outcomes). Records stay, their history keeping each
//! Message-ID; queued and dead items stay whatever their age.

use super::*;

/// Entries removed per store batch: short batches, so pruning never stalls a page.
const PRUNE_BATCH: usize = 500;

impl App {
    /// Prunes everything older than `now - retention`, batch by batch on the blocking pool.
    pub async fn prune(self: &Arc<Self>, now: Timestamp) -> Result<crate::store::Pruned> {
        let before = now - to_chrono(self.shared().cfg.retention);
        let mut total = crate::store::Pruned::default();
        loop {
            let app = self.clone();
            let part = tokio::task::spawn_blocking(move || {
                app.store.write(|txn| -> Result<crate::store::Pruned> {
                    Ok(crate::store::Pruned {
                        sent: txn.prune_sent(&before, PRUNE_BATCH)?,
                        inbound: txn.prune_inbound(&before, PRUNE_BATCH)?,
                    })
                })
            })
            .await
            .map_err(|e| AppError::Store(StoreError::Other(format!("prune task: {e}"))))??;
            total.sent += part.sent;
            total.inbound += part.inbound;
            if part.sent < PRUNE_BATCH && part.inbound < PRUNE_BATCH {
                break;
            }
        }
        if total != crate::store::Pruned::default() {
            tracing::info!(
                sent = total.sent,
                inbound = total.inbound,
                "pruned what is older than store.retention"
            );
        }
        Ok(total)
    }

    /// How often the daemon prunes: a quarter of the retention, between 1 s and 10 minutes.
    pub fn prune_interval(&self) -> std::time::Duration {
        (self.shared().cfg.retention / 4).clamp(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(600),
        )
    }
}
