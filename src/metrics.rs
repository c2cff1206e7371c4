//! Counters for `/metrics` (Prometheus text format). Plain atomics: no registry crate needed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    pub sent: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    inbound: Mutex<BTreeMap<String, u64>>,
    transitions: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    pub fn inbound(&self, outcome: &str) {
        let mut m = self.inbound.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(outcome.to_string()).or_default() += 1;
    }
    pub fn transition(&self, kind: &str, to: &str) {
        let mut m = self.transitions.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(format!("{kind}\u{0}{to}")).or_default() += 1;
    }

    pub fn render(&self, outbox_depth: usize, dead: usize) -> String {
        let mut s = String::new();
        s.push_str("# HELP invited_outbox_depth Messages queued and not yet sent.\n# TYPE invited_outbox_depth gauge\n");
        s.push_str(&format!("invited_outbox_depth {outbox_depth}\n"));
        s.push_str("# HELP invited_outbox_dead Messages on the dead-letter list.\n# TYPE invited_outbox_dead gauge\n");
        s.push_str(&format!("invited_outbox_dead {dead}\n"));
        for (name, c, help) in [
            (
                "invited_sent_total",
                &self.sent,
                "Messages handed to the transport.",
            ),
            (
                "invited_retried_total",
                &self.retried,
                "Send attempts that failed and were rescheduled.",
            ),
            (
                "invited_failed_total",
                &self.failed,
                "Messages that failed permanently.",
            ),
        ] {
            s.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                c.load(Ordering::Relaxed)
            ));
        }
        s.push_str("# HELP invited_inbound_total Inbound messages by outcome.\n# TYPE invited_inbound_total counter\n");
        for (k, v) in self
            .inbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            s.push_str(&format!("invited_inbound_total{{outcome=\"{k}\"}} {v}\n"));
        }
        s.push_str("# HELP invited_transitions_total Record transitions by kind and new state.\n# TYPE invited_transitions_total counter\n");
        for (k, v) in self
            .transitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let (kind, to) = k.split_once('\u{0}').unwrap_or((k, ""));
            s.push_str(&format!(
                "invited_transitions_total{{kind=\"{kind}\",to=\"{to}\"}} {v}\n"
            ));
        }
        s
    }
}
