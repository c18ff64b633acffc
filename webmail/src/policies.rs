//! The console's policy page: the sending rules in force (admin rules per domain or address,
//! content rules, accounts barred from sending outside) as TOML, edited and saved as a new
//! version that takes effect at once, without a restart; checked before it is saved (a rule
//! that does not compile is refused with its reason and nothing changes); every version kept
//! with who saved it and when, audited; and a sample text tried against the rules in force.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use leptos::prelude::*;
use sealpost_auth::websession::Found;
use sealpost_policy::{Content, Policy, PolicyConfig, PolicyVersion};
use sealpost_storage::{Account, Actor, AuditEvent};
use serde::Deserialize;

use crate::admin::{admin, AdminForm};
use crate::html::{error_line, notice_line, render, when, Frame};
use crate::request::{blocking, now_ms};
use crate::WebState;

/// Versions listed in the history, newest first.
pub(crate) const POLICY_VERSIONS_LISTED: u64 = 20;

/// The version in force as saved (`None`: the rules of `sealpost.toml`, version 0).
fn saved(store: &sealpost_storage::Store) -> Option<PolicyVersion> {
    let bytes = store.secret(PolicyVersion::CURRENT).ok()??;
    serde_json::from_slice(&bytes).ok()
}

fn as_toml(config: &PolicyConfig) -> String {
    toml::to_string(config).unwrap_or_default()
}

