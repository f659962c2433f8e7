//! The integration harness: real ccedge processes, real upstreams and real clients on loopback.

pub mod browser;
pub mod certs;
pub mod client;
pub mod fixtures;
pub mod h2raw;
pub mod http;
pub mod proxy;
pub mod raw;
pub mod redis;
pub mod upstream;
pub mod ws;

pub use certs::Ca;
pub use client::{curl, Reply};
pub use proxy::Ccedge;
pub use redis::Redis;
pub use upstream::Upstream;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// A loopback port nobody is listening on, from a range below the kernel's ephemeral ports and
/// distinct per test process, so that parallel tests do not collide.
pub fn free_port() -> u16 {
    static NEXT: OnceLock<AtomicU16> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU16::new(20_000 + (std::process::id() % 40) as u16 * 250));
    loop {
        let port = next.fetch_add(1, Ordering::SeqCst);
        assert!(port < 32_000, "ran out of test ports");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A private folder for one test, removed when the test ends.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("ccedge-it-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TestDir { path }
    }

    pub fn join(&self, file: &str) -> PathBuf {
        self.path.join(file)
    }

    pub fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.join(file);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("CCEDGE_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The `server:` block every test starts from: its files in the test's folder, the access log to
/// a file there, one worker thread, and an admin listener when `admin` is given.
pub fn server_block(dir: &Path, admin: Option<u16>) -> String {
    let d = dir.display();
    let mut block = format!(
        "server:\n  threads: 1\n  pid_file: {d}/ccedge.pid\n  upgrade_sock: {d}/upgrade.sock\n  \
         grace_period_seconds: 1\n  graceful_shutdown_timeout_seconds: 1\n  access_log: {d}/access.log\n"
    );
    if let Some(port) = admin {
        block.push_str(&format!("  admin:\n    listen: 127.0.0.1:{port}\n"));
    }
    block
}

/// Sends `signal` (a `kill` name such as `QUIT`) to process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill is installed");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Runs `openssl s_client` against 127.0.0.1:`port` with `flags`; true when a TLS handshake
/// completed.
pub fn handshake(port: u16, flags: &[&str]) -> bool {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(flags)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && text.contains("Cipher is ") && !text.contains("Cipher is (NONE)")
}

/// The `ccedge` binary under test: this build's, or the one `CCEDGE_TEST_BINARY` names (to see
/// a new test fail against an earlier build).
pub fn binary() -> &'static str {
    static BINARY: OnceLock<String> = OnceLock::new();
    BINARY.get_or_init(|| {
        std::env::var("CCEDGE_TEST_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ccedge").into())
    })
}
