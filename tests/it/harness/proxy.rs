//! A ccedge process under test: started on a generated configuration, killed when dropped.

use super::TestDir;
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Ccedge {
    child: Child,
    pub access_log: PathBuf,
    pub stderr: PathBuf,
}

impl Drop for Ccedge {
    /// Kills the process and everything it started (its own process group).
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ccedge {
    /// Writes `yaml` as `ccedge.yaml` in `dir`, starts ccedge on it and waits until every port in
    /// `ports` accepts connections.
    pub async fn start(dir: &TestDir, yaml: &str, ports: &[u16]) -> Ccedge {
        Self::launch(dir, "ccedge", yaml, &[], ports).await
    }

    /// As `start`, with the files named after `tag` and `flags` before `-c`.
    pub async fn launch(
        dir: &TestDir,
        tag: &str,
        yaml: &str,
        flags: &[&str],
        ports: &[u16],
    ) -> Ccedge {
        let config = dir.write(&format!("{tag}.yaml"), yaml);
        let stdout = dir.join(&format!("{tag}.stdout.log"));
        let stderr = dir.join(&format!("{tag}.stderr.log"));
        let child = Command::new(super::binary())
            .args(flags)
            .arg("-c")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut proxy = Ccedge {
            child,
            access_log: dir.join("access.log"),
            stderr,
        };
        proxy.wait_ready(ports).await;
        proxy
    }

    async fn wait_ready(&mut self, ports: &[u16]) {
        let deadline = Instant::now() + Duration::from_secs(15);
        for port in ports {
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!(
                        "ccedge exited with {status} during start:\n{}",
                        self.stderr_text()
                    );
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", *port))
                    .await
                    .is_ok()
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "port {port} never opened:\n{}",
                    self.stderr_text()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (a `kill` name such as `QUIT`) to the process.
    pub fn signal(&self, signal: &str) {
        super::signal(self.pid(), signal);
    }

    /// Waits up to `secs` seconds for the process to exit; its exit code, or None if it did not.
    pub async fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Every access-log line written so far.
    pub fn log_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line ({e}): {l}")))
            .collect()
    }

    /// The access-log line of the request with `tracking_id`, waiting for the writer.
    pub async fn log_entry(&self, tracking_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(line) = self
                .log_lines()
                .into_iter()
                .find(|l| l["tracking_id"] == tracking_id)
            {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no access-log line for {tracking_id}; log has {:?}",
                self.log_lines()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the error log (stderr) contains `text`.
    pub async fn wait_stderr(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let all = self.stderr_text();
            if all.contains(text) {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "stderr never said {text:?}:\n{all}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `ccedge reload -c config`: whether it succeeded, and what it said.
pub async fn reload(config: &std::path::Path) -> (bool, String) {
    let (code, said) = command(&["reload"], config).await;
    (code == Some(0), said)
}

/// Runs `ccedge ARGS -c config`: its exit code and what it printed (stdout, then stderr).
pub async fn command(args: &[&str], config: &std::path::Path) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(super::binary())
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .await
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), said)
}

/// The pid of the server process that answers on the admin listener at `admin`.
pub async fn server_pid(admin: u16) -> u64 {
    let reply = super::curl(&[&format!("http://127.0.0.1:{admin}/status")])
        .await
        .unwrap();
    serde_json::from_str::<Value>(&reply.body).unwrap()["pid"]
        .as_u64()
        .unwrap()
}
