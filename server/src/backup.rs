//! Encrypted backups: a consistent checkpoint of the store (taken while the server runs), the
//! configuration, the master key and the TLS files, as one tar stream encrypted to the backup
//! recipient (age, X25519), with a manifest of every file's size and SHA-256 last. `verify`
//! decrypts and checks every file against the manifest without writing anything; `restore`
//! writes it all into an empty folder, checks it the same way, then opens the store and walks
//! the audit chain, so that what it leaves is ready for `sealpost serve`.
//!
//! The manifest also keeps the audit chain's head as it was when the checkpoint was taken
//! (record number and link): an anchor outside the store, against which `sealpost audit verify
//! --backup FILE` shows a live chain that was cut or rewritten below it.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Loaded;
use crate::now_ms;

/// The backup format this version writes and reads.
pub(crate) const BACKUP_FORMAT: u32 = 1;
/// The manifest's name, the last entry of the archive.
const MANIFEST: &str = "MANIFEST.json";
/// Largest manifest read back, in bytes.
const MANIFEST_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Files one backup may hold (the store's files, the configuration, keys, certificate).
pub(crate) const BACKUP_FILES_MAX: usize = 1_000_000;

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    created_ms: i64,
    domain: String,
    files: Vec<FileEntry>,
    /// The audit chain's head at the checkpoint; absent in backups made before anchors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    audit: Option<ManifestAnchor>,
}

/// An audit anchor as the manifest keeps it.
#[derive(Serialize, Deserialize)]
struct ManifestAnchor {
    seq: u64,
    /// The link (MAC) of record `seq`, in hex.
    link: String,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
struct FileEntry {
    path: String,
    bytes: u64,
    sha256: String,
}

/// What a backup holds.
pub(crate) struct Summary {
    pub(crate) files: usize,
    pub(crate) bytes: u64,
    pub(crate) created_ms: i64,
    /// The audit chain's head the backup holds.
    pub(crate) audit: Option<sealpost_storage::AuditAnchor>,
}

/// Counts and hashes what passes through.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A path of the data folder's layout, as kept in the archive: relative, without `..`.
fn archive_path(path: &Path, what: &str) -> anyhow::Result<String> {
    if path
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        bail!(
            "[paths] {what} = {}: backups take files inside the data folder only (a relative path without ..)",
            path.display()
        );
    }
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("{}: not UTF-8", path.display()))
}

/// Removes the checkpoint folder however the backup ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a backup of the data folder to `out`, encrypted to `recipient` (`age1…`).
pub(crate) fn write(
    loaded: &Loaded,
    store: &sealpost_storage::Store,
    recipient: &str,
    out: &mut dyn Write,
) -> anyhow::Result<Summary> {
    let recipient = age::x25519::Recipient::from_str(recipient.trim()).map_err(|why| {
        anyhow::anyhow!(
            "the backup recipient {recipient:?} is not an age X25519 recipient (age1…): {why}; set [backup] recipient in sealpost.toml or give --recipient"
        )
    })?;
    let cfg = &loaded.config;
    let mut files: Vec<(String, PathBuf)> = vec![("sealpost.toml".into(), loaded.file.clone())];
    for (what, path) in [
        ("master_key", &cfg.paths.master_key),
        ("tls_certificate", &cfg.paths.tls_certificate),
        ("tls_private_key", &cfg.paths.tls_private_key),
    ] {
        files.push((archive_path(path, what)?, loaded.path(path)));
    }
    if !cfg.web.logo.trim().is_empty() {
        let logo = Path::new(cfg.web.logo.trim());
        files.push((archive_path(logo, "web.logo")?, loaded.path(logo)));
    }
    let store_name = archive_path(&cfg.paths.store, "store")?;
    let store_dir = loaded.path(&cfg.paths.store);
    let scratch = store_dir.with_file_name(format!(
        ".backup-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let scratch = Scratch(scratch);
    // Read before the checkpoint, which then holds at least this record.
    let anchor = store.audit_anchor();
    store.checkpoint(&scratch.0)?;
    let mut walk = vec![scratch.0.clone()];
    while let Some(dir) = walk.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                walk.push(path);
            } else {
                let relative = path.strip_prefix(&scratch.0).context("checkpoint path")?;
                let name = format!(
                    "{store_name}/{}",
                    relative
                        .to_str()
                        .context("a store file name is not UTF-8")?
                );
                files.push((name, path));
            }
        }
        if files.len() > BACKUP_FILES_MAX {
            bail!("the store has over {BACKUP_FILES_MAX} files");
        }
    }
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
            .context("setting up the encryption")?;
    let mut encrypted = encryptor
        .wrap_output(out)
        .context("starting the encryption")?;
    let created_ms = now_ms();
    let mut manifest = Manifest {
        format: BACKUP_FORMAT,
        created_ms,
        domain: cfg.server.domain.clone(),
        files: Vec::with_capacity(files.len()),
        audit: Some(ManifestAnchor {
            seq: anchor.seq,
            link: anchor.link_hex(),
        }),
    };
    {
        let mut archive = tar::Builder::new(&mut encrypted);
        for (name, path) in &files {
            let file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let meta = file.metadata()?;
            let mut header = tar::Header::new_gnu();
            header.set_size(meta.len());
            header.set_mode(meta.permissions().mode() & 0o777);
            header.set_mtime(u64::try_from(created_ms / 1000).unwrap_or(0));
            let mut hashing = Hashing {
                inner: file.take(meta.len()),
                hasher: Sha256::new(),
                bytes: 0,
            };
            archive
                .append_data(&mut header, name, &mut hashing)
                .with_context(|| format!("archiving {}", path.display()))?;
            manifest.files.push(FileEntry {
                path: name.clone(),
                bytes: hashing.bytes,
                sha256: hex(&hashing.hasher.finalize()),
            });
        }
        let text = serde_json::to_vec_pretty(&manifest).context("writing the manifest")?;
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(u64::try_from(created_ms / 1000).unwrap_or(0));
        archive.append_data(&mut header, MANIFEST, text.as_slice())?;
        archive.finish().context("ending the archive")?;
    }
    let out = encrypted.finish().context("ending the encryption")?;
    out.flush().context("writing the backup")?;
    Ok(Summary {
        files: manifest.files.len(),
        bytes: manifest.files.iter().map(|f| f.bytes).sum(),
        created_ms,
        audit: Some(anchor),
    })
}

