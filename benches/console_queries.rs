//! The staff console's queries at 100,000 records, in process: `App::funnel`,
//! `App::activity(30)` and `App::records_page` (pages 1 and 50 of 50 records, unfiltered and
//! filtered by provider and state, a text search, and one that matches nothing: the whole walk), each run `CONSOLE_BENCH_RUNS` times
//! (default 20), min / median / max. Also how long the store takes to open with them (start to
//! ready). `cargo bench --bench console_queries` (N records, `CONSOLE_BENCH_N`, default 100,000).
//!
//! On sled always; on PostgreSQL as well when a server is given: `INVITED_BENCH_PG_URL` (an empty
//! database; `INVITED_BENCH_PG_PASSWORD_FILE` for its password), or the env of a
//! `scripts/pgstack start DIR` (`set -a; . DIR/env`: `PGSTACK_PORT`, `PGSTACK_PASSWORD_FILE`),
//! in which a database of its own is made. PostgreSQL is timed right after the load and again
//! after `VACUUM ANALYZE` (what autovacuum does within a minute or so: until then the planner
//! knows nothing of the 100,000 rows and no index-only scan is one). The records go in through
//! the store (1,000 a transaction), not through `invite_bulk`: what is measured is the reading.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Duration as Days, Utc};
use invited::app::App;
use invited::funnel::RecordQuery;
use invited::model::{
    Address, AuthorizationState, Body, Channel, Contact, Email, Enrollment, EnrollmentState, Kind,
    Mpn, ProviderAuthorization, Record, RecordId, Support, Timestamp,
};

// the daemon's allocator (src/main.rs)
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PROVIDERS: [&str; 4] = ["contoso-kr", "contoso-jp", "northwind", "tailspin"];

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// A small deterministic generator (xorshift): the same store every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn email(i: u64) -> Email {
    ok(Email::parse(&format!(
        "partner{i}@reseller{}.test",
        i % 997
    )))
}

fn enrollment(i: u64, now: Timestamp) -> Record {
    Record::new(
        Body::Enrollment(Enrollment {
            state: EnrollmentState::PendingVerification,
            company: format!("Reseller {i} Ltd."),
            country: "KR".into(),
            address: Address {
                street: "1 Main St".into(),
                city: "Seoul".into(),
                postal_code: "04524".into(),
            },
            primary_contact: Contact {
                name: format!("Contact {i}"),
                email: email(i),
                phone: "+82 2 0000 0000".into(),
            },
            support: Support {
                email: ok(Email::parse("support@reseller.test")),
                phone: "+82 2 0000 0001".into(),
                website: None,
            },
            mpn: Mpn {
                id: format!("{}", 1_000_000 + i),
                country: "KR".into(),
            },
        }),
        "en-US",
        Channel::Api,
        "enrolled",
        now,
    )
}

fn invitation(provider: &str, i: u64, now: Timestamp) -> Record {
    Record::new(
        Body::ProviderAuthorization(ProviderAuthorization {
            state: AuthorizationState::Invited,
            provider: provider.into(),
            email: email(i),
            company: format!("Reseller {i} Ltd."),
            country: "KR".into(),
            contact_name: format!("Contact {i}"),
            admin_access: true,
            enrollment: None,
        }),
        "en-US",
        Channel::Cli,
        "invited",
        now,
    )
}

