//! The command line: `serve`, `check-config`, and the admin commands, which are clients of the
//! running daemon's admin API. Human text by default, one JSON document with `--json`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use crate::client::{request, ClientError};
use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "invited",
    version,
    about = "Email-driven invitations, enrollments and provider authorizations"
)]
pub struct Cli {
    /// Config file (default: $INVITED_CONFIG, else config/invited.toml)
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print one JSON document instead of text
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon
    Serve,
    /// Validate the configuration and print a summary
    CheckConfig,
    /// Invite a reseller (one, or a CSV of many) on behalf of a provider
    Invite {
        #[arg(long)]
        provider: String,
        #[arg(long, conflicts_with = "csv", required_unless_present = "csv")]
        email: Option<String>,
        #[arg(long, required_unless_present = "csv")]
        company: Option<String>,
        #[arg(long, required_unless_present = "csv")]
        country: Option<String>,
        #[arg(long)]
        contact_name: Option<String>,
        #[arg(long)]
        locale: Option<String>,
        /// CSV with a header row: email,company,country[,contact_name,locale]
        #[arg(long, value_name = "FILE")]
        csv: Option<PathBuf>,
    },
    /// Submit an enrollment from a TOML or JSON file
    Enroll {
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Approve or reject an enrollment in review
    Review {
        #[command(subcommand)]
        decision: Review,
    },
    /// Invite a customer for a reseller and its provider at once
    InviteCustomer {
        #[arg(long)]
        provider: String,
        #[arg(long)]
        reseller_email: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        company: String,
        #[arg(long)]
        locale: Option<String>,
    },
    /// List invitations, enrollments, customers, a provider's resellers or a reseller's providers
    List {
        /// invitations | enrollments | customers | resellers | providers
        what: String,
        #[arg(long)]
        provider: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        reseller_email: Option<String>,
    },
    /// Show one record with its history
    Show { id: String },
    /// Send a fresh link; the old one stops working
    Resend { id: String },
    /// Revoke an invitation or authorization
    Revoke { id: String },
    /// Remove a provider's admin access (the authorization stays)
    RemoveAdminAccess { id: String },
    /// The outbox (`--dead` for the dead-letter list), or `outbox retry ID`
    Outbox {
        #[arg(long)]
        dead: bool,
        /// Queued, sent today, dead, the configured pace and the estimated finish
        #[arg(long, conflicts_with = "dead")]
        summary: bool,
        #[command(subcommand)]
        op: Option<OutboxOp>,
    },
    /// The suppression list (unsubscribed or hard-bounced addresses, per provider), or
    /// `suppress remove` to lift one
    Suppress {
        #[command(subcommand)]
        op: SuppressOp,
    },
    /// Every inbound message and what became of it
    Inbound {
        #[arg(long)]
        outcome: Option<String>,
    },
    /// Send a test email through the outbox and the configured transport, and wait for the result
    SendTestEmail { address: String },
    /// Write a consistent copy of the running daemon's store to FILE
    Backup { file: PathBuf },
    /// Restore a backup into DIR (the daemon stopped; DIR is what `[store] path` will name)
    Restore {
        file: PathBuf,
        #[arg(long, value_name = "DIR")]
        into: PathBuf,
    },
    /// The store itself: `store copy --from CONFIG --to CONFIG` moves everything between
    /// backends (the daemons on both stopped)
    Store {
        #[command(subcommand)]
        op: StoreOp,
    },
    /// Staff accounts of the web console: `staff add EMAIL --role admin|reviewer|viewer`,
    /// `staff list`, `staff remove EMAIL`, `staff reset-password EMAIL`
    Staff {
        #[command(subcommand)]
        op: StaffOp,
    },
    /// Export every record (formula-safe CSV or JSON)
    Export {
        #[arg(long, default_value = "csv")]
        format: String,
    },
}

#[derive(Subcommand)]
enum Review {
    Approve {
        id: String,
    },
    Reject {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum StoreOp {
    /// Copy every record, outbox item, timer, reference, inbound outcome and suppression from
    /// the store CONFIG_A names into the empty store CONFIG_B names
    Copy {
        #[arg(long, value_name = "CONFIG_A")]
        from: PathBuf,
        #[arg(long, value_name = "CONFIG_B")]
        to: PathBuf,
    },
}

#[derive(Subcommand)]
enum StaffOp {
    /// Add an account; the password is read from the terminal (typed twice, not shown) or, with
    /// --password-stdin, as the first line of standard input
    Add {
        email: String,
        #[arg(long, value_parser = ["admin", "reviewer", "viewer"])]
        role: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Every account with its role (never a password or hash)
    List,
    /// Remove an account; its console sessions end
    Remove { email: String },
    /// Set a new password; the account's console sessions end
    ResetPassword {
        email: String,
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
enum OutboxOp {
    Retry { id: String },
}

#[derive(Subcommand)]
enum SuppressOp {
    /// Every suppressed address (of one provider with --provider)
    List {
        #[arg(long)]
        provider: Option<String>,
    },
    /// Lift a suppression: that provider's invitations go to the address again
    Remove {
        #[arg(long)]
        provider: String,
        #[arg(long)]
        email: String,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("INVITED_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sled=warn,hyper=warn"));
    // Whatever INVITED_LOG asks for, these libraries stay at info: at debug handlebars logs the
    // rendered text (with the link token), lettre the whole message and the AUTH line, the IMAP
    // stack the LOGIN command.
    for quiet in ["handlebars", "lettre", "async_imap", "imap_proto"] {
        if let Ok(d) = format!("{quiet}=info").parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match std::env::var("INVITED_LOG_FORMAT").as_deref() {
        // one JSON object per line, for log shippers
        Ok("json") => builder.json().flatten_event(true).init(),
        // under systemd: journald adds the time; a "<N>" prefix gives each line its priority
        Ok("text") | Err(_) if std::env::var_os("JOURNAL_STREAM").is_some() => builder
            .event_format(JournaldPrefix(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_level(false)
                    .with_ansi(false),
            ))
            .init(),
        Ok("text") | Err(_) => builder
            // colour codes only for a person at a terminal, never into a file or the journal
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        Ok(other) => {
            eprintln!(
                "error: INVITED_LOG_FORMAT={:?} is not text or json",
                crate::text::escape_controls(other)
            );
            return ExitCode::FAILURE;
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json_out = cli.json;
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if json_out {
                println!("{}", json!({"error": format!("{e:#}")}));
            }
            eprintln!("error: {}", crate::text::escape_controls(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// Prefixes each log line with its syslog priority as `<3>`…`<7>` (sd-daemon(3)), which journald
/// reads from a service's stderr.
struct JournaldPrefix<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournaldPrefix<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Exit code of a bulk invitation in which some rows were rejected (the good rows are queued).
const EXIT_ROWS_REJECTED: u8 = 3;

/// An id given on the command line, checked before the daemon is asked: record and outbox ids
/// are 26 base32 characters as the lists print them (or 32 hex digits). A README placeholder
/// such as `<enrollment-id>` is named as such instead of failing deep inside the request.
fn id_arg<'a>(what: &str, id: &'a str) -> anyhow::Result<&'a str> {
    if crate::model::RecordId::parse(id).is_some() {
        return Ok(id.trim());
    }
    anyhow::bail!(
        "{what} {:?} is not an id: ids are 26 letters and digits as `invited list …` prints them (or 32 hex digits)",
        crate::text::escape_controls(id)
    )
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let path = Config::locate(cli.config.as_deref());
    if let Command::Serve = cli.command {
        // before anything is created: store, outbox, keys and socket are the daemon's alone
        crate::private::restrict_umask();
        crate::daemon::serve(&path).await?;
        return Ok(0);
    }
    if let Command::Restore { file, into } = &cli.command {
        let v = restore(file, into)?;
        if cli.json {
            println!("{v}");
        } else {
            println!(
                "restored {} records and {} outbox items into {}",
                v["records"],
                v["outbox_items"],
                into.display()
            );
        }
        return Ok(0);
    }
    if let Command::Store {
        op: StoreOp::Copy { from, to },
    } = &cli.command
    {
        let v = store_copy(from, to)?;
        if cli.json {
            println!("{v}");
        } else {
            println!(
                "copied {} records, {} outbox items, {} timers and {} references ({} inbound outcomes, {} suppressions, {} staff accounts)",
                v["records"], v["outbox_items"], v["timers"], v["refs"], v["inbound"], v["suppressions"], v["staff"]
            );
        }
        return Ok(0);
    }
    let cfg = Config::load(&path)?;
    if let Command::CheckConfig = cli.command {
        let shared = crate::daemon::load_shared(cfg.clone())?;
        let dkim = shared.dkim.as_ref().map(|s| s.dns_record());
        let summary = json!({
            "config": path.display().to_string(),
            "store": cfg.store_path.display().to_string(),
            "http": cfg.http_listen.to_string(),
            "public_url": cfg.public_url,
            "admin_socket": cfg.admin_socket.display().to_string(),
            "outbound": match &cfg.outbound { crate::config::Outbound::File{..} => "file", crate::config::Outbound::Smtp(_) => "smtp" },
            "inbound": match &cfg.inbound { crate::config::Inbound::Maildir{..} => "maildir", crate::config::Inbound::Imap(_) => "imap" },
            "providers": cfg.providers.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
            "dkim": dkim.as_ref().map(|r| json!({"name": r.name, "value": r.value})),
            "ok": true,
        });
        if cli.json {
            println!("{summary}");
        } else {
            println!("{}: ok", path.display());
            println!("  store         {}", cfg.store_path.display());
            println!(
                "  http          {} (links: {})",
                cfg.http_listen, cfg.public_url
            );
            println!("  admin socket  {}", cfg.admin_socket.display());
            println!("  outbound      {}", esc(&summary["outbound"], ""));
            println!("  inbound       {}", esc(&summary["inbound"], ""));
            println!(
                "  providers     {}",
                cfg.providers
                    .iter()
                    .map(|p| p.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            match (&dkim, &cfg.dkim) {
                (Some(r), Some(d)) => {
                    // the record to publish, as a zone-file line (domain and selector are checked
                    // DNS names, the value is base64: nothing to escape)
                    println!("  dkim          {} TXT \"{}\"", r.name, r.value);
                    if r.value.len() > 255 {
                        println!("                (over 255 characters: a zone file needs it split into quoted strings of at most 255)");
                    }
                    let from = cfg.from.domain().to_ascii_lowercase();
                    if from != d.domain && !from.ends_with(&format!(".{}", d.domain)) {
                        println!("                note: mail.from's domain {} is not {} nor under it, so DMARC will not count this signature", crate::text::escape_controls(&from), d.domain);
                    }
                }
                _ => println!("  dkim          off (no [mail.dkim])"),
            }
        }
        return Ok(0);
    }
    let sock = cfg.admin_socket.clone();
    let j = cli.json;
    let mut code = 0;
    let out = match cli.command {
        Command::Serve | Command::CheckConfig | Command::Restore { .. } | Command::Store { .. } => {
            return Ok(0)
        }
        Command::Backup { file } => {
            let bytes = crate::client::request_bytes(&sock, "/v1/backup").await?;
            let (_, entries) = crate::backup::decode(&bytes)?;
            let (records, outbox_items) = crate::backup::counts(&entries);
            write_private(&file, &bytes)?;
            if !j {
                println!(
                    "backup of {records} records and {outbox_items} outbox items written to {}",
                    file.display()
                );
            }
            json!({"file": file.display().to_string(), "records": records, "outbox_items": outbox_items})
        }
        Command::Invite {
            provider,
            email: Some(email),
            company,
            country,
            contact_name,
            locale,
            csv: None,
        } => {
            let v = call(&sock, "POST", "/v1/invite", Some(&json!({
                "provider": provider, "email": email, "company": company.unwrap_or_default(),
                "country": country.unwrap_or_default(), "contact_name": contact_name.unwrap_or_default(),
                "locale": locale.unwrap_or_default(),
            }))).await?;
            if !j {
                let verb = if v["existing"].as_bool() == Some(true) {
                    "already invited"
                } else {
                    "invited"
                };
                println!("{verb}: {} ({})", esc(&v["id"], ""), esc(&v["state"], ""));
            }
            v
        }
        Command::Invite {
            provider,
            csv: Some(file),
            ..
        } => {
            let v = invite_csv(&sock, &provider, &file, j).await?;
            if v["rejected"].as_u64().unwrap_or(0) > 0 {
                code = EXIT_ROWS_REJECTED;
            }
            v
        }
        Command::Invite { .. } => anyhow::bail!("invite needs --email or --csv"),
        Command::Enroll { file } => {
            let body = read_enrollment(&file)?;
            let v = call(&sock, "POST", "/v1/enroll", Some(&body)).await?;
            if !j {
                print_record(&v);
            }
            v
        }
        Command::Review { decision } => {
            let (path, body) = match decision {
                Review::Approve { id } => (
                    format!("/v1/review/{}/approve", id_arg("enrollment id", &id)?),
                    json!({}),
                ),
                Review::Reject { id, reason } => (
                    format!("/v1/review/{}/reject", id_arg("enrollment id", &id)?),
                    json!({"reason": reason}),
                ),
            };
            let v = call(&sock, "POST", &path, Some(&body)).await?;
            if !j {
                print_record(&v);
            }
            v
        }
        Command::InviteCustomer {
            provider,
            reseller_email,
            email,
            company,
            locale,
        } => {
            let v = call(&sock, "POST", "/v1/invite-customer", Some(&json!({
                "provider": provider, "reseller_email": reseller_email, "email": email, "company": company, "locale": locale,
            }))).await?;
            if !j {
                print_record(&v);
            }
            v
        }
        Command::List {
            what,
            provider,
            state,
            reseller_email,
        } => {
            let mut q = Vec::new();
            if let Some(p) = &provider {
                q.push(format!("provider={}", enc(p)));
            }
            if let Some(s) = &state {
                q.push(format!("state={}", enc(s)));
            }
            if let Some(e) = &reseller_email {
                q.push(format!("reseller_email={}", enc(e)));
            }
            let v = call(
                &sock,
                "GET",
                &format!("/v1/list/{}?{}", enc(&what), q.join("&")),
                None,
            )
            .await?;
            if !j {
                print_table(&v);
            }
            v
        }
        Command::Show { id } => {
            let id = id_arg("record id", &id)?;
            let v = call(&sock, "GET", &format!("/v1/records/{id}"), None).await?;
            if !j {
                print_record(&v);
            }
            v
        }
        Command::Resend { id } => record_op(&sock, &id, "resend", j).await?,
        Command::Revoke { id } => record_op(&sock, &id, "revoke", j).await?,
        Command::RemoveAdminAccess { id } => {
            record_op(&sock, &id, "remove-admin-access", j).await?
        }
        Command::Outbox {
            op: Some(OutboxOp::Retry { id }),
            ..
        } => {
            let id = id_arg("outbox item id", &id)?;
            let v = call(&sock, "POST", &format!("/v1/outbox/{id}/retry"), None).await?;
            if !j {
                println!("requeued {}", id);
            }
            v
        }
        Command::Outbox {
            summary: true,
            op: None,
            ..
        } => {
            let v = call(&sock, "GET", "/v1/outbox-summary", None).await?;
            if !j {
                print_summary(&v);
            }
            v
        }
        Command::Outbox { dead, op: None, .. } => {
            let v = call(&sock, "GET", &format!("/v1/outbox?dead={dead}"), None).await?;
            if !j {
                for i in v.as_array().into_iter().flatten() {
                    println!(
                        "{}  {:<6} {:<22} {:<32} attempts={} {}",
                        esc(&i["id"], ""),
                        esc(&i["state"], ""),
                        esc(&i["kind"], ""),
                        esc(&i["to"], ""),
                        i["attempts"],
                        esc(&i["last_error"], "")
                    );
                }
                println!("{} message(s)", v.as_array().map(Vec::len).unwrap_or(0));
            }
            v
        }
        Command::Inbound { outcome } => {
            let q = outcome
                .map(|o| format!("?outcome={}", enc(&o)))
                .unwrap_or_default();
            let v = call(&sock, "GET", &format!("/v1/inbound{q}"), None).await?;
            if !j {
                for i in v.as_array().into_iter().flatten() {
                    println!(
                        "{}  {:<12} {:<28} {}  {}",
                        esc(&i["received_at"], ""),
                        esc(&i["outcome"], ""),
                        esc(&i["record"], "-"),
                        esc(&i["from"], ""),
                        esc(&i["effect"], "")
                    );
                }
            }
            v
        }
        Command::Staff { op } => {
            let (path, body, done) = match op {
                StaffOp::Add {
                    email,
                    role,
                    password_stdin,
                } => {
                    let password = read_new_password(password_stdin)?;
                    (
                        "/v1/staff",
                        Some(json!({"email": email, "role": role, "password": password})),
                        "added",
                    )
                }
                StaffOp::List => ("", None, ""),
                StaffOp::Remove { email } => (
                    "/v1/staff/remove",
                    Some(json!({"email": email})),
                    "removed (its console sessions ended)",
                ),
                StaffOp::ResetPassword {
                    email,
                    password_stdin,
                } => {
                    let password = read_new_password(password_stdin)?;
                    (
                        "/v1/staff/reset-password",
                        Some(json!({"email": email, "password": password})),
                        "password set (its console sessions ended)",
                    )
                }
            };
            let v = match &body {
                Some(b) => call(&sock, "POST", path, Some(b)).await?,
                None => call(&sock, "GET", "/v1/staff", None).await?,
            };
            if !j {
                if body.is_some() {
                    println!("{} ({}): {done}", esc(&v["email"], ""), esc(&v["role"], ""));
                } else {
                    for s in v.as_array().into_iter().flatten() {
                        println!(
                            "{:<40} {:<9} added {}  password set {}",
                            esc(&s["email"], ""),
                            esc(&s["role"], ""),
                            esc(&s["created_at"], ""),
                            esc(&s["password_changed_at"], "")
                        );
                    }
                    println!(
                        "{} staff account(s)",
                        v.as_array().map(Vec::len).unwrap_or(0)
                    );
                }
            }
            v
        }
        Command::Suppress {
            op: SuppressOp::List { provider },
        } => {
            let q = provider
                .map(|p| format!("?provider={}", enc(&p)))
                .unwrap_or_default();
            let v = call(&sock, "GET", &format!("/v1/suppressions{q}"), None).await?;
            if !j {
                for s in v.as_array().into_iter().flatten() {
                    println!(
                        "{}  {:<14} {:<32} {:<6} {}",
                        esc(&s["at"], ""),
                        esc(&s["provider"], ""),
                        esc(&s["email"], ""),
                        esc(&s["channel"], ""),
                        esc(&s["reason"], "")
                    );
                }
                println!(
                    "{} suppressed address(es)",
                    v.as_array().map(Vec::len).unwrap_or(0)
                );
            }
            v
        }
        Command::Suppress {
            op: SuppressOp::Remove { provider, email },
        } => {
            let v = call(
                &sock,
                "POST",
                "/v1/suppressions/remove",
                Some(&json!({"provider": provider, "email": email})),
            )
            .await?;
            if !j {
                println!(
                    "lifted: {} may be invited by {} again (was: {}, {})",
                    esc(&v["email"], ""),
                    esc(&v["provider"], ""),
                    esc(&v["reason"], ""),
                    esc(&v["at"], "")
                );
            }
            v
        }
        Command::SendTestEmail { address } => {
            let v = call(
                &sock,
                "POST",
                "/v1/send-test-email",
                Some(&json!({"to": address})),
            )
            .await?;
            let id = v["id"].as_str().unwrap_or_default().to_string();
            let mut last = v.clone();
            for _ in 0..300 {
                last = call(&sock, "GET", &format!("/v1/outbox/{id}"), None).await?;
                if last["state"] != "queued" || last["attempts"].as_u64().unwrap_or(0) > 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            if !j {
                match last["state"].as_str() {
                    Some("sent") => println!(
                        "sent to {address} (Message-ID <{}>)",
                        esc(&last["message_id"], "")
                    ),
                    Some(state) => println!(
                        "{state} after {} attempt(s): {}",
                        last["attempts"],
                        esc(&last["last_error"], "")
                    ),
                    None => {}
                }
            }
            if last["state"] == "dead" {
                anyhow::bail!(
                    "the test email to {address} failed: {}",
                    esc(&last["last_error"], "")
                );
            }
            last
        }
        Command::Export { format } => {
            let v = call(&sock, "GET", "/v1/export", None).await?;
            match format.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&v)?),
                "csv" => print!("{}", crate::export::csv(&v)?),
                other => anyhow::bail!("--format {other:?} is not csv or json"),
            }
            return Ok(0);
        }
    };
    if j {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(code)
}

/// Writes `bytes` to `file` (0600: a backup holds personal data) through a temporary file, so a
/// failed write never leaves half a backup under the final name.
fn write_private(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = file.with_extension("partial");
    let mut f = crate::private::create_file(&tmp, false)
        .map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, file))
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

/// `invited restore FILE --into DIR`: checks the whole file first, refuses a DIR that holds
/// anything, then writes the store.
/// `store copy`: opens both stores as their configs name them (a running daemon's sled store
/// refuses to open: stop it first), then [`crate::store::copy`], with progress on a terminal.
fn store_copy(from: &Path, to: &Path) -> anyhow::Result<Value> {
    let open = |p: &Path, what: &str| -> anyhow::Result<crate::store::Store> {
        let cfg =
            anyhow::Context::with_context(Config::load(p), || format!("--{what} {}", p.display()))?;
        crate::store::Store::open(&cfg).map_err(|e| {
            anyhow::anyhow!(
                "--{what} {}: opening its store ({}): {e} (stop the daemon that uses it first)",
                p.display(),
                cfg.store_backend_name()
            )
        })
    };
    let source = open(from, "from")?;
    let target = open(to, "to")?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let copied = crate::store::copy(&source, &target, |what, n| {
        if tty {
            eprint!("\r{what}: {n}        ");
            if what != "records" && what != "outbox items" {
                eprintln!();
            }
        }
    })
    .map_err(|e| anyhow::anyhow!("store copy: {e}"))?;
    if tty {
        eprintln!();
    }
    Ok(serde_json::to_value(copied)?)
}

fn restore(file: &Path, into: &Path) -> anyhow::Result<Value> {
    let bytes = std::fs::read(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let (header, entries) =
        crate::backup::decode(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if header.store_format > crate::store::FORMAT {
        anyhow::bail!(
            "{}: written by invited {} in store format {}, newer than this invited understands ({}); restore it with that version",
            file.display(),
            header.version,
            header.store_format,
            crate::store::FORMAT
        );
    }
    let occupied = std::fs::read_dir(into)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if occupied {
        anyhow::bail!(
            "--into {}: the directory is not empty; restore into a new or empty directory",
            into.display()
        );
    }
    crate::private::create_dir(into)
        .map_err(|e| anyhow::anyhow!("--into {}: {e}", into.display()))?;
    crate::store::Store::restore(into, &entries)
        .map_err(|e| anyhow::anyhow!("--into {}: {e}", into.display()))?;
    let (records, outbox_items) = crate::backup::counts(&entries);
    Ok(json!({"records": records, "outbox_items": outbox_items}))
}

async fn call(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    request(sock, method, path, body)
        .await
        .map_err(|e| match e {
            ClientError::Api {
                field: Some(f),
                message,
                ..
            } if !message.contains(&f) => anyhow::anyhow!("{f}: {message}"),
            other => anyhow::Error::from(other),
        })
}

async fn record_op(sock: &Path, id: &str, op: &str, j: bool) -> anyhow::Result<Value> {
    let id = id_arg("record id", id)?;
    let v = call(sock, "POST", &format!("/v1/records/{id}/{op}"), None).await?;
    if !j {
        print_record(&v);
    }
    Ok(v)
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn read_enrollment(file: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let parsed: crate::rules::EnrollmentFile = if file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
    } else {
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.to_string().trim_end()))?
    };
    Ok(serde_json::to_value(parsed)?)
}

/// Rows per request: each is committed (and flushed) before the daemon answers, so a chunk is
/// what a crash can lose at most, and what the progress bar advances by.
const CHUNK: usize = 1000;

/// How long the bar waits for the queue to move before it leaves the sending to the daemon
/// (a transport that is down, a retry backoff, a pace limit).
const SEND_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// Past this, the pace (`rate_per_minute`, `daily_limit`) makes waiting pointless: the command
/// prints the estimated finish instead of a sending bar.
const SEND_WAIT_LIMIT: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

async fn invite_csv(sock: &Path, provider: &str, file: &Path, j: bool) -> anyhow::Result<Value> {
    let data = std::fs::read(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let csv = crate::rules::read_invite_csv(&data)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let rows: Vec<Value> = csv
        .rows
        .iter()
        .map(|(line, r)| json!({"line": line, "email": r.email, "company": r.company, "country": r.country, "contact_name": r.contact_name, "locale": r.locale}))
        .collect();
    let local_rejects: Vec<Value> = csv
        .unreadable
        .iter()
        .map(|(line, why)| json!({"line": line, "email": "", "outcome": "rejected", "reason": format!("unreadable CSV row: {why}")}))
        .collect();
    // the CLI holds the rows, not the file and the parsed CSV besides
    drop(csv);
    drop(data);
    let total = rows.len();
    // the progress bar: only for a person at a terminal, never with --json
    let tty = std::io::stderr().is_terminal() && !j;
    let (mut queued, mut existing, mut rejected) = (0u64, 0u64, local_rejects.len() as u64);
    let mut suppressed = 0u64;
    let mut out_rows: Vec<Value> = local_rejects;
    let bar = tty.then(|| progress_bar(total as u64, "rows committed"));
    // each chunk's rows are dropped once sent, so the CLI holds the answer, not the CSV twice
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Value> = rows.by_ref().take(CHUNK).collect();
        let v = call(
            sock,
            "POST",
            "/v1/invite/bulk",
            Some(&json!({"provider": provider, "rows": chunk})),
        )
        .await;
        let v = match v {
            Ok(v) => v,
            Err(e) => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                return Err(e);
            }
        };
        queued += v["queued"].as_u64().unwrap_or(0);
        existing += v["existing"].as_u64().unwrap_or(0);
        rejected += v["rejected"].as_u64().unwrap_or(0);
        suppressed += v["suppressed"].as_u64().unwrap_or(0);
        if let Value::Array(r) = v.get("rows").cloned().unwrap_or_default() {
            out_rows.extend(r);
        }
        if let Some(b) = &bar {
            b.inc(chunk.len() as u64);
        }
    }
    if let Some(b) = &bar {
        b.finish();
    }
    out_rows.sort_by_key(|r| r["line"].as_u64().unwrap_or(0));
    // when the whole outbox (these rows and whatever was queued before) will have gone out at
    // the configured pace; null when no limit is set
    let summary = call(sock, "GET", "/v1/outbox-summary", None).await?;
    let finish = summary["estimated_finish"].clone();
    if tty && queued > 0 {
        follow_sending(sock, &summary).await?;
    }
    let v = json!({"queued": queued, "existing": existing, "rejected": rejected, "suppressed": suppressed, "estimated_finish": finish, "rows": out_rows});
    if !j {
        for r in v["rows"].as_array().into_iter().flatten() {
            let (line, email) = (&r["line"], esc(&r["email"], ""));
            match r["outcome"].as_str() {
                Some("rejected") => println!("line {line}: {email}: {}", esc(&r["reason"], "")),
                Some("existing") => {
                    println!(
                        "line {line}: {email}: already invited ({})",
                        esc(&r["id"], "")
                    )
                }
                Some("suppressed") => {
                    println!(
                        "line {line}: {email}: suppressed: {}",
                        esc(&r["reason"], "")
                    )
                }
                _ => {}
            }
        }
        println!("{queued} queued, {existing} already invited, {suppressed} suppressed, {rejected} rejected ({total} rows)");
        if let Some(t) = finish.as_str() {
            println!("at the configured pace the outbox will have gone out by {t}");
        }
    }
    Ok(v)
}

/// A bar on stderr: `[####----] 4000/10000 rows committed, 2,000/s, ETA 3s`.
fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    let style = indicatif::ProgressStyle::with_template(&format!(
        "[{{bar:30}}] {{pos}}/{{len}} {what}, {{per_sec}}, ETA {{eta}}"
    ))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("#>-");
    bar.set_style(style);
    bar
}

/// After the rows are committed, on a terminal: the outbox draining (everything queued when
/// the rows were committed, theirs included, since it goes out oldest first), until it is
/// empty, it stops moving for [`SEND_STALL`], or Ctrl-C; the daemon sends on regardless.
/// Not when the pace puts the finish more than [`SEND_WAIT_LIMIT`] away.
async fn follow_sending(sock: &Path, summary: &Value) -> anyhow::Result<()> {
    let start = summary["queued"].as_u64().unwrap_or(0);
    let far = summary["estimated_finish"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|t| t.with_timezone(&chrono::Utc) - chrono::Utc::now() > SEND_WAIT_LIMIT);
    if start == 0 || far {
        return Ok(());
    }
    let bar = progress_bar(start, "messages sent");
    let mut last = (start, std::time::Instant::now());
    let stopped = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break true,
            _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
        }
        let s = call(sock, "GET", "/v1/outbox-summary", None).await?;
        let left = s["queued"].as_u64().unwrap_or(0);
        bar.set_position(start.saturating_sub(left));
        if left == 0 {
            break false;
        }
        if left < last.0 {
            last = (left, std::time::Instant::now());
        } else if last.1.elapsed() > SEND_STALL {
            break true;
        }
    };
    if stopped {
        bar.abandon();
        eprintln!(
            "sending goes on in the daemon (`invited outbox --summary` shows where it stands)"
        );
    } else {
        bar.finish();
    }
    Ok(())
}

/// A string field of an answer, with control characters and bidi overrides made visible: names,
/// senders and server replies come from outside and must not steer the terminal.
fn esc(v: &Value, default: &str) -> String {
    crate::text::escape_controls(v.as_str().unwrap_or(default))
}

fn print_summary(v: &Value) {
    let limit = |k: &str, unit: &str| match v[k].as_u64() {
        Some(n) if n > 0 => format!("{n} {unit}"),
        _ => "no limit".into(),
    };
    println!(
        "{} queued, {} sent today (UTC), {} dead",
        v["queued"], v["sent_today"], v["dead"]
    );
    println!(
        "pace: {} / {} / {}",
        limit("rate_per_second", "a second"),
        limit("rate_per_minute", "a minute"),
        limit("daily_limit", "a day")
    );
    match v["estimated_finish"].as_str() {
        Some(t) => println!("estimated finish at this pace: {t}"),
        None => println!("estimated finish: as fast as the server takes them (no limit set)"),
    }
    if let Some(e) = v["transport_error"].as_str() {
        println!(
            "{} queued message(s) wait on the mail server, not on their recipients; latest answer: {}",
            v["waiting_on_transport"],
            crate::text::escape_controls(e)
        );
    }
}

fn print_record(v: &Value) {
    for k in [
        "id",
        "kind",
        "state",
        "email",
        "provider",
        "company",
        "country",
        "admin_access",
        "locale",
        "created_at",
        "updated_at",
        "expires_at",
    ] {
        if let Some(x) = v.get(k).filter(|x| !x.is_null()) {
            let text = x
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| x.to_string());
            println!("{k:<13} {}", crate::text::escape_controls(&text));
        }
    }
    if let Some(rel) = v
        .get("relationships")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
    {
        println!(
            "relationships {}",
            rel.iter()
                .map(|r| esc(&r["kind"], "").to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(h) = v.get("history").and_then(Value::as_array) {
        println!("history");
        for t in h {
            let by = t["staff"]
                .as_str()
                .map(|_| format!(" ({})", esc(&t["staff"], "")))
                .unwrap_or_default();
            println!(
                "  {}  {:>20} -> {:<20} {:<7} {}{by}",
                esc(&t["at"], ""),
                esc(&t["from"], ""),
                esc(&t["to"], ""),
                esc(&t["channel"], ""),
                esc(&t["detail"], "")
            );
        }
    }
}

fn print_table(v: &Value) {
    let rows = v.as_array().cloned().unwrap_or_default();
    for r in &rows {
        println!(
            "{}  {:<22} {:<20} {:<32} {:<14} {}",
            esc(&r["id"], ""),
            esc(&r["kind"], ""),
            esc(&r["state"], ""),
            esc(&r["email"], ""),
            esc(&r["provider"], "-"),
            esc(&r["company"], "")
        );
    }
    println!("{} record(s)", rows.len());
}

/// A new password: the first line of stdin (`--password-stdin`), or typed twice at the terminal
/// without echo. Never an argument (it would be in the shell's history and `ps`).
fn read_new_password(from_stdin: bool) -> anyhow::Result<String> {
    use std::io::BufRead;
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        let first = read_hidden("Password: ")?;
        let second = read_hidden("Again: ")?;
        if first != second {
            anyhow::bail!("the two passwords differ; nothing changed");
        }
        first
    };
    crate::staff::check_password(&password).map_err(|m| anyhow::anyhow!("password: {m}"))?;
    Ok(password)
}

/// One line from the controlling terminal with echo off (restored afterwards, also on error).
fn read_hidden(prompt: &str) -> anyhow::Result<String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    use std::io::{BufRead, Write};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| {
            anyhow::anyhow!("no terminal to read the password from ({e}): use --password-stdin")
        })?;
    let before = tcgetattr(&tty)?;
    let mut quiet = before.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    (&tty).write_all(prompt.as_bytes())?;
    tcsetattr(&tty, OptionalActions::Flush, &quiet)?;
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    tcsetattr(&tty, OptionalActions::Flush, &before)?;
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn formula_cells_are_defused() {
        assert_eq!(
            crate::export::csv_safe("=HYPERLINK(\"x\")"),
            "'=HYPERLINK(\"x\")"
        );
        assert_eq!(crate::export::csv_safe("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(crate::export::csv_safe("Fabrikam"), "Fabrikam");
        assert_eq!(crate::export::csv_safe("-1"), "'-1");
        for fullwidth in ["＝1+1", "＋1", "－1", "＠SUM(A1)"] {
            assert_eq!(crate::export::csv_safe(fullwidth), format!("'{fullwidth}"));
        }
        for hidden in [
            "\u{200b}=1+1",
            "\u{feff}@SUM(A1)",
            "\u{200d}\u{2060}+1",
            "\u{200c}-1",
        ] {
            assert_eq!(crate::export::csv_safe(hidden), format!("'{hidden}"));
        }
        assert_eq!(
            crate::export::csv_safe("\u{200b}Fabrikam"),
            "\u{200b}Fabrikam"
        );
        assert_eq!(crate::export::csv_safe("A=1"), "A=1");
    }
}
