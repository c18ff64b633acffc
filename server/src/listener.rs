//! The listeners every protocol shares: a TCP listener's accept loop with its sessions in a
//! `JoinSet`, connections counted per address and in all (refused past the bounds with the
//! protocol's own line, told over TLS where the port is TLS), TLS handshakes bounded in time,
//! implicit TLS or the STARTTLS upgrade. Each protocol gives only its session.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use sealpost_net::{BoxedStream, TlsUpgrade};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn, Instrument};

/// How long a refused TLS connection gets for its handshake, so that it can read why (or
/// `tls_handshake_ms_max` if shorter).
const REFUSAL_HANDSHAKE_MS: Duration = Duration::from_millis(5_000);
/// Refusals being told at once on one listener (each may need a TLS handshake to be read);
/// past it a refused connection is closed without a word, so that a flood cannot make the
/// refusals themselves the cost.
const REFUSALS_IN_FLIGHT_MAX: usize = 64;

/// Binds `address` for the listener `name` (an error names both).
pub(crate) async fn bind(name: &str, address: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("listening on {address} ({name})"))?;
    info!(listener = name, %address, "listening");
    Ok(listener)
}

/// Resolves once shutdown is asked for (the read guard never lives across an await).
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Counts a connection against its address while it lives.
struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    address: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// Accepts connections until shutdown and runs `connection` for each, owned by a JoinSet
/// that is drained before it returns.
async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    stopped: watch::Receiver<bool>,
    connection: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut sessions = JoinSet::new();
    let mut next_id = 0u64;
    let mut stop_watch = stopped.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        warn!(listener = name, %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                next_id += 1;
                let span = tracing::info_span!("connection", conn_id = next_id, peer = %peer.ip(), protocol = name);
                sessions.spawn(connection(socket, peer, stopped.clone()).instrument(span));
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            () = until_stopped(&mut stop_watch) => break,
        }
    }
    drop(listener);
    while sessions.join_next().await.is_some() {}
}

/// Tells a client past the per-address limit why it is refused, then closes. On a TLS port
/// the client can only read the reason after a handshake, which gets a few seconds at most.
/// The refusal of a connection past its address's limit: the protocol's line with the limit
/// named; for HTTP (`refusal` "HTTP/1.1 503 TEXT") a whole response whose Content-Length
/// counts its body (RFC 9112 §6.3).
fn per_address_refusal(refusal: &str, max: impl std::fmt::Display) -> String {
    match refusal.strip_prefix("HTTP/1.1 503 ") {
        Some(text) => {
            let body = format!("{text} (limit {max})\r\n");
            format!(
                "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
        None => format!("{refusal} (limit {max})\r\n"),
    }
}

async fn refuse(
    mut socket: tokio::net::TcpStream,
    tls: &tokio_rustls::TlsAcceptor,
    implicit_tls: bool,
    reason: &str,
    handshake_max: Duration,
) {
    if !implicit_tls {
        // Bounded too: a client that does not read must not hold the refusal.
        let _ = tokio::time::timeout(handshake_max, socket.write_all(reason.as_bytes())).await;
        return;
    }
    let handshake = tokio::time::timeout(handshake_max, tls.accept(socket)).await;
    if let Ok(Ok(mut stream)) = handshake {
        let _ = stream.write_all(reason.as_bytes()).await;
        let _ = stream.shutdown().await;
    }
}

/// The session's stream: TLS at once on an implicit-TLS port (with what was negotiated), the
/// plain socket otherwise. `None` when the handshake fails.
async fn open_stream(
    socket: tokio::net::TcpStream,
    tls: &tokio_rustls::TlsAcceptor,
    implicit_tls: bool,
    handshake_max: Duration,
) -> Option<(BoxedStream, Option<String>)> {
    let socket = crate::tcp::QuickAckStream::new(socket);
    if !implicit_tls {
        return Some((Box::new(socket), None));
    }
    match tokio::time::timeout(handshake_max, tls.accept(socket)).await {
        Ok(Ok(stream)) => {
            let described = describe_tls(&stream);
            Some((Box::new(stream), Some(described)))
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake not done in time; dropped");
            None
        }
    }
}

/// Connections per client address on one listener.
#[derive(Clone)]
struct AddressLimiter {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max: usize,
}

impl AddressLimiter {
    fn new(max: usize) -> Self {
        Self {
            counts: Arc::new(Mutex::new(HashMap::new())),
            max,
        }
    }

    /// A slot for one more connection from `address`, or `None` past the limit. Counted by
    /// the address's group: an IPv6 client's whole /64 is one client.
    fn take(&self, address: IpAddr) -> Option<AddressSlot> {
        let address = sealpost_auth::address_group(address);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(address).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: self.counts.clone(),
            address,
        })
    }
}

