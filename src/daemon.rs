//! `invited serve`: opens the store, binds the listeners, starts every task under one shutdown
//! token, reloads on SIGHUP and drains on SIGTERM.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use chrono::Utc;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{App, Shared};
use crate::config::{Config, Inbound};
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

    let http = TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("binding http.listen {}", cfg.http_listen))?;
    let http_addr = http.local_addr()?;
    let admin_sock = bind_admin_socket(&cfg.admin_socket).await?;

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();

    let state = Arc::new(crate::admin::AdminState {
        app: app.clone(),
        http_addr: http_addr.to_string(),
        token: None,
    });
    {
        let router = crate::admin::router(state);
        let sd = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = axum::serve(admin_sock, router)
                .with_graceful_shutdown(sd.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "admin socket server");
            }
        });
    }
    if let (Some(addr), Some(token_file)) = (cfg.admin_listen, &cfg.admin_token_file) {
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("admin.token_file {}", token_file.display()))?;
        let token = token.trim().to_string();
        if token.len() < 16 {
            return Err(anyhow!(
                "admin.token_file {}: the token must be at least 16 characters",
                token_file.display()
            ));
        }
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding admin.listen {addr}"))?;
        let st = Arc::new(crate::admin::AdminState {
            app: app.clone(),
            http_addr: http_addr.to_string(),
            token: Some(token),
        });
        let router = crate::admin::router(st);
        let sd = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = axum::serve(l, router)
                .with_graceful_shutdown(sd.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "admin TCP server");
            }
        });
    }
    {
        let router = crate::http::router(app.clone());
        let sd = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = axum::serve(http, router)
                .with_graceful_shutdown(sd.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "http server");
            }
        });
    }
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
