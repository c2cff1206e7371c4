//! `invited serve`: opens the store, binds the listeners (sized to the open-files limit), starts
//! every task under one shutdown token, reloads on SIGHUP and drains on SIGTERM.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use chrono::Utc;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{App, Shared};
use crate::config::{Config, Inbound};
use crate::listener::{self, Limits};
use crate::store::Store;
use crate::templates::Templates;
use crate::token::Keys;

pub fn load_shared(cfg: Config) -> anyhow::Result<Shared> {
    cfg.check_credentials()?;
    let keys = Keys::load(&cfg.key_active, &cfg.key_files)?;
    let templates = Templates::load(cfg.templates_dir.as_deref())?;
    Ok(Shared {
        cfg,
        keys,
        templates,
    })
}

async fn bind_admin_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(anyhow!(
                "another invited is already serving the admin socket {}",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("binding admin socket {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(l)
}

pub async fn serve(config_path: &Path) -> anyhow::Result<()> {
    let cfg = Config::load(config_path)?;
    let nofile = listener::raise_open_files_limit();
    let shared = load_shared(cfg.clone())?;
    if let Some(dir) = cfg.store_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let store = Store::open(&cfg.store_path, cfg.cache_capacity).map_err(|e| {
        anyhow!(
            "opening the store at {}: {e} (is another invited running on it?)",
            cfg.store_path.display()
        )
    })?;
    let app = Arc::new(App::new(store, shared));
    let transport = Arc::new(crate::sender::Transport::from_config(
        &cfg.outbound,
        cfg.concurrency,
    )?);

    // every listener is bound before anything is served, so the status endpoint can name them all
    let http = listener::bind_tcp(cfg.http_listen)
        .with_context(|| format!("binding http.listen {}", cfg.http_listen))?;
    let http_addr = http.local_addr()?;
    let admin_sock = bind_admin_socket(&cfg.admin_socket).await?;
    let admin_tcp = match (cfg.admin_listen, &cfg.admin_token_file) {
        (Some(addr), Some(token_file)) => {
            let token = std::fs::read_to_string(token_file)
                .with_context(|| format!("admin.token_file {}", token_file.display()))?;
            let token = token.trim().to_string();
            if token.len() < 16 {
                return Err(anyhow!(
                    "admin.token_file {}: the token must be at least 16 characters",
                    token_file.display()
                ));
            }
            let l =
                listener::bind_tcp(addr).with_context(|| format!("binding admin.listen {addr}"))?;
            Some((l, token))
        }
        _ => None,
    };
    let metrics_tcp = match cfg.metrics_listen {
        Some(addr) => Some(
            listener::bind_tcp(addr)
                .with_context(|| format!("binding http.metrics_listen {addr}"))?,
        ),
        None => None,
    };
    let addr_of = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).ok();
    let admin_addr = admin_tcp.as_ref().and_then(|(l, _)| addr_of(l));
    let metrics_addr = metrics_tcp.as_ref().and_then(addr_of);

    // The public cap stays below the open-files limit: what the other listeners may hold, the
    // sender's SMTP connections and a fixed reserve for the store, inbound mail and the runtime
    // are kept back.
    let reserved = listener::RESERVED_FDS
        + cfg.concurrency as u64
        + listener::ADMIN_SOCKET_CONNECTIONS as u64
        + admin_tcp
            .as_ref()
            .map_or(0, |_| listener::ADMIN_TCP_CONNECTIONS as u64)
        + metrics_tcp
            .as_ref()
            .map_or(0, |_| listener::METRICS_CONNECTIONS as u64);
    let public_cap =
        listener::public_cap(cfg.max_connections, nofile, reserved).map_err(|m| anyhow!(m))?;
    if public_cap < cfg.max_connections {
        tracing::warn!(
            open_files_limit = nofile,
            reserved,
            max_connections = cfg.max_connections,
            effective = public_cap,
            "http.max_connections clamped below the open-files limit: serving at most {public_cap} public connections"
        );
    }
    tracing::info!(
        open_files_limit = nofile,
        public_connections = public_cap,
        header_timeout = ?cfg.header_timeout,
        idle_timeout = ?cfg.idle_timeout,
        "http limits"
    );

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();

    let admin_state = |token: Option<String>| {
        Arc::new(crate::admin::AdminState {
            app: app.clone(),
            http_addr: http_addr.to_string(),
            admin_addr: admin_addr.clone(),
            metrics_addr: metrics_addr.clone(),
            token,
        })
    };
    // The admin socket: long requests (a bulk invite chunk) are never cut, only idle or slow
    // clients are (see `listener`).
    tracker.spawn(listener::serve(
        admin_sock,
        crate::admin::router(admin_state(None)),
        Limits::from_config(&cfg, listener::ADMIN_SOCKET_CONNECTIONS),
        app.metrics.listener("admin_socket"),
        shutdown.clone(),
    ));
    if let Some((l, token)) = admin_tcp {
        tracker.spawn(listener::serve(
            l,
            crate::admin::router(admin_state(Some(token))),
            Limits::from_config(&cfg, listener::ADMIN_TCP_CONNECTIONS),
            app.metrics.listener("admin_tcp"),
            shutdown.clone(),
        ));
    }
    if let Some(l) = metrics_tcp {
        tracker.spawn(listener::serve(
            l,
            crate::admin::metrics_router(app.clone()),
            Limits::from_config(&cfg, listener::METRICS_CONNECTIONS),
            app.metrics.listener("metrics"),
            shutdown.clone(),
        ));
    }
    tracker.spawn(listener::serve(
        http,
        crate::http::router(app.clone()),
        Limits::from_config(&cfg, public_cap),
        app.metrics.listener("public"),
        shutdown.clone(),
    ));
    tracker.spawn(crate::sender::run(app.clone(), transport, shutdown.clone()));
    match &cfg.inbound {
        Inbound::Maildir { dir } => {
            crate::maildir::prepare(dir)
                .with_context(|| format!("mail.inbound.dir {}", dir.display()))?;
            tracker.spawn(crate::maildir::run(
                app.clone(),
                dir.clone(),
                cfg.poll_interval,
                shutdown.clone(),
            ));
        }
        Inbound::Imap(imap) => {
            tracker.spawn(crate::imap::run(
                app.clone(),
                imap.clone(),
                cfg.poll_interval,
                imap.ca_file.clone(),
                shutdown.clone(),
            ));
        }
    }
    {
        let app = app.clone();
        let sd = shutdown.clone();
        let interval = cfg.timer_interval;
        tracker.spawn(async move {
            loop {
                if let Err(e) = app.run_timers(Utc::now()).await {
                    tracing::error!(error = %e, "timers");
                }
                tokio::select! {
                    _ = sd.cancelled() => break,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        });
    }
    tracker.close();

    eprintln!(
        "invited {}: serving http://{http_addr} (links use {}), admin socket {}",
        env!("CARGO_PKG_VERSION"),
        cfg.public_url,
        cfg.admin_socket.display()
    );

    signals(&app, config_path, &shutdown).await?;
    tracing::info!("shutting down: draining tasks");
    tracker.wait().await;
    app.store.flush().await?;
    let _ = std::fs::remove_file(&cfg.admin_socket);
    tracing::info!("stopped");
    Ok(())
}

async fn signals(
    app: &App,
    config_path: &Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                match Config::load(config_path).map_err(anyhow::Error::from).and_then(load_shared) {
                    Ok(s) => {
                        app.replace_shared(s);
                        tracing::info!("configuration, providers, keys and templates reloaded");
                    }
                    Err(e) => tracing::error!(error = %e, "reload failed; keeping the running configuration"),
                }
            }
        }
    }
    shutdown.cancel();
    Ok(())
}
