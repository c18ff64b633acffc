//! Sealpost's web application: axum routes whose pages leptos renders on the server. Plain
//! HTML forms do everything but WebAuthn, which `static/webauthn.js` does (no inline script,
//! a strict Content-Security-Policy). Served over the HTTPS listener's TLS by `serve_connection`.
//!
//! Sign-in (password then second factor, or a passkey alone), sign-out, re-authentication,
//! the account security page, the webmail (reading, writing, delivery status), the pickup
//! portal and the admin console.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod accounts;
mod admin;
mod audit;
mod ceremony;
mod compliance;
mod compose;
/// Entry points for the fuzzer and the replay of its corpora. Not an API.
#[doc(hidden)]
pub mod fuzzing;
mod health;
mod html;
mod idle;
mod mail;
mod policies;
mod portal;
mod quarantine;
mod queue;
mod request;
mod security;
mod sent;
mod signin;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sealpost_auth::passkeys::Passkeys;
use sealpost_auth::{Lockout, SignInSettings};
use sealpost_console::{AliasesChanged, EndMailSessions, HealthInfo};
use sealpost_storage::Store;
use tower::ServiceExt;

pub use compose::{NotSent, Outbox, Outgoing, Sending, Sent};
pub use health::{MetricsEndpoint, RenderMetrics};
pub use html::Brand;
pub use idle::HTTP_BODY_BYTES_PER_SECOND_MIN;
pub use request::Peer;

/// Largest logo accepted, in bytes.
pub const LOGO_BYTES_MAX: usize = 256 * 1024;

/// A logo file for `Brand`: PNG, JPEG or SVG, at most `LOGO_BYTES_MAX`.
pub fn load_logo(path: &std::path::Path) -> Result<(Vec<u8>, &'static str), String> {
    let kind = match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("svg") => "image/svg+xml",
        _ => {
            return Err(format!(
                "{}: the logo must be a .png, .jpg or .svg file",
                path.display()
            ))
        }
    };
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() > LOGO_BYTES_MAX {
        return Err(format!(
            "{}: the logo is over {LOGO_BYTES_MAX} bytes",
            path.display()
        ));
    }
    Ok((bytes, kind))
}

/// Largest request body accepted, in bytes (forms and passkey answers are small).
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;

/// How the web sends mail: the submission path, the queue's waker (for the portal's code
/// emails), and the upload bound.
pub struct SendingConfig {
    pub outbox: Arc<dyn Outbox>,
    pub queue_waker: Option<Arc<tokio::sync::Notify>>,
    /// The address notices come from (`postmaster@DOMAIN`).
    pub notice_from: String,
    /// Largest compose or portal reply form, attachments included, in bytes.
    pub upload_bytes_max: usize,
    /// The sending rules in force, which the console's policy page replaces.
    pub rules: Arc<sealpost_policy::LivePolicy>,
}

/// What the web shares with the mail protocols' sign-ins: the failure counters and a way to
/// end an account's mail sessions.
pub struct MailSessions {
    pub lockout: Arc<Lockout>,
    pub end_sessions: EndMailSessions,
    /// Puts the console's aliases (alias → account addresses) in force for SMTP.
    pub aliases_changed: AliasesChanged,
}

/// The site: this server's name, what browsers see, the organisation, and what the health
/// page shows of the server.
pub struct Site {
    /// This server's name (the passkey relying party, notices).
    pub hostname: String,
    /// `https://HOST[:PORT]`.
    pub origin: String,
    /// The organisation every page names.
    pub brand: Brand,
    pub health: HealthInfo,
    pub metrics: MetricsEndpoint,
    /// The console's quarantine shows subjects (`[spam] admin_sees_subjects`).
    pub quarantine_subjects: bool,
}

