//! Credentials checked by the internal servers themselves: a `GET` of `validate_url` carrying
//! the client's credential (Finesse's `/finesse/api/UserAuth`, say). 2xx: valid; 401 or 403:
//! invalid; anything else, or no answer: the validator is unavailable, which is never a pass and
//! never counts as a failed login.

use super::credential::Credential;
use super::verdicts::{Judged, Verdict, Verdicts};
use super::{count_kept, Attempt, Method};
use crate::config::{Endpoint, Limits};
use crate::edge::{fetch, upstream};
use crate::observe::metrics::AuthMetrics;
use crate::observe::throttle::OncePerSecond;
use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use std::sync::Arc;
use std::time::Duration;

/// How long a refusal is reused: long enough that a burst of requests with one wrong password
/// makes one validation, short enough that a corrected account is seen at once.
const INVALID_KEEP: Duration = Duration::from_secs(2);
/// How long "unavailable" is reused, so a failing validator is not hammered by every request.
const UNAVAILABLE_KEEP: Duration = Duration::from_secs(1);
/// The longest validation answer read.
const ANSWER_MAX: usize = 256 * 1024;
/// The longest wait for an answer once connected.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

pub struct Validator {
    service: String,
    url: String,
    peer: HttpPeer,
    request: RequestHeader,
    connector: Connector,
    within: Duration,
    keep_valid: Duration,
    verdicts: Arc<Verdicts>,
    metrics: Arc<AuthMetrics>,
    report: OncePerSecond,
}

impl Validator {
    pub fn new(
        service: &str,
        endpoint: &Endpoint,
        keep_valid: Duration,
        limits: &Limits,
        verdicts: Arc<Verdicts>,
        metrics: Arc<AuthMetrics>,
    ) -> Self {
        let mut request =
            RequestHeader::build("GET", endpoint.target().as_bytes(), None).expect("a valid URL");
        let host = endpoint.url.authority().map_or("", |a| a.as_str());
        request.insert_header("Host", host).expect("a valid URL");
        request
            .insert_header(
                "User-Agent",
                concat!("ccedge-auth/", env!("CARGO_PKG_VERSION")),
            )
            .expect("static header");
        Validator {
            service: service.to_string(),
            url: endpoint.url.to_string(),
            peer: upstream::peer(service, &endpoint.upstream, endpoint.tls.as_ref(), limits),
            request,
            connector: Connector::new(None),
            within: limits.upstream_connect_timeout + ANSWER_WAIT.min(limits.upstream_read_timeout),
            keep_valid,
            verdicts,
            metrics,
            report: OncePerSecond::default(),
        }
    }

    async fn validate(&self, credential: &Credential) -> Judged {
        let user = credential.user();
        if matches!(credential, Credential::Basic { .. }) && user.is_none() {
            self.metrics.validations[1].inc();
            return Judged {
                verdict: Verdict::Invalid(
                    "the Basic credentials are not base64 of user:password".into(),
                ),
                keep: INVALID_KEEP,
            };
        }
        let user = user.map(Arc::from);
        let mut request = self.request.clone();
        let authorization = credential.authorization().clone();
        let judged = match request.insert_header(http::header::AUTHORIZATION, authorization) {
            Ok(()) => {
                let answer = fetch::send(
                    &self.connector,
                    &self.peer,
                    request,
                    self.within,
                    ANSWER_MAX,
                    true,
                );
                match answer.await {
                    Ok(a) if (200..300).contains(&a.status) => Judged {
                        verdict: Verdict::Valid { user },
                        keep: self.keep_valid,
                    },
                    Ok(a) if a.status == 401 || a.status == 403 => Judged {
                        verdict: Verdict::Invalid(
                            format!("the validator answered {}", a.status).into(),
                        ),
                        keep: INVALID_KEEP,
                    },
                    Ok(a) => self.unavailable(format!("the validator answered {}", a.status)),
                    Err(e) => self.unavailable(format!("the validator did not answer: {e}")),
                }
            }
            Err(e) => Judged {
                verdict: Verdict::Invalid(format!("unusable credential: {e}").into()),
                keep: INVALID_KEEP,
            },
        };
        let outcome = match &judged.verdict {
            Verdict::Valid { .. } => 0,
            Verdict::Invalid(_) => 1,
            Verdict::Unavailable(_) => 2,
        };
        self.metrics.validations[outcome].inc();
        judged
    }

    fn unavailable(&self, why: String) -> Judged {
        if self.report.ready() {
            log::warn!(
                "service {}: credentials cannot be checked: {} ({why}); such requests get 503",
                self.service,
                self.url
            );
        }
        Judged {
            verdict: Verdict::Unavailable(why.into()),
            keep: UNAVAILABLE_KEEP,
        }
    }
}

#[async_trait]
impl Method for Validator {
    async fn judge(&self, attempt: &Attempt<'_>) -> Option<Verdict> {
        let (verdict, source) = self
            .verdicts
            .get_or_judge(attempt.digest, || self.validate(attempt.credential))
            .await;
        count_kept(source, &self.metrics);
        Some(verdict)
    }
}
