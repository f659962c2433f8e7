//! `make run`: the tour it prints answers as each step says, against conf/demo.yaml and the demo's
//! own upstreams (examples/demo/), so that the demo cannot rot.

#[path = "../../examples/demo/tour.rs"]
mod tour;
#[path = "../../examples/demo/upstreams.rs"]
mod upstreams;

use crate::harness::fixtures::repo_file;
use crate::harness::proxy::Ccedge;
use crate::harness::{binary, free_port, TestDir};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tour::{Action, STEPS};

/// The demo's fixed ports: its listeners, then its upstreams.
const LISTENERS: [u16; 5] = [8443, 8445, 8553, 9900, 10000];

/// `text` with every `:port` of `ports` (a port after a colon, not followed by a digit) moved to
/// its new number, so that the test can run beside `make run` and the other tests.
fn moved(text: &str, ports: &[(u16, u16)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(colon) = rest.find(':') {
        out.push_str(&rest[..=colon]);
        rest = &rest[colon + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let port = rest[..digits].parse::<u16>().ok();
        if let Some((_, new)) = ports.iter().find(|(old, _)| Some(*old) == port) {
            out.push_str(&new.to_string());
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

/// What `command` writes to stdout, run by `sh` in `dir` (as from the repository's folder).
fn shell(dir: &TestDir, command: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", command])
        .current_dir(&dir.path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Everything ccedge wrote to the terminal (access log and messages), from byte `from` of each.
fn terminal(dir: &TestDir, from: (usize, usize)) -> String {
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap_or_default();
    let (out, err) = (read("conf/demo.stdout.log"), read("conf/demo.stderr.log"));
    let tail = |text: &[u8], from: usize| {
        String::from_utf8_lossy(&text[from.min(text.len())..]).into_owned()
    };
    format!("{}{}", tail(&out, from.0), tail(&err, from.1))
}

/// The first of `expected` that `text` does not contain after the ones before it.
fn unwritten<'a>(text: &str, expected: &'a [String]) -> Option<&'a String> {
    let mut rest = text;
    for e in expected {
        match rest.find(e.as_str()) {
            Some(at) => rest = &rest[at + e.len()..],
            None => return Some(e),
        }
    }
    None
}

fn terminal_len(dir: &TestDir) -> (usize, usize) {
    let len = |name: &str| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len() as usize);
    (len("conf/demo.stdout.log"), len("conf/demo.stderr.log"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_printed_tour_answers_as_it_says() {
    let dir = TestDir::new("demo-tour");
    let fixed = LISTENERS
        .iter()
        .copied()
        .chain(upstreams::NODES.iter().map(|(_, port)| *port));
    let ports: Vec<(u16, u16)> = fixed.map(|p| (p, free_port())).collect();
    let port = |old: u16| ports.iter().find(|(p, _)| *p == old).unwrap().1;

    upstreams::write_certificates(&dir.join("target/demo"));
    let nodes: Vec<(&'static str, u16)> = upstreams::NODES
        .iter()
        .map(|(node, p)| (*node, port(*p)))
        .collect();
    upstreams::serve(&nodes).await.unwrap();
    let files = dir.join("demo");
    let yaml = moved(&repo_file("conf/demo.yaml"), &ports)
        .replace("/tmp/ccedge-demo", files.to_str().unwrap());
    std::fs::create_dir_all(dir.join("conf")).unwrap();
    let listening: Vec<u16> = LISTENERS.iter().map(|p| port(*p)).collect();
    let _ccedge = Ccedge::launch(&dir, "conf/demo", &yaml, &[], &listening).await;
    let start = terminal(&dir, (0, 0));
    assert!(
        !start.contains(" WARN "),
        "the demo starts without a warning:\n{start}"
    );

    // As printed: each command on a line of its own, every curl bounded in time.
    let printed = tour::text();
    for step in STEPS {
        if let Action::Run(command) = step.action {
            assert!(printed.lines().any(|l| l.trim() == command), "{printed}");
            assert!(
                !command.starts_with("curl ") || command.contains(" --max-time "),
                "{command}"
            );
        }
    }

    for (n, step) in STEPS.iter().enumerate() {
        let what = format!("step {} ({})", n + 1, step.title);
        let from = terminal_len(&dir);
        let output = match step.action {
            Action::Run(command) => {
                let command = moved(command, &ports).replace("./target/quick/ccedge", binary());
                shell(&dir, &command)
            }
            Action::Open(url) => shell(
                &dir,
                &format!("curl -s --max-time 5 {}", moved(url, &ports)),
            ),
        };
        let seen = output.to_ascii_lowercase();
        for expected in step.output {
            let expected = moved(expected, &ports).to_ascii_lowercase();
            assert!(
                seen.contains(&expected),
                "{what}: no {expected:?} in its output:\n{output}"
            );
        }
        for unexpected in step.absent {
            assert!(
                !seen.contains(&unexpected.to_ascii_lowercase()),
                "{what}: {unexpected:?} in its output:\n{output}"
            );
        }
        let log: Vec<String> = step.log.iter().map(|e| moved(e, &ports)).collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(missing) = unwritten(&terminal(&dir, from), &log) {
            assert!(
                Instant::now() < deadline,
                "{what}: ccedge never wrote {missing:?} (after what precedes it in {log:?}):\n{}",
                terminal(&dir, from)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // What the steps say beyond their output: agent2's block leaves agent1 signed in, the status
    // page lists it, and ccedge (not the demo's Finesse) checks the WebSocket's credentials.
    let command = |n: usize| match STEPS[n].action {
        Action::Run(command) => moved(command, &ports),
        Action::Open(_) => panic!("step {} runs a command", n + 1),
    };
    let again = shell(&dir, &command(1));
    assert!(again.contains("<loginId>agent1</loginId>"), "{again}");
    let from = terminal_len(&dir);
    let wrong = URL_SAFE_NO_PAD.encode("agent1:wrong");
    let refused = shell(&dir, &command(5).replace("YWdlbnQxOmRlbW8", &wrong));
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let expected = [
        r#""path":"/ws/agent1""#,
        r#""status":401"#,
        r#""upstream":null"#,
    ];
    let expected = expected.map(String::from);
    let deadline = Instant::now() + Duration::from_secs(5);
    while unwritten(&terminal(&dir, from), &expected).is_some() {
        assert!(Instant::now() < deadline, "{}", terminal(&dir, from));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = shell(
        &dir,
        &format!(
            "curl -s --max-time 5 http://127.0.0.1:{}/status",
            port(9900)
        ),
    );
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let services = status["services"].as_array().unwrap();
    let site = services.iter().find(|s| s["name"] == "desktop").unwrap();
    assert!(
        site["auth"]["lockouts"]
            .as_array()
            .is_some_and(|l| l.iter().any(|b| b["user"] == "agent2")),
        "/status lists agent2's block: {status:#}"
    );
}
