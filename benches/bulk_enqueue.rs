//! The store side of a bulk CSV, in process (no HTTP, no CLI, no sender): rows through
//! `App::invite_bulk` in the chunks the CLI sends, into a fresh sled store. CPU per row, and the
//! longest single chunk. `cargo bench --bench bulk_enqueue` (N rows, `BULK_BENCH_N`, default
//! 100,000); `bench/bulk-enqueue` measures the whole path with the daemon.

use std::sync::Arc;
use std::time::Instant;

use invited::app::App;
use invited::model::Channel;
use invited::rules::InviteRow;

// the daemon's allocator (src/main.rs), so CPU and RSS are the daemon's
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A line of /proc/self/status in MiB (VmRSS now, VmHWM the peak).
fn mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_suffix(" kB")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    // under `cargo test --all-targets` this only checks that it runs
    let n: usize = if bench {
        std::env::var("BULK_BENCH_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000)
    } else {
        300
    };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("invited.toml");
    let store = format!("path = \"{}/store\"", dir.path().display());
    std::fs::write(
        &config,
        invited::config::minimal_toml(dir.path(), &store)
            + r#"[[providers]]
id = "contoso-kr"
name = "Contoso Distribution Korea"
email = "ops@contoso.test"
markets = ["KR"]
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cfg = invited::config::Config::load(&config).unwrap_or_else(|e| panic!("{e}"));
    let store = invited::store::Store::open(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let shared = invited::daemon::load_shared(cfg).unwrap_or_else(|e| panic!("{e}"));
    let app = Arc::new(App::new(store, shared));
    let rows: Vec<(u64, InviteRow)> = (0..n)
        .map(|i| {
            (
                i as u64 + 2,
                InviteRow {
                    email: format!("r{i:06}@d{:02}.test", i % 20),
                    company: format!("Reseller {i} Ltd."),
                    country: "KR".into(),
                    contact_name: format!("Contact {i}"),
                    locale: String::new(),
                },
            )
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let cpu = || {
        let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let f: Vec<&str> = s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (t(11) + t(12)) / 100.0
    };
    for pass in ["first", "again"] {
        let (c0, t0) = (cpu(), Instant::now());
        let mut longest = 0f64;
        let (mut queued, mut existing) = (0, 0);
        for chunk in rows.chunks(2000) {
            let t = Instant::now();
            let r = rt
                .block_on(app.invite_bulk(
                    "contoso-kr",
                    chunk.to_vec(),
                    Channel::Cli,
                    chrono::Utc::now(),
                ))
                .unwrap_or_else(|e| panic!("{e}"));
            longest = longest.max(t.elapsed().as_secs_f64());
            queued += r.queued;
            existing += r.existing;
        }
        let (secs, cpu_s) = (t0.elapsed().as_secs_f64(), cpu() - c0);
        println!(
            "{pass}: {n} rows ({queued} queued, {existing} existing) in {secs:.2} s, {:.0} rows/s, CPU {:.1} µs/row, longest chunk of 2000 {:.0} ms; RSS {:.0} MiB, peak {:.0} MiB",
            n as f64 / secs,
            cpu_s * 1e6 / n as f64,
            longest * 1e3,
            mib("VmRSS:"),
            mib("VmHWM:"),
        );
        assert_eq!(queued + existing, n as u64);
    }
}
