//! Credentials checked by the internal servers themselves: a `GET` of `validate_url` carrying
//! the client's credential (Finesse's `/finesse/api/UserAuth`, say). 2xx: valid; 401 or 403:
//! invalid, final. Anything else, or no answer, fails that validator: the next one is asked (side
//! B when side A is down or being patched), and the failed one rests in back-off (10 s, doubling
//! to 60 s) before it is asked again. While every one rests, the one whose rest ends first is
//! asked anyway: a client's credential can itself make a validator fail (a header too large for
//! it, say), and no client must be able to put every validator to rest for the others. When
//! none answers the credential is unavailable, which is never a pass and never counts as a
//! failed login.

use super::credential::Credential;
use super::verdicts::{Judged, Verdict, Verdicts};
use super::{count_kept, Attempt, Method};
use crate::config::{Endpoint, Limits};
use crate::edge::{fetch, upstream};
use crate::observe::metrics::{self, AuthMetrics};
use crate::observe::throttle::OncePerSecond;
use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use prometheus::{IntCounter, IntGauge};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a refusal is reused: long enough that a burst of requests with one wrong password
/// makes one validation, short enough that a corrected account is seen at once.
const INVALID_KEEP: Duration = Duration::from_secs(2);
/// How long "unavailable" is reused, so a failing validator is not hammered by every request.
const UNAVAILABLE_KEEP: Duration = Duration::from_secs(1);
/// The longest validation answer read.
const ANSWER_MAX: usize = 256 * 1024;
/// The longest wait for an answer once connected.
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// A validator that failed rests this long, doubling with each further failure up to
/// `BACKOFF_MAX`.
const BACKOFF_FIRST: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// How long a validator rests after its `failures`-th failure in a row.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(8);
    (BACKOFF_FIRST * 2u32.pow(doublings)).min(BACKOFF_MAX)
}

/// What a validator said about a credential.
enum Answer {
    Valid,
    Invalid(u16),
    /// It did not answer, or answered something that is neither (and why).
    Failed(String),
}

/// Whether a validator answers, as the last requests found it.
#[derive(Default)]
struct Health {
    /// Failures in a row (one per request asked while it was awake).
    failures: u32,
    /// When the current rest began.
    rested_at: Option<Instant>,
    /// When it last answered.
    answered_at: Option<Instant>,
    /// Not asked before this, unless no other validator answers.
    resting_until: Option<Instant>,
    last_error: Option<String>,
}

impl Health {
    /// A request sent at `sent` failed at `now`: the validator rests, longer after each
    /// failure in a row; the rest it begins, or `None` when a rest began, or an answer came,
    /// after `sent` (many requests in flight when it went down are one failure, not one each,
    /// and a slow one from before its last answer is no news).
    fn failed(&mut self, why: &str, sent: Instant, now: Instant) -> Option<Duration> {
        self.last_error = Some(why.to_string());
        let news = |at: Option<Instant>| at.is_some_and(|at| at >= sent);
        if news(self.rested_at) || news(self.answered_at) {
            return None;
        }
        self.failures += 1;
        let rest = backoff(self.failures);
        self.rested_at = Some(now);
        self.resting_until = Some(now + rest);
        Some(rest)
    }
}

/// One validator (side A, side B, ...).
struct Side {
    url: String,
    peer: HttpPeer,
    request: RequestHeader,
    health: Mutex<Health>,
    up: IntGauge,
    /// Valid, invalid, failed.
    answers: [IntCounter; 3],
    /// Failures after the first are logged at most once a second.
    report: OncePerSecond,
}

impl Side {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When it may be asked again, if it is resting.
    fn resting(&self, now: Instant) -> Option<Instant> {
        self.health().resting_until.filter(|until| *until > now)
    }

    fn answered(&self, service: &str) {
        let mut health = self.health();
        if health.failures > 0 {
            log::info!("service {service}: validator {} answers again", self.url);
        }
        *health = Health {
            answered_at: Some(Instant::now()),
            ..Health::default()
        };
        self.up.set(1);
    }

    fn failed(&self, service: &str, why: &str, sent: Instant) {
        let mut health = self.health();
        let Some(rest) = health.failed(why, sent, Instant::now()) else {
            return;
        };
        self.up.set(0);
        if health.failures == 1 || self.report.ready() {
            log::warn!(
                "service {service}: validator {} failed ({why}); it is asked again in {} s",
                self.url,
                rest.as_secs()
            );
        }
    }

    fn status(&self, now: Instant) -> Value {
        let health = self.health();
        json!({
            "url": self.url,
            "up": health.failures == 0,
            "failures_in_a_row": health.failures,
            "asked_again_in_seconds": health
                .resting_until
                .filter(|u| *u > now)
                .map(|u| (u - now).as_secs().max(1)),
            "last_error": health.last_error,
        })
    }
}

pub struct Validator {
    service: String,
    sides: Vec<Side>,
    connector: Connector,
    within: Duration,
    keep_valid: Duration,
    verdicts: Arc<Verdicts>,
    metrics: Arc<AuthMetrics>,
    /// "No validator answered" is logged at most once a second.
    report: OncePerSecond,
}

