//! The master key: opening a data folder's store (finishing a rotation a crash interrupted)
//! and `sealpost key rotate`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use sealpost_storage::{Actor, Error as StoreError, MasterKey, Store};

use crate::config::Loaded;

#[derive(Subcommand)]
pub(crate) enum KeyCommand {
    /// Make a new master key and re-wrap every key with it (mail is not re-encrypted).
    /// Stop `sealpost serve` first.
    Rotate,
}

/// Opens the store of a data folder, finishing an interrupted key rotation if one is found.
pub(crate) fn open_store(data: &Path) -> anyhow::Result<(Loaded, Store)> {
    let loaded = Loaded::from_data_dir(data)?;
    let key_path = loaded.master_key_path();
    let master = MasterKey::load(&key_path)?;
    match Store::open(loaded.store_config(), master) {
        Err(StoreError::WrongMasterKey { .. }) if pending_key_path(&key_path).exists() => {
            let pending = pending_key_path(&key_path);
            let store = Store::open(loaded.store_config(), MasterKey::load(&pending)?)?;
            finish_rotation(&key_path)?;
            eprintln!("sealpost: finished an interrupted master key rotation");
            Ok((loaded, store))
        }
        other => Ok((loaded, other?)),
    }
}

fn pending_key_path(key_path: &Path) -> PathBuf {
    key_path.with_extension("key.new")
}

/// Puts the new key in place: the old one is kept beside it, renamed, for old backups.
fn finish_rotation(key_path: &Path) -> anyhow::Result<PathBuf> {
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let retired = key_path.with_extension(format!("key.retired-{stamp}"));
    std::fs::rename(key_path, &retired)
        .with_context(|| format!("renaming {}", key_path.display()))?;
    std::fs::rename(pending_key_path(key_path), key_path)
        .with_context(|| format!("renaming into {}", key_path.display()))?;
    if let Some(dir) = key_path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(retired)
}

pub(crate) fn key(command: KeyCommand, data: &Path) -> anyhow::Result<ExitCode> {
    match command {
        KeyCommand::Rotate => {
            let (loaded, store) = open_store(data)?;
            let key_path = loaded.master_key_path();
            let pending = pending_key_path(&key_path);
            if pending.exists() {
                bail!(
                    "{} exists: a rotation is in progress or failed; inspect it before rotating again",
                    pending.display()
                );
            }
            let new_master = MasterKey::create_file(&pending)?;
            let count = store.rotate_master_key(new_master, &Actor::cli())?;
            drop(store);
            let retired = finish_rotation(&key_path)?;
            println!("master key rotated: {count} account key sets re-wrapped; mail was not re-encrypted");
            println!("new key: {}", key_path.display());
            println!(
                "old key: {} (needed only for backups made before now: move it offline or destroy it)",
                retired.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
