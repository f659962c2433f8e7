//! curl as the client: what an administrator would type, HTTP/1.1 and HTTP/2 over real TLS.

use super::upstream::Echo;

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The value of header `name` (any case); panics when it appears more than once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut all = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        let first = all.next();
        assert!(all.next().is_none(), "{name} appears more than once");
        first
    }

    pub fn echo(&self) -> Echo {
        assert_eq!(self.status, 200, "unexpected reply: {self:?}");
        Echo::parse(&self.body)
    }
}

/// Runs `curl -sS -i ARGS...`; `Err` carries curl's exit code and message when it fails.
pub async fn curl(args: &[&str]) -> Result<Reply, String> {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-i", "--max-time", "20"])
        .args(args)
        .output()
        .await
        .expect("curl is installed");
    if !out.status.success() {
        return Err(format!(
            "curl {:?} failed ({}): {}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

fn parse(mut text: &str) -> Reply {
    loop {
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        let mut lines = head.lines();
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.split_whitespace();
        let version = parts.next().unwrap_or_default().to_string();
        let status: u16 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if (100..200).contains(&status) && body.starts_with("HTTP/") {
            text = body;
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        return Reply {
            status,
            version,
            headers,
            body: body.to_string(),
        };
    }
}