/// `n` records over the last 60 days: resellers, 60 % of them enrolled (pending 20 %, in review
/// 15 %, approved 10 %, active 50 %, rejected 5 %), and invitations from four providers to them
/// (one per provider and reseller): authorized where the enrollment is active (60 % of those),
/// else declined 15 %, expired 15 %, undeliverable 3 %, revoked 2 %, the rest waiting.
fn fill(app: &App, n: u64) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let resellers = n / 4 + n / 50;
    let enrolled = resellers * 6 / 10;
    let invitations = n - enrolled;
    let now = Utc::now();
    let mut active = vec![false; resellers as usize];
    let mut batch: Vec<Record> = Vec::with_capacity(1000);
    let flush = |batch: &mut Vec<Record>| {
        ok(app
            .store
            .write(|txn| -> Result<(), invited::store::StoreError> {
                for r in batch.iter() {
                    txn.put_new_record(r)?;
                }
                Ok(())
            }));
        batch.clear();
    };
    for i in 0..enrolled {
        let born = now - Days::minutes(rng.below(60 * 24 * 60) as i64);
        let step = |m: u64| born + Days::minutes(m as i64);
        let mut r = enrollment(i, born);
        let roll = rng.below(100);
        let _effects = match roll {
            0..=19 => Ok(Default::default()),
            _ => r.verify_contact(Channel::Link, step(30)),
        };
        if (35..95).contains(&roll) {
            let _effects = r.approve(Channel::Cli, step(3000), step(600));
        }
        if (45..95).contains(&roll) {
            let _effects = r.accept_agreement(Channel::Reply, step(900));
            active[i as usize] = true;
        }
        if roll >= 95 {
            let _effects = r.reject("incomplete", Channel::Cli, step(600));
        }
        batch.push(r);
        if batch.len() == 1000 {
            flush(&mut batch);
        }
    }
    for i in 0..invitations {
        let provider = PROVIDERS[(i % 4) as usize];
        let reseller = (i / 4) % resellers;
        let born = now - Days::minutes(rng.below(60 * 24 * 60) as i64);
        let later = born + Days::minutes(rng.below(60 * 24 * 3) as i64 + 1);
        let mut r = invitation(provider, reseller, born);
        let roll = rng.below(100);
        let _effects = if active[reseller as usize] && roll < 60 {
            r.authorize(RecordId([1; 16]), Channel::Link, later)
        } else {
            match roll % 100 {
                0..=14 => r.decline(Channel::Link, later),
                15..=29 => r.expire(later),
                30..=32 => r.bounce("550 5.1.1", "no such user", later),
                33..=34 => r.revoke(Channel::Cli, later),
                _ => Ok(Default::default()),
            }
        };
        batch.push(r);
        if batch.len() == 1000 {
            flush(&mut batch);
        }
    }
    flush(&mut batch);
}

fn config(dir: &Path, store: &str) -> invited::config::Config {
    let path = dir.join("invited.toml");
    ok(std::fs::write(
        &path,
        invited::config::minimal_toml(dir, store),
    ));
    // a PostgreSQL daemon is given its key file; sled's makes one
    ok(std::fs::write(
        dir.join("k1.key"),
        invited::model::base32(&invited::model::random_bytes::<32>()),
    ));
    ok(invited::config::Config::load(&path))
}