/// What every request handler shares.
pub struct WebState {
    pub store: Store,
    pub lockout: Arc<Lockout>,
    pub passkeys: Passkeys,
    /// This server's name (the passkey relying party, notices).
    pub hostname: String,
    ceremonies: ceremony::Ceremonies,
    /// Derives the decoy credential ids of addresses without passkeys.
    decoy_key: [u8; 32],
    sending: SendingConfig,
    portal: portal::PortalState,
    /// What browsers see: `https://HOST[:PORT]` (enrolment links).
    origin: String,
    end_mail_sessions: EndMailSessions,
    aliases_changed: AliasesChanged,
    health: HealthInfo,
    metrics: MetricsEndpoint,
    spam_subjects_shown: bool,
}

impl WebState {
    pub fn new(
        store: Store,
        mail: MailSessions,
        site: Site,
        sending: SendingConfig,
    ) -> Result<Arc<Self>, String> {
        let Site {
            hostname,
            origin,
            brand,
            health,
            metrics,
            quarantine_subjects,
        } = site;
        let (hostname, origin) = (hostname.as_str(), origin.as_str());
        let passkeys = Passkeys::new(hostname, origin).map_err(|e| e.to_string())?;
        html::set_brand(brand);
        Ok(Arc::new(Self {
            store,
            lockout: mail.lockout,
            passkeys,
            hostname: hostname.to_string(),
            ceremonies: ceremony::Ceremonies::default(),
            decoy_key: rand::random(),
            sending,
            portal: portal::PortalState::default(),
            origin: origin.to_string(),
            end_mail_sessions: mail.end_sessions,
            aliases_changed: mail.aliases_changed,
            health,
            metrics,
            spam_subjects_shown: quarantine_subjects,
        }))
    }
}

impl WebState {
    /// The sign-in settings in force: who must show what on the web.
    pub(crate) fn sign_in(&self) -> SignInSettings {
        self.sending.rules.current().config().sign_in.clone()
    }

    /// Whether `account` must use a passkey on the web, by the settings in force.
    pub(crate) fn passkey_required(&self, account: &sealpost_storage::Account) -> bool {
        sealpost_auth::passkey_required(&self.sign_in(), account)
    }

    /// The console's operations with this server's live parts.
    pub fn console(&self) -> sealpost_console::Console {
        sealpost_console::Console {
            store: self.store.clone(),
            end_mail_sessions: self.end_mail_sessions.clone(),
            aliases_changed: self.aliases_changed.clone(),
            rules: Some(self.sending.rules.clone()),
            lockout: Some(self.lockout.clone()),
            queue_waker: self.sending.queue_waker.clone(),
        }
    }
}

const WEBAUTHN_JS: &str = include_str!("../static/webauthn.js");
const STYLE_CSS: &str = include_str!("../static/style.css");

