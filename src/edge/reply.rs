//! Responses ccedge writes itself (421, 403, 429, 502, 503, ...): short plain-text bodies that say
//! what happened, the request's TrackingID, and no `Server` header.

use crate::edge::headers::TRACKING_ID;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use std::borrow::Cow;

/// A request ccedge answers itself instead of forwarding it: the status, the message (the body
/// and the access log's `error`) and any headers the answer needs (`Retry-After`, a challenge).
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    /// Why, for the log; also the body, unless `body` is given.
    pub message: Cow<'static, str>,
    pub headers: Vec<(&'static str, HeaderValue)>,
    /// The body to send instead of the message (someone else's refusal, passed on).
    pub body: Option<Bytes>,
}

impl Refusal {
    pub fn new(status: u16, message: impl Into<Cow<'static, str>>) -> Self {
        Refusal {
            status,
            message: message.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn body(mut self, body: Bytes) -> Self {
        self.body = Some(body);
        self
    }

    pub fn with(mut self, name: &'static str, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// Writes `status` with `message` as the body (or `body` when given), unless a response has
/// already started.
pub async fn send(
    session: &mut ServerSession,
    status: u16,
    (message, body): (&str, Option<&Bytes>),
    tracking_id: Option<&HeaderValue>,
    headers: &[(&'static str, HeaderValue)],
) -> pingora::Result<()> {
    if session.response_written().is_some() {
        return Ok(());
    }
    let body = match body {
        Some(body) => body.clone(),
        None => {
            let mut text = Vec::with_capacity(message.len() + 1);
            text.extend_from_slice(message.as_bytes());
            text.push(b'\n');
            Bytes::from(text)
        }
    };
    let mut resp = ResponseHeader::build(status, Some(6))?;
    resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    if let Some(id) = tracking_id {
        resp.insert_header(TRACKING_ID, id.clone())?;
    }
    for (name, value) in headers {
        resp.insert_header(*name, value.clone())?;
    }
    session.write_response_header(Box::new(resp)).await?;
    session.write_response_body(body, true).await
}

/// The status for an error that ended a proxied request, and a message a client can act on.
pub fn for_error(e: &pingora::Error) -> (u16, &'static str) {
    use pingora::{ErrorSource, ErrorType::*};
    match (e.etype(), e.esource()) {
        (HTTPStatus(code), _) => (*code, "request refused"),
        (ConnectTimedout | ReadTimedout | WriteTimedout, ErrorSource::Upstream) => {
            (504, "the internal server did not answer in time")
        }
        (_, ErrorSource::Upstream) => (502, "the internal server could not be reached"),
        (ReadError | WriteError | WriteTimedout | ConnectionClosed, ErrorSource::Downstream) => {
            (0, "")
        }
        (ReadTimedout, ErrorSource::Downstream) => (408, "request not received in time"),
        (_, ErrorSource::Downstream) => (400, "malformed request"),
        _ => (500, "internal error"),
    }
}
