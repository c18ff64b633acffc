//! The HTTP/1.1 requests SMTP makes (rspamd's `/checkv2` and `/learn*` on loopback, an
//! MTA-STS policy over verified HTTPS), with hyper's client over the stream the caller
//! opened: the answer's status and body, the body read to at most `body_bytes_max` and the
//! header within `head_bytes_max`. The caller bounds the whole exchange in time.

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

/// A status and a body read whole.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

/// Sends `request` over `stream` and reads the answer within the bounds.
pub(crate) async fn exchange<S>(
    stream: S,
    request: hyper::Request<Full<Bytes>>,
    head_bytes_max: usize,
    body_bytes_max: usize,
) -> Result<Answer, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        // hyper's smallest read buffer is 8 KiB; a longer header is refused.
        .max_buf_size(head_bytes_max.max(8192))
        .handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), body_bytes_max)
            .collect()
            .await
            .map_err(|e| format!("the answer's body: {e}"))?
            .to_bytes()
            .to_vec();
        Ok(Answer { status, body })
    };
    tokio::pin!(answer, connection);
    // The connection is driven while the answer is read; once it ends (the server closed
    // after its answer), what it delivered is still read.
    tokio::select! {
        biased;
        done = &mut answer => done,
        ended = &mut connection => match ended {
            Ok(()) => answer.await,
            Err(error) => Err(error.to_string()),
        },
    }
}

/// A request with `body` and the given header fields, each value stripped of control
/// characters (values can come from a message's envelope).
pub(crate) fn request(
    method: hyper::Method,
    host: &str,
    path: &str,
    fields: &[(String, String)],
    body: Vec<u8>,
) -> Result<hyper::Request<Full<Bytes>>, String> {
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "Sealpost");
    for (name, value) in fields {
        let value: String = value.chars().filter(|c| !c.is_control()).collect();
        builder = builder.header(name.as_str(), value);
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// `exchange` with a server that reads the request and writes `answer`, then closes.
    async fn against(answer: &'static [u8], body_max: usize) -> Result<Answer, String> {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut request = vec![0u8; 4096];
            let _ = server.read(&mut request).await;
            let _ = server.write_all(answer).await;
        });
        let request = request(
            hyper::Method::POST,
            "localhost",
            "/checkv2",
            &[],
            b"x".to_vec(),
        )?;
        exchange(client, request, 16 * 1024, body_max).await
    }

    #[tokio::test]
    async fn answers_read_within_their_bounds() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n";
        let answer = against(chunked, 100).await.unwrap();
        assert_eq!((answer.status, &answer.body[..]), (200, &b"Wikipedia"[..]));
        let closed = b"HTTP/1.1 503 Busy\r\nConnection: close\r\n\r\nlater";
        let answer = against(closed, 100).await.unwrap();
        assert_eq!((answer.status, &answer.body[..]), (503, &b"later"[..]));
        let long = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world";
        assert!(against(long, 10).await.is_err(), "a body past its bound");
        assert!(against(b"SMTP/1.0 220 hello\r\n\r\n", 100).await.is_err());
    }

    #[test]
    fn values_lose_their_line_breaks() {
        let fields = [("From".to_string(), "a@b\r\nX-Evil: 1".to_string())];
        let built = request(hyper::Method::POST, "h", "/", &fields, Vec::new()).unwrap();
        assert_eq!(built.headers()["from"], "a@bX-Evil: 1");
    }
}
