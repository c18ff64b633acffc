//! The running server's facts and duties as commands: `sealpost health`, `dns records`,
//! `certificate …` and `backup`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;

use super::{format_ms, Run};
use crate::files::write_whole;
use crate::now_ms;

#[derive(Subcommand)]
pub(crate) enum CertificateCommand {
    /// The certificate in `[paths]`: names, issuer, expiry.
    Show,
    /// Obtain a certificate from `[acme] directory` now and put it in force (the server
    /// must run: it answers the CA's challenge).
    Renew,
    /// Read the certificate files again and put them in force (after replacing them by hand).
    Reload,
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct BackupArgs {
    #[command(subcommand)]
    pub(crate) check: Option<BackupCheck>,
    /// The file to write (written under FILE.part, renamed when whole).
    #[arg(long)]
    pub(crate) to: Option<PathBuf>,
    /// Encrypt to this age recipient instead of `[backup] recipient`.
    #[arg(long)]
    recipient: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum BackupCheck {
    /// Decrypt a backup and check every file against its manifest, writing nothing.
    Verify {
        file: PathBuf,
        /// The backup identity (`keys/backup.key` as `sealpost init` made it).
        #[arg(long)]
        identity: PathBuf,
    },
}

pub(super) fn certificate(command: CertificateCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
    let cfg = &run.loaded.config;
    match command {
        CertificateCommand::Show => {
            let path = run.loaded.path(&cfg.paths.tls_certificate);
            let pem =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let der = rustls_pemfile::certs(&mut pem.as_slice())
                .next()
                .context("no certificate in the file")??;
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let (names, not_after) =
                crate::serve::certificate_facts(&path).context("the certificate does not read")?;
            writeln!(run.out, "certificate {}", path.display())?;
            writeln!(run.out, "  names    {}", names.join(", "))?;
            writeln!(run.out, "  issuer   {}", cert.issuer())?;
            writeln!(run.out, "  serial   {}", cert.raw_serial_as_string())?;
            writeln!(run.out, "  expires  {}", format_ms(not_after))?;
        }
        CertificateCommand::Renew => {
            let (Some(certs), Some(runtime)) = (run.certs, run.runtime) else {
                bail!(
                    "the server is not running: start it (it answers the CA's challenge on its HTTPS port), then renew"
                );
            };
            let ends =
                runtime.block_on(crate::acme::obtain(run.loaded, &run.console.store, certs))?;
            writeln!(
                run.out,
                "certificate obtained, in force for new connections; valid until {}",
                format_ms(ends)
            )?;
        }
        CertificateCommand::Reload => {
            let Some(certs) = run.certs else {
                bail!("the server is not running: it reads the files when it starts");
            };
            certs.reload(run.loaded)?;
            run.store().audit(sealpost_storage::AuditEvent::new(
                &run.actor,
                "certificate.reload",
                cfg.server.hostname.clone(),
            ))?;
            writeln!(
                run.out,
                "certificate files read again; in force for new connections"
            )?;
        }
    }
    Ok(0)
}

/// A backup to `--to` (or, through the control socket, to the client, which writes the file).
pub(super) fn backup(args: BackupArgs, run: &mut Run<'_>) -> anyhow::Result<u8> {
    let to = args.to.context("--to FILE is required")?;
    let recipient = args
        .recipient
        .unwrap_or_else(|| run.loaded.config.backup.recipient.clone());
    let summary = if run.via_server {
        crate::backup::write(run.loaded, &run.console.store, &recipient, &mut *run.out)?
    } else {
        write_whole(&to, 0o600, |file| {
            crate::backup::write(run.loaded, run.store(), &recipient, file)
        })?
    };
    let anchor = summary.audit.map(|a| a.to_string()).unwrap_or_default();
    run.store().audit(
        sealpost_storage::AuditEvent::new(&run.actor, "backup.create", "store").detail(format!(
            "{} files, {} bytes; audit anchor {anchor}",
            summary.files, summary.bytes
        )),
    )?;
    writeln!(
        run.err,
        "backup of {} files ({} bytes) encrypted to {} into {}; audit anchor {anchor}",
        summary.files,
        summary.bytes,
        recipient.trim(),
        to.display()
    )?;
    Ok(0)
}

#[derive(Subcommand)]
pub(crate) enum DnsCommand {
    /// Print MX, SPF, DKIM, DMARC, MTA-STS and TLS-RPT records for the primary domain.
    Records,
}

/// `dns records`: the records to publish (DKIM keys made first if there are none).
pub(super) fn dns(command: DnsCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
    match command {
        DnsCommand::Records => {
            crate::dkim::ensure_keys(run.store())?;
            write!(
                run.out,
                "{}",
                crate::dkim::dns_records(run.loaded, run.store())?
            )?;
            Ok(0)
        }
    }
}

pub(super) fn health(run: &mut Run<'_>) -> anyhow::Result<u8> {
    let built;
    let info = match run.health {
        Some(info) => info,
        None => {
            built = crate::serve::health_facts(run.loaded, run.store(), None)?;
            &built
        }
    };
    let figures =
        sealpost_console::health_figures(run.store()).context("the store could not be read")?;
    let dns = match run.runtime {
        Some(handle) => handle.block_on((info.dns_check)()),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a runtime for the DNS check")?
            .block_on((info.dns_check)()),
    };
    let out = &mut *run.out;
    writeln!(
        out,
        "server: {}",
        if run.via_server {
            "running"
        } else {
            "not running"
        }
    )?;
    for (name, address) in &info.listeners {
        writeln!(out, "listener {name:<22} {address}")?;
    }
    match &info.certificate {
        Some((names, not_after)) => {
            let days = (not_after - now_ms()) / (24 * 3600 * 1000);
            let state = if days < 0 {
                "EXPIRED".to_string()
            } else {
                format!("{days} days left")
            };
            writeln!(
                out,
                "certificate for {} valid until {} ({state})",
                names.join(", "),
                format_ms(*not_after)
            )?;
        }
        None => writeln!(out, "certificate: could not be read")?,
    }
    writeln!(out, "spam filter: {}", (info.spam_status)())?;
    writeln!(out, "store {} bytes", figures.store_bytes)?;
    if let Some((bytes, over_ms)) = figures.growth {
        writeln!(
            out,
            "store growth {bytes:+} bytes in {:.1} days",
            over_ms as f64 / 86_400_000.0
        )?;
    }
    writeln!(out, "queue {} waiting", figures.queue_depth)?;
    if let Some(oldest) = figures.oldest_queued_ms {
        writeln!(out, "queue oldest since {}", format_ms(oldest))?;
    }
    for (domain, count) in &figures.failures {
        writeln!(out, "delivery failures (7 days) {domain}: {count}")?;
    }
    writeln!(
        out,
        "refused sign-ins (24 hours) {}",
        figures.sign_in_failures_total
    )?;
    for (who, count) in &figures.sign_in_failures {
        writeln!(out, "refused sign-ins (24 hours) {who}: {count}")?;
    }
    let mut missing = 0;
    for finding in &dns {
        let state = match &finding.state {
            Ok(true) => "published".to_string(),
            Ok(false) => {
                missing += 1;
                format!("differs: DNS answers {}", finding.answer)
            }
            Err(why) => {
                missing += 1;
                format!("missing ({why})")
            }
        };
        writeln!(out, "dns {}: {state}", finding.record)?;
    }
    if missing > 0 {
        writeln!(
            out,
            "{missing} DNS records to publish or fix (`sealpost dns records` prints them)"
        )?;
    }
    Ok(0)
}