/// "TLSv1_3 TLS13_AES_256_GCM_SHA384": what a Received field records of a TLS session.
fn describe_tls<S>(stream: &tokio_rustls::server::TlsStream<S>) -> String {
    let (_, connection) = stream.get_ref();
    let version = connection
        .protocol_version()
        .map_or_else(|| "TLS".to_string(), |v| format!("{v:?}"));
    let cipher = connection
        .negotiated_cipher_suite()
        .map_or_else(|| "unknown".to_string(), |c| format!("{:?}", c.suite()));
    format!("{version} {cipher}")
}

/// Connections open on one listener, from everyone, within a bound.
#[derive(Clone)]
struct ConnectionCap {
    open: Arc<AtomicUsize>,
    max: usize,
}

/// Counts a connection against its listener's cap while it lives.
struct CapSlot {
    open: Arc<AtomicUsize>,
}

impl Drop for CapSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionCap {
    fn new(max: usize) -> Self {
        Self {
            open: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A slot for one more connection, or `None` when the listener is full.
    fn take(&self) -> Option<CapSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()
            .map(|_| CapSlot {
                open: self.open.clone(),
            })
    }
}

/// A listening port: connections per address counted and refused past the limit with
/// `refusal` (which names the limit), all connections capped with `full_refusal`, TLS
/// handshakes bounded in time, implicit TLS or not, and a session per connection.
pub(crate) struct Listener {
    /// Counts connections for /metrics.
    connections: Arc<crate::metrics::Connections>,
    name: &'static str,
    tls: tokio_rustls::TlsAcceptor,
    implicit_tls: bool,
    per_address: AddressLimiter,
    /// The protocol's refusal line, e.g. "421 4.7.0 too many connections" (the limit and
    /// CRLF are added).
    refusal: &'static str,
    /// Every connection of the listener, and the refusal past them (sent as it is, CRLF added).
    cap: ConnectionCap,
    full_refusal: &'static str,
    /// A handshake (implicit TLS or STARTTLS) not done within this long is dropped.
    handshake_max: Duration,
    /// Refusals being told now (`REFUSALS_IN_FLIGHT_MAX`).
    refusing: Arc<AtomicUsize>,
}

/// What every listener of one server shares: the /metrics counters and the bound on a TLS
/// handshake (implicit or STARTTLS).
#[derive(Clone)]
pub(crate) struct Common {
    pub(crate) connections: Arc<crate::metrics::Connections>,
    pub(crate) handshake_max: Duration,
}

/// A protocol's bounds on its connections, with the lines that refuse past them.
pub(crate) struct Bounds {
    /// Connections from one address at once, and the refusal past them (the limit and CRLF
    /// are added).
    pub(crate) per_address_max: usize,
    pub(crate) per_address_refusal: &'static str,
    /// Connections of the listener at once, and the refusal past them (sent as it is, CRLF
    /// added).
    pub(crate) max: usize,
    pub(crate) full_refusal: &'static str,
}

impl Listener {
    pub(crate) fn new(
        common: &Common,
        name: &'static str,
        tls: tokio_rustls::TlsAcceptor,
        implicit_tls: bool,
        bounds: Bounds,
    ) -> Self {
        Self {
            connections: common.connections.clone(),
            name,
            tls,
            implicit_tls,
            per_address: AddressLimiter::new(bounds.per_address_max),
            refusal: bounds.per_address_refusal,
            cap: ConnectionCap::new(bounds.max),
            full_refusal: bounds.full_refusal,
            handshake_max: common.handshake_max,
            refusing: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Serves until shutdown; `session` runs one session over the (possibly TLS) stream, with
    /// what TLS negotiated on an implicit-TLS port, the client's address, and a STARTTLS
    /// upgrade on a cleartext port.
    pub(crate) async fn serve<S, Fut>(
        self,
        listener: TcpListener,
        stopped: watch::Receiver<bool>,
        session: S,
    ) where
        S: Fn(
                BoxedStream,
                Option<String>,
                SocketAddr,
                Option<TlsUpgrade>,
                watch::Receiver<bool>,
            ) -> Fut
            + Clone
            + Send
            + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let name = self.name;
        accept_loop(name, listener, stopped, |socket, peer, stopped| {
            let capped = self.cap.take();
            let slot = capped
                .as_ref()
                .and_then(|_| self.per_address.take(peer.ip()));
            let refusal = match capped {
                None => format!("{}\r\n", self.full_refusal),
                Some(_) => per_address_refusal(self.refusal, self.per_address.max),
            };
            // Taken here, in accept order, so that which refusals are told is deterministic.
            let telling = match (&capped, &slot) {
                (Some(_), Some(_)) => None,
                _ => RefusalSlot::take(&self.refusing),
            };
            let (tls, implicit_tls, session) =
                (self.tls.clone(), self.implicit_tls, session.clone());
            let (connections, handshake_max) = (self.connections.clone(), self.handshake_max);
            async move {
                let (Some(_capped), Some(_slot)) = (capped, slot) else {
                    let Some(_telling) = telling else {
                        return;
                    };
                    let handshake = handshake_max.min(REFUSAL_HANDSHAKE_MS);
                    return refuse(socket, &tls, implicit_tls, &refusal, handshake).await;
                };
                let _open = connections.opened(name);
                let Some((stream, described)) =
                    open_stream(socket, &tls, implicit_tls, handshake_max).await
                else {
                    return;
                };
                let starttls = (!implicit_tls).then(|| starttls_upgrade(tls, handshake_max));
                session(stream, described, peer, starttls, stopped).await;
            }
        })
        .await;
    }
}

/// One refusal being told; past `REFUSALS_IN_FLIGHT_MAX` there is none to take.
struct RefusalSlot(Arc<AtomicUsize>);

impl RefusalSlot {
    fn take(refusing: &Arc<AtomicUsize>) -> Option<Self> {
        refusing
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < REFUSALS_IN_FLIGHT_MAX).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(refusing.clone()))
    }
}