impl Validator {
    pub fn new(
        service: &str,
        endpoints: &[Endpoint],
        keep_valid: Duration,
        limits: &Limits,
        verdicts: Arc<Verdicts>,
        metrics: Arc<AuthMetrics>,
    ) -> Self {
        let sides = endpoints
            .iter()
            .map(|endpoint| {
                let mut request = RequestHeader::build("GET", endpoint.target().as_bytes(), None)
                    .expect("a valid URL");
                let host = endpoint.url.authority().map_or("", |a| a.as_str());
                request.insert_header("Host", host).expect("a valid URL");
                request
                    .insert_header(
                        "User-Agent",
                        concat!("ccedge-auth/", env!("CARGO_PKG_VERSION")),
                    )
                    .expect("static header");
                let url = endpoint.url.to_string();
                let (up, answers) = metrics::validator(service, &url);
                up.set(1);
                Side {
                    peer: upstream::peer(
                        service,
                        &endpoint.upstream,
                        endpoint.tls.as_ref(),
                        limits,
                    ),
                    url,
                    request,
                    health: Mutex::default(),
                    up,
                    answers,
                    report: OncePerSecond::default(),
                }
            })
            .collect();
        Validator {
            service: service.to_string(),
            sides,
            connector: Connector::new(None),
            within: limits.upstream_connect_timeout + ANSWER_WAIT.min(limits.upstream_read_timeout),
            keep_valid,
            verdicts,
            metrics,
            report: OncePerSecond::default(),
        }
    }

    /// The validators to ask, in order: those not resting, in the configured order; when every
    /// one is resting, the one whose rest ends first (see the module's comment).
    fn order(&self, now: Instant) -> Vec<&Side> {
        let awake: Vec<&Side> = self
            .sides
            .iter()
            .filter(|s| s.resting(now).is_none())
            .collect();
        if !awake.is_empty() {
            return awake;
        }
        self.sides
            .iter()
            .min_by_key(|s| s.resting(now))
            .into_iter()
            .collect()
    }

    async fn ask(&self, side: &Side, credential: &Credential) -> Answer {
        let mut request = side.request.clone();
        let authorization = credential.authorization().clone();
        if let Err(e) = request.insert_header(http::header::AUTHORIZATION, authorization) {
            return Answer::Failed(format!("the credential cannot be forwarded: {e}"));
        }
        let answer = fetch::send(
            &self.connector,
            &side.peer,
            request,
            self.within,
            ANSWER_MAX,
            true,
        );
        match answer.await {
            Ok(a) if (200..300).contains(&a.status) => Answer::Valid,
            Ok(a) if a.status == 401 || a.status == 403 => Answer::Invalid(a.status),
            Ok(a) => Answer::Failed(format!("it answered {}", a.status)),
            Err(e) => Answer::Failed(format!("it did not answer: {e}")),
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
        let mut why = String::from("no validator is configured");
        for side in self.order(Instant::now()) {
            let sent = Instant::now();
            match self.ask(side, credential).await {
                Answer::Valid => {
                    side.answered(&self.service);
                    side.answers[0].inc();
                    self.metrics.validations[0].inc();
                    return Judged {
                        verdict: Verdict::Valid {
                            user: user.map(Arc::from),
                        },
                        keep: self.keep_valid,
                    };
                }
                Answer::Invalid(status) => {
                    // Final: asking another validator would double the guesses.
                    side.answered(&self.service);
                    side.answers[1].inc();
                    self.metrics.validations[1].inc();
                    return Judged {
                        verdict: Verdict::Invalid(
                            format!("the validator answered {status}").into(),
                        ),
                        keep: INVALID_KEEP,
                    };
                }
                Answer::Failed(failure) => {
                    side.answers[2].inc();
                    side.failed(&self.service, &failure, sent);
                    why = format!("{}: {failure}", side.url);
                }
            }
        }
        self.metrics.validations[2].inc();
        if self.report.ready() {
            log::warn!(
                "service {}: credentials cannot be checked: no validator answered (last: {why}); such requests get 503",
                self.service
            );
        }
        Judged {
            verdict: Verdict::Unavailable(format!("no validator answered (last: {why})").into()),
            keep: UNAVAILABLE_KEEP,
        }
    }

    /// For `/status`: each validator and whether it answers.
    pub fn status(&self) -> Value {
        let now = Instant::now();
        self.sides.iter().map(|s| s.status(now)).collect()
    }
}

#[async_trait]
impl Method for Arc<Validator> {
    async fn judge(&self, attempt: &Attempt<'_>) -> Option<Verdict> {
        let (verdict, source) = self
            .verdicts
            .get_or_judge(attempt.digest, || self.validate(attempt.credential))
            .await;
        count_kept(source, &self.metrics);
        Some(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_starts_at_ten_seconds_and_doubles_to_a_minute() {
        let rests: Vec<u64> = (1..=6).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(rests, [10, 20, 40, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX).as_secs(), 60);
    }

    #[test]
    fn requests_in_flight_when_it_went_down_are_one_failure() {
        let mut health = Health::default();
        let sent = Instant::now();
        let down = sent + Duration::from_millis(300);
        assert_eq!(health.failed("500", sent, down), Some(backoff(1)));
        for _ in 0..9 {
            assert_eq!(health.failed("500", sent, down), None);
        }
        assert_eq!(health.failures, 1);
        // Asked again after its rest, it fails again: a longer rest.
        let again = down + Duration::from_secs(11);
        assert_eq!(
            health.failed("500", again, again + Duration::from_millis(5)),
            Some(backoff(2))
        );
        // A slow request sent before its last answer fails late: no news, no rest.
        let mut health = Health {
            answered_at: Some(again + Duration::from_secs(1)),
            ..Health::default()
        };
        assert_eq!(
            health.failed("timeout", again, again + Duration::from_secs(10)),
            None
        );
        assert_eq!(health.failures, 0);
    }
}
