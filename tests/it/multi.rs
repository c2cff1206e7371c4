//! Several daemons on one PostgreSQL database (DESIGN, "Store backends"): each message sent once
//! even when a daemon is killed, one transition for a link posted to all of them at once, each
//! reply applied once while they share one mailbox, the database stopped mid-send, and
//! `store copy` between the backends. These need PostgreSQL whatever the suite's backend
//! parameter (`harness::pgstack`); scripts/test runs them once, in the sled pass.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::harness::{pgstack, wait_for, Daemon, Mail, Options, Pg};
use crate::smtp::{free_port, Sink};

/// `[store]` lines for a new database; short leases, so a killed daemon's claims come free
/// within the test.
fn shared_store(pg: &Pg) -> String {
    pg.new_store() + "lease = \"5s\"\n"
}

fn smtp_into(port: u16, concurrency: usize, store: &str) -> Options {
    Options {
        outbound: Some(format!(
            "transport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nconcurrency = {concurrency}"
        )),
        store: Some(store.to_string()),
        ..Options::default()
    }
}

/// What the shared outbox still holds queued (any daemon answers for all).
fn queued(d: &Daemon) -> u64 {
    d.json(&["outbox", "--summary"])["queued"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

fn sent_by(d: &Daemon) -> u64 {
    let (_, body) = crate::edge::admin_socket_get(d, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("invited_sent_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn csv(d: &Daemon, emails: &[String]) {
    let r = d.invite_csv(emails);
    assert_eq!(r["queued"], emails.len(), "{r}");
}

/// Counts of each Message-ID in the sink's dump.
fn counts(sink: &Sink) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for id in sink.message_ids() {
        *m.entry(id).or_insert(0) += 1;
    }
    m
}

/// Three daemons, one database, one `smtp-sink`: 10,000 invitations each sent exactly once (and
/// every daemon took part); then 10,000 more with one daemon `kill -9`ed mid-run: none lost, and
/// no more sent twice than that daemon's concurrency.
#[test]
fn three_daemons_send_each_message_once_and_a_killed_one_costs_at_most_its_concurrency() {
    let pg = pgstack();
    let store = shared_store(pg);
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sink = Sink::start(port, &tmp.path().join("dump"), &[]);
    let concurrency = 4;
    let mut ds: Vec<Daemon> = (0..3)
        .map(|_| Daemon::start(smtp_into(port, concurrency, &store)))
        .collect();
    let n = 10_000;
    let first: Vec<String> = (0..n).map(|i| format!("m{i}@fabrikam.test")).collect();
    csv(&ds[0], &first);
    wait_for("10,000 sent", Duration::from_secs(900), || {
        (queued(&ds[0]) == 0 && sink.message_ids().len() >= n).then_some(())
    });
    let c = counts(&sink);
    assert_eq!(c.len(), n, "every message arrived");
    let twice: Vec<_> = c.iter().filter(|(_, k)| **k > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    let per: Vec<u64> = ds.iter().map(sent_by).collect();
    assert_eq!(per.iter().sum::<u64>(), n as u64, "per daemon: {per:?}");
    assert!(per.iter().all(|s| *s > 0), "each daemon sent some: {per:?}");

    // again, and daemon 1 dies in the middle
    let second: Vec<String> = (0..n).map(|i| format!("k{i}@fabrikam.test")).collect();
    csv(&ds[0], &second);
    wait_for(
        "a quarter of the second run",
        Duration::from_secs(600),
        || (sink.message_ids().len() >= n + n / 4).then_some(()),
    );
    ds[1].kill9();
    wait_for(
        "the second 10,000 sent by the two left",
        Duration::from_secs(900),
        || (queued(&ds[0]) == 0 && counts(&sink).len() >= 2 * n).then_some(()),
    );
    let c = counts(&sink);
    assert_eq!(c.len(), 2 * n, "none lost");
    let extra: usize = c.values().map(|k| k - 1).sum();
    assert!(
        extra <= concurrency,
        "{extra} sent twice; the killed daemon had {concurrency} connections"
    );
    eprintln!(
        "kill -9 of one of three daemons: {extra} message(s) sent twice (bound {concurrency})"
    );
}

/// Every mail any of the daemons wrote to `to` (file transport: each writes its own outbox).
fn mails_to(ds: &[Daemon], to: &str) -> Vec<Mail> {
    ds.iter().flat_map(|d| d.mails(to, None)).collect()
}

/// 100 POSTs of one link at once, spread over three daemons: one transition, the rest see it done.
#[test]
fn a_hundred_posts_of_one_link_over_three_daemons_make_one_transition() {
    let store = shared_store(pgstack());
    let ds: Vec<Daemon> = (0..3)
        .map(|_| {
            Daemon::start(Options {
                store: Some(store.clone()),
                ..Options::default()
            })
        })
        .collect();
    let email = "race@fabrikam.test";
    let id = ds[0].invite(email, "Fabrikam")["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let link = wait_for("the invitation", Duration::from_secs(30), || {
        mails_to(&ds, email).first().map(Mail::link_path)
    });
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(100));
    let handles: Vec<_> = (0..100)
        .map(|i| {
            let (addr, link, barrier) = (ds[i % 3].http.clone(), link.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                crate::harness::http(&addr, "POST", &link, Some("action=decline"))
            })
        })
        .collect();
    let responses: Vec<_> = handles.into_iter().filter_map(|h| h.join().ok()).collect();
    assert_eq!(responses.len(), 100);
    let done = responses
        .iter()
        .filter(|r| r.status == 200 && r.body.contains("result-done"))
        .count();
    let already = responses
        .iter()
        .filter(|r| r.status == 200 && r.body.contains("result-already"))
        .count();
    assert_eq!(done, 1, "exactly one success");
    assert_eq!(done + already, 100, "the rest see it done");
    for d in &ds {
        let h = d.json(&["show", &id])["history"].clone();
        let declined = h
            .as_array()
            .map(|a| a.iter().filter(|t| t["to"] == "declined").count());
        assert_eq!(
            declined,
            Some(1),
            "one transition, as every daemon sees it: {h}"
        );
    }
}

/// 200 replies in one Dovecot INBOX, three daemons configured to read it: one reads at a time
/// (an advisory lock); the reader is killed halfway and another takes over; each reply is
/// applied once.
#[test]
fn two_hundred_replies_read_by_three_daemons_are_each_applied_once() {
    let users: Vec<String> = (0..200)
        .map(|i| format!("r{i:03}@northwind.test"))
        .collect();
    let ms = crate::mailstack::MailStack::start(&[]);
    let store = shared_store(pgstack());
    let mut opts = ms.options(false);
    opts.outbound = None; // invitations as files: the replies are built from them
    opts.store = Some(store);
    let mut ds: Vec<Daemon> = (0..3).map(|_| Daemon::start(opts.clone())).collect();
    csv(&ds[0], &users);
    let replies: Vec<String> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let m = wait_for(
                &format!("the invitation to {u}"),
                Duration::from_secs(120),
                || mails_to(&ds, u).into_iter().next(),
            );
            crate::mailstack::reply_raw(
                u,
                &m,
                &format!("rep{i}@northwind.test"),
                "No, thank you",
                false,
            )
        })
        .collect();
    let ids: HashMap<String, String> = ds[0]
        .json(&["list", "invitations"])
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["email"].as_str().unwrap_or_default().to_string(),
                        r["id"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(ids.len(), 200, "the invitations");
    crate::mailstack::append(&ms, "replies@invited.test", "INBOX", &replies, false);
    let handled = |d: &Daemon| d.json(&["inbound"]).as_array().map_or(0, Vec::len);
    // the daemon that reads: the one that never said it stands by
    let reader = wait_for("a reader to start", Duration::from_secs(60), || {
        (handled(&ds[0]) > 0).then_some(())?;
        ds.iter()
            .position(|d| !d.log().contains("another daemon reads the mailbox"))
    });
    wait_for("half the replies handled", Duration::from_secs(300), || {
        (handled(&ds[0]) >= 100).then_some(())
    });
    ds[reader].kill9();
    let other = (reader + 1) % 3;
    wait_for("every reply handled", Duration::from_secs(300), || {
        (handled(&ds[other]) >= 200).then_some(())
    });
    // and nothing more comes in a while after
    std::thread::sleep(Duration::from_secs(3));
    let inbound = ds[other].json(&["inbound"]);
    let mids: Vec<&str> = inbound
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["message_id"].as_str()).collect())
        .unwrap_or_default();
    let unique: HashSet<&&str> = mids.iter().collect();
    assert_eq!(
        (mids.len(), unique.len()),
        (200, 200),
        "one outcome per reply"
    );
    for (email, id) in &ids {
        let h = ds[other].json(&["show", id])["history"].clone();
        let declined = h
            .as_array()
            .map(|a| a.iter().filter(|t| t["to"] == "declined").count());
        assert_eq!(declined, Some(1), "{email}: declined once: {h}");
    }
    let took_over = ds
        .iter()
        .enumerate()
        .any(|(i, d)| i != reader && d.log().contains("this daemon now reads the mailbox"));
    assert!(took_over, "another daemon took over the mailbox");
}

