//! Counters for `/metrics` (Prometheus text format). Plain atomics: no registry crate needed.
//! `/metrics` is served on the admin listeners and `[http] metrics_listen`, never on the public
//! listener (see `admin`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Metrics {
    pub sent: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    pub throttled: AtomicU64,
    inbound: Mutex<BTreeMap<String, u64>>,
    transitions: Mutex<BTreeMap<String, u64>>,
    listeners: Mutex<Vec<(&'static str, Arc<ListenerStats>)>>,
}

/// Why a connection ended, as counted in `invited_http_connections_closed_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The client or the server ended it normally (including graceful shutdown).
    Done,
    /// The request head did not arrive in full within `header_timeout`.
    HeaderTimeout,
    /// A kept-alive connection sent no new request within `idle_timeout`.
    IdleTimeout,
    /// The request body did not arrive in full in time.
    BodyTimeout,
    /// The client read nothing of the response for `idle_timeout`.
    WriteStalled,
    /// The request head outgrew the head buffer (hyper answers 431 itself).
    HeadTooLarge,
    /// Anything else: a reset, a malformed request, a hang-up mid-request.
    Error,
}

impl Close {
    pub const ALL: [Close; 7] = [
        Close::Done,
        Close::HeaderTimeout,
        Close::IdleTimeout,
        Close::BodyTimeout,
        Close::WriteStalled,
        Close::HeadTooLarge,
        Close::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Close::Done => "done",
            Close::HeaderTimeout => "header_timeout",
            Close::IdleTimeout => "idle_timeout",
            Close::BodyTimeout => "body_timeout",
            Close::WriteStalled => "write_stalled",
            Close::HeadTooLarge => "head_too_large",
            Close::Error => "error",
        }
    }
}

/// The connection counters of one HTTP listener (public, admin socket, admin TCP, metrics).
#[derive(Default)]
pub struct ListenerStats {
    limit: AtomicU64,
    open: AtomicU64,
    pub(crate) accepted: AtomicU64,
    closed: [AtomicU64; Close::ALL.len()],
}

impl ListenerStats {
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit as u64, Ordering::Relaxed);
    }
    pub fn opened(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
    }
    pub fn closed(&self, why: Close) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.closed[why as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
    pub fn closed_count(&self, why: Close) -> u64 {
        self.closed[why as usize].load(Ordering::Relaxed)
    }
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

    /// The counters of the listener called `name` (created on first use).
    pub fn listener(&self, name: &'static str) -> Arc<ListenerStats> {
        let mut l = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, s)) = l.iter().find(|(n, _)| *n == name) {
            return s.clone();
        }
        let s = Arc::new(ListenerStats::default());
        l.push((name, s.clone()));
        s
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
            (
                "invited_throttled_total",
                &self.throttled,
                "Send attempts the server answered with 421 or 4.7.x (slow down); not counted as retries.",
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
        self.render_listeners(&mut s);
        s
    }

    /// The store's group commit: flushes, and the callers they made durable (their ratio is the
    /// mean group size).
    pub fn render_store(s: &mut String, flushes: u64, waits: u64) {
        s.push_str("# HELP invited_store_flushes_total Store flushes (each one waits for the disk).\n# TYPE invited_store_flushes_total counter\n");
        s.push_str(&format!("invited_store_flushes_total {flushes}\n"));
        s.push_str("# HELP invited_store_flush_waits_total Callers made durable by those flushes (group commit: many per flush).\n# TYPE invited_store_flush_waits_total counter\n");
        s.push_str(&format!("invited_store_flush_waits_total {waits}\n"));
    }

    fn render_listeners(&self, s: &mut String) {
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        s.push_str("# HELP invited_http_connection_limit Connections a listener serves at once (more wait in the kernel backlog).\n# TYPE invited_http_connection_limit gauge\n");
        for (name, l) in &listeners {
            s.push_str(&format!(
                "invited_http_connection_limit{{listener=\"{name}\"}} {}\n",
                l.limit.load(Ordering::Relaxed)
            ));
        }
        s.push_str("# HELP invited_http_connections_open Connections open now.\n# TYPE invited_http_connections_open gauge\n");
        for (name, l) in &listeners {
            s.push_str(&format!(
                "invited_http_connections_open{{listener=\"{name}\"}} {}\n",
                l.open()
            ));
        }
        s.push_str("# HELP invited_http_connections_accepted_total Connections accepted.\n# TYPE invited_http_connections_accepted_total counter\n");
        for (name, l) in &listeners {
            s.push_str(&format!(
                "invited_http_connections_accepted_total{{listener=\"{name}\"}} {}\n",
                l.accepted.load(Ordering::Relaxed)
            ));
        }
        s.push_str("# HELP invited_http_connections_closed_total Connections closed, by why.\n# TYPE invited_http_connections_closed_total counter\n");
        for (name, l) in &listeners {
            for why in Close::ALL {
                s.push_str(&format!(
                    "invited_http_connections_closed_total{{listener=\"{name}\",reason=\"{}\"}} {}\n",
                    why.as_str(),
                    l.closed_count(why)
                ));
            }
        }
    }
}
