//! Sealpost's SMTP receiver: the inbound MX role (port 25) and authenticated submission
//! (587 with STARTTLS, 465 with implicit TLS). A session runs over any async byte stream, so
//! tests drive it in memory as well as over TCP. Commands are parsed by smtp-proto; framing,
//! limits, the state machine, delivery into the store and the outbound queue are here.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod bounce;
mod dane;
mod dkim_sign;
/// Entry points for the fuzzer and the replay of its corpora. Not an API.
#[doc(hidden)]
pub mod fuzzing;
mod headers;
mod http;
mod mta_sts;
mod outbound;
mod session;
mod shared;
pub mod spam;
mod submit;
mod verify;

pub use dkim_sign::DkimSigning;
pub use outbound::{Outbound as OutboundAgent, OutboundConfig};
pub use session::{
    serve_session, ListenerRole, SmtpConfig, SmtpConnection, TlsDescription, TlsUpgrade,
};
pub use shared::{Aliases, SmtpShared};
pub use submit::{submit_from_web, WebMessage, WebSendError, WebSent};
pub use verify::{dns_answers, DnsKind, InboundAuth, InboundPolicy, Verdict};
