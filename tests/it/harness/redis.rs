//! A real `redis-server` on a loopback port of the test's own, with nothing written to disk;
//! killed when dropped.

use super::{free_port, TestDir};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Redis {
    pub async fn start(dir: &TestDir) -> Redis {
        let mut redis = Redis {
            port: free_port(),
            dir: dir.join("redis"),
            child: None,
        };
        std::fs::create_dir_all(&redis.dir).unwrap();
        redis.run().await;
        redis
    }

    async fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (make test-deps)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command("PING").await.as_deref() != Some("+PONG") {
            assert!(Instant::now() < deadline, "redis-server never answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
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

    /// Sends one inline command; the first line of the answer.
    pub async fn command(&self, command: &str) -> Option<String> {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        tcp.write_all(format!("{command}\r\n").as_bytes())
            .await
            .ok()?;
        let mut answer = vec![0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut answer))
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8_lossy(&answer[..n]).to_string();
        Some(text.lines().next().unwrap_or("").to_string())
    }
}