/// PostgreSQL stopped for 20 s in the middle of a send (a server of its own: the others are
/// shared by tests running at the same time): the daemon keeps running and says not-ready, then
/// every message goes out, none twice beyond what was in flight.
#[test]
fn the_database_stopped_for_20_s_mid_send_loses_nothing() {
    let dir = crate::harness::start_pgstack();
    let pg = Pg::at(&dir);
    let store = shared_store(&pg);
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sink = Sink::start(port, &tmp.path().join("dump"), &[]);
    let concurrency = 4;
    let d = Daemon::start(smtp_into(port, concurrency, &store));
    let n = 3000;
    let emails: Vec<String> = (0..n).map(|i| format!("p{i}@fabrikam.test")).collect();
    csv(&d, &emails);
    wait_for("some sent", Duration::from_secs(300), || {
        (sink.message_ids().len() >= 300).then_some(())
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pgstack");
    let pgstack = |what: &str| {
        let out = std::process::Command::new(script)
            .arg(what)
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "pgstack {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    pgstack("stop");
    let stopped = std::time::Instant::now();
    let ready = |d: &Daemon| d.get("/readyz").status;
    wait_for("/readyz to say not-ready", Duration::from_secs(15), || {
        (ready(&d) == 503).then_some(())
    });
    while stopped.elapsed() < Duration::from_secs(20) {
        assert!(d.pid().is_some(), "the daemon is still running");
        assert_eq!(
            d.get("/healthz").status,
            200,
            "alive while the database is away"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(ready(&d), 503, "still not ready at 20 s");
    pgstack("restart");
    wait_for("/readyz ready again", Duration::from_secs(30), || {
        (ready(&d) == 200).then_some(())
    });
    wait_for("every message sent", Duration::from_secs(600), || {
        (queued(&d) == 0 && counts(&sink).len() >= n).then_some(())
    });
    let c = counts(&sink);
    assert_eq!(c.len(), n, "none lost");
    let extra: usize = c.values().map(|k| k - 1).sum();
    assert!(
        extra <= concurrency,
        "{extra} sent twice; {concurrency} can be in flight"
    );
    assert!(
        d.log()
            .contains("recording send results failed; trying again")
            || extra == 0
    );
    pgstack("stop");
}

/// `store copy` sled → PostgreSQL → sled: 10,000 records (invitations, most still queued), and
/// every record with its history, every outbox item and every timer is equal at the end.
#[test]
fn store_copy_round_trips_ten_thousand_records_between_sled_and_postgres() {
    let n = 10_000;
    let mut a = Daemon::start(Options {
        store: Some("path = \"store\"\n".into()),
        // slow sending: most invitations stay queued
        outbound: Some("transport = \"file\"\ndir = \"outbox\"\nrate_per_minute = 60".into()),
        ..Options::default()
    });
    let emails: Vec<String> = (0..n).map(|i| format!("c{i}@fabrikam.test")).collect();
    csv(&a, &emails);
    a.stop();
    let pg_lines = pgstack().new_store();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = |name: &str, store: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&a.config).unwrap_or_default();
        let i = text.find("[store]").unwrap_or(0);
        let j = text.find("[http]").unwrap_or(text.len());
        let text = format!("{}[store]\n{store}\n{}", &text[..i], &text[j..]).replace(
            "store\"\n",
            &format!("{}\"\n", dir.path().join(name).display()),
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        path
    };
    let sled_a = a.config.clone();
    let pg = config("pg", &pg_lines);
    let sled_b = config("b", "path = \"store\"\n");
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        let out = std::process::Command::new(crate::harness::BIN)
            .args(["--json", "store", "copy", "--from"])
            .arg(from)
            .arg("--to")
            .arg(to)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "store copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_else(|e| panic!("{e}"))
    };
    let there = copy(&sled_a, &pg);
    assert_eq!(there["records"], n, "{there}");
    assert_eq!(there["outbox_items"], n, "{there}");
    assert!(there["timers"].as_u64().unwrap_or(0) >= n as u64, "{there}");
    let back = copy(&pg, &sled_b);
    for k in [
        "records",
        "outbox_items",
        "timers",
        "refs",
        "inbound",
        "suppressions",
    ] {
        assert_eq!(back[k], there[k], "{k}: {there} then {back}");
    }
    // a second copy into a store that holds records is refused
    let again = std::process::Command::new(crate::harness::BIN)
        .args(["store", "copy", "--from"])
        .arg(&sled_a)
        .arg("--to")
        .arg(&pg)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds records"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // everything equal, read through the store interface of each
    let open = |path: &std::path::Path| {
        let cfg = invited::config::Config::load(path).unwrap_or_else(|e| panic!("{e}"));
        invited::store::Store::open(&cfg).unwrap_or_else(|e| panic!("{e}"))
    };
    let dump = |s: &invited::store::Store| {
        let r = s.read();
        let mut records: Vec<String> = r
            .all_records()
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|x| serde_json::to_string(x).unwrap_or_default())
            .collect();
        records.sort();
        let mut items: Vec<String> = r
            .outbox_all()
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|x| serde_json::to_string(x).unwrap_or_default())
            .collect();
        items.sort();
        let mut timers = Vec::new();
        s.each_timer(|t| {
            timers.push(format!("{} {} {:?}", t.at_ms, t.record, t.kind));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        timers.sort();
        (records, items, timers)
    };
    let (ra, ia, ta) = dump(&open(&sled_a));
    let (rp, ip, tp) = dump(&open(&pg));
    let (rb, ib, tb) = dump(&open(&sled_b));
    assert_eq!(ra.len(), n);
    assert!(ra.iter().all(|r| r.contains("\"history\"")));
    assert!(ra == rp && ra == rb, "records (with their history) equal");
    assert!(ia == ip && ia == ib, "outbox items equal");
    assert!(ta == tp && ta == tb, "timers equal");
}
