//! The command line: validation without binding, errors that name the line, and the help text.

use crate::harness::{binary, Ca, TestDir};
use std::path::PathBuf;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(binary()).args(args).output().unwrap()
}

fn example() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/spec/example.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The certificate files the contract's example names, in the place it names them (written once
/// per test run: tests run in parallel).
fn example_certificates() {
    static WRITTEN: std::sync::Once = std::sync::Once::new();
    WRITTEN.call_once(|| {
        let dir = PathBuf::from("/tmp/ccedge-example-tls");
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new("example");
        ca.write(&dir.join("ca.crt"));
        ca.server(&dir, "proxy", &["dc.example.com", "finesse1.example.com"]);
        ca.client(&dir, "client");
    });
}

#[test]
fn help_explains_every_flag() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "-c, --conf <FILE>",
        "-t, --test",
        "-d, --daemon",
        "-u, --upgrade",
    ] {
        assert!(
            help.contains(flag),
            "--help does not explain {flag}:\n{help}"
        );
    }
}

#[test]
fn test_flag_accepts_the_contract_example_without_binding() {
    example_certificates();
    let dir = TestDir::new("cli-example");
    let config = dir.write("example.yaml", &example());
    // Hold the example's digital-channel port: -t must not try to bind it.
    let _held = std::net::TcpListener::bind("127.0.0.1:18443");
    let out = run(&["-t", "-c", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("is valid"));
}

#[test]
fn test_flag_names_file_line_and_key_of_a_broken_copy() {
    example_certificates();
    let dir = TestDir::new("cli-broken");
    let text = example().replace("upstream: 127.0.0.1:18502", "upstream: 127.0.0.1");
    let line = text
        .lines()
        .position(|l| l.trim() == "upstream: 127.0.0.1")
        .unwrap()
        + 1;
    let config = dir.write("broken.yaml", &text);
    let out = run(&["-t", "-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "{}:{line}: finesse[0].servers[1].upstream: `127.0.0.1` is not host:port",
        config.display()
    );
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );
}

#[test]
fn starting_on_a_bad_file_exits_1_and_starts_nothing() {
    let dir = TestDir::new("cli-bad-start");
    let config = dir.write(
        "bad.yaml",
        "digital_channels:\n  - name: cc\n    listen: [oops\n",
    );
    let out = run(&["-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.yaml:"), "{stderr}");
    assert!(!stderr.contains("Server starting"), "{stderr}");

    let missing = run(&["-t", "-c", dir.join("absent.yaml").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("absent.yaml: cannot read"));
}

#[test]
fn unusable_upstream_certificates_stop_the_start() {
    let dir = TestDir::new("cli-bad-ca");
    let garbage = dir.write(
        "ca.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    let yaml = format!(
        "digital_channels:\n  - name: cc\n    listen: 127.0.0.1:1\n    public: dc.example.com:443\n    \
         publisher: 127.0.0.1:2\n    subscriber: 127.0.0.1:3\n    upstream_tls:\n      ca: {}\n",
        garbage.display()
    );
    let config = dir.write("ccedge.yaml", &yaml);
    let out = run(&["-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(":8: digital_channels[0].upstream_tls.ca:")
            && stderr.contains("not a valid PEM certificate"),
        "{stderr}"
    );
}

/// Copies `conf/NAME` into `dir`, pointing its certificate paths at files made there.
fn conf_example(dir: &TestDir, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("conf")
            .join(name),
    )
    .unwrap();
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let ca = Ca::new(name);
    for word in text.split_whitespace() {
        let Some(file) = word.strip_prefix("/etc/ccedge/tls/") else {
            continue;
        };
        let file = file.trim_end_matches(['}', ',']);
        if file.ends_with("-ca.pem") {
            ca.write(&tls.join(file));
        } else if let Some(stem) = file.strip_suffix(".crt") {
            ca.server(&tls, stem, &["example.com"]);
        }
    }
    dir.write(
        name,
        &text.replace("/etc/ccedge/tls/", &format!("{}/", tls.display())),
    )
}

#[test]
fn example_configurations_in_conf_are_valid() {
    for name in ["digital-channels.yaml", "vpnless-finesse.yaml", "both.yaml"] {
        let dir = TestDir::new("conf-example");
        let file = conf_example(&dir, name);
        let out = run(&["-t", "-c", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = TestDir::new("conf-demo");
    let demo =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conf/demo.yaml"))
            .unwrap();
    let certs = dir.join("target/demo");
    std::fs::create_dir_all(&certs).unwrap();
    Ca::new("demo").server(&certs, "proxy", &["dc.example.com"]);
    std::fs::create_dir_all(dir.join("conf")).unwrap();
    let file = dir.write("conf/demo.yaml", &demo);
    let out = run(&["-t", "-c", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "demo.yaml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
