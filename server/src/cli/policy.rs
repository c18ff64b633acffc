//! `sealpost policy …`: the console's Policies page as commands (show, set from standard
//! input, history, try a message against the rules).

use anyhow::Context;
use clap::Subcommand;
use sealpost_console::PolicyRefusal;

use super::{format_ms, Run};

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// The policy in force (or a saved version) as TOML, which `set` takes back.
    Show {
        #[arg(long)]
        version: Option<u64>,
    },
    /// Check the policy on standard input (TOML) and save it as the next version, in force at
    /// once in a running server. Nothing changes if it does not check.
    Set,
    /// The saved versions, newest first: who saved each and when.
    History,
    /// Which content rules of the policy in force a sample text matches (nothing is sent).
    Try {
        #[arg(long, default_value = "")]
        subject: String,
        #[arg(long, default_value = "")]
        text: String,
    },
}

/// The policy in force: the server's, or without one the saved version (or version 0).
fn policy_in_force(run: &Run<'_>) -> anyhow::Result<sealpost_policy::PolicyConfig> {
    if let Some(rules) = &run.console.rules {
        return Ok(rules.current().config().clone());
    }
    Ok(match sealpost_console::saved_policy(run.store()) {
        Some(saved) => saved.config,
        None => crate::serve::version_zero(&run.loaded.config),
    })
}

pub(super) fn policy(command: PolicyCommand, run: &mut Run<'_>) -> anyhow::Result<u8> {
    match command {
        PolicyCommand::Show { version: None, .. } => {
            let config = policy_in_force(run)?;
            match sealpost_console::saved_policy(run.store()) {
                Some(saved) => writeln!(
                    run.err,
                    "version {} in force, saved by {} on {}",
                    saved.version,
                    saved.saved_by,
                    format_ms(saved.saved_ms)
                )?,
                None => writeln!(run.err, "version 0 in force: the rules of sealpost.toml")?,
            }
            write!(run.out, "{}", sealpost_console::policy_toml(&config))?;
        }
        PolicyCommand::Show {
            version: Some(version),
            ..
        } => {
            let name = sealpost_policy::PolicyVersion::history_name(version);
            let saved: sealpost_policy::PolicyVersion = run
                .store()
                .secret(&name)?
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .with_context(|| format!("no saved policy version {version}"))?;
            write!(run.out, "{}", sealpost_console::policy_toml(&saved.config))?;
        }
        PolicyCommand::Set => {
            let rules = run.input.clone().unwrap_or_default();
            match sealpost_console::save_policy(run.console, &run.actor, &rules) {
                Ok(version) => {
                    let when = if run.via_server {
                        "in force from now on"
                    } else {
                        "in force when the server starts"
                    };
                    writeln!(run.out, "saved as version {version}; {when}")?;
                }
                Err(PolicyRefusal::Invalid(why)) => {
                    writeln!(
                        run.err,
                        "sealpost: not saved: {why}; the policy in force did not change"
                    )?;
                    return Ok(1);
                }
                Err(PolicyRefusal::Store(error)) => return Err(error.into()),
            }
        }
        PolicyCommand::History => {
            for version in sealpost_console::policy_history(run.store()) {
                writeln!(
                    run.out,
                    "version {}  {}  {}",
                    version.version,
                    format_ms(version.saved_ms),
                    version.saved_by
                )?;
            }
        }
        PolicyCommand::Try { subject, text, .. } => {
            let policy = match &run.console.rules {
                Some(rules) => rules.current(),
                None => std::sync::Arc::new(
                    sealpost_policy::Policy::new(policy_in_force(run)?)
                        .map_err(|e| anyhow::anyhow!("{e}"))?,
                ),
            };
            let findings = sealpost_console::try_policy(&policy, &subject, &text);
            if findings.is_empty() {
                writeln!(run.out, "no rule matches")?;
            }
            for finding in findings {
                writeln!(run.out, "{finding}")?;
            }
        }
    }
    Ok(0)
}
