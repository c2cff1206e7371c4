//! The `maildir` inbound source: reads `new/`, hands each message to the app once, then moves it
//! to `cur/`. A message whose handling fails stays in `new/` for the next pass; one handled
//! before a crash (its outcome is stored by Message-ID) is only moved. Sizes are checked with
//! `stat` before reading: an oversize message is read only as far as its header.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::classify;
use crate::text::escape_controls;

pub fn prepare(dir: &Path) -> std::io::Result<()> {
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    Ok(())
}

/// One pass over `new/`; returns how many messages were handled. A message over
/// `classify::MAX_MESSAGE_BYTES` (by `stat`) is never read whole: only its first
/// `classify::MAX_HEAD_BYTES` are, and it ends `unrecognised`, "too large".
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
            tracing::warn!(dir = %shown(dir), error = %e, "cannot read maildir");
            return 0;
        }
    };
    names.sort();
    let mut handled = 0;
    // In groups: each message applied in its own batch, one flush for the group, then the
    // group's files moved to cur/ (a crash before the move re-reads them; they are known).
    for group in names.chunks(GROUP) {
        let _busy = app.heartbeats.inbound.busy();
        // the group's files read on one blocking thread, not one hop per file operation
        let paths = group.to_vec();
        let read_all = tokio::task::spawn_blocking(move || {
            paths
                .into_iter()
                .map(|p| {
                    let m = read(&p);
                    (p, m)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(read_all) = read_all else {
            tracing::error!("the maildir read task failed");
            break;
        };
        let mut read_ok: Vec<(PathBuf, Message)> = Vec::with_capacity(group.len());
        for (path, m) in read_all {
            match m {
                Ok(m) => read_ok.push((path, m)),
                Err(e) => tracing::warn!(file = %shown(&path), error = %e, "cannot read message"),
            }
        }
        let inputs: Vec<crate::app::Inbound<'_>> = read_ok
            .iter()
            .map(|(_, m)| match m {
                Message::Whole(raw) => crate::app::Inbound::Whole(raw),
                Message::TooLarge { head, size } => {
                    crate::app::Inbound::TooLarge { head, size: *size }
                }
            })
            .collect();
        let outcomes = app.handle_inbound_batch(&inputs, Utc::now()).await;
        let mut moves = Vec::with_capacity(read_ok.len());
        for ((path, _), outcome) in read_ok.iter().zip(outcomes) {
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(file = %shown(path), error = %e, "message left for the next pass");
                    continue;
                }
            };
            if let Some(r) = &outcome {
                // the record's text is escaped at the source (`app::inbound`)
                tracing::info!(message_id = %r.message_id, outcome = %r.outcome, effect = %r.effect, "inbound message");
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            moves.push((path.clone(), dir.join("cur").join(format!("{name}:2,S"))));
            handled += 1;
        }
        let _ = tokio::task::spawn_blocking(move || {
            for (from, to) in moves {
                if let Err(e) = std::fs::rename(&from, &to) {
                    tracing::warn!(file = %shown(&from), error = %e, "cannot move message to cur/");
                }
            }
        })
        .await;
    }
    handled
}

/// Messages read and handled together (one flush for them).
const GROUP: usize = 200;

enum Message {
    Whole(Vec<u8>),
    TooLarge { head: Vec<u8>, size: u64 },
}

/// The message at `path`, or only its head when `stat` (or the read itself, should the file
/// grow meanwhile) says it is over the limit: memory per message stays bounded either way.
fn read(path: &Path) -> std::io::Result<Message> {
    use std::io::Read;
    let limit = classify::MAX_MESSAGE_BYTES as u64;
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let wanted = if size > limit {
        classify::MAX_HEAD_BYTES as u64
    } else {
        limit + 1
    };
    let mut raw = Vec::with_capacity(size.min(wanted) as usize);
    file.take(wanted).read_to_end(&mut raw)?;
    if size <= limit && raw.len() as u64 <= limit {
        return Ok(Message::Whole(raw));
    }
    raw.truncate(classify::MAX_HEAD_BYTES);
    Ok(Message::TooLarge {
        head: raw,
        size: size.max(limit + 1),
    })
}

/// A path for the log: maildir file names are chosen by whoever delivered the message.
fn shown(path: &Path) -> String {
    escape_controls(&path.display().to_string())
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