/// The age identity of a key file (`AGE-SECRET-KEY-…` on a line of its own; # comments).
fn read_identity(path: &Path) -> anyhow::Result<age::x25519::Identity> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .with_context(|| format!("{}: no AGE-SECRET-KEY line", path.display()))?;
    age::x25519::Identity::from_str(line)
        .map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))
}

/// Reads a backup through: each file to `sink` (or nowhere), checked against the manifest.
fn read_through(
    file: &Path,
    identity: &Path,
    mut sink: impl FnMut(&str, u32, &mut dyn Read) -> anyhow::Result<()>,
) -> anyhow::Result<Summary> {
    let identity = read_identity(identity)?;
    let input = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
    );
    let decryptor = age::Decryptor::new_buffered(input).context("not an age-encrypted file")?;
    let reader = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|why| anyhow::anyhow!("cannot decrypt the backup with that identity: {why}"))?;
    let mut archive = tar::Archive::new(reader);
    let mut seen: Vec<FileEntry> = Vec::new();
    let mut manifest: Option<Manifest> = None;
    for entry in archive.entries().context("reading the archive")? {
        let mut entry = entry.context("the archive is damaged")?;
        let name = entry
            .path()
            .context("an entry's name")?
            .to_str()
            .context("an entry's name is not UTF-8")?
            .to_string();
        if manifest.is_some() {
            bail!("the archive goes on after its manifest ({name})");
        }
        if name == MANIFEST {
            let mut text = Vec::new();
            (&mut entry)
                .take(MANIFEST_BYTES_MAX)
                .read_to_end(&mut text)?;
            manifest = Some(serde_json::from_slice(&text).context("the manifest does not read")?);
            continue;
        }
        archive_path(Path::new(&name), "entry")?;
        if seen.len() >= BACKUP_FILES_MAX {
            bail!("the archive has over {BACKUP_FILES_MAX} files");
        }
        let mode = entry.header().mode().unwrap_or(0o600) & 0o777;
        let mut hashing = Hashing {
            inner: &mut entry,
            hasher: Sha256::new(),
            bytes: 0,
        };
        sink(&name, mode, &mut hashing)?;
        std::io::copy(&mut hashing, &mut std::io::sink())?;
        seen.push(FileEntry {
            path: name,
            bytes: hashing.bytes,
            sha256: hex(&hashing.hasher.finalize()),
        });
    }
    let manifest = manifest.context("the backup has no manifest: it is cut short")?;
    if manifest.format != BACKUP_FORMAT {
        bail!(
            "backup format {} (this version reads {BACKUP_FORMAT})",
            manifest.format
        );
    }
    if seen != manifest.files {
        let differs = manifest
            .files
            .iter()
            .find(|want| !seen.contains(want))
            .map_or_else(|| "an extra file".to_string(), |want| want.path.clone());
        bail!("the backup does not match its manifest (first: {differs})");
    }
    let audit = match &manifest.audit {
        Some(anchor) => Some(
            sealpost_storage::AuditAnchor::parse(&format!("{}:{}", anchor.seq, anchor.link))
                .context("the manifest's audit anchor does not read")?,
        ),
        None => None,
    };
    Ok(Summary {
        files: seen.len(),
        bytes: seen.iter().map(|f| f.bytes).sum(),
        created_ms: manifest.created_ms,
        audit,
    })
}

