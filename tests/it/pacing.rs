//! Provider limits: a daily limit stops sending for the UTC day, and `outbox --summary` says what
//! is queued and when it will have gone out at the configured pace.

use std::time::Duration;

use crate::harness::{wait_for, Daemon, Options};

#[test]
fn the_daily_limit_holds_the_rest_for_the_next_day() {
    let d = Daemon::start(Options {
        outbound: Some(
            "transport = \"file\"\ndir = \"outbox\"\nrate_per_minute = 1200\ndaily_limit = 5"
                .into(),
        ),
        ..Options::default()
    });
    let emails: Vec<String> = (0..8).map(|i| format!("p{i}@fabrikam.test")).collect();
    let bulk = d.invite_csv(&emails);
    assert_eq!(bulk["queued"], 8);
    assert!(
        bulk["estimated_finish"].is_string(),
        "a bulk run reports the finish: {bulk}"
    );
    let sent = |d: &Daemon| {
        d.json(&["outbox"])
            .as_array()
            .map(|a| a.iter().filter(|i| i["state"] == "sent").count())
            .unwrap_or(0)
    };
    wait_for("the day's 5 sent", Duration::from_secs(20), || {
        (sent(&d) >= 5).then_some(())
    });
    // well past the pace (1,200 a minute = 20 a second): nothing more goes out today
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sent(&d), 5);
    wait_for("the limit in the log", Duration::from_secs(10), || {
        d.log().contains("daily_limit reached").then_some(())
    });
    let s = d.json(&["outbox", "--summary"]);
    assert_eq!(s["queued"], 3, "{s}");
    assert_eq!(s["sent_today"], 5, "{s}");
    assert_eq!(s["daily_limit"], 5, "{s}");
    assert_eq!(s["rate_per_minute"], 1200, "{s}");
    let finish = s["estimated_finish"].as_str().unwrap_or_default();
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    assert!(finish.starts_with(&tomorrow), "the rest goes tomorrow: {s}");
    let (ok, text, _) = d.cli(&["outbox", "--summary"]);
    assert!(ok && text.contains("3 queued, 5 sent today"), "{text}");
}

/// 150 invitations at `rate_per_minute = 60` with `daily_limit = 100`, on an injected clock that
/// starts three minutes before a UTC midnight and moves with tokio's paused time: about one a
/// second goes out, exactly 100 on the first day, the other 50 after midnight.
#[test]
fn a_day_of_pacing_on_an_injected_clock() {
    use chrono::TimeZone;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let text = crate::harness::config_text(&Options {
        outbound: Some(
            "transport = \"file\"\ndir = \"outbox\"\nrate_per_minute = 60\ndaily_limit = 100"
                .into(),
        ),
        ..Options::default()
    });
    let path = dir.path().join("invited.toml");
    std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
    let cfg = invited::config::Config::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let start = chrono::Utc
        .with_ymd_and_hms(2026, 12, 2, 23, 57, 0)
        .single()
        .unwrap_or_else(|| panic!("a time"));
    let midnight = start + chrono::Duration::minutes(3);
    let sent = rt.block_on(async {
        crate::harness::give_key(path.parent().unwrap_or(&path));
        let shared = invited::daemon::load_shared(cfg.clone()).unwrap_or_else(|e| panic!("{e}"));
        let store = invited::store::Store::open(&cfg).unwrap_or_else(|e| panic!("{e}"));
        let app = Arc::new(invited::app::App::new(store, shared));
        for i in 0..150 {
            let row = invited::rules::InviteRow {
                email: format!("paced{i}@fabrikam.test"),
                company: "Fabrikam".into(),
                country: "KR".into(),
                ..Default::default()
            };
            app.invite("contoso-kr", row, invited::model::Channel::Cli, start)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let transport = Arc::new(
            invited::sender::Transport::from_config(&cfg.outbound, cfg.concurrency, 100)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let shutdown = tokio_util::sync::CancellationToken::new();
        let clock = Arc::new(invited::pacing::TokioClock::starting_at(start));
        let sender = tokio::spawn(invited::sender::run_with_clock(
            app.clone(),
            transport,
            shutdown.clone(),
            clock,
        ));
        // at most two simulated hours, in simulated seconds
        let mut sent = Vec::new();
        for _ in 0..7200 {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            sent = app
                .store
                .read()
                .outbox_all()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|i| i.sent_at)
                .collect::<Vec<_>>();
            if sent.len() >= 150 {
                break;
            }
        }
        shutdown.cancel();
        let _ = sender.await;
        sent
    });
    let mut sent = sent;
    sent.sort();
    assert_eq!(sent.len(), 150, "every invitation went out");
    let first_day: Vec<_> = sent.iter().filter(|t| **t < midnight).collect();
    let next_day: Vec<_> = sent.iter().filter(|t| **t >= midnight).collect();
    assert_eq!(
        first_day.len(),
        100,
        "exactly the daily limit on the first day"
    );
    assert_eq!(next_day.len(), 50, "the rest after midnight");
    // about one a second, never faster than 60 a minute
    for day in [&first_day, &next_day] {
        let gaps: Vec<i64> = day
            .windows(2)
            .map(|w| (*w[1] - *w[0]).num_milliseconds())
            .collect();
        let min = gaps.iter().copied().min().unwrap_or(0);
        let mean = gaps.iter().sum::<i64>() / gaps.len().max(1) as i64;
        eprintln!(
            "# pacing: {} sends, gap min {min} ms, mean {mean} ms",
            day.len()
        );
        assert!(min >= 900, "faster than 60 a minute: a gap of {min} ms");
        assert!(
            (950..=1500).contains(&mean),
            "about one a second: mean gap {mean} ms"
        );
    }
    // the first day's sends took about 100 s: the limit, not the clock, held the rest
    assert!(*first_day[99] < start + chrono::Duration::seconds(130));
    assert!(*next_day[0] < midnight + chrono::Duration::seconds(5));
}
