//! A real `redis-server` on a loopback port of the test's own, with nothing written to disk;
//! killed when dropped.

use super::{free_port, TestDir};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// With TLS: the server's arguments and redis-cli's.
    tls: Option<(Vec<String>, Vec<String>)>,
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Redis {
    pub async fn start(dir: &TestDir) -> Redis {
        Self::launch(dir, None).await
    }

    /// Over TLS only, with a server certificate of `ca` for 127.0.0.1, asking clients for a
    /// certificate of `ca` (one is written as `redis-client.{crt,key}` in `dir`) and for
    /// `password`.
    pub async fn start_tls(dir: &TestDir, ca: &super::Ca, password: &str) -> Redis {
        let ca_file = ca.write(&dir.join("redis-ca.pem"));
        let server = ca.server(&dir.path, "redis-server", &["127.0.0.1"]);
        let client = ca.client(&dir.path, "redis-client");
        let path = |p: &std::path::Path| p.display().to_string();
        let server_args = vec![
            "--tls-cert-file".into(),
            path(&server.cert),
            "--tls-key-file".into(),
            path(&server.key),
            "--tls-ca-cert-file".into(),
            path(&ca_file),
            "--tls-auth-clients".into(),
            "yes".into(),
            "--requirepass".into(),
            password.into(),
        ];
        let cli_args = vec![
            "--tls".into(),
            "--cacert".into(),
            path(&ca_file),
            "--cert".into(),
            path(&client.cert),
            "--key".into(),
            path(&client.key),
            "-a".into(),
            password.into(),
            "--no-auth-warning".into(),
        ];
        Self::launch(dir, Some((server_args, cli_args))).await
    }

    async fn launch(dir: &TestDir, tls: Option<(Vec<String>, Vec<String>)>) -> Redis {
        let mut redis = Redis {
            port: free_port(),
            dir: dir.join("redis"),
            child: None,
            tls,
        };
        std::fs::create_dir_all(&redis.dir).unwrap();
        redis.run().await;
        redis
    }

    async fn run(&mut self) {
        let port = self.port.to_string();
        let ports = match &self.tls {
            Some((server, _)) => {
                let mut args = vec!["--port".to_string(), "0".into(), "--tls-port".into(), port];
                args.extend(server.iter().cloned());
                args
            }
            None => vec!["--port".to_string(), port],
        };
        let child = Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (make test-deps)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).await.as_deref() != Some("PONG") {
            assert!(Instant::now() < deadline, "redis-server never answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (everything it held is gone).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.run().await;
    }

    /// Runs `redis-cli` with `args` against it; its output (`None` when it fails).
    pub async fn cli(&self, args: &[&str]) -> Option<String> {
        let tls = self
            .tls
            .as_ref()
            .map(|(_, cli)| cli.clone())
            .unwrap_or_default();
        let out = tokio::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(tls)
            .args(args)
            .output()
            .await
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// Stops it answering (SIGSTOP), or lets it go on (SIGCONT): a Redis that hangs.
    pub fn pause(&self, paused: bool) {
        if let Some(child) = &self.child {
            super::signal(child.id(), if paused { "STOP" } else { "CONT" });
        }
    }
}