pub(crate) async fn page(State(state): State<Arc<WebState>>, headers: HeaderMap) -> Response {
    let (found, me) = match admin(&state, &headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let rules = as_toml(state.sending.rules.current().config());
    show(&state, &found, &me, rules, Outcome::default(), StatusCode::OK).await
}

#[derive(Default)]
struct Outcome {
    notice: Option<String>,
    error: Option<String>,
    findings: Option<Vec<String>>,
}

async fn show(
    state: &Arc<WebState>,
    found: &Found,
    me: &Account,
    rules: String,
    outcome: Outcome,
    status: StatusCode,
) -> Response {
    let state2 = state.clone();
    let (current, history) = blocking(move || {
        let current = saved(&state2.store);
        let newest = current.as_ref().map_or(0, |c| c.version);
        let history: Vec<PolicyVersion> = (1..=newest)
            .rev()
            .take(POLICY_VERSIONS_LISTED as usize)
            .filter_map(|v| {
                let bytes = state2.store.secret(&PolicyVersion::history_name(v)).ok()??;
                serde_json::from_slice(&bytes).ok()
            })
            .collect();
        (current, history)
    })
    .await
    .unwrap_or_default();
    let version = match &current {
        Some(c) => format!(
            "Version {} in force, saved by {} on {}.",
            c.version,
            c.saved_by,
            when(c.saved_ms)
        ),
        None => "Version 0 in force: the rules of sealpost.toml; no version was saved here yet.".into(),
    };
    let history: Vec<_> = history
        .iter()
        .map(|v| view! { <li>{format!("version {} · {} · {}", v.version, v.saved_by, when(v.saved_ms))}</li> })
        .collect();
    let findings = outcome.findings.map(|list| {
        let list = if list.is_empty() {
            vec!["No rule matches: outside recipients with verified TLS get it by SMTP.".to_string()]
        } else {
            list
        };
        let items: Vec<_> = list.into_iter().map(|f| view! { <li>{f}</li> }).collect();
        view! { <ul id="findings">{items}</ul> }
    });
    let (csrf, csrf2) = (found.session.csrf.clone(), found.session.csrf.clone());
    (
        status,
        render(
            Frame {
                title: "Sending policy",
                csrf: Some(&found.session.csrf),
                account: Some((&me.address, &found.session.csrf)),
                script: false,
            },
            view! {
                {notice_line(outcome.notice)}
                {error_line(outcome.error)}
                <p id="policy-version">{version}</p>
                <form method="post" action="/admin/policies" class="stack" id="policy-form">
                    <input type="hidden" name="csrf" value=csrf/>
                    <label for="rules">"Rules (TOML: [domains] \"partner.example\" = \"always-portal\" | \"tls-allowed\" | \"tls-required\"; [[content]] rules with a detector and action \"portal\" or \"block\"; barred_accounts)"</label>
                    <textarea id="rules" name="rules" rows="24">{rules}</textarea>
                    <button type="submit">"Check and save as a new version"</button>
                </form>
                <h2>"Try a text against the rules in force"</h2>
                <form method="post" action="/admin/policies/test" class="stack" id="policy-test">
                    <input type="hidden" name="csrf" value=csrf2/>
                    <label for="sample-subject">"Subject"</label>
                    <input type="text" id="sample-subject" name="subject"/>
                    <label for="sample">"Text"</label>
                    <textarea id="sample" name="text" rows="5"></textarea>
                    <button type="submit" class="quiet">"Try"</button>
                </form>
                {findings}
                <h2>"Saved versions"</h2>
                <ul id="policy-history">{history}</ul>
            },
        ),
    )
        .into_response()
}

#[derive(Deserialize)]
pub(crate) struct SaveForm {
    csrf: String,
    rules: String,
}

/// Checks the rules, saves them as the next version (kept, audited) and puts them in force.
pub(crate) async fn save(State(state): State<Arc<WebState>>, checked: AdminForm<SaveForm>) -> Response {
    let AdminForm { found, me, form, peer } = checked;
    let checked = toml::from_str::<PolicyConfig>(&form.rules)
        .map_err(|e| format!("The rules do not read as TOML: {}", e.message()))
        .and_then(|config| Policy::new(config.clone()).map(|policy| (config, policy)));
    let (config, policy) = match checked {
        Ok(ok) => ok,
        Err(error) => {
            let outcome = Outcome {
                error: Some(format!("Not saved: {error}. The rules in force did not change.")),
                ..Outcome::default()
            };
            return show(
                &state,
                &found,
                &me,
                form.rules,
                outcome,
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
        }
    };
    let actor = Actor {
        name: me.address.clone(),
        peer: peer.0.to_string(),
    };
    let state2 = state.clone();
    let summary = format!(
        "{} domain rules, {} content rules, {} barred accounts",
        config.domains.len(),
        config.content.len(),
        config.barred_accounts.len()
    );
    let saved_version = blocking(move || {
        let version = saved(&state2.store).map_or(0, |c| c.version) + 1;
        let record = PolicyVersion {
            version,
            saved_ms: now_ms(),
            saved_by: actor.name.clone(),
            config,
        };
        let bytes =
            serde_json::to_vec(&record).map_err(|_| sealpost_storage::Error::InvalidInput { what: "policy" })?;
        state2
            .store
            .set_secret(&PolicyVersion::history_name(version), &bytes, &actor)?;
        state2.store.set_secret(PolicyVersion::CURRENT, &bytes, &actor)?;
        state2
            .store
            .audit(AuditEvent::new(&actor, "policy.change", format!("policy version {version}")).detail(summary))?;
        Ok::<_, sealpost_storage::Error>(version)
    })
    .await;
    match saved_version {
        Some(Ok(version)) => {
            state.sending.rules.replace(policy);
            let rules = as_toml(state.sending.rules.current().config());
            let outcome = Outcome {
                notice: Some(format!("Saved as version {version}; in force from now on.")),
                ..Outcome::default()
            };
            show(&state, &found, &me, rules, outcome, StatusCode::OK).await
        }
        Some(Err(error)) => {
            let outcome = Outcome {
                error: Some(format!("Not saved: {error}. The rules in force did not change.")),
                ..Outcome::default()
            };
            show(
                &state,
                &found,
                &me,
                form.rules,
                outcome,
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
        None => crate::html::message_page_status(StatusCode::SERVICE_UNAVAILABLE, "Not saved", "Try again."),
    }
}

#[derive(Deserialize)]
pub(crate) struct TestForm {
    csrf: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    text: String,
}

/// What the rules in force find in a sample text (nothing is sent or stored).
pub(crate) async fn test(State(state): State<Arc<WebState>>, checked: AdminForm<TestForm>) -> Response {
    let AdminForm { found, me, form, .. } = checked;
    let policy = state.sending.rules.current();
    let findings: Vec<String> = policy
        .scan(&Content {
            subject: &form.subject,
            text: &form.text,
            attachment_names: Vec::new(),
        })
        .into_iter()
        .map(|f| format!("rule {} matches: {:?}", f.rule, f.action).to_lowercase())
        .collect();
    let rules = as_toml(policy.config());
    let outcome = Outcome {
        findings: Some(findings),
        ..Outcome::default()
    };
    show(&state, &found, &me, rules, outcome, StatusCode::OK).await
}

crate::request::with_csrf!(SaveForm, TestForm);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_read_back_from_their_toml_and_take_one_more_rule_appended() {
        let config = PolicyConfig::default();
        let text = as_toml(&config);
        assert_eq!(toml::from_str::<PolicyConfig>(&text).unwrap(), config);
        let more = format!(
            "{text}\n[[content]]\nname = \"blockword\"\ndetector = \"keywords\"\nwords = [\"BLOCKWORD\"]\naction = \"block\"\n"
        );
        let extended: PolicyConfig = toml::from_str(&more).unwrap();
        assert_eq!(extended.content.len(), config.content.len() + 1);
        assert!(Policy::new(extended).is_ok());
    }
}
