//! The command line: validation without binding, errors that name the line, and the help text.

use crate::harness::fixtures::{conf_example, repo_file};
use crate::harness::{binary, Ca, TestDir};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(binary()).args(args).output().unwrap()
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
fn test_flag_accepts_the_complete_example_without_binding() {
    let dir = TestDir::new("cli-example");
    let example = conf_example(&dir, "example.yaml");
    // Hold the digital channel's port: -t must not try to bind it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace("listen: 0.0.0.0:443", &format!("listen: 127.0.0.1:{port}"));
    let config = dir.write("held.yaml", &text);
    let out = run(&["-t", "-c", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("is valid: 1 digital channel(s), 1 finesse site(s)"),
        "{stdout}"
    );
}

#[test]
fn test_flag_names_file_line_and_key_of_a_broken_copy() {
    let dir = TestDir::new("cli-broken");
    let example = conf_example(&dir, "example.yaml");
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace("upstream: 10.10.30.31:8553", "upstream: 10.10.30.31");
    let line = text
        .lines()
        .position(|l| l.trim() == "upstream: 10.10.30.31")
        .unwrap()
        + 1;
    let config = dir.write("broken.yaml", &text);
    let out = run(&["-t", "-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "{}:{line}: finesse[0].servers[2].upstream: `10.10.30.31` is not host:port",
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

#[test]
fn example_configurations_in_conf_are_valid() {
    for name in [
        "example.yaml",
        "digital-channels.yaml",
        "vpnless-finesse.yaml",
        "both.yaml",
    ] {
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
    let demo = repo_file("conf/demo.yaml");
    let certs = dir.join("target/demo");
    std::fs::create_dir_all(&certs).unwrap();
    Ca::new("demo").server(&certs, "proxy", &["dc.example.com"]);
    std::fs::create_dir_all(dir.join("conf")).unwrap();
    let file = dir.write("conf/demo.yaml", &demo);
    let out = run(&["-t", "-c", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo.yaml: {stderr}");
    assert!(!stderr.contains("WARN"), "demo.yaml warns: {stderr}");
    // Its validator answers plain HTTP on loopback; on another machine that is warned about.
    let remote = demo.replace("http://127.0.0.1:18501/", "http://10.1.2.3:8082/");
    assert_ne!(remote, demo);
    let file = dir.write("conf/remote.yaml", &remote);
    let out = run(&["-t", "-c", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("auth.validate_url is plain http"),
        "no warning about a plain validator elsewhere: {stderr}"
    );
}