/// Checks a backup without restoring it.
pub(crate) fn verify(file: &Path, identity: &Path) -> anyhow::Result<ExitCode> {
    let summary = read_through(file, identity, |_, _, _| Ok(()))?;
    println!(
        "backup intact: {} files, {} bytes, taken {}",
        summary.files,
        summary.bytes,
        crate::cli::format_ms(summary.created_ms)
    );
    if let Some(anchor) = summary.audit {
        println!("audit anchor: {anchor} (check a live store with sealpost audit verify --backup)");
    }
    Ok(ExitCode::SUCCESS)
}

/// The audit anchor in a backup's manifest, the backup checked whole on the way.
pub(crate) fn audit_anchor(
    file: &Path,
    identity: &Path,
) -> anyhow::Result<sealpost_storage::AuditAnchor> {
    let summary = read_through(file, identity, |_, _, _| Ok(()))?;
    summary.audit.with_context(|| {
        format!(
            "{}: this backup was made before manifests kept the audit chain's head; it has no anchor",
            file.display()
        )
    })
}

#[derive(clap::Args)]
pub(crate) struct RestoreArgs {
    /// The backup file.
    file: PathBuf,
    /// The backup identity (`keys/backup.key` as `sealpost init` made it).
    #[arg(long)]
    identity: PathBuf,
}

/// Restores a backup into an empty folder, checks it, and opens the restored store.
pub(crate) fn restore(args: &RestoreArgs, target: &Path) -> anyhow::Result<ExitCode> {
    if target.exists() {
        let mut entries =
            std::fs::read_dir(target).with_context(|| format!("reading {}", target.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} is not empty: restore into an empty or new folder",
                target.display()
            );
        }
    } else {
        std::fs::create_dir_all(target)
            .with_context(|| format!("creating {}", target.display()))?;
    }
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o750))?;
    let restored = read_through(&args.file, &args.identity, |name, mode, content| {
        let path = target.join(name);
        if let Some(parent) = path.parent() {
            if !parent.exists() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
                std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o750))?;
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        std::io::copy(content, &mut file).with_context(|| format!("writing {}", path.display()))?;
        file.sync_all()?;
        Ok(())
    });
    let summary = match restored {
        Ok(summary) => summary,
        Err(error) => {
            let _ = std::fs::remove_dir_all(target);
            return Err(error.context(format!("nothing restored ({} removed)", target.display())));
        }
    };
    let (_, store) = crate::key::open_store(target)?;
    let anchors: Vec<_> = summary.audit.into_iter().collect();
    let chain = store.audit_verify_against(&anchors)?;
    if let Some(broken) = chain.first_break {
        bail!(
            "restored, but the audit chain is broken at record {}: {}",
            broken.seq,
            broken.reason
        );
    }
    if let Some(failed) = chain.anchors_failed.first() {
        bail!(
            "restored, but the audit chain does not hold the manifest's anchor: {}",
            failed.reason
        );
    }
    println!(
        "restored {} files ({} bytes) of the backup taken {} into {}",
        summary.files,
        summary.bytes,
        crate::cli::format_ms(summary.created_ms),
        target.display()
    );
    println!(
        "audit chain intact: {} records verified; start it with sealpost serve --data {}",
        chain.records_verified,
        target.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Takes a scheduled backup into `[backup] folder` (as `sealpost-<time>.backup`, written under
/// a temporary name first) and removes the oldest past `keep`; audited.
pub(crate) fn scheduled(
    loaded: &Loaded,
    store: &sealpost_storage::Store,
) -> anyhow::Result<PathBuf> {
    let cfg = &loaded.config.backup;
    let folder = loaded.path(&cfg.folder);
    if !folder.exists() {
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("creating {}", folder.display()))?;
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o700))?;
    }
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
        ))
        .unwrap_or_default();
    let path = folder.join(format!("sealpost-{stamp}.backup"));
    let summary = crate::files::write_whole(&path, 0o600, |file| {
        write(loaded, store, &cfg.recipient, file)
    })?;
    let anchor = summary.audit.map(|a| a.to_string()).unwrap_or_default();
    store.audit(
        sealpost_storage::AuditEvent::new(
            &sealpost_storage::Actor::system(),
            "backup.create",
            "store",
        )
        .detail(format!(
            "scheduled; {} files, {} bytes; audit anchor {anchor}",
            summary.files, summary.bytes
        )),
    )?;
    tracing::info!(%anchor, "scheduled backup's audit anchor");
    let mut kept: Vec<PathBuf> = std::fs::read_dir(&folder)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("sealpost-") && n.ends_with(".backup"))
        })
        .collect();
    kept.sort();
    let keep = usize::try_from(cfg.keep.max(1)).unwrap_or(usize::MAX);
    while kept.len() > keep {
        let oldest = kept.remove(0);
        std::fs::remove_file(&oldest).with_context(|| format!("removing {}", oldest.display()))?;
    }
    Ok(path)
}