/// Every response carries these: no script but our file, no framing, no sniffing, HTTPS only,
/// nothing cached but the static files.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(
    request: Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> Response {
    let is_static = request.uri().path().starts_with("/static/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    // A handler may set its own policy and framing (the sandboxed message frame does).
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    for (name, value) in [
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(
        header::HeaderName::from_static("permissions-policy"),
        HeaderValue::from_static("camera=(), microphone=(), geolocation=(), interest-cohort=()"),
    );
    headers.insert(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    if !is_static {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn static_file(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

async fn logo() -> Response {
    match html::brand().and_then(|b| b.logo.as_ref()) {
        Some((bytes, kind)) => (
            [
                (header::CONTENT_TYPE, *kind),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            bytes.clone(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The application's routes.
pub fn router(state: Arc<WebState>) -> Router {
    // Forms that carry files get the upload bound instead of the small one.
    let uploads = axum::extract::DefaultBodyLimit::max(state.sending.upload_bytes_max);
    Router::new()
        .route(
            "/compose",
            get(compose::page).post(compose::submit).layer(uploads),
        )
        .route("/sent", get(sent::list))
        .route("/sent/{queue}", get(sent::status))
        .route("/sent/{queue}/revoke", post(sent::revoke))
        .route("/sent/{queue}/reset-passkey", post(sent::reset_passkey))
        .route("/pickup/{token}", get(portal::link))
        .route("/pickup/{token}/code", post(portal::send_code))
        .route(
            "/pickup/{token}/verify",
            get(portal::verify_page).post(portal::verify),
        )
        .route("/pickup/{token}/renew", post(portal::renew))
        .route("/pickup/{token}/password", post(portal::password_sign_in))
        .route("/portal/password", post(portal::choose_password))
        .route("/portal", get(portal::home))
        .route("/portal/sign-out", post(portal::sign_out))
        .route("/portal/{id}", get(portal::message))
        .route("/portal/{id}/attachment/{index}", get(portal::attachment))
        .route("/portal/{id}/reply", post(portal::reply).layer(uploads))
        .route("/portal/{id}/proof", post(portal::prove))
        .route(
            "/portal/passkey/start",
            post(portal::passkey_register_start),
        )
        .route(
            "/portal/passkey/finish",
            post(portal::passkey_register_finish),
        )
        .route(
            "/pickup/{token}/passkey/start",
            post(portal::passkey_sign_in_start),
        )
        .route(
            "/pickup/{token}/passkey/finish",
            post(portal::passkey_sign_in_finish),
        )
        .route("/", get(signin::home))
        .route("/sign-in", get(signin::sign_in_page).post(signin::sign_in))
        .route(
            "/second-factor",
            get(signin::second_factor_page).post(signin::second_factor),
        )
        .route("/passkey/sign-in/start", post(signin::passkey_start))
        .route("/passkey/sign-in/finish", post(signin::passkey_finish))
        .route("/sign-out", post(signin::sign_out))
        .route("/reauth", get(signin::reauth_page).post(signin::reauth))
        .route("/security", get(security::page))
        .route("/mail", get(mail::inbox))
        .route("/mail/{mailbox}", get(mail::folder))
        .route("/mail/{mailbox}/act", post(mail::act))
        .route("/mail/{mailbox}/{uid}", get(mail::message))
        .route(
            "/mail/{mailbox}/{uid}/attachment/{index}",
            get(mail::attachment),
        )
        .route("/mail/{mailbox}/{uid}/html", get(mail::formatted))
        .route("/admin/lockouts", get(admin::lockouts))
        .route(
            "/admin/accounts",
            get(accounts::list).post(accounts::create),
        )
        .route("/admin/accounts/{id}", get(accounts::detail))
        .route("/admin/accounts/{id}/act", post(accounts::act))
        .route("/admin/queue", get(queue::queue).post(queue::queue_act))
        .route("/admin/trace", get(queue::trace))
        .route("/admin/health", get(health::page))
        .route(
            "/admin/holds",
            get(compliance::holds).post(compliance::holds_act),
        )
        .route(
            "/quarantine",
            get(quarantine::digest).post(quarantine::digest_act),
        )
        .route(
            "/admin/quarantine",
            get(quarantine::console).post(quarantine::console_act),
        )
        .route(
            "/admin/retention",
            get(compliance::retention).post(compliance::retention_act),
        )
        .route("/admin/discovery", get(compliance::discovery_page))
        .route(
            "/admin/discovery/export",
            post(compliance::discovery_export),
        )
        .route("/metrics", get(health::metrics))
        .route("/admin/policies", get(policies::page).post(policies::save))
        .route("/admin/policies/test", post(policies::test))
        .route("/admin/audit", get(audit::page))
        .route("/admin/audit/export", get(audit::export))
        .route("/admin/audit/verify", post(audit::verify))
        .route(
            "/enrol/{link}",
            get(accounts::enrol_page).post(accounts::enrol),
        )
        .route("/admin/lockouts/lift", post(admin::lift))
        .route(
            "/admin/portal-passkeys/reset",
            post(admin::reset_portal_passkey),
        )
        .route("/security/totp/start", post(security::totp_start))
        .route("/security/totp/confirm", post(security::totp_confirm))
        .route("/security/totp/remove", post(security::totp_remove))
        .route("/security/recovery", post(security::recovery_codes))
        .route("/security/password", post(security::password_change))
        .route("/security/passkeys/start", post(security::passkey_start))
        .route("/security/passkeys/finish", post(security::passkey_finish))
        .route("/security/passkeys/remove", post(security::passkey_remove))
        .route(
            "/security/app-passwords",
            post(security::app_password_issue),
        )
        .route(
            "/security/app-passwords/revoke",
            post(security::app_password_revoke),
        )
        .route("/security/sessions/end", post(security::session_end))
        .route(
            "/security/sessions/end-all",
            post(security::sessions_end_all),
        )
        .route(
            "/static/webauthn.js",
            get(|| async { static_file(WEBAUTHN_JS, "text/javascript; charset=utf-8") }),
        )
        .route("/static/logo", get(logo))
        // No icon: an empty answer rather than a 404 in every browser's console.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/static/style.css",
            get(|| async { static_file(STYLE_CSS, "text/css; charset=utf-8") }),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                html::message_page("Not found", "There is no such page."),
            )
        })
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::extract::DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .with_state(state)
}

/// Bounds on one web connection, each with its unit.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// A request's header must arrive whole within this long, in milliseconds. hyper starts
    /// this clock when an HTTP/1.1 connection begins waiting for a request, so it also closes
    /// an HTTP/1.1 keep-alive connection left idle. A body gets the same allowance, then must
    /// keep up with `HTTP_BODY_BYTES_PER_SECOND_MIN`.
    pub header_read_ms_max: u64,
    /// A connection with no request in progress and no byte moving either way for this long
    /// is closed (HTTP/2 as well as HTTP/1.1), in milliseconds.
    pub idle_ms_max: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_ms_max: 30_000,
            idle_ms_max: 60_000,
        }
    }
}

/// Serves HTTP/1.1 and HTTP/2 on one connection (TLS already done by the listener) until the
/// client closes it, a header is too slow, or the connection sits idle past `limits`.
pub async fn serve_connection<S>(app: Router, stream: S, peer: SocketAddr, limits: HttpLimits)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(idle::Activity::new());
    let (starting, finishing) = (activity.clone(), activity.clone());
    let allowance = std::time::Duration::from_millis(limits.header_read_ms_max);
    let service = app
        .map_request(move |request: Request<hyper::body::Incoming>| {
            starting.request_started();
            let mut request =
                request.map(|body| axum::body::Body::new(idle::Deadline::new(body, allowance)));
            request.extensions_mut().insert(Peer(peer));
            request
        })
        .map_response(move |response: Response| {
            finishing.request_answered();
            response
        });
    let service = hyper_util::service::TowerToHyperService::new(service);
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    // Without a timer hyper's header timeout is silently off: a client could send a header a
    // byte a minute and hold the connection forever.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_millis(limits.header_read_ms_max));
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    let io = hyper_util::rt::TokioIo::new(idle::Watched::new(stream, activity.clone()));
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let idle_max = std::time::Duration::from_millis(limits.idle_ms_max);
    loop {
        let wait = idle_max
            .saturating_sub(activity.idle_for())
            .max(idle::CHECK_MS_MIN);
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(%error, "web connection ended");
                }
                return;
            }
            () = tokio::time::sleep(wait) => {
                if activity.in_flight() == 0 && activity.idle_for() >= idle_max {
                    break;
                }
            }
        }
    }
    tracing::debug!("web connection idle for too long; closing");
    connection.as_mut().graceful_shutdown();
    // A GOAWAY (HTTP/2) or a close (HTTP/1.1); a client that does not take it is cut.
    let _ = tokio::time::timeout(idle::CHECK_MS_MIN, connection).await;
}
