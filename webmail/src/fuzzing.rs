//! Entry points for the fuzzer (`fuzz/`, run by `scripts/fuzz`) and for the test that replays
//! its corpora on stable (`tests/fuzz_corpora.rs`). Not an API: each function takes a
//! stranger's bytes and must never panic.

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderMap, HeaderValue};

/// The boundary of the fuzzed multipart forms; seeds use it.
pub const FUZZ_BOUNDARY: &str = "sealpostfuzz";
/// The upload limit the fuzzed forms are read within, in bytes.
const FUZZ_UPLOAD_BYTES_MAX: usize = 64 * 1024;

/// The HTML sanitiser (`mail.rs`, ammonia with Sealpost's rules) on what a sender wrote.
/// `data[0]` bit 0: the rest is a whole message whose HTML body is shown (as the formatted
/// view does), else the HTML itself; bit 1: remote images allowed. What comes out must carry
/// no script, no frame and no form, whatever went in.
pub fn html(data: &[u8]) {
    let Some((selector, input)) = data.split_first() else {
        return;
    };
    let html = if selector & 1 == 1 {
        let parsed = mail_parser::MessageParser::default().parse(input);
        parsed
            .as_ref()
            .and_then(|m| m.body_html(0).map(|h| h.into_owned()))
            .unwrap_or_default()
    } else {
        String::from_utf8_lossy(input).into_owned()
    };
    let mut inline = std::collections::HashMap::new();
    inline.insert(
        "img1@x".to_string(),
        "data:image/png;base64,AAAA".to_string(),
    );
    let clean = crate::mail::sanitize(&html, selector & 2 == 2, inline).to_ascii_lowercase();
    for tag in [
        "<script", "<iframe", "<form", "<object", "<embed", "<meta", "<base",
    ] {
        assert!(!clean.contains(tag), "{tag} passed the sanitiser: {clean}");
    }
}

/// The web's form decoders on a stranger's request body. `data[0]` picks the decoder, the
/// rest is the body (or header value): a multipart form with uploads as compose and the
/// portal's reply read it; the portal's urlencoded forms as axum's extractor reads them; the
/// pairs of a bulk action; the Cookie header; a compose address line; a pickup id; a network
/// as the console takes it.
pub fn forms(data: &[u8]) {
    let Some((selector, input)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(input);
    match selector % 8 {
        0 => multipart(input),
        1 => urlencoded::<crate::portal::CodeForm>(input),
        2 => urlencoded::<crate::portal::PasswordForm>(input),
        3 => urlencoded::<crate::portal::ChooseForm>(input),
        4 => {
            let pairs: Vec<(String, String)> = form_urlencoded::parse(input).into_owned().collect();
            let _ = pairs
                .iter()
                .filter(|(k, _)| k == "uid")
                .filter_map(|(_, v)| v.parse::<u32>().ok())
                .count();
        }
        5 => {
            if let Ok(value) = HeaderValue::from_bytes(input) {
                let mut headers = HeaderMap::new();
                headers.insert(header::COOKIE, value);
                let _ = crate::request::cookie(&headers, "sealpost_session");
                let _ = crate::request::cookie(&headers, "");
            }
        }
        6 => {
            for (name, address) in crate::compose::split_addresses(&text) {
                assert!(!address.contains([',', ';']));
                let _ = name;
            }
        }
        _ => {
            let _ = text.parse::<sealpost_storage::PickupId>();
            let _ = sealpost_console::parse_network(&text);
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(
        || match tokio::runtime::Builder::new_current_thread().build() {
            Ok(runtime) => runtime,
            Err(error) => panic!("no runtime for the fuzzed forms: {error}"),
        },
    )
}

fn request(content_type: &str, body: &[u8]) -> Option<Request> {
    Request::builder()
        .method("POST")
        .uri("/portal/x/reply")
        .header(header::CONTENT_TYPE, content_type)
        .body(axum::body::Body::from(body.to_vec()))
        .ok()
}

fn multipart(body: &[u8]) {
    let Some(request) = request(
        &format!("multipart/form-data; boundary={FUZZ_BOUNDARY}"),
        body,
    ) else {
        return;
    };
    runtime().block_on(async {
        let Ok(mut multipart) = Multipart::from_request(request, &()).await else {
            return;
        };
        if let Ok(form) = crate::compose::read_form(&mut multipart, FUZZ_UPLOAD_BYTES_MAX).await {
            assert!(form.uploads.len() <= crate::compose::ATTACHMENTS_MAX);
            let _ = form.field("csrf");
        }
    });
}

fn urlencoded<F: serde::de::DeserializeOwned + Send + 'static>(body: &[u8]) {
    let Some(request) = request("application/x-www-form-urlencoded", body) else {
        return;
    };
    runtime().block_on(async {
        let _ = axum::Form::<F>::from_request(request, &()).await;
    });
}
