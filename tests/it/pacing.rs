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
