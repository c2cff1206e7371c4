//! A running daemon for tests: its own temp directory, config, port-0 HTTP listener, admin
//! socket, outbox directory and inbox maildir; driven through the real binary and its edges.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_invited");

#[derive(Clone)]
pub struct Options {
    pub invitation_ttl: &'static str,
    pub verification_ttl: &'static str,
    pub reminder_after: &'static str,
    pub reply_authorize: &'static str,
    /// TOML for `[mail.outbound]` and `[mail.inbound]` (the body after each header); None = the
    /// embedded default (file outbox, maildir inbox).
    pub outbound: Option<String>,
    pub inbound: Option<String>,
    pub max_age: &'static str,
    /// Extra TOML lines for `[http]` and `[admin]` (e.g. `header_timeout = "2s"`).
    pub http_extra: String,
    pub admin_extra: String,
    /// Run the daemon under `prlimit --nofile=N:N` (soft and hard open-files limit N).
    pub nofile: Option<u64>,
    /// Extra TOML lines for `[store]` and `[mail]` (e.g. `retention = "2s"`, `templates = "tpl"`).
    pub store_extra: String,
    pub mail_extra: String,
    /// The `[store]` lines naming the backend (None: the suite's parameter, a new store each):
    /// several daemons on one PostgreSQL database share the same lines.
    pub store: Option<String>,
    /// The `[console]` section's lines (None: no console).
    pub console: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            invitation_ttl: "14d",
            verification_ttl: "7d",
            reminder_after: "10d",
            reply_authorize: "dmarc",
            outbound: None,
            inbound: None,
            max_age: "5d",
            http_extra: String::new(),
            admin_extra: String::new(),
            nofile: None,
            store_extra: String::new(),
            mail_extra: String::new(),
            store: None,
            console: None,
        }
    }
}

/// The store backend the suite runs on, a test parameter: `INVITED_TEST_STORE=postgres` with
/// `INVITED_TEST_PGSTACK=DIR` (a server `scripts/pgstack start DIR` runs; `scripts/test` starts
/// one) runs every daemon and in-process app on a database of its own there; unset, on sled.
pub struct Pg {
    env: std::collections::HashMap<String, String>,
}

pub fn pg() -> Option<&'static Pg> {
    if std::env::var("INVITED_TEST_STORE").as_deref() == Ok("postgres") {
        Some(pgstack())
    } else {
        None
    }
}

/// A PostgreSQL server for the tests that need one whatever the backend parameter (several
/// daemons on one database, `store copy`): `INVITED_TEST_PGSTACK=DIR` if set (scripts/test
/// starts one for the whole run), else one started here in a temp directory for this test
/// process, with a watcher that stops it (by pid) when the process is gone.
pub fn pgstack() -> &'static Pg {
    static PG: std::sync::OnceLock<Pg> = std::sync::OnceLock::new();
    PG.get_or_init(|| {
        let dir = match std::env::var("INVITED_TEST_PGSTACK") {
            Ok(d) => d,
            Err(_) => start_pgstack().display().to_string(),
        };
        let text = std::fs::read_to_string(format!("{dir}/env"))
            .unwrap_or_else(|e| panic!("{dir}/env: {e}"));
        let env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Pg { env }
    })
}

/// A PostgreSQL server of its own (`scripts/pgstack start` in a new temp directory), stopped by
/// a watcher when this test process is gone (or earlier by `scripts/pgstack stop DIR`).
pub fn start_pgstack() -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix("invpg")
        .tempdir_in("/tmp")
        .unwrap_or_else(|e| panic!("{e}"))
        .keep();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pgstack");
    let out = Command::new(script)
        .arg("start")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    assert!(
        out.status.success(),
        "pgstack start failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let watch = format!(
        "while kill -0 {} 2>/dev/null; do sleep 1; done; {script} stop {d} >/dev/null 2>&1; rm -rf {d}",
        std::process::id(),
        d = dir.display()
    );
    // setsid -f: the watcher runs on in its own session; this returns at once
    Command::new("setsid")
        .args(["-f", "sh", "-c", &watch])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("the pgstack watcher: {e}"));
    dir
}

