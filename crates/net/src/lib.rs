//! What the protocol crates (IMAP, SMTP) share about a connection, so that neither depends on
//! the other: the async byte stream a session runs over (TCP, TLS, or an in-memory pipe in
//! tests) and the STARTTLS upgrade the server supplies.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

/// An async byte stream a session runs over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static> Stream for T {}

pub type BoxedStream = Box<dyn Stream>;

/// The negotiated TLS version and cipher suite (SMTP names them in its Received field).
pub type TlsDescription = String;

/// Turns a plain stream into a TLS one (STARTTLS) and says what was negotiated.
pub type TlsUpgrade = Arc<
    dyn Fn(
            BoxedStream,
        )
            -> Pin<Box<dyn Future<Output = std::io::Result<(BoxedStream, TlsDescription)>> + Send>>
        + Send
        + Sync,
>;
