//! What the in-process web tests share: a real store in a temporary folder, the real router
//! over it, and requests sent with `tower::ServiceExt::oneshot` (no network, no browser).
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use sealpost_auth::websession::{self, Stage};
use sealpost_auth::{Lockout, LoginLimits, SignInSettings};
use sealpost_console::HealthInfo;
use sealpost_storage::{
    AccountId, Actor, Flags, InternalDate, MasterKey, NewAccount, NewMessage, Outbound,
    OutboundRecipient, PickupId, QueueId, Role, Store, StoreConfig,
};
use sealpost_webmail::{
    Brand, MailSessions, MetricsEndpoint, Outbox, Outgoing, Peer, SendingConfig, Site, WebState,
};
use tower::ServiceExt;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};

pub const PASSWORD: &str = "velvet kettle sonar magpie";
pub const SESSION_COOKIE: &str = "__Host-sp_session";
pub const FORM_COOKIE: &str = "__Host-sp_form";
pub const PORTAL_COOKIE: &str = "__Host-sp_portal";
/// The form token a pre-session form carries (any 32 characters, set as a cookie too).
pub const FORM_TOKEN: &str = "0123456789abcdef0123456789abcdef";
/// What browsers see (the passkeys' origin).
pub const ORIGIN: &str = "https://mail.clinic.test";

/// Keeps every message handed to the outbox, in order, and sends none (the SMTP submission
/// path is the server's; here the test plays the queue where it must).
pub struct CountingOutbox(
    pub Arc<AtomicUsize>,
    pub Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    pub Arc<std::sync::Mutex<Vec<Option<String>>>>,
);

impl Outbox for CountingOutbox {
    fn send<'a>(
        &'a self,
        _account: &'a sealpost_storage::Account,
        message: Outgoing,
    ) -> sealpost_webmail::Sending<'a> {
        self.0.fetch_add(1, Ordering::SeqCst);
        self.1.lock().unwrap().push(message.raw);
        self.2.lock().unwrap().push(message.portal);
        Box::pin(async { Ok(sealpost_webmail::Sent { queue: None }) })
    }
}

/// The web application over a new store.
pub struct Web {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub lockout: Arc<Lockout>,
    pub app: axum::Router,
    pub sent: Arc<AtomicUsize>,
    /// What the web handed to the outbox.
    pub outbox: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    /// Whether each of those must go to the portal, and why.
    pub portals: Arc<std::sync::Mutex<Vec<Option<String>>>>,
    /// The policy in force (tests replace it).
    pub rules: Arc<sealpost_policy::LivePolicy>,
}

impl Web {
    pub fn new(limits: LoginLimits) -> Web {
        Web::with_sign_in(limits, SignInSettings::default())
    }

    /// A web whose lockout counts by `settings`.
    pub fn with_sign_in(limits: LoginLimits, settings: SignInSettings) -> Web {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::create_file(&dir.path().join("keys/master.key")).unwrap();
        let store = Store::create(
            StoreConfig::new(dir.path().join("store"), "clinic.test"),
            master,
        )
        .unwrap();
        let lockout = Arc::new(Lockout::new(limits, settings));
        let sent = Arc::new(AtomicUsize::new(0));
        let outbox = Arc::new(std::sync::Mutex::new(Vec::new()));
        let portals = Arc::new(std::sync::Mutex::new(Vec::new()));
        let rules = sealpost_policy::LivePolicy::new(
            sealpost_policy::Policy::new(sealpost_policy::PolicyConfig::default()).unwrap(),
        );
        let state = WebState::new(
            store.clone(),
            MailSessions {
                lockout: lockout.clone(),
                end_sessions: Arc::new(|_| 0),
                aliases_changed: Arc::new(|_| {}),
            },
            Site {
                hostname: "mail.clinic.test".into(),
                origin: ORIGIN.into(),
                brand: Brand {
                    organisation: "Clinic".into(),
                    logo: None,
                },
                health: HealthInfo {
                    listeners: vec![],
                    certificate: None,
                    dns_zone: String::new(),
                    dns_check: Arc::new(|| Box::pin(async { vec![] })),
                    spam_status: Arc::new(|| "off".into()),
                },
                metrics: MetricsEndpoint {
                    from: vec![],
                    render: Arc::new(|| Box::pin(async { String::new() })),
                },
                quarantine_subjects: false,
            },
            SendingConfig {
                outbox: Arc::new(CountingOutbox(
                    sent.clone(),
                    outbox.clone(),
                    portals.clone(),
                )),
                queue_waker: None,
                notice_from: "postmaster@clinic.test".into(),
                upload_bytes_max: 1024 * 1024,
                rules: rules.clone(),
            },
        )
        .unwrap();
        let app = sealpost_webmail::router(state);
        Web {
            dir,
            store,
            lockout,
            app,
            sent,
            outbox,
            portals,
            rules,
        }
    }

