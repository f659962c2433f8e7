//! A real browser: headless Chromium driven through the DevTools protocol (one WebSocket, one
//! page). Public names are mapped to loopback by `--host-resolver-rules`; the proxy's
//! certificate is trusted by the hash of its public key (`--ignore-certificate-errors-spki-list`),
//! so every other certificate check stays on.
//!
//! Without Chromium the browser tests say they are skipped, unless `CCEDGE_E2E` is set (as
//! `make e2e` does): then a missing browser is a failure.

use super::TestDir;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const CANDIDATES: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];

pub struct Browser {
    child: Child,
    devtools: WebSocketStream<TcpStream>,
    session: String,
    next_id: u64,
    /// The page's WebSocket events (frames aside) and the browser's log entries, as DevTools
    /// reported them, for failure messages.
    pub websocket_events: Vec<Value>,
    _profile: TestDir,
}

impl Drop for Browser {
    /// Ends Chromium and every process it started (its own process group).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

/// The Chromium on this machine, if any.
fn chromium() -> Option<&'static str> {
    CANDIDATES.into_iter().find(|name| {
        Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The value `--ignore-certificate-errors-spki-list` takes for the certificate in `cert_pem`:
/// the base64 SHA-256 of its SubjectPublicKeyInfo.
pub fn spki_hash(cert_pem: &str) -> String {
    let cert = openssl::x509::X509::from_pem(cert_pem.as_bytes()).unwrap();
    let spki = cert.public_key().unwrap().public_key_to_der().unwrap();
    base64::engine::general_purpose::STANDARD.encode(openssl::sha::sha256(&spki))
}

impl Browser {
    /// Starts headless Chromium with `*.example.com` mapped to 127.0.0.1, trusting the
    /// certificate `trusted_pem` (none: plain HTTP only). `None` when the machine has no
    /// Chromium and the run does not require it (the test then reports itself skipped).
    pub async fn launch(test: &str, trusted_pem: Option<&str>) -> Option<Browser> {
        let Some(binary) = chromium() else {
            assert!(
                std::env::var_os("CCEDGE_E2E").is_none(),
                "CCEDGE_E2E is set but no Chromium is installed (tried {CANDIDATES:?})"
            );
            eprintln!("{test}: skipped: no Chromium on this machine (`make e2e` installs it)");
            return None;
        };
        let profile = TestDir::new(&format!("{test}-chromium"));
        let mut command = Command::new(binary);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
                "--host-resolver-rules=MAP *.example.com 127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(pem) = trusted_pem {
            command.arg(format!(
                "--ignore-certificate-errors-spki-list={}",
                spki_hash(pem)
            ));
        }
        command.arg("about:blank");
        let mut child = command.spawn().expect("Chromium starts");
        let stderr = tokio::process::ChildStderr::from_std(child.stderr.take().unwrap()).unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let mut said = Vec::new();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return Some(url.trim().to_string());
                }
                said.push(line);
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("Chromium gave no DevTools address: {}", said.join("\n")));
        // Chromium keeps writing to stderr; drain it so that it never blocks.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let authority = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .expect("a ws:// DevTools address")
            .to_string();
        let tcp = TcpStream::connect(&authority).await.unwrap();
        let (devtools, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
            .await
            .expect("DevTools WebSocket");
        let mut browser = Browser {
            child,
            devtools,
            session: String::new(),
            next_id: 0,
            websocket_events: Vec::new(),
            _profile: profile,
        };
        let target = browser
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser.call("Page.enable", json!({})).await;
        browser.call("Network.enable", json!({})).await;
        browser.call("Log.enable", json!({})).await;
        Some(browser)
    }

    /// Sends one DevTools command (to the page once attached) and returns its result; of the
    /// events that arrive meanwhile, WebSocket ones (frames aside) are kept.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            command["sessionId"] = json!(self.session);
        }
        self.devtools
            .send(Message::text(command.to_string()))
            .await
            .expect("DevTools is connected");
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match self.devtools.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let message: Value = serde_json::from_str(&text).unwrap();
                        if message["id"] == id {
                            return message;
                        }
                        let event = message["method"].as_str().unwrap_or_default();
                        if event.starts_with("Network.webSocket")
                            && !event.starts_with("Network.webSocketFrame")
                            || event == "Network.webSocketFrameError"
                            || event == "Log.entryAdded"
                        {
                            self.websocket_events.push(message);
                        }
                    }
                    Some(Ok(_)) => {}
                    other => panic!("DevTools connection ended: {other:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("DevTools did not answer {method}"));
        if let Some(error) = answer.get("error") {
            panic!("DevTools {method} failed: {error}");
        }
        answer["result"].clone()
    }

    /// Loads `url` and waits until the document has loaded.
    pub async fn open(&mut self, url: &str) {
        let navigated = self.call("Page.navigate", json!({"url": url})).await;
        if let Some(error) = navigated.get("errorText") {
            panic!("the browser could not open {url}: {error}");
        }
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(20),
        )
        .await
        .unwrap_or_else(|_| panic!("{url} never finished loading"));
    }

    /// The value of JavaScript `expression` in the page (promises awaited).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy in the page; on time-out, `Err` with `report`'s value
    /// (what the page saw) for the failure message.
    pub async fn wait_for(&mut self, expression: &str, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.eval(&format!("!!({expression})")).await;
            if value == json!(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("timed out waiting for {expression}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Turns the browser's own HTTP cache off or on, so that a reload asks the proxy again.
    pub async fn cache_disabled(&mut self, disabled: bool) {
        self.call(
            "Network.setCacheDisabled",
            json!({"cacheDisabled": disabled}),
        )
        .await;
    }

    /// Saves what the page shows as a PNG file.
    pub async fn screenshot(&mut self, path: &Path) {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}
