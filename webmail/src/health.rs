//! The console's health page (the figures come from `sealpost_console::health`) and
//! `/metrics` for the configured networks. Admins only.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use leptos::prelude::*;
use sealpost_console::health::{figures, human_bytes, in_network};

use crate::html::{render, when, Frame};
use crate::request::{blocking, now_ms, Admin};
use crate::WebState;

pub(crate) async fn page(
    State(state): State<Arc<WebState>>,
    Admin { found, me, .. }: Admin,
) -> Response {
    let state2 = state.clone();
    let Some(Some(figures)) = blocking(move || figures(&state2.store)).await else {
        return crate::html::message_page_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "The store could not be read.",
        );
    };
    let dns = (state.health.dns_check)().await;
    let health = &state.health;
    let listeners: Vec<_> = health
        .listeners
        .iter()
        .map(|(name, address)| view! { <tr><td>{name.clone()}</td><td>{address.clone()}</td></tr> })
        .collect();
    let certificate = match &health.certificate {
        Some((names, not_after)) => {
            let days = (not_after - now_ms()) / (24 * 3600 * 1000);
            let warning = if days < 0 {
                " (EXPIRED)".to_string()
            } else if days < 21 {
                format!(" (expires in {days} days: renew it)")
            } else {
                format!(" ({days} days left)")
            };
            format!(
                "for {}, valid until {}{warning}",
                names.join(", "),
                when(*not_after)
            )
        }
        None => "could not be read".into(),
    };
    let growth = match figures.growth {
        Some((bytes, over_ms)) => format!(
            "{}{} in the last {:.1} days",
            if bytes < 0 { "-" } else { "+" },
            human_bytes(bytes.unsigned_abs()),
            over_ms as f64 / (24.0 * 3600.0 * 1000.0)
        ),
        None => "growth shows after an hour of samples".into(),
    };
    let queue = match figures.oldest_queued_ms {
        Some(oldest) => format!(
            "{} waiting; the oldest since {}",
            figures.queue_depth,
            when(oldest)
        ),
        None => "empty".into(),
    };
    let failures: Vec<_> = figures
        .failures
        .iter()
        .map(|(domain, count)| view! { <tr><td>{domain.clone()}</td><td>{*count}</td></tr> })
        .collect();
    let sign_ins: Vec<_> = figures
        .sign_in_failures
        .iter()
        .map(|(who, count)| view! { <tr><td>{who.clone()}</td><td>{*count}</td></tr> })
        .collect();
    let dns_rows: Vec<_> = dns
        .iter()
        .map(|finding| {
            let (state, class) = match &finding.state {
                Ok(true) => ("published".to_string(), "ok"),
                Ok(false) => (format!("differs: DNS answers {}", finding.answer), "error"),
                Err(why) => (format!("missing ({why})"), "error"),
            };
            view! { <tr><td>{finding.record.clone()}</td><td class=class>{state}</td></tr> }
        })
        .collect();
    let zone = health.dns_zone.clone();
    render(
        Frame::new("Health").account(&me.address, &found.session.csrf),
        view! {
            <h2>"Listeners"</h2>
            <table id="listeners">{listeners}</table>
            <p id="certificate">{format!("TLS certificate {certificate}.")}</p>
            <h2>"Store and queue"</h2>
            <p id="spam-filter">{format!("Spam filter: {}.", (health.spam_status)())}</p>
            <p id="store-size">{format!("The store takes {} ({growth}).", human_bytes(figures.store_bytes))}</p>
            <p id="queue-depth">{format!("Queue: {queue}.")}</p>
            <h2>"Delivery failures in the last 7 days, by domain"</h2>
            <table id="failures"><tr><th>"Domain"</th><th>"Failed recipients"</th></tr>{failures}</table>
            <h2>"Failed sign-ins in the last 24 hours"</h2>
            <p id="sign-in-failures">{format!("{} refused sign-ins.", figures.sign_in_failures_total)}</p>
            <table><tr><th>"Account"</th><th>"Refusals"</th></tr>{sign_ins}</table>
            <h2>"DNS"</h2>
            <table id="dns"><tr><th>"Record"</th><th>"Now"</th></tr>{dns_rows}</table>
            <details><summary>"The records to publish"</summary><pre>{zone}</pre></details>
        },
    )
    .into_response()
}

/// Renders the Prometheus text of /metrics (the binary wires it to its counters).
pub type RenderMetrics =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// `/metrics`: who may read it (networks as (address, prefix length)) and what it says.
pub struct MetricsEndpoint {
    pub from: Vec<(std::net::IpAddr, u8)>,
    pub render: RenderMetrics,
}

/// `/metrics` in Prometheus text, for the configured networks only (404 to anyone else, as if
/// there were no such page).
pub(crate) async fn metrics(
    State(state): State<Arc<WebState>>,
    axum::extract::Extension(peer): axum::extract::Extension<crate::Peer>,
) -> Response {
    let endpoint = &state.metrics;
    if !endpoint
        .from
        .iter()
        .any(|network| in_network(peer.0.ip(), *network))
    {
        return crate::html::message_page_status(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such page.",
        );
    }
    let text = (endpoint.render)().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
