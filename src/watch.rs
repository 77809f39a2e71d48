//! Watching the secret files a configuration names (`token_file`, `admin_token_file`,
//! `tls_extra_ca_file`): their directories are watched (inotify through `notify`, debounced),
//! because Kubernetes updates a mounted Secret by swapping a `..data` symlink in the directory,
//! which never touches the file's own inode. When a file's content changes, it asks for a reload.
//! It reads the files only to compare them; validating and applying them is the reload's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify_debouncer_mini::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_mini::{new_debouncer, DebounceEventResult, Debouncer};

use crate::config::Config;

/// The files whose content a reload re-reads although no setting changed: the two token files
/// and the extra CA file, in that order.
pub fn watched_files(config: &Config) -> Vec<PathBuf> {
    [
        config.token_file.as_ref(),
        config.admin_token_file.as_ref(),
        config.tls.extra_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect()
}

/// A running watch; dropping it stops the watcher's thread.
pub struct FileWatch {
    files: Vec<PathBuf>,
    _debouncer: Debouncer<RecommendedWatcher>,
}

impl FileWatch {
    /// Watches the directories holding `files` (as named, and where their symlinks lead) and
    /// calls `on_change` once per burst of events, `quiet` after the last, when any file's
    /// content differs from what it was.
    pub fn start(
        files: Vec<PathBuf>,
        quiet: Duration,
        on_change: impl Fn() + Send + 'static,
    ) -> Result<FileWatch, notify_debouncer_mini::notify::Error> {
        let compared = files.clone();
        let mut seen = fingerprint(&compared);
        let mut debouncer = new_debouncer(quiet, move |events: DebounceEventResult| {
            if let Err(error) = events {
                tracing::warn!(%error, "the file watch reported an error");
                return;
            }
            let now = fingerprint(&compared);
            if now != seen {
                seen = now;
                on_change();
            }
        })?;
        for directory in directories(&files) {
            debouncer
                .watcher()
                .watch(&directory, RecursiveMode::NonRecursive)?;
        }
        Ok(FileWatch {
            files,
            _debouncer: debouncer,
        })
    }

    /// The files this watch compares.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

/// The directories to watch: each file's own, and the one its symlinks resolve to when that is
/// elsewhere (a path in /etc/zt linked to a mounted volume), without repeats.
fn directories(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut directories = Vec::new();
    for file in files {
        let resolved = std::fs::canonicalize(file).ok();
        for path in [Some(file.as_path()), resolved.as_deref()]
            .into_iter()
            .flatten()
        {
            let directory = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
                _ => PathBuf::from("."),
            };
            if !directories.contains(&directory) {
                directories.push(directory);
            }
        }
    }
    directories
}

/// Each file's content hash, `None` for a file that cannot be read now (a reload will say why).
fn fingerprint(files: &[PathBuf]) -> Vec<Option<blake3::Hash>> {
    files.iter().map(|file| content_hash(file)).collect()
}

fn content_hash(file: &Path) -> Option<blake3::Hash> {
    std::fs::read(file).ok().map(|bytes| blake3::hash(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_the_files_own_and_their_links_targets() {
        let base = std::env::temp_dir().join(format!("zt-sidecar-watch-{}", std::process::id()));
        let real = base.join("real");
        let linked = base.join("linked");
        std::fs::create_dir_all(&real).expect("dir");
        std::fs::create_dir_all(&linked).expect("dir");
        std::fs::write(real.join("token"), "t").expect("write");
        std::os::unix::fs::symlink(real.join("token"), linked.join("token")).expect("link");
        let found = directories(&[linked.join("token"), real.join("token")]);
        let real = std::fs::canonicalize(&real).expect("real");
        assert!(found.contains(&linked), "{found:?}");
        assert!(found.contains(&real), "{found:?}");
        let mut unique = found.clone();
        unique.dedup();
        assert_eq!(unique, found, "no directory twice");
        assert_eq!(
            directories(&[PathBuf::from("token")]),
            vec![PathBuf::from(".")]
        );
        let _ = std::fs::remove_dir_all(&base);
    }
}
