//! The tour `make run` prints: each step a command to run from the repository's folder while
//! the demo runs, and what to look for. The test `demo::the_printed_tour_answers_as_it_says`
//! runs every step against the demo and checks `output` and `log`, so the tour cannot rot.

/// What a step has the reader do.
pub enum Action {
    /// A shell command, on one line.
    Run(&'static str),
    /// A page to open in a browser.
    Open(&'static str),
}

#[allow(
    dead_code,
    reason = "output, absent and log are read by the test that drives the tour, not by the demo"
)]
pub struct Step {
    pub title: &'static str,
    pub action: Action,
    /// What to look for, in a line.
    pub look_for: &'static str,
    /// Text the command's output (or the page) contains, ASCII case aside.
    pub output: &'static [&'static str],
    /// Text its output does not contain.
    pub absent: &'static [&'static str],
    /// Text ccedge writes to the `make run` terminal meanwhile (access log or messages), in
    /// this order.
    pub log: &'static [&'static str],
}

pub const STEPS: &[Step] = &[
    Step {
        title: "Authentication at the edge: a wrong password (agent2's)",
        action: Action::Run(
            "curl --max-time 5 -i -u agent2:wrong --cacert target/demo/ca.crt --resolve finesse1.example.com:8445:127.0.0.1 https://finesse1.example.com:8445/finesse/api/User/agent2",
        ),
        look_for: "HTTP/2 401 and www-authenticate: Basic: ccedge asked Finesse's UserAuth and kept the request from Finesse's API",
        output: &["HTTP/2 401", "www-authenticate: basic"],
        absent: &["<loginId>"],
        log: &[r#""user":"agent2""#, r#""status":401"#, r#""upstream":null"#],
    },
    Step {
        title: "The demo agent signs in: user agent1, password demo",
        action: Action::Run(
            "curl --max-time 5 -u agent1:demo --cacert target/demo/ca.crt --resolve finesse1.example.com:8445:127.0.0.1 https://finesse1.example.com:8445/finesse/api/User/agent1",
        ),
        look_for: r#"the agent's XML from Finesse; in the make run terminal, an access-log line with "user":"agent1""#,
        output: &["<loginId>agent1</loginId>"],
        absent: &[],
        log: &[r#""user":"agent1""#, r#""status":200"#, r#""upstream":"127.0.0.1:18501""#],
    },
    Step {
        title: "Guessing locks a user out: six more wrong passwords for agent2",
        action: Action::Run(
            "curl --max-time 10 -s -o /dev/null -w '%{http_code}\\n' -u agent2:guess --cacert target/demo/ca.crt --resolve finesse1.example.com:8445:127.0.0.1 'https://finesse1.example.com:8445/finesse/api/User/agent2?try=[1-6]'",
        ),
        look_for: "401 until agent2's fifth failure (step 1 was the first), then 429 for 5 minutes; the make run terminal: \"user agent2 blocked at 127.0.0.1 for 300 seconds after 5 failed logins\". agent1 is not blocked",
        output: &["401\n401\n401\n401\n429\n429"],
        absent: &[],
        log: &["user agent2 blocked at 127.0.0.1 for 300 seconds after 5 failed logins"],
    },
    Step {
        title: "The cache: a desktop asset, twice",
        action: Action::Run(
            "curl --max-time 5 -s -o /dev/null -o /dev/null -w '%{http_code}\\n' --cacert target/demo/ca.crt --resolve finesse1.example.com:8445:127.0.0.1 https://finesse1.example.com:8445/desktop/js/finesse.js --cacert target/demo/ca.crt --resolve finesse1.example.com:8445:127.0.0.1 https://finesse1.example.com:8445/desktop/js/finesse.js",
        ),
        look_for: r#"200 twice; in the make run terminal, "cache":"MISS" and then "cache":"HIT" with "upstream":null: Finesse was asked once (HIT twice within 5 minutes of a first run)"#,
        output: &["200\n200"],
        absent: &[],
        log: &[r#""cache":"MISS""#, r#""upstream":null"#, r#""cache":"HIT""#],
    },
    Step {
        title: "Substitution: Finesse names itself finesse1.cc.internal, agents get the public name",
        action: Action::Run("curl --max-time 5 --cacert target/demo/ca.crt --resolve finesse1.example.com:8445:127.0.0.1 https://finesse1.example.com:8445/finesse/api/SystemInfo"),
        look_for: "<host>finesse1.example.com</host>, and cc.internal nowhere",
        output: &["<host>finesse1.example.com</host>"],
        absent: &["cc.internal"],
        log: &[],
    },
    Step {
        title: "A secure WebSocket: the desktop's notifications, with agent1's credentials after xmpp",
        action: Action::Run(
            "curl --max-time 3 -s -N -i --http1.1 -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: ZGVtby13ZWJzb2NrZXQtMQ==' -H 'Sec-WebSocket-Protocol: xmpp, YWdlbnQxOmRlbW8' --cacert target/demo/ca.crt --resolve finesse1.example.com:8445:127.0.0.1 https://finesse1.example.com:8445/ws/agent1",
        ),
        look_for: "HTTP/1.1 101, sec-websocket-protocol: xmpp, then an event a second (after two bytes of framing each) until curl stops after 3 s",
        output: &["HTTP/1.1 101", "sec-websocket-protocol: xmpp", "event 2 for agent1"],
        absent: &[],
        log: &[r#""user":"agent1""#, r#""path":"/ws/agent1""#, r#""status":101"#],
    },
    Step {
        title: "The proxy map Finesse, IdS and CUIC poll for their public names",
        action: Action::Run(
            "curl --max-time 5 --cacert target/demo/ca.crt https://127.0.0.1:10000/proxymap.txt",
        ),
        look_for: "one line per server, internal=public, such as 127.0.0.1:18501=finesse1.example.com:8445",
        output: &["127.0.0.1:18501=finesse1.example.com:8445"],
        absent: &[],
        log: &[],
    },
    Step {
        title: "Many servers behind one proxy: CUIC on Finesse's port by host, IdS on a port of its own",
        action: Action::Run(
            "curl --max-time 5 -u agent1:demo --cacert target/demo/ca.crt --resolve cuic1.example.com:8445:127.0.0.1 --resolve finesse1.example.com:8553:127.0.0.1 https://cuic1.example.com:8445/cuic/ https://finesse1.example.com:8553/ids/",
        ),
        look_for: r#""answered_by": "cuic", then "answered_by": "ids""#,
        output: &[r#""answered_by": "cuic""#, r#""answered_by": "ids""#],
        absent: &[],
        log: &[],
    },
    Step {
        title: "The other job: Webex Connect to Cloud Connect over HTTP/2",
        action: Action::Run(
            "curl --max-time 5 --http2 --cacert target/demo/ca.crt --resolve dc.example.com:8443:127.0.0.1 https://dc.example.com:8443/drapi/v1/tasks",
        ),
        look_for: "the headers the publisher received: host, x-forwarded-for, and the trackingid the access log carries too",
        output: &["\"answered_by\": \"cloud-connect-publisher\"", "\"trackingid\": \"CCEDGE_"],
        absent: &[],
        log: &[r#""tracking_id":"CCEDGE_"#],
    },
    Step {
        title: "The status page",
        action: Action::Open("http://127.0.0.1:9900/"),
        look_for: "both services, their upstreams' health, the cache, and agent2 under Login lockouts (for 5 minutes after step 3)",
        output: &["<title>ccedge status</title>"],
        absent: &[],
        log: &[],
    },
    Step {
        title: "Check the configuration and everything it names, against the running demo",
        action: Action::Run(
            "SSL_CERT_FILE=target/demo/ca.crt ./target/quick/ccedge doctor -c conf/demo.yaml",
        ),
        look_for: "every line OK (SSL_CERT_FILE has it trust the demo's CA, as the machine would a real one)",
        output: &["0 WARN, 0 FAIL"],
        absent: &[],
        log: &[],
    },
];

/// The tour as `make run` prints it.
pub fn text() -> String {
    let mut text = String::from(
        "\nccedge is starting on conf/demo.yaml. A tour, from this folder in another terminal:\n",
    );
    for (n, step) in STEPS.iter().enumerate() {
        let action = match step.action {
            Action::Run(command) => command.to_string(),
            Action::Open(url) => format!("open {url} in a browser"),
        };
        text.push_str(&format!(
            "\n{:2}. {}\n    {action}\n    -> {}\n",
            n + 1,
            step.title,
            step.look_for
        ));
    }
    text.push_str(
        "\nccedge's access log (a JSON line per request) and messages follow here. Ctrl-C stops everything.\n\n",
    );
    text
}