    pub fn account(&self, address: &str, role: Role) -> AccountId {
        self.store
            .create_account(
                &NewAccount {
                    address,
                    display_name: "Test",
                    role,
                    password: Some(PASSWORD),
                },
                &Actor::cli(),
            )
            .unwrap()
    }

    /// A message from `account` kept for `recipient`'s pickup (as the queue does when the
    /// portal is chosen): its token, its id and the sent message's queue entry.
    pub fn pickup(
        &self,
        account: AccountId,
        recipient: &str,
        raw: &[u8],
    ) -> (String, PickupId, QueueId) {
        let summary = sealpost_mime::Summary::of(raw).to_bytes();
        let new = NewMessage {
            raw,
            flags: Flags::new(),
            internal_date: InternalDate::now(),
            summary: &summary,
            search_text: b"",
        };
        let outbound = Outbound {
            from: "doc@clinic.test".into(),
            recipients: vec![OutboundRecipient {
                address: recipient.into(),
                ..OutboundRecipient::default()
            }],
            env_id: None,
            ret: None,
            notice: false,
        };
        let (_, queue) = self
            .store
            .deliver_all(
                &[sealpost_storage::DeliveryTarget {
                    account,
                    placement: sealpost_storage::Placement::Sender { sent: true },
                    outbound: Some(outbound),
                }],
                &new,
                &|_| Vec::new(),
            )
            .unwrap()
            .remove(0);
        let queue = queue.unwrap();
        let token: String = rand::random::<[u8; 32]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let id = self
            .store
            .create_pickup(account, queue, recipient, &token, i64::MAX / 2)
            .unwrap();
        (token, id, queue)
    }

    /// A session signed in with a passkey, as its cookie header value.
    pub fn signed_in(&self, account: AccountId) -> String {
        let now = sealpost_storage::now_ms();
        let (cookie, _) = websession::start(
            &self.store,
            account,
            "192.0.2.10:1000",
            "test",
            Stage::SignedIn("passkey".into()),
            now,
        )
        .unwrap();
        format!("{SESSION_COOKIE}={cookie}")
    }

    /// The session behind a `__Host-sp_session=...` cookie: its stage and CSRF token.
    pub fn session(&self, cookie: &str) -> Option<websession::WebSession> {
        let value = cookie.strip_prefix(&format!("{SESSION_COOKIE}="))?;
        websession::resume(
            &self.store,
            value,
            sealpost_storage::now_ms(),
            &SignInSettings::default(),
        )
        .unwrap()
        .map(|found| found.session)
    }

    pub async fn send(&self, request: Request<Body>) -> Response<Body> {
        let mut request = request;
        request.extensions_mut().insert(peer());
        self.app.clone().oneshot(request).await.unwrap()
    }

    /// A POST with `cookie` and the pre-session form cookie, of `kind` (and a script's CSRF
    /// header when `csrf` is given).
    async fn post(
        &self,
        path: &str,
        cookie: &str,
        kind: &str,
        csrf: Option<&str>,
        body: String,
    ) -> Response<Body> {
        let cookies = [format!("{FORM_COOKIE}={FORM_TOKEN}"), cookie.to_string()]
            .into_iter()
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let mut request = Request::post(path)
            .header(header::COOKIE, cookies)
            .header(header::CONTENT_TYPE, kind);
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        self.send(request.body(Body::from(body)).unwrap()).await
    }

    /// A form POST with `cookie` (and the pre-session form cookie).
    pub async fn post_form(&self, path: &str, cookie: &str, form: &str) -> Response<Body> {
        self.post(
            path,
            cookie,
            "application/x-www-form-urlencoded",
            None,
            form.to_string(),
        )
        .await
    }

    /// A script's JSON POST with `cookie` and its CSRF header.
    pub async fn post_json(
        &self,
        path: &str,
        cookie: &str,
        csrf: &str,
        json: &serde_json::Value,
    ) -> Response<Body> {
        self.post(
            path,
            cookie,
            "application/json",
            Some(csrf),
            json.to_string(),
        )
        .await
    }

