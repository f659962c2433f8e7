//! One test per class of bad input the contract lists, plus the shapes that must load.

use super::*;
use std::path::PathBuf;
use std::time::Duration;

/// A private folder with a self-signed certificate and key in it.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ccedge-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["proxy.example.com".into()]).unwrap();
        std::fs::write(dir.join("proxy.crt"), ck.cert.pem()).unwrap();
        std::fs::write(dir.join("proxy.key"), ck.key_pair.serialize_pem()).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["other".into()]).unwrap();
        std::fs::write(dir.join("other.key"), other.key_pair.serialize_pem()).unwrap();
        std::fs::write(dir.join("garbage.pem"), "not a certificate\n").unwrap();
        Scratch { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    fn load(&self, yaml: &str) -> Result<Config, ConfigError> {
        let yaml = yaml.replace("@DIR@", &self.dir.display().to_string());
        parse(&yaml, Path::new("test.yaml"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const DIGITAL: &str = "\
digital_channels:
  - name: cc
    listen: 127.0.0.1:8443
    public: dc.example.com:443
    publisher: 127.0.0.1:8445
    subscriber: 127.0.0.1:8446
";

fn rejected(result: Result<Config, ConfigError>) -> String {
    match result {
        Ok(_) => panic!("configuration was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn minimal_digital_channel_gets_contract_defaults() {
    let s = Scratch::new("minimal");
    let config = s.load(DIGITAL).unwrap();
    let dc = &config.digital[0];
    assert_eq!(dc.health_check.path, "/drapi/v1/ping");
    assert_eq!(dc.health_check.interval.as_millis(), 2000);
    assert_eq!((dc.health_check.rise, dc.health_check.fall), (2, 2));
    assert_eq!(dc.publisher_only_paths, vec!["/dataconn/".to_string()]);
    assert_eq!(dc.limits.max_body_bytes, 15_728_640);
    assert_eq!(dc.limits.keepalive_timeout.as_millis(), 20_000);
    assert_eq!(dc.rate_limits[0].per_second, 100);
    assert_eq!(dc.rate_limits[0].burst, 200);
    assert_eq!(config.server.access_log, AccessLogTarget::Stdout);
    assert_eq!(config.server.upgrade_sock, "/tmp/ccedge-upgrade.sock");
    assert_eq!(config.server.grace_period_seconds, 30);
    assert_eq!(dc.limits.client_send_timeout.as_millis(), 10_000);
    assert_eq!(dc.limits.ipv6_prefix, 64);
    assert_eq!(dc.clients.ip_header, ClientIpHeader::ForwardedFor);
}

#[test]
fn client_ip_header_and_ipv6_prefix_are_checked() {
    let s = Scratch::new("client-ip");
    let real_ip = s
        .load(&format!("{DIGITAL}    client_ip_header: X-Real-IP\n"))
        .unwrap();
    assert_eq!(
        real_ip.digital[0].clients.ip_header,
        ClientIpHeader::Named(http::HeaderName::from_static("x-real-ip"))
    );
    for (value, why) in [
        ("\"bad header\"", "is not a header name"),
        ("host", "does not hold an address"),
    ] {
        let err = rejected(s.load(&format!("{DIGITAL}    client_ip_header: {value}\n")));
        assert!(
            err.contains("test.yaml:7: digital_channels[0].client_ip_header") && err.contains(why),
            "{err}"
        );
    }
    for prefix in [0, 129] {
        let err = rejected(s.load(&format!(
            "{DIGITAL}    limits:\n      ipv6_prefix: {prefix}\n"
        )));
        assert!(
            err.contains("digital_channels[0].limits.ipv6_prefix: must be from 1 to 128"),
            "{err}"
        );
    }
}

#[test]
fn malformed_yaml_names_line() {
    let s = Scratch::new("malformed");
    let err = rejected(s.load("server:\n  threads: 2\n  pid_file: /x: y\n"));
    assert!(err.starts_with("test.yaml:3:"), "{err}");
}

#[test]
fn unknown_key_names_line_and_path() {
    let s = Scratch::new("unknown");
    let yaml = format!("{DIGITAL}    colour: blue\n");
    let err = rejected(s.load(&yaml));
    assert!(err.starts_with("test.yaml:7:"), "{err}");
    assert!(err.contains("digital_channels[0]"), "{err}");
    assert!(err.contains("unknown field `colour`"), "{err}");
}

#[test]
fn wrong_type_names_line_and_path() {
    let s = Scratch::new("type");
    let yaml = format!("{DIGITAL}    health_check:\n      interval_ms: 2s\n");
    let err = rejected(s.load(&yaml));
    assert!(err.starts_with("test.yaml:8:"), "{err}");
    assert!(
        err.contains("digital_channels[0].health_check.interval_ms"),
        "{err}"
    );
}

#[test]
fn zero_duration_is_rejected() {
    let s = Scratch::new("duration");
    let yaml = format!("{DIGITAL}    limits:\n      upstream_read_timeout_ms: 0\n");
    let err = rejected(s.load(&yaml));
    assert!(
        err.contains("test.yaml:8: digital_channels[0].limits.upstream_read_timeout_ms"),
        "{err}"
    );
}

#[test]
fn missing_required_key() {
    let s = Scratch::new("required");
    let yaml = DIGITAL.replace("    subscriber: 127.0.0.1:8446\n", "");
    let err = rejected(s.load(&yaml));
    assert!(err.contains("missing field `subscriber`"), "{err}");
    assert!(err.starts_with("test.yaml:"), "{err}");
}

#[test]
fn bad_listen_address() {
    let s = Scratch::new("listen");
    let err = rejected(s.load(&DIGITAL.replace("127.0.0.1:8443", "localhost:8443")));
    assert!(
        err.contains("test.yaml:3: digital_channels[0].listen: `localhost:8443`"),
        "{err}"
    );
}

#[test]
fn upstream_not_host_port() {
    let s = Scratch::new("upstream");
    let err = rejected(s.load(&DIGITAL.replace("127.0.0.1:8446", "https://cc-sub.internal")));
    assert!(
        err.contains("test.yaml:6: digital_channels[0].subscriber: `https://cc-sub.internal` is not host:port"),
        "{err}"
    );
}

#[test]
fn bad_cidr_names_the_entry() {
    let s = Scratch::new("cidr");
    let yaml = format!("{DIGITAL}    client_allow:\n      - 10.0.0.0/8\n      - 10.0.0.0/40\n");
    let err = rejected(s.load(&yaml));
    assert!(
        err.contains("test.yaml:9: digital_channels[0].client_allow[1]: `10.0.0.0/40`"),
        "{err}"
    );
}

#[test]
fn missing_certificate_file() {
    let s = Scratch::new("nofile");
    let yaml =
        format!("{DIGITAL}    tls:\n      cert: @DIR@/nope.crt\n      key: @DIR@/proxy.key\n");
    let err = rejected(s.load(&yaml));
    assert!(
        err.contains("test.yaml:8: digital_channels[0].tls.cert:"),
        "{err}"
    );
    assert!(err.contains("nope.crt"), "{err}");
}

#[test]
fn certificate_that_does_not_parse_or_match() {
    let s = Scratch::new("badcert");
    let garbage =
        format!("{DIGITAL}    tls:\n      cert: @DIR@/garbage.pem\n      key: @DIR@/proxy.key\n");
    let err = rejected(s.load(&garbage));
    assert!(err.contains("tls.cert:"), "{err}");
    assert!(err.contains("not a valid PEM certificate"), "{err}");

    let mismatch =
        format!("{DIGITAL}    tls:\n      cert: @DIR@/proxy.crt\n      key: @DIR@/other.key\n");
    let err = rejected(s.load(&mismatch));
    assert!(
        err.contains("test.yaml:9: digital_channels[0].tls.key:"),
        "{err}"
    );
    assert!(err.contains("does not match"), "{err}");

    let good =
        format!("{DIGITAL}    tls:\n      cert: @DIR@/proxy.crt\n      key: @DIR@/proxy.key\n");
    let config = s.load(&good).unwrap();
    assert_eq!(
        config.digital[0].tls.as_ref().unwrap().certificates[0]
            .cert
            .display()
            .to_string(),
        s.path("proxy.crt")
    );
}

#[test]
fn several_certificates_are_one_form_or_the_other() {
    let s = Scratch::new("sni");
    let list = format!(
        "{DIGITAL}    tls:\n      certificates:\n        - cert: @DIR@/proxy.crt\n          key: @DIR@/proxy.key\n        \
         - cert: @DIR@/proxy.crt\n          key: @DIR@/other.key\n"
    );
    let err = rejected(s.load(&list));
    assert!(
        err.contains("test.yaml:12: digital_channels[0].tls.certificates[1].key:")
            && err.contains("does not match"),
        "{err}"
    );
    let good = list.replace("other.key", "proxy.key");
    let config = s.load(&good).unwrap();
    let tls = config.digital[0].tls.as_ref().unwrap();
    assert_eq!(tls.certificates.len(), 2);
    assert_eq!(tls.certificates[0].names, ["proxy.example.com"]);
    let both = format!(
        "{DIGITAL}    tls:\n      cert: @DIR@/proxy.crt\n      key: @DIR@/proxy.key\n      certificates:\n        \
         - cert: @DIR@/proxy.crt\n          key: @DIR@/proxy.key\n"
    );
    let err = rejected(s.load(&both));
    assert!(
        err.contains("digital_channels[0].tls: give either cert and key"),
        "{err}"
    );
    let empty = format!("{DIGITAL}    tls:\n      certificates: []\n");
    let err = rejected(s.load(&empty));
    assert!(
        err.contains("digital_channels[0].tls.certificates: lists no certificate"),
        "{err}"
    );
    let half = format!("{DIGITAL}    tls:\n      cert: @DIR@/proxy.crt\n");
    let err = rejected(s.load(&half));
    assert!(
        err.contains("digital_channels[0].tls.key: is required with cert"),
        "{err}"
    );
}

#[test]
fn upstream_tls_client_identity_needs_both_halves() {
    let s = Scratch::new("mtls");
    let yaml = format!("{DIGITAL}    upstream_tls:\n      client_cert: @DIR@/proxy.crt\n");
    let err = rejected(s.load(&yaml));
    assert!(
        err.contains("upstream_tls.client_key: client_cert needs client_key"),
        "{err}"
    );
    let yaml = format!(
        "{DIGITAL}    upstream_tls:\n      ca: @DIR@/proxy.crt\n      client_cert: @DIR@/proxy.crt\n      client_key: @DIR@/proxy.key\n"
    );
    let tls = s.load(&yaml).unwrap().digital[0]
        .upstream_tls
        .clone()
        .unwrap();
    assert!(tls.verify && tls.ca.is_some() && tls.client.is_some());
}

const FINESSE: &str = "\
finesse:
  - name: desktop
    bind: 127.0.0.1
    servers:
      - public: finesse1.example.com:8445
        upstream: 127.0.0.1:9001
      - public: finesse1.example.com:8553
        upstream: 127.0.0.1:9002
        role: ids
      - public: cuic1.example.com:8445
        upstream: 127.0.0.1:9003
        role: cuic
";

#[test]
fn finesse_servers_group_by_port() {
    let s = Scratch::new("finesse");
    let config = s.load(FINESSE).unwrap();
    let f = &config.finesse[0];
    assert_eq!(f.listen_ports(), vec![8445, 8553]);
    assert_eq!(f.servers[1].role, Role::Ids);
    assert_eq!(f.servers[0].role, Role::Finesse);
    assert!(f.rate_limits.is_none());
    assert!(f.rewrite_upstream_hosts);
}

#[test]
fn duplicate_public_host_port() {
    let s = Scratch::new("duppublic");
    let yaml = format!(
        "{FINESSE}      - public: FINESSE1.example.com:8445\n        upstream: 127.0.0.1:9004\n"
    );
    let err = rejected(s.load(&yaml));
    assert!(
        err.contains("test.yaml:13: finesse[0].servers[3].public: public finesse1.example.com:8445 is already served by finesse[0].servers[0].public"),
        "{err}"
    );
}

#[test]
fn same_host_twice_on_one_port() {
    let s = Scratch::new("hostport");
    let yaml = format!("{FINESSE}      - public: cuic1.example.com:443\n        upstream: 127.0.0.1:9004\n        listen_port: 8445\n");
    let err = rejected(s.load(&yaml));
    assert!(
        err.contains(
            "finesse[0].servers[3].public: host `cuic1.example.com` is already served on port 8445"
        ),
        "{err}"
    );
}

#[test]
fn colliding_listeners_and_names() {
    let s = Scratch::new("collide");
    let yaml = format!(
        "{DIGITAL}  - name: cc\n    listen: 0.0.0.0:8443\n    public: b.example.com:443\n    publisher: 127.0.0.1:1\n    subscriber: 127.0.0.1:2\n"
    );
    let err = rejected(s.load(&yaml));
    assert!(
        err.contains("test.yaml:7: digital_channels[1].name: service name `cc` is already used"),
        "{err}"
    );
    assert!(
        err.contains(
            "test.yaml:8: digital_channels[1].listen: 0.0.0.0:8443 collides with 127.0.0.1:8443"
        ),
        "{err}"
    );
}

#[test]
fn all_problems_are_reported_together() {
    let s = Scratch::new("many");
    let yaml = DIGITAL
        .replace("127.0.0.1:8443", "nowhere")
        .replace("dc.example.com:443", "dc.example.com");
    let err = rejected(s.load(&yaml));
    assert_eq!(err.lines().count(), 2, "{err}");
}

#[test]
fn server_block_checks() {
    let s = Scratch::new("server");
    let yaml = format!(
        "server:\n  access_log: relative.log\n  pid_file: run/ccedge.pid\n  threads: 0\n{DIGITAL}"
    );
    let err = rejected(s.load(&yaml));
    assert!(err.contains("test.yaml:2: server.access_log"), "{err}");
    assert!(err.contains("test.yaml:3: server.pid_file"), "{err}");
    assert!(err.contains("test.yaml:4: server.threads"), "{err}");
}

#[test]
fn per_user_rate_limits_need_auth_and_office_networks_are_checked() {
    let s = Scratch::new("per-user");
    let finesse = |extra: &str| {
        format!(
            "finesse:\n  - name: desk\n    servers:\n      - public: f.example.com:8445\n        \
             upstream: 127.0.0.1:9445\n{extra}"
        )
    };
    let rule = "    rate_limits:\n      - {path_prefix: /, per_second: 5, per: user}\n";
    let err = rejected(s.load(&finesse(rule)));
    assert!(
        err.contains("finesse[0].rate_limits[0].per")
            && err.contains("needs a Finesse site with auth"),
        "{err}"
    );
    let with_auth = format!(
        "{rule}    auth:\n      validate_url: http://127.0.0.1:9445/finesse/api/UserAuth\n"
    );
    let config = s.load(&finesse(&with_auth)).unwrap();
    assert_eq!(
        config.finesse[0].rate_limits.as_ref().unwrap()[0].per,
        Per::User
    );
    let digital = format!(
        "{DIGITAL}    rate_limits:\n      - {{path_prefix: /drapi/, per_second: 5, per: user}}\n"
    );
    let err = rejected(s.load(&digital));
    assert!(
        err.contains("digital_channels[0].rate_limits[0].per"),
        "{err}"
    );

    let offices = format!(
        "{DIGITAL}    limits:\n      connections_by_cidr:\n        - {{cidr: 198.51.100.0/24, max: 500}}\n        \
         - {{cidr: 198.51.100.7, max: 0}}\n        - {{cidr: nonsense, max: 1}}\n"
    );
    let err = rejected(s.load(&offices));
    assert!(
        err.contains("digital_channels[0].limits.connections_by_cidr[2].cidr"),
        "{err}"
    );
    let config = s
        .load(&offices.replace("        - {cidr: nonsense, max: 1}\n", ""))
        .unwrap();
    let caps = &config.digital[0].limits.connections_by_cidr;
    let shown: Vec<String> = caps
        .iter()
        .map(|c| format!("{} {}", c.cidr, c.max))
        .collect();
    assert_eq!(
        shown,
        ["198.51.100.7/32 0", "198.51.100.0/24 500"],
        "most specific first"
    );
}

#[test]
fn admin_hosts_and_token_are_checked() {
    let s = Scratch::new("admin");
    let admin =
        |extra: &str| format!("server:\n  admin:\n    listen: 127.0.0.1:9900\n{extra}{DIGITAL}");
    let config = s
        .load(&admin(
            "    hosts: [Ops.Example.com.]\n    token: abc-123\n",
        ))
        .unwrap();
    let settings = config.server.admin.unwrap();
    assert_eq!(settings.hosts, ["ops.example.com"]);
    assert_eq!(settings.token, Some(Secret("abc-123".into())));
    assert_eq!(format!("{:?}", settings.token), "Some(<secret>)");
    let err = rejected(s.load(&admin(
        "    hosts: [ops.example.com:9900, \"a b\"]\n    token: \"two words\"\n",
    )));
    assert!(err.contains("test.yaml:4: server.admin.hosts[0]"), "{err}");
    assert!(err.contains("server.admin.hosts[1]"), "{err}");
    assert!(err.contains("test.yaml:5: server.admin.token"), "{err}");
}

#[test]
fn shared_state_needs_a_redis_url_and_a_long_enough_key() {
    let s = Scratch::new("shared");
    std::fs::write(s.dir.join("state.key"), [7u8; 32]).unwrap();
    std::fs::write(s.dir.join("short.key"), [7u8; 31]).unwrap();
    std::fs::write(s.dir.join("redis.pass"), "s3cret\n").unwrap();
    let shared = |extra: &str| format!("server:\n  shared_state:\n{extra}{DIGITAL}");
    let config = s
        .load(&shared(
            "    redis_url: redis://10.0.0.5:6380/2\n    key_file: @DIR@/state.key\n    password_file: @DIR@/redis.pass\n",
        ))
        .unwrap();
    let state = config.server.shared_state.unwrap();
    assert_eq!(state.key.0, [7u8; 32]);
    assert_eq!(state.password, Some(Secret("s3cret".into())));
    assert_eq!(state.timeout, Duration::from_millis(50));
    assert!(state.tls.is_none());
    assert_eq!(format!("{:?}", state.key), "<32 secret bytes>");
    assert!(!format!("{state:?}").contains("s3cret"));

    let config = s
        .load(&shared(
            "    redis_url: rediss://ccedge:pw@redis.example.com:6379\n    key_file: @DIR@/state.key\n    ca: @DIR@/proxy.crt\n    timeout_ms: 20\n",
        ))
        .unwrap();
    let state = config.server.shared_state.unwrap();
    assert_eq!(
        state.shown_url,
        "rediss://ccedge:***@redis.example.com:6379"
    );
    assert!(state.tls.unwrap().ca.is_some());

    let err = rejected(s.load(&shared(
        "    redis_url: http://10.0.0.5:6380\n    key_file: @DIR@/short.key\n    ca: @DIR@/proxy.crt\n    timeout_ms: 0\n",
    )));
    assert!(err.contains("server.shared_state.redis_url"), "{err}");
    assert!(err.contains("is not a redis:// or rediss:// URL"), "{err}");
    assert!(
        err.contains("holds 31 bytes; the key needs at least 32"),
        "{err}"
    );
    assert!(
        err.contains("server.shared_state.ca: only for a rediss:// URL"),
        "{err}"
    );
    assert!(err.contains("server.shared_state.timeout_ms"), "{err}");
    let err = rejected(s.load(&shared(
        "    redis_url: redis://:pw@10.0.0.5\n    key_file: @DIR@/missing.key\n    password_file: @DIR@/redis.pass\n",
    )));
    assert!(err.contains("server.shared_state.key_file"), "{err}");
    assert!(err.contains("keep one of them"), "{err}");
    let err = rejected(s.load(&shared("    redis_url: redis://10.0.0.5\n")));
    assert!(err.contains("key_file"), "{err}");
}

#[test]
fn empty_file_has_nothing_to_serve() {
    let s = Scratch::new("empty");
    let err = rejected(s.load(""));
    assert!(err.contains("nothing to serve"), "{err}");
}

#[test]
fn unknown_role_is_rejected() {
    let s = Scratch::new("role");
    let err = rejected(s.load(&FINESSE.replace("role: cuic", "role: pbx")));
    assert!(err.starts_with("test.yaml:12:"), "{err}");
    assert!(err.contains("unknown variant `pbx`"), "{err}");
}

#[test]
fn complete_example_loads() {
    let s = Scratch::new("example");
    std::fs::write(s.dir.join("state.key"), [7u8; 32]).unwrap();
    std::fs::write(s.dir.join("redis.password"), "example\n").unwrap();
    // Its certificate files, all pointed at the scratch pair (CA bundles at the certificate);
    // the shared state's key and password at scratch files.
    let example = include_str!("../../conf/example.yaml")
        .split_inclusive(char::is_whitespace)
        .map(|word| {
            let path = word.trim_end();
            if let Some(file) = path.strip_prefix("/etc/ccedge/state/") {
                return s.path(file) + "\n";
            }
            match path.strip_prefix("/etc/ccedge/tls/") {
                Some(file) if file.ends_with(".key") => s.path("proxy.key") + "\n",
                Some(_) => s.path("proxy.crt") + "\n",
                None => word.to_string(),
            }
        })
        .collect::<String>();
    let config = parse(&example, Path::new("example.yaml")).unwrap();
    assert_eq!(config.digital.len(), 1);
    assert_eq!(config.finesse[0].servers.len(), 6);
    assert_eq!(
        config.finesse[0].listen_ports(),
        vec![8445, 8553, 12005, 8443]
    );
    assert_eq!(config.finesse[0].substitutions[0].replace.len(), 1);
    assert!(config.finesse[0].auth.is_some() && config.finesse[0].cache.is_some());
    let upstream_tls = config.digital[0].upstream_tls.as_ref().unwrap();
    assert_eq!(
        upstream_tls.server_name.as_deref(),
        Some("cloudconnect.cc.internal")
    );
}

#[test]
fn relative_certificate_paths_start_at_the_configuration_folder() {
    let s = Scratch::new("relative");
    let yaml = format!("{DIGITAL}    tls:\n      cert: proxy.crt\n      key: ./proxy.key\n");
    let config = parse(&yaml, &s.dir.join("ccedge.yaml")).unwrap();
    let tls = config.digital[0].tls.as_ref().unwrap();
    assert_eq!(tls.certificates[0].cert, s.dir.join("proxy.crt"));
    let err = rejected(parse(&yaml, Path::new("/nowhere/ccedge.yaml")));
    assert!(err.contains("/nowhere/proxy.crt"), "{err}");
}

#[test]
fn publisher_and_subscriber_must_differ() {
    let s = Scratch::new("samenode");
    let err = rejected(s.load(&DIGITAL.replace("127.0.0.1:8446", "127.0.0.1:8445")));
    assert!(
        err.contains(
            "test.yaml:6: digital_channels[0].subscriber: 127.0.0.1:8445 is the publisher too"
        ),
        "{err}"
    );
}

#[test]
fn auth_urls_resolve_and_take_the_tls_of_their_server() {
    let s = Scratch::new("auth");
    let yaml = format!(
        "{FINESSE}    upstream_tls:\n      ca: @DIR@/proxy.crt\n    auth:\n      \
         validate_url: https://127.0.0.1:9001/finesse/api/UserAuth\n      jwt:\n        \
         keys_url: http://127.0.0.1:9002/ids/v1/keys\n        issuer: https://ids\n"
    );
    let config = s.load(&yaml).unwrap();
    let auth = config.finesse[0].auth.as_ref().unwrap();
    assert_eq!(auth.validate[0].target(), "/finesse/api/UserAuth");
    assert_eq!(auth.validate[0].upstream.addr.port(), 9001);
    assert!(auth.validate[0]
        .tls
        .as_ref()
        .is_some_and(|t| t.ca.is_some()));
    let jwt = auth.jwt.as_ref().unwrap();
    assert!(jwt.keys.tls.is_none(), "http:// is plain");
    assert_eq!(jwt.poll.as_secs(), 300);
    assert_eq!(jwt.max_token_age.as_secs(), 7200);
    assert_eq!(jwt.issuer.as_deref(), Some("https://ids"));
}

#[test]
fn an_external_check_gets_its_defaults() {
    let s = Scratch::new("external");
    let yaml = format!(
        "{FINESSE}    auth:\n      validate_url: http://127.0.0.1:9001/finesse/api/UserAuth\n      \
         external:\n        url: http://127.0.0.1:9180/check\n"
    );
    let config = s.load(&yaml).unwrap();
    let external = config.finesse[0]
        .auth
        .as_ref()
        .unwrap()
        .external
        .as_ref()
        .unwrap();
    assert_eq!(external.endpoint.target(), "/check");
    assert_eq!(external.timeout, Duration::from_millis(1000));
    assert_eq!(external.send_headers, ["user-agent"]);
    assert_eq!(external.header_prefix, "x-auth-");
    assert!(external.cache_for.is_zero());
    assert!(!external.public_paths);
    assert_eq!(external.on_error, OnError::Deny);
}

#[test]
fn external_check_problems_name_their_keys() {
    let s = Scratch::new("externalbad");
    let check = |external: &str| {
        let yaml = format!(
            "{FINESSE}    auth:\n      validate_url: http://127.0.0.1:9001/finesse/api/UserAuth\n      \
             external:\n        url: http://127.0.0.1:9180/check\n{external}"
        );
        rejected(s.load(&yaml))
    };
    for (external, expected) in [
        (
            "        timeout_ms: 0\n",
            "external.timeout_ms: must be greater than 0",
        ),
        (
            "        send_headers: [X-Forwarded-For]\n",
            "external.send_headers[0]: `X-Forwarded-For` cannot be passed on",
        ),
        (
            "        send_headers: [Host]\n",
            "external.send_headers[0]: `Host` cannot be passed on",
        ),
        (
            "        send_headers: [\"bad header\"]\n",
            "external.send_headers[0]: `bad header` is not a header name",
        ),
        (
            "        header_prefix: X-\n",
            "external.header_prefix: `X-` covers x-client-ip",
        ),
        (
            "        header_prefix: Sec-\n",
            "external.header_prefix: `Sec-` covers sec-websocket-key",
        ),
        (
            "        header_prefix: X-Auth\n",
            "external.header_prefix: `X-Auth` is not a header name prefix ending in `-`",
        ),
        (
            "        send_headers: [TrackingID]\n",
            "external.send_headers[0]: `TrackingID` cannot be passed on",
        ),
        (
            "        send_headers: [X-Auth-Token]\n",
            "external.send_headers[0]: `X-Auth-Token` has the header_prefix",
        ),
        (
            "        header_prefix: Access-Control-\n",
            "`Access-Control-` covers access-control-request-headers",
        ),
        ("        on_error: maybe\n", "on_error"),
    ] {
        let err = check(external);
        assert!(err.contains(expected), "{external}: {err}");
    }
}

#[test]
fn auth_url_and_jwt_problems_name_their_keys() {
    let s = Scratch::new("authbad");
    let yaml = format!(
        "{FINESSE}    auth:\n      validate_url: ftp://127.0.0.1/x\n      jwt:\n        \
         keys_url: https://nowhere.invalid/keys\n        poll_seconds: 0\n"
    );
    let err = rejected(s.load(&yaml));
    assert!(
        err.contains("test.yaml:14: finesse[0].auth.validate_url: `ftp://127.0.0.1/x` is not an http:// or https:// URL"),
        "{err}"
    );
    assert!(
        err.contains("test.yaml:16: finesse[0].auth.jwt.keys_url: cannot resolve"),
        "{err}"
    );
    assert!(
        err.contains("test.yaml:17: finesse[0].auth.jwt.poll_seconds: must be greater than 0"),
        "{err}"
    );
}

#[test]
fn proxy_protocol_needs_the_balancers_it_trusts() {
    let s = Scratch::new("proxy-protocol");
    let err = rejected(s.load(&format!("{DIGITAL}    proxy_protocol: true\n")));
    assert!(
        err.contains("digital_channels[0].proxy_protocol") && err.contains("needs trusted_proxies"),
        "{err}"
    );
    let config = s
        .load(&format!(
            "{DIGITAL}    proxy_protocol: true\n    trusted_proxies: [10.0.0.0/24]\n"
        ))
        .unwrap();
    assert!(config.digital[0].clients.proxy_protocol);
    let config = s.load(DIGITAL).unwrap();
    assert!(!config.digital[0].clients.proxy_protocol, "off by default");
}
