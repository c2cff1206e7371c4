//! systemd's readiness protocol (sd_notify(3)) without libsystemd: datagrams to
//! `$NOTIFY_SOCKET` saying READY, STATUS, RELOADING, STOPPING and WATCHDOG. Outside systemd
//! (no `NOTIFY_SOCKET`) every call does nothing.
//!
//! The watchdog is fed only while the work loops are alive: each long-running task marks the
//! time it started a unit of work ([`Heartbeat::busy`]); one that stays busy past its limit is
//! stuck, the feeding stops, and systemd restarts the service after `WatchdogSec`.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket); None outside systemd.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let addr = match path.strip_prefix('@') {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    SocketAddr::from_abstract_name(name.as_bytes())
                }
                None => SocketAddr::from_pathname(&path),
            };
            let sock = UnixDatagram::unbound();
            match (sock, addr) {
                (Ok(s), Ok(a)) => Some((s, a)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(socket = %path, error = %e, "NOTIFY_SOCKET is set but unusable");
                    None
                }
            }
        });
        Notifier { target }
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one notification (newline-separated `KEY=value` lines).
    pub fn send(&self, state: &str) {
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                tracing::warn!(error = %e, "sd_notify failed");
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    pub fn reloading(&self) {
        self.send("RELOADING=1\nSTATUS=reloading the configuration");
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=draining: finishing in-flight sends, flushing the store");
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// How often to feed the watchdog: half of `$WATCHDOG_USEC`, when it is set for this process.
    pub fn watchdog_interval() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        if let Ok(pid) = std::env::var("WATCHDOG_PID") {
            if pid.parse::<u32>().ok() != Some(std::process::id()) {
                return None;
            }
        }
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn epoch() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// When a task started its current unit of work (ms since process start + 1), or 0 when it is
/// waiting for work. Cloned into the task; read by the watchdog.
#[derive(Clone, Default)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Heartbeat {
    /// Marks the task busy until the returned guard is dropped.
    pub fn busy(&self) -> Busy<'_> {
        let now = epoch().elapsed().as_millis() as u64 + 1;
        self.0.store(now, Ordering::Relaxed);
        Busy(self)
    }

    /// How long the current unit of work has been running, if any.
    pub fn busy_for(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            since => {
                let now = epoch().elapsed().as_millis() as u64 + 1;
                Some(Duration::from_millis(now.saturating_sub(since)))
            }
        }
    }
}

pub struct Busy<'a>(&'a Heartbeat);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0 .0.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_is_busy_only_inside_the_guard() {
        let h = Heartbeat::default();
        assert_eq!(h.busy_for(), None);
        {
            let _b = h.busy();
            assert!(h.busy_for().is_some());
        }
        assert_eq!(h.busy_for(), None);
    }

    #[test]
    fn notifications_reach_the_socket() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path)?;
        let n = Notifier {
            target: Some((UnixDatagram::unbound()?, SocketAddr::from_pathname(&path)?)),
        };
        n.ready("serving\nnow");
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf)?;
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=serving now");
        Ok(())
    }
}
