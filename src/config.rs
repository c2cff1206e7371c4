//! Configuration in two steps: the raw TOML shape (unknown keys rejected) and the validated `Config`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::{check_text, Email};

pub const DEFAULT_CONFIG: &str = "config/invited.toml";
pub const LOCALES: &[&str] = &["en-US", "ko-KR"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    store: RawStore,
    http: RawHttp,
    admin: RawAdmin,
    console: Option<RawConsole>,
    keys: RawKeys,
    mail: RawMail,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    providers: Vec<RawProvider>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    backend: Option<String>,
    path: Option<String>,
    cache_capacity: Option<u64>,
    retention: Option<String>,
    url: Option<String>,
    password_file: Option<String>,
    pool_size: Option<usize>,
    lease: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: String,
    public_url: String,
    body_limit: Option<usize>,
    header_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<usize>,
    metrics_listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    socket: String,
    listen: Option<String>,
    token_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    listen: Option<String>,
    public_url: Option<String>,
    session_idle: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    active: String,
    files: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMail {
    from: String,
    reply_to: String,
    default_locale: Option<String>,
    templates: Option<String>,
    outbound: RawOutbound,
    inbound: RawInbound,
    dkim: Option<RawDkim>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDkim {
    domain: String,
    selector: String,
    algorithm: String,
    key_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbound {
    transport: String,
    dir: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    tls: Option<String>,
    username: Option<String>,
    password_file: Option<String>,
    concurrency: Option<usize>,
    rate_per_second: Option<u32>,
    rate_per_minute: Option<u32>,
    daily_limit: Option<u32>,
    max_messages_per_connection: Option<u32>,
    max_age: Option<String>,
    ca_file: Option<String>,
    auth: Option<String>,
    mechanism: Option<String>,
    oauth2: Option<RawOAuth2>,
}

/// `[mail.inbound.oauth2]` / `[mail.outbound.oauth2]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOAuth2 {
    source: String,
    token_url: Option<String>,
    client_id: Option<String>,
    client_secret_file: Option<String>,
    scope: Option<String>,
    token_file: Option<String>,
    key_file: Option<String>,
    subject: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    source: String,
    dir: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    tls: Option<String>,
    username: Option<String>,
    password_file: Option<String>,
    mailbox: Option<String>,
    processed_mailbox: Option<String>,
    idle: Option<bool>,
    poll_interval: Option<String>,
    trusted_authserv_id: Option<String>,
    ca_file: Option<String>,
    auth: Option<String>,
    mechanism: Option<String>,
    oauth2: Option<RawOAuth2>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    invitation_ttl: Option<String>,
    verification_ttl: Option<String>,
    reminder_after: Option<String>,
    reply_authorize: Option<String>,
    webmail_domains: Option<Vec<String>>,
    timer_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    id: String,
    name: String,
    email: String,
    markets: Vec<String>,
    #[serde(default)]
    admin_access: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    None,
    StartTls,
    Tls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyAuthorize {
    Dmarc,
    Token,
    Off,
}

#[derive(Clone)]
pub struct Secret(pub String);
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `[mail.dkim] algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkimAlgorithm {
    RsaSha256,
    Ed25519Sha256,
}

/// `[mail.dkim]`: sign every outbound message as `domain` with the key published under
/// `selector`. The key itself is read by `dkim::Signer::load` (at start and on reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimConfig {
    pub domain: String,
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// A private CA (PEM) to trust besides the public roots.
    pub ca_file: Option<PathBuf>,
    /// `auth = "oauth2"`: AUTH with a bearer token for `username` instead of a password.
    pub oauth2: Option<(OAuth2Mechanism, Box<OAuth2Config>)>,
}

#[derive(Debug, Clone)]
pub enum Outbound {
    File { dir: PathBuf },
    Smtp(SmtpConfig),
}

/// The SASL mechanism that carries an OAuth2 bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuth2Mechanism {
    /// Google's and Microsoft's `XOAUTH2`.
    XOAuth2,
    /// RFC 7628 `OAUTHBEARER`.
    OAuthBearer,
}

/// Where the bearer tokens come from (`[mail.inbound.oauth2] source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuth2Source {
    /// A token some other tool keeps fresh in a file; re-read when the server refuses it.
    Static { token_file: PathBuf },
    /// OAuth2 client credentials grant (Microsoft Entra: an app with `IMAP.AccessAsApp`).
    ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret_file: PathBuf,
        scope: String,
    },
    /// RFC 7523 JWT bearer grant (a Google service account with domain-wide delegation).
    /// `token_url`: `None` means the key file's `token_uri`.
    JwtBearer {
        key_file: PathBuf,
        subject: String,
        scope: String,
        token_url: Option<String>,
    },
}

/// `[mail.*.oauth2]` validated. Secrets are paths here; `oauth` reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Config {
    /// `mail.inbound.oauth2` or `mail.outbound.oauth2`: what errors and logs name.
    pub key: &'static str,
    pub source: OAuth2Source,
    /// A private CA (PEM) trusted for `token_url` besides the public roots (the section's `ca_file`).
    pub ca_file: Option<PathBuf>,
}

/// How a mailbox login proves who it is (`auth`).
#[derive(Debug, Clone)]
pub enum MailAuth {
    Password {
        password_file: PathBuf,
    },
    OAuth2 {
        mechanism: OAuth2Mechanism,
        oauth2: Box<OAuth2Config>,
    },
}

#[derive(Debug, Clone)]
pub struct ImapConfig {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    pub username: String,
    pub auth: MailAuth,
    pub mailbox: String,
    pub processed_mailbox: String,
    pub idle: bool,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub enum Inbound {
    Maildir { dir: PathBuf },
    Imap(ImapConfig),
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub id: String,
    pub name: String,
    pub email: Email,
    pub markets: Vec<String>,
    pub admin_access: bool,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// `(key, NAME)` of every `credential:NAME` that could not be resolved because
    /// `$CREDENTIALS_DIRECTORY` is not set (see [`Config::check_credentials`]).
    pub missing_credentials: Vec<(String, String)>,
    /// `[store] backend`: the embedded sled store at `store_path` (the default), or PostgreSQL.
    pub store_backend: StoreBackend,
    /// `[store] path` (sled only; empty with PostgreSQL).
    pub store_path: PathBuf,
    pub cache_capacity: u64,
    /// `[store] retention`: sent outbox items, their reply references and inbound outcomes
    /// older than this are pruned (the record's history keeps each Message-ID).
    pub retention: Duration,
    pub http_listen: SocketAddr,
    pub public_url: String,
    pub body_limit: usize,
    /// A request head must arrive in full within this (from `accept`, or from its first byte
    /// on a kept-alive connection).
    pub header_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request, and how long a response
    /// write may make no progress; also bounds the arrival of a request body.
    pub idle_timeout: Duration,
    /// The public listener's connection cap before it is clamped below the open-files limit.
    pub max_connections: usize,
    /// A listener serving only `GET /metrics`.
    pub metrics_listen: Option<SocketAddr>,
    pub admin_socket: PathBuf,
    pub admin_listen: Option<SocketAddr>,
    pub admin_token_file: Option<PathBuf>,
    /// `[console]`: the staff web console on its own listener; `None` = no console.
    pub console: Option<ConsoleConfig>,
    pub key_active: String,
    pub key_files: BTreeMap<String, PathBuf>,
    pub from_name: String,
    pub from: Email,
    pub reply_to: Email,
    pub default_locale: String,
    pub templates_dir: Option<PathBuf>,
    pub outbound: Outbound,
    /// `None`: messages are not DKIM-signed.
    pub dkim: Option<DkimConfig>,
    pub concurrency: usize,
    pub rate_per_second: u32,
    /// 0 = no limit (Exchange Online allows a mailbox 30)
    pub rate_per_minute: u32,
    /// messages per UTC day; 0 = no limit
    pub daily_limit: u32,
    /// an SMTP connection is closed and a new one opened after this many messages
    pub max_messages_per_connection: u32,
    pub max_age: Duration,
    pub inbound: Inbound,
    pub poll_interval: Duration,
    pub trusted_authserv_id: String,
    pub invitation_ttl: Duration,
    pub verification_ttl: Duration,
    pub reminder_after: Duration,
    pub reply_authorize: ReplyAuthorize,
    pub webmail_domains: Vec<String>,
    pub timer_interval: Duration,
    pub providers: Vec<Provider>,
}

/// `[console]` (DESIGN "Console").
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleConfig {
    pub listen: SocketAddr,
    /// where staff reach it (behind a reverse proxy); https here gives the cookies `Secure`
    pub public_url: Option<String>,
    /// a session ends after this long without a request
    pub session_idle: Duration,
}

impl ConsoleConfig {
    /// Whether the session cookie gets `Secure`.
    pub fn secure_cookies(&self) -> bool {
        self.public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    }
}

/// A config error names the key (and the file) it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
}

pub fn default_webmail_domains() -> Vec<String> {
    [
        "gmail.com",
        "googlemail.com",
        "yahoo.*",
        "ymail.com",
        "icloud.com",
        "me.com",
        "mac.com",
        "aol.com",
        "outlook.com",
        "hotmail.*",
        "live.*",
        "msn.com",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `"30s"`, `"10m"`, `"2h"`, `"14d"`, `"500ms"`.
/// The smallest daemon configuration with everything under `dir` (file transport, maildir
/// inbound, one key `k1`), `store` being the `[store]` table's lines: for in-process benches and
/// tests, which append their `[[providers]]`.
pub fn minimal_toml(dir: &std::path::Path, store: &str) -> String {
    let d = dir.display();
    format!(
        r#"[store]
{store}
[http]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:8080"
[admin]
socket = "{d}/admin.sock"
[keys]
active = "k1"
files = {{ k1 = "{d}/k1.key" }}
[mail]
from = "Contoso Distribution <partners@invited.test>"
reply_to = "replies@invited.test"
[mail.outbound]
transport = "file"
dir = "{d}/outbox"
[mail.inbound]
source = "maildir"
dir = "{d}/inbox"
"#
    )
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit (use ms, s, m, h or d, e.g. \"30s\")"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like \"30s\", \"10m\" or \"14d\""))?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => {
            return Err(format!(
                "{s:?} has an unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    };
    Ok(Duration::from_millis(ms))
}

/// Where the records live (`[store] backend`).
#[derive(Debug, Clone, PartialEq)]
pub enum StoreBackend {
    /// sled under `store.path`: one daemon per store.
    Sled,
    /// PostgreSQL: several daemons may share the database.
    Postgres(PostgresStore),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PostgresStore {
    /// `postgres://user@host:port/db` (a password in the URL works, `password_file` is better)
    pub url: String,
    pub password_file: Option<PathBuf>,
    pub pool_size: usize,
    /// how long one daemon holds a claimed outbox item
    pub lease: Duration,
}

impl Config {
    /// "sled at PATH" or "postgres at HOST:PORT/DB" (no password), for messages.
    pub fn store_backend_name(&self) -> String {
        match &self.store_backend {
            StoreBackend::Sled => format!("sled at {}", self.store_path.display()),
            StoreBackend::Postgres(p) => {
                let c = p.url.parse::<tokio_postgres::Config>().ok();
                let host = c
                    .as_ref()
                    .and_then(|c| c.get_hosts().first().cloned())
                    .map(|h| match h {
                        tokio_postgres::config::Host::Tcp(h) => h,
                        tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                    })
                    .unwrap_or_default();
                let port = c
                    .as_ref()
                    .and_then(|c| c.get_ports().first().copied())
                    .unwrap_or(5432);
                let db = c
                    .as_ref()
                    .and_then(|c| c.get_dbname().map(str::to_string))
                    .unwrap_or_default();
                format!("postgres at {host}:{port}/{db}")
            }
        }
    }
}

impl StoreBackend {
    pub fn is_embedded(&self) -> bool {
        matches!(self, StoreBackend::Sled)
    }
}

/// A secret value naming a systemd credential instead of a path.
pub const CREDENTIAL_PREFIX: &str = "credential:";

impl Config {
    /// The settings that differ between `self` (running) and `new` but are only read when the
    /// daemon starts (listeners, the store, the transports and the inbound source): a reload
    /// keeps their old values and names them. Everything else (providers, policy, mail
    /// addresses, templates, keys, the DMARC authserv-id, max_age) takes effect at once.
    /// The sending pace the outbound transport is configured for.
    pub fn pace(&self) -> crate::pacing::Pace {
        crate::pacing::Pace {
            per_second: self.rate_per_second,
            per_minute: self.rate_per_minute,
            per_day: self.daily_limit,
        }
    }

    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let dbg = |v: &dyn std::fmt::Debug| format!("{v:?}");
        let checks: [(&'static str, bool); 16] = [
            ("console", self.console != new.console),
            ("store.backend", self.store_backend != new.store_backend),
            ("store.path", self.store_path != new.store_path),
            (
                "store.cache_capacity",
                self.cache_capacity != new.cache_capacity,
            ),
            ("http.listen", self.http_listen != new.http_listen),
            ("http.body_limit", self.body_limit != new.body_limit),
            (
                "http.header_timeout / idle_timeout / max_connections",
                (self.header_timeout, self.idle_timeout, self.max_connections)
                    != (new.header_timeout, new.idle_timeout, new.max_connections),
            ),
            (
                "http.metrics_listen",
                self.metrics_listen != new.metrics_listen,
            ),
            ("admin.socket", self.admin_socket != new.admin_socket),
            (
                "admin.listen / admin.token_file",
                (self.admin_listen, &self.admin_token_file)
                    != (new.admin_listen, &new.admin_token_file),
            ),
            ("mail.outbound", dbg(&self.outbound) != dbg(&new.outbound)),
            (
                "mail.outbound.concurrency",
                self.concurrency != new.concurrency,
            ),
            (
                "mail.outbound.rate_per_second",
                self.rate_per_second != new.rate_per_second,
            ),
            ("mail.inbound", dbg(&self.inbound) != dbg(&new.inbound)),
            (
                "mail.inbound.poll_interval",
                self.poll_interval != new.poll_interval,
            ),
            (
                "policy.timer_interval",
                self.timer_interval != new.timer_interval,
            ),
        ];
        checks
            .into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(key, _)| key)
            .collect()
    }

    /// For `serve` and `check-config`, which read the secrets: every `credential:NAME` must be
    /// resolvable.
    pub fn check_credentials(&self) -> Result<(), ConfigError> {
        match self.missing_credentials.first() {
            None => Ok(()),
            Some((key, name)) => Err(ConfigError::Invalid {
                path: self.path.display().to_string(),
                key: key.clone(),
                message: format!(
                    "\"credential:{name}\" needs $CREDENTIALS_DIRECTORY, which systemd sets for a unit with LoadCredential={name}:… (run the daemon under systemd, or give a file path)"
                ),
            }),
        }
    }

    /// The file named by `--config`, else `INVITED_CONFIG`, else `config/invited.toml`.
    pub fn locate(flag: Option<&Path>) -> PathBuf {
        if let Some(p) = flag {
            return p.to_path_buf();
        }
        match std::env::var_os("INVITED_CONFIG") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(DEFAULT_CONFIG),
        }
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.display().to_string(),
            cause,
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: p.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let base = path
            .parent()
            .map(|d| {
                if d.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    d
                }
            })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let bad = |key: &str, message: String| ConfigError::Invalid {
            path: p.clone(),
            key: key.to_string(),
            message,
        };
        let resolve = |s: &str| -> PathBuf {
            let pb = PathBuf::from(s);
            if pb.is_absolute() {
                pb
            } else {
                base.join(pb)
            }
        };
        // A secret may be named "credential:NAME": systemd's LoadCredential= puts it in
        // $CREDENTIALS_DIRECTORY. Without that variable it cannot be found; that is an error for
        // `serve` and `check-config` (`check_credentials`), not for client commands, which never
        // read secrets.
        let missing_credentials = std::cell::RefCell::new(Vec::new());
        let secret = |key: &str, s: &str| -> Result<PathBuf, ConfigError> {
            let Some(name) = s.strip_prefix(CREDENTIAL_PREFIX) else {
                return Ok(resolve(s));
            };
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(bad(
                    key,
                    format!("{s:?}: a credential name is one file name"),
                ));
            }
            match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(dir) => Ok(PathBuf::from(dir).join(name)),
                None => {
                    missing_credentials
                        .borrow_mut()
                        .push((key.to_string(), name.to_string()));
                    Ok(PathBuf::from(s))
                }
            }
        };
        let dur = |key: &str, v: &Option<String>, default: &str| -> Result<Duration, ConfigError> {
            parse_duration(v.as_deref().unwrap_or(default)).map_err(|m| bad(key, m))
        };
        let tls = |key: &str, v: &Option<String>, default: Tls| -> Result<Tls, ConfigError> {
            match v.as_deref() {
                None => Ok(default),
                Some("none") => Ok(Tls::None),
                Some("starttls") => Ok(Tls::StartTls),
                Some("tls") => Ok(Tls::Tls),
                Some(o) => Err(bad(
                    key,
                    format!("{o:?} is not one of \"none\", \"starttls\", \"tls\""),
                )),
            }
        };

        let mechanism = |key: &str, v: &Option<String>| match v.as_deref() {
            None | Some("xoauth2") => Ok(OAuth2Mechanism::XOAuth2),
            Some("oauthbearer") => Ok(OAuth2Mechanism::OAuthBearer),
            Some(o) => Err(bad(
                key,
                format!("{o:?} is not \"xoauth2\" or \"oauthbearer\""),
            )),
        };
        let oauth2 = |key: &'static str,
                      r: Option<&RawOAuth2>,
                      ca_file: Option<PathBuf>|
         -> Result<OAuth2Config, ConfigError> {
            let r = r.ok_or_else(|| bad(key, "is required with auth = \"oauth2\"".into()))?;
            let k = |name: &str| format!("{key}.{name}");
            let need = |name: &str, v: &Option<String>| -> Result<String, ConfigError> {
                v.clone().filter(|s| !s.trim().is_empty()).ok_or_else(|| {
                    bad(&k(name), format!("is required for source = {:?}", r.source))
                })
            };
            let unused = |names: &[(&str, bool)]| -> Result<(), ConfigError> {
                match names.iter().find(|(_, set)| *set) {
                    Some((name, _)) => Err(bad(
                        &k(name),
                        format!("is not used with source = {:?}", r.source),
                    )),
                    None => Ok(()),
                }
            };
            let url = |v: String| -> Result<String, ConfigError> {
                check_token_url(&v).map_err(|m| bad(&k("token_url"), m))?;
                Ok(v)
            };
            let source = match r.source.as_str() {
                "static" => {
                    unused(&[
                        ("token_url", r.token_url.is_some()),
                        ("client_id", r.client_id.is_some()),
                        ("client_secret_file", r.client_secret_file.is_some()),
                        ("scope", r.scope.is_some()),
                        ("key_file", r.key_file.is_some()),
                        ("subject", r.subject.is_some()),
                    ])?;
                    OAuth2Source::Static {
                        token_file: secret(&k("token_file"), &need("token_file", &r.token_file)?)?,
                    }
                }
                "client_credentials" => {
                    unused(&[
                        ("token_file", r.token_file.is_some()),
                        ("key_file", r.key_file.is_some()),
                        ("subject", r.subject.is_some()),
                    ])?;
                    OAuth2Source::ClientCredentials {
                        token_url: url(need("token_url", &r.token_url)?)?,
                        client_id: need("client_id", &r.client_id)?,
                        client_secret_file: secret(
                            &k("client_secret_file"),
                            &need("client_secret_file", &r.client_secret_file)?,
                        )?,
                        scope: need("scope", &r.scope)?,
                    }
                }
                "jwt_bearer" => {
                    unused(&[
                        ("token_file", r.token_file.is_some()),
                        ("client_id", r.client_id.is_some()),
                        ("client_secret_file", r.client_secret_file.is_some()),
                    ])?;
                    OAuth2Source::JwtBearer {
                        key_file: secret(&k("key_file"), &need("key_file", &r.key_file)?)?,
                        subject: need("subject", &r.subject)?,
                        scope: need("scope", &r.scope)?,
                        token_url: r.token_url.clone().map(url).transpose()?,
                    }
                }
                other => {
                    return Err(bad(
                        &k("source"),
                        format!(
                            "{other:?} is not \"static\", \"client_credentials\" or \"jwt_bearer\""
                        ),
                    ))
                }
            };
            Ok(OAuth2Config {
                key,
                source,
                ca_file,
            })
        };

        let http_listen: SocketAddr = raw
            .http
            .listen
            .parse()
            .map_err(|e| bad("http.listen", format!("{:?}: {e}", raw.http.listen)))?;
        let public_url = raw.http.public_url.trim_end_matches('/').to_string();
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            return Err(bad(
                "http.public_url",
                "must start with http:// or https://".into(),
            ));
        }
        let positive = |key: &str, v: &Option<String>, default: &str| {
            let d = dur(key, v, default)?;
            if d.is_zero() || d > Duration::from_secs(3600) {
                return Err(bad(key, "must be more than 0 and at most 1h".into()));
            }
            Ok(d)
        };
        let header_timeout = positive("http.header_timeout", &raw.http.header_timeout, "10s")?;
        let idle_timeout = positive("http.idle_timeout", &raw.http.idle_timeout, "60s")?;
        let max_connections = raw.http.max_connections.unwrap_or(512);
        if max_connections == 0 || max_connections > 65_536 {
            return Err(bad(
                "http.max_connections",
                format!("{max_connections} is not between 1 and 65536"),
            ));
        }
        let metrics_listen: Option<SocketAddr> = match &raw.http.metrics_listen {
            Some(l) => Some(
                l.parse()
                    .map_err(|e| bad("http.metrics_listen", format!("{l:?}: {e}")))?,
            ),
            None => None,
        };
        if metrics_listen.is_some_and(|m| m == http_listen && m.port() != 0) {
            return Err(bad(
                "http.metrics_listen",
                "must not be the public http.listen address: metrics are not public".into(),
            ));
        }
        let console = match &raw.console {
            None => None,
            Some(c) => {
                let l = c.listen.as_deref().unwrap_or("127.0.0.1:8090");
                let listen: SocketAddr = l
                    .parse()
                    .map_err(|e| bad("console.listen", format!("{l:?}: {e}")))?;
                if listen == http_listen && listen.port() != 0 {
                    return Err(bad(
                        "console.listen",
                        "must not be the public http.listen address: the console has its own listener".into(),
                    ));
                }
                if metrics_listen.is_some_and(|m| m == listen && m.port() != 0) {
                    return Err(bad(
                        "console.listen",
                        "must not be http.metrics_listen".into(),
                    ));
                }
                if let Some(u) = &c.public_url {
                    if !(u.starts_with("https://") || u.starts_with("http://")) {
                        return Err(bad(
                            "console.public_url",
                            format!("{u:?}: must start with https:// or http://"),
                        ));
                    }
                }
                let session_idle = dur("console.session_idle", &c.session_idle, "30m")?;
                if session_idle < Duration::from_secs(60)
                    || session_idle > Duration::from_secs(7 * 86_400)
                {
                    return Err(bad(
                        "console.session_idle",
                        "must be between 1m and 7d".into(),
                    ));
                }
                Some(ConsoleConfig {
                    listen,
                    public_url: c.public_url.clone(),
                    session_idle,
                })
            }
        };
        let admin_listen = match &raw.admin.listen {
            Some(l) => Some(
                l.parse()
                    .map_err(|e| bad("admin.listen", format!("{l:?}: {e}")))?,
            ),
            None => None,
        };
        if admin_listen.is_some() && raw.admin.token_file.is_none() {
            return Err(bad(
                "admin.token_file",
                "is required when admin.listen is set".into(),
            ));
        }
        if raw.keys.files.is_empty() {
            return Err(bad("keys.files", "lists no key".into()));
        }
        if !raw.keys.files.contains_key(&raw.keys.active) {
            return Err(bad(
                "keys.active",
                format!("{:?} is not listed in keys.files", raw.keys.active),
            ));
        }
        for kid in raw.keys.files.keys() {
            if kid.is_empty()
                || kid.len() > 32
                || !kid
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(bad(
                    "keys.files",
                    format!("key id {kid:?} must be 1-32 letters, digits, - or _"),
                ));
            }
        }
        let key_files = raw
            .keys
            .files
            .iter()
            .map(|(k, v)| Ok((k.clone(), secret(&format!("keys.files.{k}"), v)?)))
            .collect::<Result<_, ConfigError>>()?;

        let (from_name, from) = parse_mailbox(&raw.mail.from).map_err(|m| bad("mail.from", m))?;
        let reply_to = Email::parse(&raw.mail.reply_to).map_err(|m| bad("mail.reply_to", m))?;
        if reply_to.local().contains('+') {
            return Err(bad(
                "mail.reply_to",
                "must not contain '+': the daemon adds +<ref> itself".into(),
            ));
        }
        let default_locale = raw
            .mail
            .default_locale
            .clone()
            .unwrap_or_else(|| "en-US".into());
        if !LOCALES.contains(&default_locale.as_str()) {
            return Err(bad(
                "mail.default_locale",
                format!("{default_locale:?} is not one of {LOCALES:?}"),
            ));
        }

        let o = &raw.mail.outbound;
        let smtp_oauth2 = match o.auth.as_deref().unwrap_or("password") {
            "password" if o.oauth2.is_none() && o.mechanism.is_none() => None,
            "password" => {
                return Err(bad(
                    "mail.outbound.oauth2",
                    "is only read with auth = \"oauth2\"".into(),
                ))
            }
            "oauth2" => {
                if o.username.as_deref().is_none_or(|u| u.trim().is_empty()) {
                    return Err(bad(
                        "mail.outbound.username",
                        "is required with auth = \"oauth2\" (the mailbox the token is for)".into(),
                    ));
                }
                if o.password_file.is_some() {
                    return Err(bad(
                        "mail.outbound.password_file",
                        "is not used with auth = \"oauth2\"".into(),
                    ));
                }
                Some((
                    mechanism("mail.outbound.mechanism", &o.mechanism)?,
                    Box::new(oauth2(
                        "mail.outbound.oauth2",
                        o.oauth2.as_ref(),
                        o.ca_file.as_deref().map(resolve),
                    )?),
                ))
            }
            other => {
                return Err(bad(
                    "mail.outbound.auth",
                    format!("{other:?} is not \"password\" or \"oauth2\""),
                ))
            }
        };
        let outbound = match o.transport.as_str() {
            "file" => Outbound::File {
                dir: resolve(o.dir.as_deref().ok_or_else(|| {
                    bad(
                        "mail.outbound.dir",
                        "is required for transport = \"file\"".into(),
                    )
                })?),
            },
            "smtp" => Outbound::Smtp(SmtpConfig {
                host: o.host.clone().ok_or_else(|| {
                    bad(
                        "mail.outbound.host",
                        "is required for transport = \"smtp\"".into(),
                    )
                })?,
                port: o.port.unwrap_or(587),
                tls: tls("mail.outbound.tls", &o.tls, Tls::StartTls)?,
                username: o.username.clone(),
                password_file: o
                    .password_file
                    .as_deref()
                    .map(|f| secret("mail.outbound.password_file", f))
                    .transpose()?,
                ca_file: o.ca_file.as_deref().map(resolve),
                oauth2: smtp_oauth2,
            }),
            other => {
                return Err(bad(
                    "mail.outbound.transport",
                    format!("{other:?} is not \"file\" or \"smtp\""),
                ))
            }
        };
        let dkim = match &raw.mail.dkim {
            None => None,
            Some(d) => Some(DkimConfig {
                domain: dns_name(&d.domain).map_err(|m| bad("mail.dkim.domain", m))?,
                selector: dns_name(&d.selector).map_err(|m| bad("mail.dkim.selector", m))?,
                algorithm: match d.algorithm.as_str() {
                    "rsa-sha256" => DkimAlgorithm::RsaSha256,
                    "ed25519-sha256" => DkimAlgorithm::Ed25519Sha256,
                    other => {
                        return Err(bad(
                            "mail.dkim.algorithm",
                            format!("{other:?} is not \"rsa-sha256\" or \"ed25519-sha256\""),
                        ))
                    }
                },
                key_file: secret("mail.dkim.key_file", &d.key_file)?,
            }),
        };
        let concurrency = o.concurrency.unwrap_or(4);
        if concurrency == 0 || concurrency > 256 {
            return Err(bad(
                "mail.outbound.concurrency",
                "must be between 1 and 256".into(),
            ));
        }
        let rate_per_second = o.rate_per_second.unwrap_or(0);
        let rate_per_minute = o.rate_per_minute.unwrap_or(0);
        let daily_limit = o.daily_limit.unwrap_or(0);
        let max_messages_per_connection = o.max_messages_per_connection.unwrap_or(100);
        if max_messages_per_connection == 0 {
            return Err(bad(
                "mail.outbound.max_messages_per_connection",
                "must be at least 1".into(),
            ));
        }

        let i = &raw.mail.inbound;
        let inbound = match i.source.as_str() {
            "maildir" => Inbound::Maildir {
                dir: resolve(i.dir.as_deref().ok_or_else(|| {
                    bad(
                        "mail.inbound.dir",
                        "is required for source = \"maildir\"".into(),
                    )
                })?),
            },
            "imap" => Inbound::Imap(ImapConfig {
                host: i.host.clone().ok_or_else(|| {
                    bad(
                        "mail.inbound.host",
                        "is required for source = \"imap\"".into(),
                    )
                })?,
                port: i.port.unwrap_or(993),
                tls: tls("mail.inbound.tls", &i.tls, Tls::Tls)?,
                username: i.username.clone().ok_or_else(|| {
                    bad(
                        "mail.inbound.username",
                        "is required for source = \"imap\"".into(),
                    )
                })?,
                auth: match i.auth.as_deref().unwrap_or("password") {
                    "password" => {
                        if i.oauth2.is_some() {
                            return Err(bad(
                                "mail.inbound.oauth2",
                                "is only read with auth = \"oauth2\"".into(),
                            ));
                        }
                        MailAuth::Password {
                            password_file: secret(
                                "mail.inbound.password_file",
                                i.password_file.as_deref().ok_or_else(|| {
                                    bad(
                                        "mail.inbound.password_file",
                                        "is required for source = \"imap\" with auth = \"password\""
                                            .into(),
                                    )
                                })?,
                            )?,
                        }
                    }
                    "oauth2" => {
                        if i.password_file.is_some() {
                            return Err(bad(
                                "mail.inbound.password_file",
                                "is not used with auth = \"oauth2\"".into(),
                            ));
                        }
                        MailAuth::OAuth2 {
                            mechanism: mechanism("mail.inbound.mechanism", &i.mechanism)?,
                            oauth2: Box::new(oauth2(
                                "mail.inbound.oauth2",
                                i.oauth2.as_ref(),
                                i.ca_file.as_deref().map(resolve),
                            )?),
                        }
                    }
                    other => {
                        return Err(bad(
                            "mail.inbound.auth",
                            format!("{other:?} is not \"password\" or \"oauth2\""),
                        ))
                    }
                },
                mailbox: i.mailbox.clone().unwrap_or_else(|| "INBOX".into()),
                processed_mailbox: i
                    .processed_mailbox
                    .clone()
                    .unwrap_or_else(|| "Processed".into()),
                idle: i.idle.unwrap_or(true),
                ca_file: i.ca_file.as_deref().map(resolve),
            }),
            other => {
                return Err(bad(
                    "mail.inbound.source",
                    format!("{other:?} is not \"maildir\" or \"imap\""),
                ))
            }
        };

        let pol = &raw.policy;
        let reply_authorize = match pol.reply_authorize.as_deref().unwrap_or("dmarc") {
            "dmarc" => ReplyAuthorize::Dmarc,
            "token" => ReplyAuthorize::Token,
            "off" => ReplyAuthorize::Off,
            other => {
                return Err(bad(
                    "policy.reply_authorize",
                    format!("{other:?} is not \"dmarc\", \"token\" or \"off\""),
                ))
            }
        };
        let webmail_domains = pol
            .webmail_domains
            .clone()
            .unwrap_or_else(default_webmail_domains)
            .into_iter()
            .map(|d| d.trim().to_ascii_lowercase())
            .collect();

        let mut providers = Vec::new();
        for (n, rp) in raw.providers.iter().enumerate() {
            let key = |k: &str| format!("providers[{n}].{k}");
            if rp.id.is_empty()
                || !rp
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                return Err(bad(
                    &key("id"),
                    format!("{:?} must be letters, digits, '-', '_' or '.'", rp.id),
                ));
            }
            if providers.iter().any(|p: &Provider| p.id == rp.id) {
                return Err(bad(&key("id"), format!("{:?} is listed twice", rp.id)));
            }
            check_text(&rp.name).map_err(|m| bad(&key("name"), m))?;
            let email = Email::parse(&rp.email).map_err(|m| bad(&key("email"), m))?;
            let mut markets = Vec::new();
            for m in &rp.markets {
                let m = m.trim().to_ascii_uppercase();
                if !is_country(&m) {
                    return Err(bad(
                        &key("markets"),
                        format!("{m:?} is not an ISO 3166-1 alpha-2 code"),
                    ));
                }
                markets.push(m);
            }
            providers.push(Provider {
                id: rp.id.clone(),
                name: rp.name.clone(),
                email,
                markets,
                admin_access: rp.admin_access.unwrap_or(true),
            });
        }

        let trusted_authserv_id = i
            .trusted_authserv_id
            .clone()
            .unwrap_or_else(|| reply_to.domain().to_string());
        let invitation_ttl = dur("policy.invitation_ttl", &pol.invitation_ttl, "14d")?;
        let verification_ttl = dur("policy.verification_ttl", &pol.verification_ttl, "7d")?;
        let reminder_after = dur("policy.reminder_after", &pol.reminder_after, "10d")?;
        let (store_backend, store_path) = match raw.store.backend.as_deref().unwrap_or("sled") {
            "sled" => {
                for (key, set) in [
                    ("store.url", raw.store.url.is_some()),
                    ("store.password_file", raw.store.password_file.is_some()),
                    ("store.pool_size", raw.store.pool_size.is_some()),
                    ("store.lease", raw.store.lease.is_some()),
                ] {
                    if set {
                        return Err(bad(key, "is for backend = \"postgres\" only".into()));
                    }
                }
                let path = raw.store.path.as_deref().ok_or_else(|| {
                    bad("store.path", "is required for backend = \"sled\"".into())
                })?;
                (StoreBackend::Sled, resolve(path))
            }
            "postgres" => {
                if raw.store.path.is_some() || raw.store.cache_capacity.is_some() {
                    let key = if raw.store.path.is_some() {
                        "store.path"
                    } else {
                        "store.cache_capacity"
                    };
                    return Err(bad(key, "is for backend = \"sled\" only".into()));
                }
                let url = raw.store.url.clone().ok_or_else(|| {
                    bad("store.url", "is required for backend = \"postgres\"".into())
                })?;
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(bad(
                        "store.url",
                        "must start with postgres:// or postgresql://".into(),
                    ));
                }
                if url.parse::<tokio_postgres::Config>().is_err() {
                    // the parser's message may quote the URL, password and all
                    return Err(bad(
                        "store.url",
                        "is not a PostgreSQL connection URL".into(),
                    ));
                }
                let pool_size = raw.store.pool_size.unwrap_or(8);
                if !(2..=256).contains(&pool_size) {
                    return Err(bad("store.pool_size", format!("{pool_size} is not between 2 and 256 (a transaction may read on a second connection)")));
                }
                let lease = dur("store.lease", &raw.store.lease, "60s")?;
                if lease < Duration::from_secs(5) || lease > Duration::from_secs(3600) {
                    return Err(bad("store.lease", "must be between 5s and 1h".into()));
                }
                let password_file = raw
                    .store
                    .password_file
                    .as_deref()
                    .map(|f| secret("store.password_file", f))
                    .transpose()?;
                (
                    StoreBackend::Postgres(PostgresStore {
                        url,
                        password_file,
                        pool_size,
                        lease,
                    }),
                    PathBuf::new(),
                )
            }
            other => {
                return Err(bad(
                    "store.backend",
                    format!("{other:?}: must be \"sled\" or \"postgres\""),
                ))
            }
        };
        Ok(Config {
            path: path.to_path_buf(),
            store_backend,
            store_path,
            cache_capacity: raw.store.cache_capacity.unwrap_or(16 * 1024 * 1024),
            retention: dur("store.retention", &raw.store.retention, "30d")?,
            http_listen,
            public_url,
            body_limit: raw.http.body_limit.unwrap_or(64 * 1024),
            header_timeout,
            idle_timeout,
            max_connections,
            metrics_listen,
            admin_socket: resolve(&raw.admin.socket),
            admin_listen,
            console,
            admin_token_file: raw
                .admin
                .token_file
                .as_deref()
                .map(|f| secret("admin.token_file", f))
                .transpose()?,
            missing_credentials: missing_credentials.take(),
            key_active: raw.keys.active.clone(),
            key_files,
            from_name,
            from,
            reply_to,
            default_locale,
            templates_dir: raw.mail.templates.as_deref().map(resolve),
            outbound,
            dkim,
            concurrency,
            rate_per_second,
            rate_per_minute,
            daily_limit,
            max_messages_per_connection,
            max_age: dur("mail.outbound.max_age", &o.max_age, "5d")?,
            inbound,
            poll_interval: dur("mail.inbound.poll_interval", &i.poll_interval, "30s")?,
            trusted_authserv_id,
            invitation_ttl,
            verification_ttl,
            reminder_after,
            reply_authorize,
            webmail_domains,
            timer_interval: dur("policy.timer_interval", &pol.timer_interval, "1s")?,
            providers,
        })
    }

    pub fn provider(&self, id: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.id == id)
    }

    /// Whether a domain is a web-based mail service (patterns like `yahoo.*` match any suffix).
    pub fn is_webmail(&self, domain: &str) -> bool {
        let d = domain.to_ascii_lowercase();
        self.webmail_domains
            .iter()
            .any(|w| match w.strip_suffix(".*") {
                Some(stem) => d
                    .strip_prefix(stem)
                    .is_some_and(|rest| rest.starts_with('.')),
                None => d == *w,
            })
    }

    pub fn locale(&self, requested: Option<&str>) -> String {
        match requested {
            Some(l) if LOCALES.contains(&l) => l.to_string(),
            _ => self.default_locale.clone(),
        }
    }
}

