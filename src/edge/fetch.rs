//! Requests ccedge sends on its own behalf to internal servers (health probes, credential checks,
//! signing keys), over the same peers, and so the same TLS, CA and mTLS identity, as traffic.

use crate::edge::upstream;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use std::time::Duration;

/// How long a connection kept for the next fetch may stay idle.
const KEEP_IDLE: Duration = Duration::from_secs(15);

/// An answer, read whole.
pub struct Fetched {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Sends `request` to `peer` and reads the answer, all within `within`. A body longer than
/// `max_body` bytes is an error. With `keep`, the connection goes back to `connector`'s pool for
/// the next fetch; without, every fetch opens its own (a health probe checks connecting, too).
pub async fn send(
    connector: &Connector,
    peer: &HttpPeer,
    request: RequestHeader,
    within: Duration,
    max_body: usize,
    keep: bool,
) -> pingora::Result<Fetched> {
    let exchange = async {
        let (mut session, _reused) = connector.get_http_session(peer).await?;
        upstream::check_connection(session.digest())?;
        session.set_write_timeout(Some(within));
        session.set_read_timeout(Some(within));
        session.write_request_header(Box::new(request)).await?;
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let (status, headers) = session
            .response_header()
            .map_or((0, http::HeaderMap::new()), |r| {
                (r.status.as_u16(), r.headers.clone())
            });
        let mut body = BytesMut::new();
        while let Some(chunk) = session.read_response_body().await? {
            if body.len() + chunk.len() > max_body {
                return pingora::Error::e_explain(
                    pingora::ErrorType::InvalidHTTPHeader,
                    format!("answer body longer than {max_body} bytes"),
                );
            }
            body.extend_from_slice(&chunk);
        }
        if keep {
            connector
                .release_http_session(session, peer, Some(KEEP_IDLE))
                .await;
        }
        Ok(Fetched {
            status,
            headers,
            body: body.freeze(),
        })
    };
    match tokio::time::timeout(within, exchange).await {
        Ok(result) => result,
        Err(_) => pingora::Error::e_explain(
            pingora::ErrorType::ReadTimedout,
            format!("no answer within {} ms", within.as_millis()),
        ),
    }
}
