//! The `maildir` inbound source: reads `new/`, hands each message to the app once, then moves it
//! to `cur/`. A message whose handling fails stays in `new/` for the next pass; one handled
//! before a crash (its outcome is stored by Message-ID) is only moved.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::app::App;

pub fn prepare(dir: &Path) -> std::io::Result<()> {
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    Ok(())
}

/// One pass over `new/`; returns how many messages were handled.
pub async fn pass(app: &App, dir: &Path) -> usize {
    let mut names: Vec<PathBuf> = match std::fs::read_dir(dir.join("new")) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read maildir");
            return 0;
        }
    };
    names.sort();
    let mut handled = 0;
    for path in names {
        let raw = match tokio::fs::read(&path).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read message");
                continue;
            }
        };
        match app.handle_inbound(&raw, Utc::now()).await {
            Ok(outcome) => {
                if let Some(r) = &outcome {
                    tracing::info!(message_id = %r.message_id, outcome = %r.outcome, effect = %r.effect, "inbound message");
                }
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let dest = dir.join("cur").join(format!("{name}:2,S"));
                if let Err(e) = tokio::fs::rename(&path, &dest).await {
                    tracing::warn!(file = %path.display(), error = %e, "cannot move message to cur/");
                }
                handled += 1;
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "message left for the next pass")
            }
        }
    }
    handled
}

pub async fn run(app: Arc<App>, dir: PathBuf, interval: Duration, shutdown: CancellationToken) {
    loop {
        pass(&app, &dir).await;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