impl Drop for RefusalSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// STARTTLS on a cleartext connection: the TLS stream and what was negotiated; a handshake
/// not done within `handshake_max` fails (the session then ends).
fn starttls_upgrade(acceptor: tokio_rustls::TlsAcceptor, handshake_max: Duration) -> TlsUpgrade {
    Arc::new(move |plain: BoxedStream| {
        let acceptor = acceptor.clone();
        Box::pin(async move {
            let secured = tokio::time::timeout(handshake_max, acceptor.accept(plain))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake too slow")
                })??;
            let described = describe_tls(&secured);
            Ok((Box::new(secured) as BoxedStream, described))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_share_one_count_per_64_at_the_listener() {
        let limiter = AddressLimiter::new(1);
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let first = limiter
            .take(ip("2001:db8:7:1::10"))
            .expect("the first connection");
        assert!(
            limiter.take(ip("2001:db8:7:1:ffff::20")).is_none(),
            "another address of the same /64 is the same client"
        );
        let other = limiter
            .take(ip("2001:db8:7:2::10"))
            .expect("the next /64 is another client");
        let mapped = limiter
            .take(ip("::ffff:192.0.2.1"))
            .expect("the first connection of 192.0.2.1, written IPv4-mapped");
        assert!(
            limiter.take(ip("192.0.2.1")).is_none(),
            "an IPv4-mapped address is the IPv4 one"
        );
        drop(mapped);
        drop(first);
        assert!(
            limiter.take(ip("2001:db8:7:1::99")).is_some(),
            "the slot came back"
        );
        drop(other);
    }

    #[test]
    fn a_listener_cap_refuses_past_its_bound_and_frees_on_close() {
        let cap = ConnectionCap::new(2);
        let (a, b) = (cap.take().unwrap(), cap.take().unwrap());
        assert!(cap.take().is_none());
        drop(a);
        assert!(cap.take().is_some());
        drop(b);
    }

    #[test]
    fn an_http_refusal_counts_its_body_and_the_others_name_the_limit() {
        let http =
            super::per_address_refusal("HTTP/1.1 503 too many connections from your address", 7);
        let (head, body) = http.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{http}"
        );
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{http}"
        );
        assert_eq!(body, "too many connections from your address (limit 7)\r\n");
        assert_eq!(
            super::per_address_refusal("421 4.7.0 too many connections from your address", 2),
            "421 4.7.0 too many connections from your address (limit 2)\r\n"
        );
    }
}