impl Pg {
    /// The server in `dir` (started by [`start_pgstack`]).
    pub fn at(dir: &std::path::Path) -> Pg {
        let text = std::fs::read_to_string(dir.join("env"))
            .unwrap_or_else(|e| panic!("{}/env: {e}", dir.display()));
        Pg {
            env: text
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

/// Whether this run is on PostgreSQL (tests of the sled store itself skip, saying so).
pub fn on_postgres() -> bool {
    pg().is_some()
}

impl Pg {
    pub fn var(&self, k: &str) -> &str {
        self.env
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{k} missing from the pgstack env file"))
    }

    /// psql on the server's `postgres` database.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(format!("{}/psql", self.var("PGSTACK_BIN")))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                self.var("PGSTACK_PORT"),
                "-U",
                "invited",
            ])
            .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
            .env(
                "PGPASSWORD",
                std::fs::read_to_string(self.var("PGSTACK_PASSWORD_FILE"))
                    .unwrap_or_default()
                    .trim(),
            )
            .output()
            .unwrap_or_else(|e| panic!("psql: {e}"));
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A new empty database; its `[store]` lines.
    pub fn new_store(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        self.psql(&format!("CREATE DATABASE {name}"));
        self.store_lines(&name)
    }

    /// The `[store]` lines for the existing database `name`.
    pub fn store_lines(&self, name: &str) -> String {
        format!(
            "backend = \"postgres\"\nurl = \"postgres://invited@127.0.0.1:{}/{name}\"\npassword_file = \"{}\"\n",
            self.var("PGSTACK_PORT"),
            self.var("PGSTACK_PASSWORD_FILE")
        )
    }
}

static NEXT_DB: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// For a test of the sled store itself (its files, its format, its backups): true, and the test
/// returns, on a PostgreSQL run; it says so on stderr.
pub fn sled_only(what: &str) -> bool {
    if on_postgres() {
        eprintln!("not run on PostgreSQL: {what}");
    }
    on_postgres()
}

/// With PostgreSQL a daemon does not make its own key: the test gives it one, as ops would.
pub fn give_key(dir: &std::path::Path) {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let keys = dir.join("keys");
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&keys);
    let path = keys.join("k1.key");
    if !path.exists() {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let key: String = (0..64)
            .map(|i| char::from(b"0123456789abcdef"[(i * 7 + std::process::id() as usize) % 16]))
            .collect();
        f.write_all(key.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

pub fn config_text(o: &Options) -> String {
    let store = match (&o.store, pg()) {
        (Some(lines), _) => lines.clone(),
        (None, Some(pg)) => pg.new_store(),
        (None, None) => "path = \"store\"\ncache_capacity = 8000000\n".to_string(),
    };
    format!(
        r#"
[store]
{store}{}
[http]
listen = "127.0.0.1:0"
public_url = "http://links.invited.test"
{}
[admin]
socket = "admin.sock"
{}
[keys]
active = "k1"
files = {{ k1 = "keys/k1.key" }}
[mail]
from = "Contoso Distribution <partners@invited.test>"
reply_to = "replies@invited.test"
default_locale = "en-US"
{}
[mail.outbound]
{}
max_age = "{}"
[mail.inbound]
{}
trusted_authserv_id = "mx.invited.test"
[policy]
invitation_ttl = "{}"
verification_ttl = "{}"
reminder_after = "{}"
reply_authorize = "{}"
timer_interval = "100ms"
[[providers]]
id = "contoso-kr"
name = "Contoso Distribution Korea"
email = "ops@contoso.test"
markets = ["KR"]
[[providers]]
id = "contoso-jp"
name = "Contoso Distribution Japan"
email = "jp-ops@contoso.test"
markets = ["JP"]
{}"#,
        o.store_extra,
        o.http_extra,
        o.admin_extra,
        o.mail_extra,
        o.outbound
            .as_deref()
            .unwrap_or("transport = \"file\"\ndir = \"outbox\""),
        o.max_age,
        o.inbound
            .as_deref()
            .unwrap_or("source = \"maildir\"\ndir = \"inbox\"\npoll_interval = \"100ms\""),
        o.invitation_ttl,
        o.verification_ttl,
        o.reminder_after,
        o.reply_authorize,
        o.console
            .as_deref()
            .map(|c| format!("[console]\n{c}\n"))
            .unwrap_or_default()
    )
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// Extra environment for `serve` (e.g. CREDENTIALS_DIRECTORY, NOTIFY_SOCKET).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    pub http: String,
    /// The bound addresses of `[admin] listen` and `[http] metrics_listen`, when configured.
    pub admin_http: Option<String>,
    pub metrics: Option<String>,
    /// The console's bound address, when `[console]` is configured.
    pub console: Option<String>,
    nofile: Option<u64>,
}

pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Daemon {
    pub fn start(o: Options) -> Daemon {
        let mut d = Daemon::new(o);
        d.spawn();
        d
    }

    /// The directory and config of a daemon, not started yet (`spawn` starts it).
    pub fn new(o: Options) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("inv")
            .tempdir_in("/tmp")
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        let config = dir.path().join("invited.toml");
        let text = config_text(&o);
        std::fs::write(&config, &text).unwrap_or_else(|e| panic!("{e}"));
        if text.contains("backend = \"postgres\"") {
            give_key(dir.path());
        }
        Daemon {
            dir,
            config,
            env: Vec::new(),
            child: None,
            http: String::new(),
            admin_http: None,
            metrics: None,
            console: None,
            nofile: o.nofile,
        }
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = match self.nofile {
            Some(n) => {
                // util-linux prlimit sets the limits and execs the daemon: same pid
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {BIN}: {e}"));
        self.child = Some(child);
        wait_for("the admin socket", Duration::from_secs(30), || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("daemon exited early ({st}): {}", self.log());
                }
            }
            self.cli(&["--json", "list", "invitations"]).0.then_some(())
        });
        let st = self.api_status();
        self.http = st["http"].as_str().unwrap_or_default().to_string();
        self.admin_http = st["admin_http"].as_str().map(str::to_string);
        self.metrics = st["metrics"].as_str().map(str::to_string);
        self.console = st["console"].as_str().map(str::to_string);
    }

    /// The daemon's process id (None once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    fn api_status(&self) -> Value {
        // the status endpoint is not a CLI command; ask the socket directly
        let sock = self.dir.path().join("admin.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(invited::client::request(&sock, "GET", "/v1/status", None))
            .unwrap_or_else(|e| panic!("status: {e}"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits up to `within` for the daemon to exit; its exit status, or None
    /// if it was still running (then it is killed).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Sends a signal (e.g. "HUP") to the running daemon.
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status();
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs the CLI; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let (code, out, err) = self.cli_code(args);
        (code == Some(0), out, err)
    }

    /// Runs the CLI; returns (exit code, stdout, stderr).
    pub fn cli_code(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs the CLI with `input` on its stdin; returns (exit code, stdout, stderr).
    pub fn cli_stdin(&self, args: &[&str], input: &str) -> (Option<i32>, String, String) {
        use std::io::Write;
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The JSON answer of a command that succeeded, or of a bulk invitation that rejected some
    /// rows (exit 3: the answer is still the whole report).
    pub fn cli_ok(&self, args: &[&str]) -> Result<Value, String> {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let (code, out, err) = self.cli_code(&a);
        let bulk_with_rejects = code == Some(3) && args.contains(&"--csv");
        if code != Some(0) && !bulk_with_rejects {
            return Err(format!("{err}{out}"));
        }
        serde_json::from_str(&out).map_err(|e| format!("bad JSON {e}: {out}"))
    }

    pub fn json(&self, args: &[&str]) -> Value {
        self.cli_ok(args).unwrap_or_else(|e| {
            panic!(
                "invited {args:?} failed: {e}\n--- daemon log ---\n{}",
                self.log()
            )
        })
    }

    /// `invited invite` of one reseller for contoso-kr (country KR); returns the JSON answer.
    pub fn invite(&self, email: &str, company: &str) -> Value {
        self.json(&[
            "invite",
            "--provider",
            "contoso-kr",
            "--email",
            email,
            "--company",
            company,
            "--country",
            "KR",
        ])
    }

    /// Invites one reseller for contoso-kr and waits for its email; returns (record id, mail).
    pub fn invite_one(&self, email: &str, company: &str) -> (String, Mail) {
        let r = self.invite(email, company);
        let id = r["id"].as_str().unwrap_or_default().to_string();
        let m = self
            .wait_mails(email, "", 1)
            .pop()
            .unwrap_or_else(|| panic!("no mail to {email}"));
        (id, m)
    }

    /// Invites every address (company "Reseller <address>", KR) from one CSV; returns the JSON answer.
    pub fn invite_csv(&self, emails: &[String]) -> Value {
        let csv = self.dir.path().join("bulk.csv");
        let mut text = String::from("email,company,country\n");
        for e in emails {
            text.push_str(&format!("{e},Reseller {e},KR\n"));
        }
        std::fs::write(&csv, text).unwrap_or_else(|e| panic!("{e}"));
        self.json(&[
            "invite",
            "--provider",
            "contoso-kr",
            "--csv",
            csv.to_str().unwrap_or_default(),
        ])
    }

    /// Waits until every outbox message has been handed to the transport.
    pub fn wait_all_sent(&self, timeout: Duration) {
        wait_for("the outbox to drain", timeout, || {
            let o = self.json(&["outbox"]);
            o.as_array()
                .is_some_and(|a| a.iter().all(|i| i["state"] == "sent"))
                .then_some(())
        });
    }

    /// The newest history entry of a record.
    pub fn last_transition(&self, id: &str) -> Value {
        self.json(&["show", id])["history"]
            .as_array()
            .and_then(|h| h.last().cloned())
            .unwrap_or_default()
    }

    pub fn state(&self, id: &str) -> String {
        self.json(&["show", id])["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn wait_state(&self, id: &str, state: &str) {
        wait_for(
            &format!("{id} to become {state}"),
            Duration::from_secs(20),
            || (self.state(id) == state).then_some(()),
        );
    }

    pub fn outbox_dir(&self) -> PathBuf {
        self.dir.path().join("outbox")
    }

    /// Every written message to `to` of `kind`, oldest first.
    pub fn mails(&self, to: &str, kind_subject_hint: Option<&str>) -> Vec<Mail> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.outbox_dir()) else {
            return out;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "eml") {
                continue;
            }
            let Ok(raw) = std::fs::read(&p) else { continue };
            let m = Mail::parse(&raw, p.metadata().and_then(|m| m.modified()).ok());
            if m.to.eq_ignore_ascii_case(to)
                && kind_subject_hint.is_none_or(|h| m.subject.contains(h))
            {
                out.push(m);
            }
        }
        out.sort_by_key(|m| m.written);
        out
    }

    /// Waits until the outbox holds `n` messages to `to` whose subject contains `hint`.
    pub fn wait_mails(&self, to: &str, hint: &str, n: usize) -> Vec<Mail> {
        wait_for(
            &format!("{n} mail(s) to {to} ({hint})"),
            Duration::from_secs(20),
            || {
                let m = self.mails(to, Some(hint));
                (m.len() >= n).then_some(m)
            },
        )
    }

    /// Drops a message into the inbox maildir the way an MDA would (tmp/ then rename to new/).
    pub fn deliver(&self, name: &str, raw: &str) {
        let inbox = self.dir.path().join("inbox");
        let tmp = inbox.join("tmp").join(name);
        std::fs::write(&tmp, raw).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&tmp, inbox.join("new").join(name)).unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn wait_inbound(&self, message_id: &str) -> Value {
        wait_for(
            &format!("inbound {message_id}"),
            Duration::from_secs(20),
            || {
                self.json(&["inbound"])
                    .as_array()
                    .and_then(|a| a.iter().find(|i| i["message_id"] == message_id).cloned())
            },
        )
    }

    pub fn get(&self, path: &str) -> Response {
        http(&self.http, "GET", path, None)
    }
    pub fn head(&self, path: &str) -> Response {
        http(&self.http, "HEAD", path, None)
    }
    pub fn post(&self, path: &str, form: &[(&str, &str)]) -> Response {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", urlenc(k), urlenc(v)))
            .collect::<Vec<_>>()
            .join("&");
        http(&self.http, "POST", path, Some(&body))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn urlenc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A deliberately small HTTP/1.1 client (Connection: close), so tests see exactly what went over the wire.
pub fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> Response {
    http_with(addr, method, path, &[], body)
}

/// [`http`] with extra request headers (a cookie).
pub fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: Option<&str>,
) -> Response {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let body = body.unwrap_or("");
    let ct = if method == "POST"
        && !extra
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        "Content-Type: application/x-www-form-urlencoded\r\n"
    } else {
        ""
    };
    let extra: String = extra.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{ct}{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    Response {
        status,
        headers,
        body: body.to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub message_id: String,
    pub reply_to: String,
    pub text: String,
    pub html: String,
    pub auto_submitted: String,
    /// `List-Unsubscribe` and `List-Unsubscribe-Post`, unfolded and trimmed ("" when absent)
    pub list_unsubscribe: String,
    pub list_unsubscribe_post: String,
    pub written: Option<std::time::SystemTime>,
}

impl Mail {
    pub fn parse(raw: &[u8], written: Option<std::time::SystemTime>) -> Mail {
        let m = mail_parser::MessageParser::default()
            .parse(raw)
            .unwrap_or_else(|| panic!("unparsable eml"));
        let addr = |a: Option<&mail_parser::Address>| {
            a.and_then(|a| a.first())
                .and_then(|a| a.address())
                .unwrap_or_default()
                .to_string()
        };
        Mail {
            to: addr(m.to()),
            subject: m.subject().unwrap_or_default().to_string(),
            message_id: m.message_id().unwrap_or_default().to_string(),
            reply_to: addr(m.reply_to()),
            text: m.body_text(0).map(|t| t.into_owned()).unwrap_or_default(),
            html: m.body_html(0).map(|t| t.into_owned()).unwrap_or_default(),
            auto_submitted: m
                .header_raw("Auto-Submitted")
                .unwrap_or_default()
                .trim()
                .to_string(),
            list_unsubscribe: unfold(m.header_raw("List-Unsubscribe")),
            list_unsubscribe_post: unfold(m.header_raw("List-Unsubscribe-Post")),
            written,
        }
    }

    /// The URIs of `List-Unsubscribe` (RFC 2369: `<uri>, <uri>`), in order.
    pub fn unsubscribe_uris(&self) -> Vec<String> {
        self.list_unsubscribe
            .split(',')
            .map(|u| {
                u.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// The path of the https (here: the configured public URL's) `List-Unsubscribe` link
    /// (`/u/<token>`).
    pub fn unsubscribe_path(&self) -> String {
        self.unsubscribe_uris()
            .iter()
            .find_map(|u| {
                u.strip_prefix("http://links.invited.test")
                    .map(str::to_string)
            })
            .unwrap_or_else(|| panic!("no unsubscribe link in {:?}", self.list_unsubscribe))
    }

    /// The address and subject of the `List-Unsubscribe` mailto.
    pub fn unsubscribe_mailto(&self) -> (String, String) {
        let uri = self
            .unsubscribe_uris()
            .into_iter()
            .find(|u| u.starts_with("mailto:"))
            .unwrap_or_else(|| panic!("no mailto in {:?}", self.list_unsubscribe));
        let rest = &uri["mailto:".len()..];
        let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
        let subject = query
            .split('&')
            .find_map(|p| p.strip_prefix("subject="))
            .unwrap_or_default();
        (addr.to_string(), subject.to_string())
    }

    /// The path of the link in the message (`/t/<token>`).
    pub fn link_path(&self) -> String {
        let i = self
            .text
            .find("/t/")
            .unwrap_or_else(|| panic!("no link in {}", self.text));
        let rest = &self.text[i..];
        let end = rest[3..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .map(|e| e + 3)
            .unwrap_or(rest.len());
        rest[..end].to_string()
    }
}

/// A raw header value unfolded (RFC 5322 folding whitespace made one space) and trimmed.
fn unfold(v: Option<&str>) -> String {
    v.unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn reply(
    from: &str,
    to_mail: &Mail,
    message_id: &str,
    body: &str,
    extra_headers: &str,
) -> String {
    format!(
        "Return-Path: <{from}>\r\nAuthentication-Results: mx.invited.test; dkim=pass header.d=example; spf=pass; dmarc=pass (p=none) header.from={dom}\r\nFrom: Contact <{from}>\r\nTo: {to}\r\nSubject: Re: {subj}\r\nMessage-ID: <{message_id}>\r\nIn-Reply-To: <{irt}>\r\nReferences: <{irt}>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n{extra_headers}\r\n{body}\r\n",
        dom = from.split('@').nth(1).unwrap_or(""),
        to = to_mail.reply_to,
        subj = to_mail.subject,
        irt = to_mail.message_id,
    )
}

/// An enrollment file for `invited enroll --file` (a Korean reseller, primary contact `email`).
pub fn enrollment_file(d: &Daemon, email: &str) -> String {
    let path = d.dir.path().join(format!("enroll-{email}.toml"));
    let text = format!(
        r#"company = "Fabrikam Korea Ltd."
country = "KR"
locale = "en-US"
[address]
street = "123 Teheran-ro"
city = "Seoul"
postal_code = "06236"
[primary_contact]
name = "Kim Minji"
email = "{email}"
phone = "+82 2 555 0100"
[support]
email = "support@fabrikam.test"
phone = "+82 2 555 0199"
[mpn]
id = "6543210"
country = "KR"
"#
    );
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path.to_string_lossy().into_owned()
}