/// A token endpoint is https, or http on a loopback host (tests, a local token broker).
pub fn check_token_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("{url:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http")
            if host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback()) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "{url:?} must be https:// (http:// only on a loopback host)"
        )),
    }
}

pub fn is_country(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase())
}

/// A DKIM domain or selector: dot-separated labels of letters, digits and inner hyphens
/// (underscores too, which some selectors use), lowercased.
fn dns_name(s: &str) -> Result<String, String> {
    let name = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "{s:?} is not a DNS name (labels of letters, digits and inner hyphens, joined by dots)"
        ));
    }
    Ok(name)
}

/// `Name <addr@domain>` or a bare address.
fn parse_mailbox(s: &str) -> Result<(String, Email), String> {
    check_text(s)?;
    match (s.find('<'), s.rfind('>')) {
        (Some(a), Some(b)) if a < b => {
            let name = s[..a].trim().trim_matches('"').to_string();
            Ok((name, Email::parse(&s[a + 1..b])?))
        }
        _ => Ok((String::new(), Email::parse(s)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../config/invited.toml");

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/invited/invited.toml"))
    }

    #[test]
    fn shipped_default_parses_and_resolves_paths_against_its_directory() {
        let c = parse(SHIPPED).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.store_path, PathBuf::from("/etc/invited/../var/store"));
        assert!(matches!(c.outbound, Outbound::File { .. }));
        assert!(matches!(c.inbound, Inbound::Maildir { .. }));
        assert_eq!(c.reply_authorize, ReplyAuthorize::Dmarc);
        assert!(!c.providers.is_empty());
        assert_eq!(c.header_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.max_connections, 512);
        assert_eq!(c.metrics_listen, None);
    }

    #[test]
    fn console_section() {
        // the development config has one on 127.0.0.1:8090
        let shipped = parse(SHIPPED).unwrap_or_else(|e| panic!("{e}")).console;
        assert_eq!(shipped.map(|c| c.listen.port()), Some(8090));
        let start = SHIPPED
            .find("[console]")
            .unwrap_or_else(|| panic!("[console]"));
        let end = SHIPPED[start..]
            .find("\n[")
            .map_or(SHIPPED.len(), |e| start + e + 1);
        let without = format!("{}{}", &SHIPPED[..start], &SHIPPED[end..]);
        assert_eq!(
            parse(&without).unwrap_or_else(|e| panic!("{e}")).console,
            None
        );
        let with = |body: &str| format!("{without}\n[console]\n{body}\n");
        let c = parse(&with("")).unwrap_or_else(|e| panic!("{e}"));
        let c = c.console.expect("console");
        assert_eq!(c.listen, "127.0.0.1:8090".parse().expect("addr"));
        assert_eq!(c.session_idle, Duration::from_secs(30 * 60));
        assert!(!c.secure_cookies());
        let c = parse(&with(
            "listen = \"127.0.0.1:9999\"\npublic_url = \"https://partners-admin.contoso.test\"\nsession_idle = \"10m\"",
        ))
        .unwrap_or_else(|e| panic!("{e}"))
        .console
        .expect("console");
        assert!(c.secure_cookies());
        assert_eq!(c.session_idle, Duration::from_secs(600));
        for (body, key) in [
            ("listen = \"nowhere\"", "console.listen"),
            ("listen = \"127.0.0.1:8080\"", "console.listen"),
            ("public_url = \"ftp://x\"", "console.public_url"),
            ("session_idle = \"5s\"", "console.session_idle"),
            ("session_idle = \"30d\"", "console.session_idle"),
            ("sesion_idle = \"30m\"", "sesion_idle"),
        ] {
            let err = parse(&with(body))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{body}: error {err:?} should name {key}");
        }
    }

    #[test]
    fn http_limits_and_metrics_listen() {
        let with = |extra: &str| SHIPPED.replace("[http]\n", &format!("[http]\n{extra}\n"));
        let c = parse(&with(
            "header_timeout = \"2s\"\nidle_timeout = \"500ms\"\nmax_connections = 100\nmetrics_listen = \"127.0.0.1:9090\"",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.header_timeout, Duration::from_secs(2));
        assert_eq!(c.idle_timeout, Duration::from_millis(500));
        assert_eq!(c.max_connections, 100);
        assert_eq!(c.metrics_listen, "127.0.0.1:9090".parse().ok());
        let cases = [
            ("header_timeout = \"10\"", "http.header_timeout"),
            ("header_timeout = \"0s\"", "http.header_timeout"),
            ("idle_timeout = \"soon\"", "http.idle_timeout"),
            ("idle_timeout = \"2d\"", "http.idle_timeout"),
            ("max_connections = 0", "http.max_connections"),
            ("max_connections = 1000000", "http.max_connections"),
            ("metrics_listen = \"everywhere\"", "http.metrics_listen"),
            ("metrics_listen = \"127.0.0.1:8080\"", "http.metrics_listen"),
        ];
        for (extra, key) in cases {
            let err = parse(&with(extra))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains(key),
                "{extra}: error {err:?} should name {key}"
            );
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (SHIPPED.replace("[store]", "[store]\nbogus = 1"), "bogus"),
            (
                SHIPPED.replace("invitation_ttl = \"14d\"", "invitation_ttl = \"14 days\""),
                "policy.invitation_ttl",
            ),
            (
                SHIPPED.replace("listen = \"127.0.0.1:8080\"", "listen = \"nowhere\""),
                "http.listen",
            ),
            (
                SHIPPED.replace("transport = \"file\"", "transport = \"pigeon\""),
                "mail.outbound.transport",
            ),
            (
                SHIPPED.replace("reply_authorize = \"dmarc\"", "reply_authorize = \"maybe\""),
                "policy.reply_authorize",
            ),
            (
                SHIPPED.replace("active = \"k1\"", "active = \"k9\""),
                "keys.active",
            ),
            (
                SHIPPED.replace("markets = [\"KR\"]", "markets = [\"Korea\"]"),
                "providers[0].markets",
            ),
        ];
        for (text, key) in cases {
            let err = parse(&text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "error {err:?} should name {key}");
        }
    }

    #[test]
    fn dkim_block_is_typed_and_its_errors_name_the_key() {
        let with =
            |block: &str| SHIPPED.replace("[mail.inbound]", &format!("{block}\n[mail.inbound]"));
        let block = "[mail.dkim]\ndomain = \"Invited.Test.\"\nselector = \"s2026\"\nalgorithm = \"ed25519-sha256\"\nkey_file = \"dkim.pem\"";
        assert_eq!(parse(SHIPPED).map(|c| c.dkim).ok(), Some(None));
        let c = parse(&with(block)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.dkim,
            Some(DkimConfig {
                domain: "invited.test".into(),
                selector: "s2026".into(),
                algorithm: DkimAlgorithm::Ed25519Sha256,
                key_file: PathBuf::from("/etc/invited/dkim.pem"),
            })
        );
        let c = parse(&with(&block.replace("dkim.pem", "credential:dkim")))
            .unwrap_or_else(|e| panic!("{e}"));
        let key_file = c.dkim.map(|d| d.key_file).unwrap_or_default();
        match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => assert_eq!(key_file, PathBuf::from(dir).join("dkim")),
            None => assert_eq!(
                c.missing_credentials,
                vec![("mail.dkim.key_file".to_string(), "dkim".to_string())]
            ),
        }
        let cases = [
            (
                block.replace("ed25519-sha256", "ed25519"),
                "mail.dkim.algorithm",
            ),
            (
                block.replace("Invited.Test.", "invited test"),
                "mail.dkim.domain",
            ),
            (block.replace("Invited.Test.", ""), "mail.dkim.domain"),
            (block.replace("s2026", "-s"), "mail.dkim.selector"),
            (
                block.replace("\"dkim.pem\"", "\"credential:a/b\""),
                "mail.dkim.key_file",
            ),
            (block.replace("key_file = \"dkim.pem\"", ""), "key_file"),
            (format!("{block}\nheaders = [\"From\"]"), "headers"),
        ];
        for (b, key) in cases {
            let err = parse(&with(&b))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{b}: error {err:?} should name {key}");
        }
    }

    #[test]
    fn oauth2_blocks_are_typed_and_their_errors_name_the_key() {
        // `extra` goes into [mail.inbound] (now IMAP); a "[mail.inbound.oauth2]" part of it goes
        // after that section's own keys.
        let with = |extra: &str| {
            let (keys, table) = extra
                .split_once("[mail.inbound.oauth2]")
                .map(|(k, t)| (k.to_string(), format!("[mail.inbound.oauth2]{t}\n")))
                .unwrap_or((extra.to_string(), String::new()));
            SHIPPED
                .replace(
                    "[mail.inbound]\nsource = \"maildir\"                        # or \"imap\"\ndir = \"../var/inbox\"",
                    &format!("[mail.inbound]\nsource = \"imap\"\nhost = \"imap.example\"\nusername = \"partners@contoso.com\"\n{keys}"),
                )
                .replace("\n[policy]", &format!("\n{table}\n[policy]"))
        };
        let cc = "auth = \"oauth2\"\n[mail.inbound.oauth2]\nsource = \"client_credentials\"\ntoken_url = \"https://login.microsoftonline.com/t/oauth2/v2.0/token\"\nclient_id = \"id\"\nclient_secret_file = \"secret.txt\"\nscope = \"https://outlook.office365.com/.default\"";
        let c = parse(&with(cc)).unwrap_or_else(|e| panic!("{e}"));
        let Inbound::Imap(imap_cfg) = c.inbound else {
            panic!("not imap")
        };
        let MailAuth::OAuth2 { mechanism, oauth2 } = imap_cfg.auth else {
            panic!("not oauth2")
        };
        assert_eq!(mechanism, OAuth2Mechanism::XOAuth2);
        assert!(
            matches!(oauth2.source, OAuth2Source::ClientCredentials { ref client_secret_file, .. } if client_secret_file == Path::new("/etc/invited/secret.txt"))
        );
        let err = |text: String| {
            parse(&text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        // http only on loopback
        let e = err(with(&cc.replace("https://login", "http://login")));
        assert!(
            e.contains("`mail.inbound.oauth2.token_url`") && e.contains("https"),
            "{e}"
        );
        assert!(parse(&with(&cc.replace(
            "https://login.microsoftonline.com",
            "http://127.0.0.1:8080"
        )))
        .is_ok());
        let e = err(with(&cc.replace("client_id = \"id\"\n", "")));
        assert!(
            e.contains("`mail.inbound.oauth2.client_id`: is required"),
            "{e}"
        );
        let e = err(with(&cc.replace("client_credentials", "password_grant")));
        assert!(e.contains("`mail.inbound.oauth2.source`"), "{e}");
        let e = err(with(&format!("{cc}\nkey_file = \"k.json\"")));
        assert!(
            e.contains("`mail.inbound.oauth2.key_file`: is not used"),
            "{e}"
        );
        let e = err(with(&cc.replace(
            "auth = \"oauth2\"",
            "auth = \"oauth2\"\nmechanism = \"plain\"",
        )));
        assert!(e.contains("`mail.inbound.mechanism`"), "{e}");
        let e = err(with("auth = \"oauth2\""));
        assert!(e.contains("`mail.inbound.oauth2`: is required"), "{e}");
        let jwt = "auth = \"oauth2\"\nmechanism = \"oauthbearer\"\n[mail.inbound.oauth2]\nsource = \"jwt_bearer\"\nkey_file = \"sa.json\"\nsubject = \"partners@contoso.com\"\nscope = \"https://mail.google.com/\"";
        let c = parse(&with(jwt)).unwrap_or_else(|e| panic!("{e}"));
        let Inbound::Imap(imap_cfg) = c.inbound else {
            panic!("not imap")
        };
        let MailAuth::OAuth2 { mechanism, oauth2 } = imap_cfg.auth else {
            panic!("not oauth2")
        };
        assert_eq!(mechanism, OAuth2Mechanism::OAuthBearer);
        assert!(matches!(
            oauth2.source,
            OAuth2Source::JwtBearer {
                token_url: None,
                ..
            }
        ));
        let st = "auth = \"oauth2\"\n[mail.inbound.oauth2]\nsource = \"static\"\ntoken_file = \"credential:imap-token\"";
        assert!(parse(&with(st)).is_ok());
        // password auth still wants its file
        let e = err(with(""));
        assert!(e.contains("`mail.inbound.password_file`"), "{e}");
    }

    #[test]
    fn smtp_oauth2_is_typed_and_needs_a_username() {
        let with = |keys: &str, table: &str| {
            SHIPPED
                .replace(
                    "transport = \"file\"                        # or \"smtp\"\ndir = \"../var/outbox\"",
                    &format!("transport = \"smtp\"\nhost = \"smtp.office365.com\"\n{keys}"),
                )
                .replace("\n[policy]", &format!("\n{table}\n[policy]"))
        };
        let table =
            "[mail.outbound.oauth2]\nsource = \"static\"\ntoken_file = \"credential:smtp-token\"";
        let c = parse(&with(
            "username = \"partners@contoso.com\"\nauth = \"oauth2\"\nmechanism = \"oauthbearer\"",
            table,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let Outbound::Smtp(smtp) = c.outbound else {
            panic!("not smtp")
        };
        let Some((mechanism, oauth2)) = smtp.oauth2 else {
            panic!("no oauth2")
        };
        assert_eq!(mechanism, OAuth2Mechanism::OAuthBearer);
        assert_eq!(oauth2.key, "mail.outbound.oauth2");
        let err = |text: String| {
            parse(&text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let e = err(with("auth = \"oauth2\"", table));
        assert!(e.contains("`mail.outbound.username`"), "{e}");
        let e = err(with(
            "username = \"u@contoso.com\"\npassword_file = \"pw\"\nauth = \"oauth2\"",
            table,
        ));
        assert!(
            e.contains("`mail.outbound.password_file`: is not used"),
            "{e}"
        );
        let e = err(with("username = \"u@contoso.com\"\nauth = \"oauth2\"", ""));
        assert!(e.contains("`mail.outbound.oauth2`: is required"), "{e}");
        let e = err(with(
            "username = \"u@contoso.com\"\npassword_file = \"pw\"",
            table,
        ));
        assert!(e.contains("`mail.outbound.oauth2`: is only read"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("14d"), Ok(Duration::from_secs(14 * 86400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1w").is_err());
    }

    #[test]
    fn webmail_patterns() {
        let c = parse(SHIPPED).unwrap_or_else(|e| panic!("{e}"));
        for d in [
            "gmail.com",
            "yahoo.co.kr",
            "hotmail.fr",
            "live.com",
            "naver.com",
        ] {
            assert!(c.is_webmail(d), "{d}");
        }
        for d in ["fabrikam.test", "yahoofinance.com", "mylive.com"] {
            assert!(!c.is_webmail(d), "{d}");
        }
    }
}
