//! `sealpost audit …`: search, export and verify the audit log (against the store, or a
//! backup's copy with an anchor).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use sealpost_console::ExportFormat;
use sealpost_storage::{AuditSearch, Error as StoreError, Store};

use super::{admin, format_ms, parse_since, Admin, Run};

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Walk the keyed chain and report the first broken link; with what was kept outside
    /// the store (a record count, anchors from the server's log or a backup's manifest), also
    /// a chain cut or rewritten below it. Exits 1 if broken or short.
    Verify {
        /// Report a chain of fewer records than N (a count seen earlier: a previous verify,
        /// the server's log, a backup's anchor).
        #[arg(long, value_name = "N")]
        expect_at_least: Option<u64>,
        /// An anchor SEQ:LINK, as the server logs it every hour ("audit anchor") and backups
        /// keep it: the chain must still hold record SEQ with that link. Repeatable.
        #[arg(long, value_name = "SEQ:LINK")]
        anchor: Vec<String>,
        /// Check the chain against the anchor in this backup's manifest (the backup is
        /// decrypted with --identity and checked whole on the way).
        #[arg(long, value_name = "FILE", requires = "identity")]
        backup: Option<PathBuf>,
        /// The backup identity (`keys/backup.key` as `sealpost init` made it).
        #[arg(long, value_name = "KEYFILE", requires = "backup")]
        identity: Option<PathBuf>,
    },
    /// Search the log as the console does (every word of every field given), newest first;
    /// JSON lines.
    Search {
        #[command(flatten)]
        filter: AuditFilter,
        /// Records at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Write records, oldest first: the whole log as JSON lines, or with a filter or --format
    /// csv what the console's export writes (at most 1,000,000 records, audited).
    Export {
        #[command(flatten)]
        filter: AuditFilter,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: FormatArg,
        /// Write to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

/// The console's audit search fields.
#[derive(clap::Args, Default)]
pub(crate) struct AuditFilter {
    #[arg(long)]
    actor: Option<String>,
    #[arg(long)]
    action: Option<String>,
    #[arg(long)]
    object: Option<String>,
    /// Words anywhere in the record.
    #[arg(long)]
    text: Option<String>,
    /// Records at or after this time: RFC 3339 (2026-01-31T08:00:00Z), a date (2026-01-31,
    /// midnight UTC) or Unix seconds.
    #[arg(long)]
    since: Option<String>,
    /// Records before this time (as --since).
    #[arg(long)]
    before: Option<String>,
}

impl AuditFilter {
    fn search(&self, limit: usize) -> anyhow::Result<AuditSearch> {
        Ok(AuditSearch {
            actor: self.actor.clone(),
            action: self.action.clone(),
            object: self.object.clone(),
            text: self.text.clone(),
            since_ms: self.since.as_deref().map(parse_since).transpose()?,
            before_ms: self.before.as_deref().map(parse_since).transpose()?,
            limit,
            ..AuditSearch::default()
        })
    }

    fn narrows(&self) -> bool {
        self.actor.is_some()
            || self.action.is_some()
            || self.object.is_some()
            || self.text.is_some()
            || self.before.is_some()
    }

    fn described(&self) -> String {
        [
            ("actor", &self.actor),
            ("action", &self.action),
            ("object", &self.object),
            ("text", &self.text),
            ("since", &self.since),
            ("before", &self.before),
        ]
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={v}")))
        .collect::<Vec<_>>()
        .join("&")
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum FormatArg {
    Jsonl,
    Csv,
}

/// `audit verify --backup FILE`: the backup is read here (the identity stays with whoever
/// runs the command), its anchor then checked like `--anchor`, in the server if it runs.
pub(super) fn audit_verify_against_backup(
    expect_at_least: Option<u64>,
    mut anchors: Vec<String>,
    backup: &Path,
    identity: &Path,
    data: &Path,
) -> anyhow::Result<ExitCode> {
    let anchor = crate::backup::audit_anchor(backup, identity)?;
    eprintln!(
        "backup {} is intact; its audit anchor: {anchor}",
        backup.display()
    );
    anchors.push(anchor.to_string());
    let data_text = data.to_str().context("--data is not UTF-8")?.to_string();
    let mut args = vec![
        "audit".to_string(),
        "verify".into(),
        "--data".into(),
        data_text,
    ];
    for anchor in &anchors {
        args.extend(["--anchor".to_string(), anchor.clone()]);
    }
    if let Some(n) = expect_at_least {
        args.extend(["--expect-at-least".to_string(), n.to_string()]);
    }
    if crate::control::connect(data).is_some() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out) = crate::control::run_in_server(data, &args)?;
        std::io::stdout().write_all(&out)?;
        return Ok(ExitCode::from(code));
    }
    admin(
        Admin::Audit(AuditCommand::Verify {
            expect_at_least,
            anchor: anchors,
            backup: None,
            identity: None,
        }),
        data,
    )
}

/// `audit verify`: the chain, then what was kept outside the store.
fn audit_verify(
    expect_at_least: Option<u64>,
    anchors: &[String],
    run: &mut Run<'_>,
) -> anyhow::Result<u8> {
    let anchors = anchors
        .iter()
        .map(|text| {
            sealpost_storage::AuditAnchor::parse(text).with_context(|| {
                format!("--anchor {text}: expected SEQ:LINK (a number, a colon, 64 hex digits)")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let report = run.store().audit_verify_against(&anchors)?;
    let mut code = 0;
    match &report.first_break {
        None => {
            writeln!(
                run.out,
                "audit chain intact: {} records verified",
                report.records_verified
            )?;
            if report.keyed_from > 1 {
                writeln!(
                    run.out,
                    "records 1..={} were written before the chain was keyed: linked by SHA-256 only",
                    report.keyed_from - 1
                )?;
            }
        }
        Some(broken) => {
            writeln!(
                run.out,
                "audit chain BROKEN at record {}: {} ({} records before it verified)",
                broken.seq, broken.reason, report.records_verified
            )?;
            code = 1;
        }
    }
    if let Some(expected) = expect_at_least {
        if report.records_verified < expected {
            writeln!(
                run.out,
                "audit chain SHORTER than expected: {} records verified, at least {expected} expected: records were removed",
                report.records_verified
            )?;
            code = 1;
        }
    }
    for anchor in &anchors {
        match report
            .anchors_failed
            .iter()
            .find(|failed| failed.seq == anchor.seq)
        {
            None => writeln!(run.out, "anchor {} holds", anchor.seq)?,
            Some(failed) => {
                writeln!(
                    run.out,
                    "anchor {} does NOT hold: {}",
                    anchor.seq, failed.reason
                )?;
                code = 1;
            }
        }
    }
    Ok(code)
}

pub(super) fn audit(command: AuditCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
    match command {
        AuditCommand::Verify {
            expect_at_least,
            anchor,
            backup: None,
            ..
        } => audit_verify(expect_at_least, &anchor, run),
        AuditCommand::Verify {
            backup: Some(_), ..
        } => {
            // The client reads the backup and sends its anchor as --anchor (see `admin`).
            bail!(
                "--backup is read by the command itself, not in the server: give --anchor SEQ:LINK"
            )
        }
        AuditCommand::Search { filter, limit, .. } => {
            let page = run.store().audit_search(
                &filter.search(limit.min(sealpost_storage::AUDIT_COUNT_EXACT_MAX))?,
            )?;
            for record in &page.records {
                writeln!(run.out, "{}", sealpost_console::audit_json_line(record))?;
            }
            writeln!(
                run.err,
                "{}{} records match",
                if page.matched_exact { "" } else { "more than " },
                page.matched
            )?;
            Ok(0)
        }
        AuditCommand::Export {
            filter,
            format,
            output,
            ..
        } => {
            let mut file;
            let writer: &mut dyn Write = match (&output, run.via_server) {
                (Some(path), false) => {
                    file = std::io::BufWriter::new(
                        std::fs::File::create(path)
                            .with_context(|| format!("creating {}", path.display()))?,
                    );
                    &mut file
                }
                _ => &mut *run.out,
            };
            let count = if filter.narrows() || matches!(format, FormatArg::Csv) {
                let search = filter.search(sealpost_console::AUDIT_EXPORT_RECORDS_MAX)?;
                let format = match format {
                    FormatArg::Csv => ExportFormat::Csv,
                    FormatArg::Jsonl => ExportFormat::JsonLines,
                };
                sealpost_console::export_audit(
                    &run.console.store,
                    &run.actor,
                    &search,
                    &filter.described(),
                    format,
                    writer,
                )?
            } else {
                whole_log(&run.console.store, &filter, writer)?
            };
            writer.flush()?;
            if output.is_some() {
                writeln!(run.err, "exported {count} records")?;
            }
            Ok(0)
        }
    }
}

/// The whole log from `--since` as JSON lines, each with its time spelled out (an archive:
/// no bound on the count).
fn whole_log(store: &Store, filter: &AuditFilter, writer: &mut dyn Write) -> anyhow::Result<usize> {
    let since_ms = filter
        .since
        .as_deref()
        .map(parse_since)
        .transpose()?
        .unwrap_or(i64::MIN);
    let mut count = 0usize;
    store.audit_records(since_ms, &mut |record| {
        let mut line = serde_json::to_value(&record).map_err(|_| StoreError::InvalidInput {
            what: "audit record",
        })?;
        if let Some(object) = line.as_object_mut() {
            object.insert(
                "at".to_string(),
                serde_json::Value::String(format_ms(record.at_ms)),
            );
            object.insert(
                "outcome".to_string(),
                serde_json::Value::String(record.event.outcome.as_str().to_string()),
            );
        }
        writeln!(writer, "{line}").map_err(|source| StoreError::Io {
            path: PathBuf::from("(output)"),
            source,
        })?;
        count += 1;
        Ok(())
    })?;
    Ok(count)
}
