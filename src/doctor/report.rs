//! What `ccedge doctor` found: one line per check, OK, WARN or FAIL, with what to do.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub status: Status,
    /// What was checked, for example `upstream desktop finesse1.cc.internal:8445: TLS`.
    pub check: String,
    /// What was found.
    pub found: String,
    /// What to do about it (WARN and FAIL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
}

impl Check {
    pub fn ok(check: impl Into<String>, found: impl Into<String>) -> Check {
        Check {
            status: Status::Ok,
            check: check.into(),
            found: found.into(),
            advice: None,
        }
    }

    pub fn warn(
        check: impl Into<String>,
        found: impl Into<String>,
        advice: impl Into<String>,
    ) -> Check {
        Check {
            status: Status::Warn,
            check: check.into(),
            found: found.into(),
            advice: Some(advice.into()),
        }
    }

    pub fn fail(
        check: impl Into<String>,
        found: impl Into<String>,
        advice: impl Into<String>,
    ) -> Check {
        Check {
            status: Status::Fail,
            check: check.into(),
            found: found.into(),
            advice: Some(advice.into()),
        }
    }
}

/// The report as text: a line per check, the advice indented under it, and a summary.
pub fn text(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let status = match c.status {
            Status::Ok => "OK  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        out.push_str(&format!("{status} {}: {}\n", c.check, c.found));
        if let Some(advice) = &c.advice {
            out.push_str(&format!("     -> {advice}\n"));
        }
    }
    let count = |s| checks.iter().filter(|c| c.status == s).count();
    out.push_str(&format!(
        "{} checks: {} OK, {} WARN, {} FAIL\n",
        checks.len(),
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    ));
    out
}

/// Days from `now` to `not_after` (Unix seconds), rounded down; negative once past.
pub fn days_left(not_after: i64, now: i64) -> i64 {
    (not_after - now).div_euclid(86_400)
}

/// The check of a certificate's end of validity: FAIL once expired, WARN under 30 days.
pub fn expiry(check: String, subject: &str, not_after: i64, now: i64) -> Check {
    let date = chrono::DateTime::from_timestamp(not_after, 0).map_or_else(
        || not_after.to_string(),
        |d| d.format("%Y-%m-%d").to_string(),
    );
    let days = days_left(not_after, now);
    if days < 0 {
        Check::fail(
            check,
            format!("{subject} expired on {date}"),
            "renew the certificate now: clients refuse it",
        )
    } else if days < 30 {
        Check::warn(
            check,
            format!("{subject} expires on {date}, in {days} days"),
            "renew the certificate before it expires",
        )
    } else {
        Check::ok(check, format!("{subject} valid until {date} ({days} days)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_fail_when_past_and_warn_within_30_days() {
        let now = 1_800_000_000;
        let day = 86_400;
        assert_eq!(expiry("c".into(), "s", now - 1, now).status, Status::Fail);
        assert_eq!(
            expiry("c".into(), "s", now + 29 * day, now).status,
            Status::Warn
        );
        assert_eq!(
            expiry("c".into(), "s", now + 31 * day, now).status,
            Status::Ok
        );
        assert_eq!(days_left(now + day + 5, now), 1);
        assert_eq!(days_left(now - 5, now), -1);
    }

    #[test]
    fn text_gives_a_line_per_check_and_the_advice_under_it() {
        let checks = vec![Check::ok("a", "fine"), Check::fail("b", "broken", "fix it")];
        let out = text(&checks);
        assert!(out.starts_with("OK   a: fine\nFAIL b: broken\n     -> fix it\n"));
        assert!(out.ends_with("2 checks: 1 OK, 0 WARN, 1 FAIL\n"));
    }
}
