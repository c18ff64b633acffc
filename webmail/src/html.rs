//! The page frame, rendered by leptos on the server. No hydration, no inline script: the
//! only script is `/static/webauthn.js`, included where a page has a passkey form.

use std::sync::OnceLock;

use axum::response::Html;
use leptos::prelude::*;

/// The organisation every page names, and whether it has a logo (at `/static/logo`). Set once
/// when the application is made (one per process).
#[derive(Clone, Debug, Default)]
pub struct Brand {
    pub organisation: String,
    /// The logo's bytes and media type.
    pub logo: Option<(Vec<u8>, &'static str)>,
}

static BRAND: OnceLock<Brand> = OnceLock::new();

pub(crate) fn set_brand(brand: Brand) {
    let _ = BRAND.set(brand);
}

pub(crate) fn brand() -> Option<&'static Brand> {
    BRAND.get()
}

/// What the frame shows besides the page's own content; made by `Frame::new` alone.
pub(crate) struct Frame<'a> {
    title: &'a str,
    /// The page's CSRF token, for the script's requests.
    csrf: Option<&'a str>,
    /// The signed-in address, with a sign-out button carrying its CSRF token.
    account: Option<(&'a str, &'a str)>,
    script: bool,
}

impl<'a> Frame<'a> {
    /// A page titled `title`, for anyone, without script.
    pub(crate) fn new(title: &'a str) -> Self {
        Self {
            title,
            csrf: None,
            account: None,
            script: false,
        }
    }

    /// The page's scripts send `csrf` with their requests (a `<meta name="csrf">`).
    pub(crate) fn token(self, csrf: &'a str) -> Self {
        Self {
            csrf: Some(csrf),
            ..self
        }
    }

    /// A signed-in page: the address and its sign-out form, and the session's CSRF token.
    pub(crate) fn account(self, address: &'a str, csrf: &'a str) -> Self {
        Self {
            csrf: Some(csrf),
            account: Some((address, csrf)),
            ..self
        }
    }

    /// Whether the page includes `/static/webauthn.js` (its passkey and script forms).
    pub(crate) fn script(self, script: bool) -> Self {
        Self { script, ..self }
    }
}

/// The hidden field every form carries its CSRF token in (`csrf`): the session's, the
/// portal's, or before any session the form cookie's (`request::Csrf` checks it).
pub(crate) fn csrf_field(token: &str) -> impl IntoView {
    let token = token.to_string();
    view! { <input type="hidden" name="csrf" value=token/> }
}

pub(crate) fn render(frame: Frame<'_>, content: impl IntoView + 'static) -> Html<String> {
    let title = format!(
        "{} · {}",
        frame.title,
        brand().map_or("Sealpost", |b| if b.organisation.is_empty() {
            "Sealpost"
        } else {
            b.organisation.as_str()
        })
    );
    let heading = frame.title.to_string();
    let csrf = frame
        .csrf
        .map(|c| view! { <meta name="csrf" content=c.to_string()/> });
    let script = frame
        .script
        .then(|| view! { <script src="/static/webauthn.js" defer=true></script> });
    let account = frame.account.map(|(address, token)| {
        view! {
            <span>
                {address.to_string()} " · " <a href="/mail">"Mail"</a> " · " <a href="/compose" id="write">"Write"</a> " · " <a href="/sent">"Delivery"</a> " · " <a href="/security">"Account security"</a> " · "
                <form class="inline" method="post" action="/sign-out">
                    {csrf_field(token)}
                    <button type="submit" class="quiet">"Sign out"</button>
                </form>
            </span>
        }
    });
    let organisation = brand()
        .map(|b| b.organisation.clone())
        .filter(|o| !o.is_empty())
        .unwrap_or_else(|| "Sealpost".to_string());
    let logo = brand()
        .and_then(|b| b.logo.as_ref())
        .map(|_| view! { <img src="/static/logo" alt="" class="logo"/> });
    let document = view! {
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                {csrf}
                <title>{title}</title>
                <link rel="stylesheet" href="/static/style.css"/>
                {script}
            </head>
            <body>
                <header>
                    <span class="brand">
                        {logo}
                        <strong>{organisation}</strong>
                    </span>
                    {account}
                </header>
                <main>
                    <h1>{heading}</h1>
                    {content}
                </main>
            </body>
        </html>
    };
    Html(format!("<!DOCTYPE html>{}", document.to_html()))
}

/// A page with a title and one paragraph.
pub(crate) fn message_page(title: &str, text: &str) -> Html<String> {
    let text = text.to_string();
    render(
        Frame::new(title),
        view! { <section><p>{text}</p><p><a href="/">"Go to the start page"</a></p></section> },
    )
}

/// A page with a title and one paragraph, answered with `status`.
pub(crate) fn message_page_status(
    status: axum::http::StatusCode,
    title: &str,
    text: &str,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    (status, message_page(title, text)).into_response()
}

/// A line saying what went wrong, if anything did.
pub(crate) fn error_line(error: Option<String>) -> impl IntoView {
    error.map(|e| view! { <p class="error" role="alert">{e}</p> })
}

/// A line saying what was done, if anything was.
pub(crate) fn notice_line(notice: Option<String>) -> impl IntoView {
    notice.map(|n| view! { <p class="notice" role="status">{n}</p> })
}

/// A form of one button, posting `action` with the CSRF token and the hidden `fields` to `to`
/// (the row actions of the console's and the quarantine's lists).
pub(crate) fn button_form(
    to: &'static str,
    csrf: &str,
    fields: &[(&'static str, String)],
    action: &'static str,
    label: &'static str,
    class: &'static str,
) -> impl IntoView {
    let hidden: Vec<_> = fields
        .iter()
        .map(|(name, value)| view! { <input type="hidden" name=*name value=value.clone()/> })
        .collect();
    view! {
        <form method="post" action=to class="inline">
            {csrf_field(csrf)}
            {hidden}
            <button type="submit" name="action" value=action class=class>{label}</button>
        </form>
    }
}

pub(crate) use sealpost_console::when;
