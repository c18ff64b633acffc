//! The console's policy page: the policy in force (admin rules per domain or address, content
//! rules that may be disabled, accounts barred from sending outside, the sign-in settings and
//! the portal's link lifetime) as TOML, edited and saved as a new
//! version that takes effect at once, without a restart; checked before it is saved (a rule
//! that does not compile is refused with its reason and nothing changes); every version kept
//! with who saved it and when, audited; and a sample text tried against the rules in force.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use leptos::prelude::*;
use sealpost_auth::websession::Found;
use sealpost_storage::{Account, Actor};
use serde::Deserialize;

use crate::html::{error_line, notice_line, render, when, Frame};
use crate::request::{blocking, Admin, Csrf};
use crate::WebState;
use sealpost_console::{
    policy_history, policy_toml as as_toml, saved_policy as saved, PolicyRefusal,
};

pub(crate) async fn page(
    State(state): State<Arc<WebState>>,
    Admin { found, me, .. }: Admin,
) -> Response {
    let rules = as_toml(state.sending.rules.current().config());
    show(
        &state,
        &found,
        &me,
        rules,
        Outcome::default(),
        StatusCode::OK,
    )
    .await
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
    let (current, history) =
        blocking(move || (saved(&state2.store), policy_history(&state2.store)))
            .await
            .unwrap_or_default();
    let version = match &current {
        Some(c) => format!(
            "Version {} in force, saved by {} on {}.",
            c.version,
            c.saved_by,
            when(c.saved_ms)
        ),
        None => {
            "Version 0 in force: the rules of sealpost.toml; no version was saved here yet.".into()
        }
    };
    let history: Vec<_> = history
        .iter()
        .map(|v| view! { <li>{format!("version {} · {} · {}", v.version, v.saved_by, when(v.saved_ms))}</li> })
        .collect();
    let findings = outcome.findings.map(|list| {
        let list = if list.is_empty() {
            vec![
                "No rule matches: outside recipients with verified TLS get it by SMTP.".to_string(),
            ]
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
            Frame::new("Sending policy").account(&me.address, &found.session.csrf),
            view! {
                {notice_line(outcome.notice)}
                {error_line(outcome.error)}
                <p id="policy-version">{version}</p>
                <form method="post" action="/admin/policies" class="stack" id="policy-form">
                    {crate::html::csrf_field(&csrf)}
                    <label for="rules">"Policy (TOML: [domains] \"partner.example\" = \"always-portal\" | \"tls-allowed\" | \"tls-required\"; [[content]] rules with a detector, action \"portal\" or \"block\", enabled = true | false; barred_accounts; [sign_in] second factors, session lifetimes and lockout counters; [portal] pickup_ttl_ms, proof_required = true | false, proof_required_domains; proof_required = true on a content rule)"</label>
                    <textarea id="rules" name="rules" rows="24">{rules}</textarea>
                    <button type="submit">"Check and save as a new version"</button>
                </form>
                <h2>"Try a text against the rules in force"</h2>
                <form method="post" action="/admin/policies/test" class="stack" id="policy-test">
                    {crate::html::csrf_field(&csrf2)}
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
pub(crate) async fn save(
    State(state): State<Arc<WebState>>,
    Admin { found, me, peer }: Admin,
    Csrf(form): Csrf<SaveForm>,
) -> Response {
    let actor = Actor {
        name: me.address.clone(),
        peer: peer.0.to_string(),
    };
    let (console, rules) = (state.console(), form.rules.clone());
    let saved_version =
        blocking(move || sealpost_console::save_policy(&console, &actor, &rules)).await;
    let error = match saved_version {
        Some(Ok(version)) => {
            let rules = as_toml(state.sending.rules.current().config());
            let outcome = Outcome {
                notice: Some(format!("Saved as version {version}; in force from now on.")),
                ..Outcome::default()
            };
            return show(&state, &found, &me, rules, outcome, StatusCode::OK).await;
        }
        Some(Err(PolicyRefusal::Invalid(why))) => why,
        Some(Err(PolicyRefusal::Store(error))) => error.to_string(),
        None => {
            return crate::html::message_page_status(
                StatusCode::SERVICE_UNAVAILABLE,
                "Not saved",
                "Try again.",
            )
        }
    };
    let outcome = Outcome {
        error: Some(format!(
            "Not saved: {error}. The rules in force did not change."
        )),
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

#[derive(Deserialize)]
pub(crate) struct TestForm {
    csrf: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    text: String,
}

/// What the rules in force find in a sample text (nothing is sent or stored).
pub(crate) async fn test(
    State(state): State<Arc<WebState>>,
    Admin { found, me, .. }: Admin,
    Csrf(form): Csrf<TestForm>,
) -> Response {
    let policy = state.sending.rules.current();
    let findings = sealpost_console::try_policy(&policy, &form.subject, &form.text);
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
    use sealpost_policy::{Policy, PolicyConfig};

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