    /// A WebAuthn registration answered by `device`: started at `start` (with `cookie` and its
    /// script token `csrf`), finished at `finish`. The finish's status.
    pub async fn register_passkey(
        &self,
        (start, finish): (&str, &str),
        cookie: &str,
        csrf: &str,
        device: &mut SoftPasskey,
    ) -> StatusCode {
        let started = self
            .post_json(start, cookie, csrf, &serde_json::json!({ "name": "Key" }))
            .await;
        if started.status() != StatusCode::OK {
            return started.status();
        }
        let started: serde_json::Value = serde_json::from_str(&body_text(started).await).unwrap();
        let options: CreationChallengeResponse =
            serde_json::from_value(started["options"].clone()).unwrap();
        let credential = device
            .do_registration(Url::parse(ORIGIN).unwrap(), options)
            .unwrap();
        let answer =
            serde_json::json!({ "ceremony": started["ceremony"], "credential": credential });
        self.post_json(finish, cookie, csrf, &answer).await.status()
    }

    /// A WebAuthn sign-in answered by `device`, before any session (the form token as the
    /// script token): `request` to `start`, the answer to `finish`. The `cookie_name` cookie it
    /// sets, or the refusal's status.
    pub async fn passkey_sign_in(
        &self,
        (start, finish): (&str, &str),
        request: &serde_json::Value,
        cookie_name: &str,
        device: &mut SoftPasskey,
    ) -> Result<String, StatusCode> {
        let started = self.post_json(start, "", FORM_TOKEN, request).await;
        if started.status() != StatusCode::OK {
            return Err(started.status());
        }
        let started: serde_json::Value = serde_json::from_str(&body_text(started).await).unwrap();
        let options: RequestChallengeResponse =
            serde_json::from_value(started["options"].clone()).unwrap();
        let credential = device
            .do_authentication(Url::parse(ORIGIN).unwrap(), options)
            .map_err(|_| StatusCode::UNAUTHORIZED)?;
        let answer =
            serde_json::json!({ "ceremony": started["ceremony"], "credential": credential });
        let finished = self.post_json(finish, "", FORM_TOKEN, &answer).await;
        match finished.status() {
            StatusCode::OK => Ok(set_cookie(&finished, cookie_name).unwrap()),
            status => Err(status),
        }
    }

    /// Opens the pickup as the patient does: a code mailed (read back from the queue), then
    /// typed in. The portal's session cookie.
    pub async fn portal_visitor(&self, token: &str) -> String {
        let asked = self
            .post_form(
                &format!("/pickup/{token}/code"),
                "",
                &format!("csrf={FORM_TOKEN}"),
            )
            .await;
        assert_eq!(
            asked.status(),
            StatusCode::SEE_OTHER,
            "{}",
            body_text(asked).await
        );
        let notice = self
            .store
            .queued()
            .unwrap()
            .into_iter()
            .find(|q| q.envelope.notice)
            .expect("the code's mail is queued");
        let raw = self.store.read_queued(notice.account, notice.id).unwrap();
        // Taken out of the queue once read, so that the next visitor's code is the only one.
        self.store
            .queue_delete(notice.account, notice.id, &Actor::cli())
            .unwrap();
        let text = String::from_utf8_lossy(&raw);
        let code: String = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: Your code: "))
            .expect("the code in the subject")
            .trim()
            .to_string();
        let verified = self
            .post_form(
                &format!("/pickup/{token}/verify"),
                "",
                &format!("csrf={FORM_TOKEN}&code={code}"),
            )
            .await;
        set_cookie(&verified, PORTAL_COOKIE).expect("a portal session after the right code")
    }

    pub async fn get(&self, path: &str, cookie: &str) -> Response<Body> {
        let mut request = Request::get(path);
        if !cookie.is_empty() {
            request = request.header(header::COOKIE, cookie);
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }
}

pub fn peer() -> Peer {
    Peer(SocketAddr::from(([192, 0, 2, 10], 1000)))
}

pub async fn body_text(response: Response<Body>) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 4 * 1024 * 1024)
        .await
        .unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

pub fn location(response: &Response<Body>) -> String {
    response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The `name=value` a response sets for cookie `name`.
pub fn set_cookie(response: &Response<Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")) && !v.starts_with(&format!("{name}=;")))
        .map(|v| v.split(';').next().unwrap().to_string())
}