fn open(cfg: &invited::config::Config) -> (App, Duration) {
    let t = Instant::now();
    let store = ok(invited::store::Store::open(cfg));
    let took = t.elapsed();
    let shared = ok(invited::daemon::load_shared(cfg.clone()));
    (App::new(store, shared), took)
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, Duration, Duration) {
    let mut took: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .collect();
    took.sort();
    (took[0], took[runs / 2], took[runs - 1])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Fills a store with `n` records, opens it again and times the queries; with `settle`, runs it
/// (PostgreSQL: `VACUUM ANALYZE`, what autovacuum does soon after a load) and times them again.
fn measure(
    name: &str,
    cfg: &invited::config::Config,
    n: u64,
    runs: usize,
    settle: Option<&dyn Fn()>,
) {
    let (app, _) = open(cfg);
    let app = Arc::new(app);
    let t = Instant::now();
    fill(&app, n);
    ok(app.store.flush_blocking());
    println!(
        "{name}: {n} records written in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    drop(app);
    let (app, opened) = open(cfg);
    println!("{name}: store opened in {:.0} ms", ms(opened));
    let funnel = ok(app.funnel());
    let total: u64 = funnel.iter().map(|f| f.stages[0]).sum();
    println!(
        "{name}: {} providers, {total} invitations; {}: stages {:?}, current {:?}",
        funnel.len(),
        funnel[0].provider,
        funnel[0].stages,
        funnel[0].current
    );
    let q = |page: u32, filtered: bool| RecordQuery {
        page,
        per_page: 50,
        provider: filtered.then(|| "contoso-kr".to_string()),
        state: filtered.then(|| "invited".to_string()),
        ..RecordQuery::default()
    };
    type Case<'a> = (&'a str, Box<dyn Fn() -> usize + 'a>);
    let cases: Vec<Case> = vec![
        ("funnel", Box::new(|| ok(app.funnel()).len())),
        ("activity(30)", Box::new(|| ok(app.activity(30)).len())),
        (
            "records page 1",
            Box::new(|| ok(app.records_page(&q(1, false))).records.len()),
        ),
        (
            "records page 50",
            Box::new(|| ok(app.records_page(&q(50, false))).records.len()),
        ),
        (
            "records page 1, provider+state",
            Box::new(|| ok(app.records_page(&q(1, true))).records.len()),
        ),
        (
            "records page 50, provider+state",
            Box::new(|| ok(app.records_page(&q(50, true))).records.len()),
        ),
        (
            "records page 1, kind+text",
            Box::new(|| {
                let mut x = q(1, false);
                x.kind = Some(Kind::Enrollment);
                x.text = Some("reseller 99".into());
                ok(app.records_page(&x)).records.len()
            }),
        ),
        (
            "records, text matching nothing",
            Box::new(|| {
                let mut x = q(1, false);
                x.text = Some("no such partner".into());
                ok(app.records_page(&x)).records.len()
            }),
        ),
    ];
    let mut label = name.to_string();
    for settled in [false, true] {
        if settled {
            let Some(settle) = settle else { break };
            settle();
            label = format!("{name} (after VACUUM ANALYZE)");
        }
        for (what, f) in &cases {
            let shown = f();
            let (min, median, max) = time(runs, f);
            println!(
                "{label}: {what:<32} min {:7.2} ms  median {:7.2} ms  max {:7.2} ms  ({shown} rows)",
                ms(min),
                ms(median),
                ms(max)
            );
        }
    }
    let days = ok(app.activity(30));
    let (inv, conf): (u64, u64) = days
        .iter()
        .fold((0, 0), |(i, c), d| (i + d.invitations, c + d.confirmations));
    println!("{name}: last 30 days: {inv} invitations, {conf} confirmations");
}

/// Runs `sql` (statements one by one, outside a transaction) on the database at `url`.
fn pg_sql(url: &str, password_file: Option<&str>, sql: &str) {
    let mut cfg: tokio_postgres::Config = ok(url.parse());
    if let Some(p) = password_file {
        cfg.password(ok(std::fs::read_to_string(p)).trim());
    }
    let rt = ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build());
    rt.block_on(async {
        let (client, conn) = ok(cfg.connect(tokio_postgres::NoTls).await);
        let task = tokio::spawn(conn);
        // one statement at a time: neither CREATE DATABASE nor VACUUM runs in a transaction
        for statement in sql.split(';').filter(|s| !s.trim().is_empty()) {
            ok(client.batch_execute(statement).await);
        }
        drop(client);
        let _ = task.await;
    });
}

/// A database of its own on the `scripts/pgstack` server in the environment: (URL, password file).
fn pgstack_database() -> Option<(String, String)> {
    let port = std::env::var("PGSTACK_PORT").ok()?;
    let password_file = std::env::var("PGSTACK_PASSWORD_FILE").ok()?;
    let name = format!("console_bench_{}", std::process::id());
    pg_sql(
        &format!("postgres://invited@127.0.0.1:{port}/postgres"),
        Some(&password_file),
        &format!("DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}"),
    );
    Some((
        format!("postgres://invited@127.0.0.1:{port}/{name}"),
        password_file,
    ))
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse().ok());
    // under `cargo test --all-targets` this only checks that it runs
    let (n, runs): (u64, usize) = if bench {
        (
            env("CONSOLE_BENCH_N").unwrap_or(100_000),
            env("CONSOLE_BENCH_RUNS").unwrap_or(20).max(1) as usize,
        )
    } else {
        (400, 2)
    };
    let dir = ok(tempfile::tempdir());
    let sled_dir = dir.path().join("sled");
    ok(std::fs::create_dir_all(&sled_dir));
    let store = format!("path = \"{}/store\"", sled_dir.display());
    measure("sled", &config(&sled_dir, &store), n, runs, None);

    let pg = match std::env::var("INVITED_BENCH_PG_URL") {
        Ok(url) => Some((url, std::env::var("INVITED_BENCH_PG_PASSWORD_FILE").ok())),
        Err(_) => pgstack_database().map(|(url, pw)| (url, Some(pw))),
    };
    if let Some((url, password_file)) = pg {
        let pg_dir = dir.path().join("pg");
        ok(std::fs::create_dir_all(&pg_dir));
        let mut store = format!("backend = \"postgres\"\nurl = \"{url}\"");
        if let Some(p) = &password_file {
            store.push_str(&format!("\npassword_file = \"{p}\""));
        }
        let vacuum = || pg_sql(&url, password_file.as_deref(), "VACUUM ANALYZE");
        measure("postgres", &config(&pg_dir, &store), n, runs, Some(&vacuum));
    }
}
