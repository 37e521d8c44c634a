//! Persistence of the in-memory registry: one JSON snapshot per directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use muster_core::{Error, ErrorKind, NodeInfo, Result, Revision};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::Shared;

/// The snapshot file inside the data directory.
const FILE: &str = "registry.json";

/// The file whose lock keeps a data directory to one registry at a time: two registries writing
/// one directory would each overwrite the other's snapshot (and share its temporary file). The
/// kernel lets the lock go when its holder exits, however it exits; the file holds the holder's
/// process id, for the message of a refused open.
const LOCK: &str = "registry.lock";

/// How long [`lock`] waits for the directory before refusing: a registry that was just dropped
/// still writes its final snapshot, and a reopen (or a restart) should follow it, not fail.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Where and how often the registry is persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistOptions {
    /// Directory holding `registry.json` (created if missing).
    pub dir: PathBuf,
    /// Least time between two snapshot writes; changes in between are written together.
    pub snapshot_interval: Duration,
}

impl PersistOptions {
    /// Persistence in `dir`, writing at most once a second.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), snapshot_interval: Duration::from_secs(1) }
    }
}

/// What is written: every stored node and the revision.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    pub(crate) revision: Revision,
    pub(crate) nodes: Vec<NodeInfo>,
    /// Written at shutdown, with every event up to `revision`: revisions may continue from it.
    /// A snapshot written while running may lag the events a watcher has already seen.
    #[serde(default)]
    pub(crate) clean: bool,
}

pub(crate) fn snapshot_of(shared: &Shared, clean: bool) -> Snapshot {
    let state = shared.read();
    Snapshot {
        revision: state.log.revision(),
        nodes: state.nodes.iter().map(|(id, e)| e.node.to_node(id)).collect(),
        clean,
    }
}

pub(crate) fn io_error(what: &str, path: &Path, error: std::io::Error) -> Error {
    Error::new(ErrorKind::Unavailable, format!("{what} {}: {error}", path.display())).with_source(error)
}

/// Reads the snapshot in `dir`, if there is one.
pub(crate) async fn load(dir: &Path) -> Result<Option<Snapshot>> {
    let path = dir.join(FILE);
    let bytes = match tokio::fs::read(&path).await {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("cannot read", &path, error)),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        Error::invalid(
            "snapshot",
            format!("{} is not a registry snapshot ({e}); move it away to start empty", path.display()),
        )
    })
}

/// Takes `dir` for this registry (see [`LOCK`]); the directory is held until the returned file is
/// dropped. Refused, naming the holder, while another registry holds it for longer than
/// [`LOCK_WAIT`].
pub(crate) async fn lock(dir: &Path) -> Result<std::fs::File> {
    use std::io::Write as _;
    let path = dir.join(LOCK);
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .await
        .map_err(|e| io_error("cannot open", &path, e))?
        .into_std()
        .await;
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                let holder = if holder.is_empty() { String::new() } else { format!(" (process {holder})") };
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "data directory {} is in use by another registry{holder}; stop it or choose another directory",
                        dir.display()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(error)) => return Err(io_error("cannot lock", &path, error)),
        }
    }
    let mut writer = &file;
    file.set_len(0)
        .and_then(|()| writer.write_all(std::process::id().to_string().as_bytes()))
        .map_err(|e| io_error("cannot write", &path, e))?;
    Ok(file)
}

/// Writes the snapshot atomically: a temporary file, fsync, rename.
pub(crate) async fn write(dir: &Path, snapshot: &Snapshot) -> Result<()> {
    let bytes = serde_json::to_vec(snapshot).map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
    write_file(dir, FILE, &bytes).await
}

/// Replaces `dir/file` with `bytes` atomically: a temporary file, fsync, rename.
pub(crate) async fn write_file(dir: &Path, file: &str, bytes: &[u8]) -> Result<()> {
    let (path, temporary) = (dir.join(file), dir.join(format!("{file}.tmp")));
    let write = async {
        let mut file = tokio::fs::File::create(&temporary).await?;
        tokio::io::AsyncWriteExt::write_all(&mut file, bytes).await?;
        file.sync_all().await?;
        tokio::fs::rename(&temporary, &path).await
    };
    write.await.map_err(|e| io_error("cannot write", &path, e))
}

/// Writes a snapshot after changes, at most once per interval, until told to stop.
pub(crate) struct Writer {
    options: PersistOptions,
    /// Subscribed when the registry is opened, so no change made before the task runs is missed.
    changes: tokio::sync::watch::Receiver<Revision>,
    /// The revision on disk when the registry was opened (restored, or zero).
    written: Revision,
    /// The data directory's lock ([`lock`]), let go when the task ends: after the final snapshot.
    _lock: std::fs::File,
}

impl Writer {
    pub(crate) fn new(options: PersistOptions, shared: &Shared, lock: std::fs::File) -> Self {
        let mut changes = shared.revision_tx.subscribe();
        let written = *changes.borrow_and_update();
        Self { options, changes, written, _lock: lock }
    }

    /// Runs until told to stop; returns the outcome of the final snapshot's write.
    pub(crate) async fn run(self, shared: Arc<Shared>, done: Arc<Notify>) -> Result<()> {
        let Self { options, mut changes, mut written, _lock } = self;
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return Ok(()) },
                () = done.notified() => break,
            }
            // Let further changes gather for one interval, then write them together.
            tokio::select! {
                () = tokio::time::sleep(options.snapshot_interval) => {}
                () = done.notified() => break,
            }
            let _writing = shared.writing.lock().await;
            let snapshot = snapshot_of(&shared, false);
            if snapshot.revision != written {
                match write(&options.dir, &snapshot).await {
                    Ok(()) => written = snapshot.revision,
                    Err(error) => {
                        tracing::error!(%error, "snapshot not written; will retry after the next change")
                    }
                }
            }
        }
        // Shutting down: write the final, clean snapshot.
        let _writing = shared.writing.lock().await;
        let snapshot = snapshot_of(&shared, true);
        let written = write(&options.dir, &snapshot).await;
        if let Err(error) = &written {
            tracing::error!(%error, "final snapshot not written");
        }
        written
    }
}
