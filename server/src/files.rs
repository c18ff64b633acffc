//! Writing a file whole or not at all (exports, backups, keys): written under `FILE.part`,
//! fsynced, then renamed into place.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Where a file is written before it is renamed into place whole.
pub(crate) fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

/// Writes `path` whole or not at all: `write` fills `path.part` (created with `mode`), which
/// is fsynced and renamed into place when `write` succeeds, and removed when it fails.
pub(crate) fn write_whole<T>(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut dyn Write) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    use std::os::unix::fs::OpenOptionsExt;
    let partial = part_path(path);
    let _ = std::fs::remove_file(&partial);
    let written = (|| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        let mut buffered = std::io::BufWriter::new(file);
        let done = write(&mut buffered)?;
        buffered
            .into_inner()
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", partial.display()))?
            .sync_all()
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, path)
            .with_context(|| format!("renaming into {}", path.display()))?;
        Ok(done)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}
