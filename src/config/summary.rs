//! What a configuration serves, in one comparable form: the running process answers it on the
//! admin listener (`GET /config`), and `ccedge diff -c NEW.yaml` compares it with NEW.yaml's,
//! so an operator sees what a reload will change before making it.

use crate::config::{AccessLogTarget, Config};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The settings of `config` that a reload can change, defaults filled in.
pub fn summary(config: &Config) -> Value {
    let s = &config.server;
    let mut listeners: Vec<String> = Vec::new();
    let mut services = Map::new();
    let certificates = |tls: Option<&crate::config::tls::ServerTls>| -> Value {
        tls.map_or_else(Vec::new, |tls| {
            tls.certificates
                .iter()
                .map(|c| {
                    // The same file however the configuration named it.
                    let file = std::fs::canonicalize(&c.cert).unwrap_or_else(|_| c.cert.clone());
                    json!({
                        "file": file.display().to_string(),
                        "names": c.names,
                        "subject": c.leaf.subject,
                        "expires": chrono::DateTime::from_timestamp(c.leaf.not_after, 0)
                            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                    })
                })
                .collect()
        })
        .into()
    };
    for d in &config.digital {
        listeners.push(format!("{} ({})", d.listen, d.name));
        services.insert(
            d.name.clone(),
            json!({
                "kind": "digital channel",
                "settings": settings(d),
                "certificates": certificates(d.tls.as_ref()),
            }),
        );
    }
    for f in &config.finesse {
        for port in f.listen_ports() {
            let addr = std::net::SocketAddr::new(f.bind, port);
            listeners.push(format!("{addr} ({})", f.name));
        }
        if let Some(map) = &f.proxy_map {
            listeners.push(format!("{} ({} proxy map)", map.listen, f.name));
        }
        services.insert(
            f.name.clone(),
            json!({
                "kind": "finesse site",
                "settings": settings(f),
                "certificates": certificates(f.tls.as_ref()),
            }),
        );
    }
    if let Some(admin) = &s.admin {
        listeners.push(format!("{} (admin)", admin.listen));
    }
    listeners.sort();
    let access_log = match &s.access_log {
        AccessLogTarget::Off => "off".to_string(),
        AccessLogTarget::Stdout => "stdout".to_string(),
        AccessLogTarget::File(path) => path.display().to_string(),
    };
    json!({
        "server": {
            "threads": s.threads,
            "pid_file": s.pid_file,
            "upgrade_sock": s.upgrade_sock,
            "grace_period_seconds": s.grace_period_seconds,
            "graceful_shutdown_timeout_seconds": s.graceful_shutdown_timeout_seconds,
            "websocket_drain_seconds": s.websocket_drain_seconds,
            "max_draining_processes": s.max_draining_processes,
            "access_log": access_log,
            "admin_hosts": s.admin.as_ref().map(|a| a.hosts.clone()),
            // A rotated token shows as a change; `diff` shows neither token nor its digest.
            "admin_token": s.admin.as_ref().map(|a| a.token.as_ref().map_or_else(
                || "none".to_string(),
                |t| {
                    use sha2::Digest;
                    let digest = sha2::Sha256::digest(t.0.as_bytes());
                    digest.iter().map(|b| format!("{b:02x}")).collect::<String>()
                },
            )),
        },
        "listeners": listeners,
        "services": services,
    })
}

/// A service's settings as compared: without its listener certificates (compared apart, with
/// their files and expiry) and without what upstream names resolve to (DNS answers vary).
fn settings<T: serde::Serialize>(service: &T) -> Value {
    let mut value = serde_json::to_value(service).unwrap_or_default();
    if let Value::Object(map) = &mut value {
        map.remove("tls");
    }
    forget(&mut value, "resolved");
    value
}

fn forget(value: &mut Value, key: &str) {
    match value {
        Value::Object(map) => {
            map.remove(key);
            map.values_mut().for_each(|v| forget(v, key));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| forget(v, key)),
        _ => {}
    }
}

/// One difference between what runs and what a file would serve.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Change {
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    /// `listener`, `route`, `upstream`, `limits`, `auth`, `certificate`, `server` or `setting`.
    pub category: &'static str,
    pub path: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// What changes from `running` to `new` (both `summary` values), in path order.
pub fn diff(running: &Value, new: &Value) -> Vec<Change> {
    let (mut before, mut after) = (BTreeMap::new(), BTreeMap::new());
    flatten(String::new(), running, &mut before);
    flatten(String::new(), new, &mut after);
    let mut paths: Vec<&String> = before.keys().chain(after.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter_map(|path| {
            let (b, a) = (before.get(path), after.get(path));
            let change = match (b, a) {
                (Some(b), Some(a)) if b == a => return None,
                (Some(_), Some(_)) => "changed",
                (None, Some(_)) => "added",
                (Some(_), None) => "removed",
                (None, None) => return None,
            };
            // The token's digest tells a change; it is not shown.
            let shown = |v: Option<&Value>| match (path.as_str(), v) {
                ("server.admin_token", Some(v)) if v != "none" => Some(Value::from("set")),
                (_, v) => v.cloned(),
            };
            Some(Change {
                change,
                category: category(path),
                path: path.clone(),
                before: shown(b),
                after: shown(a),
            })
        })
        .collect()
}

/// Leaves by path: objects by key, the listener list by entry, arrays of objects by index,
/// other arrays whole.
fn flatten(prefix: String, value: &Value, out: &mut BTreeMap<String, Value>) {
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                flatten(join(key), value, out);
            }
        }
        Value::Array(items) if prefix == "listeners" => {
            for item in items {
                out.insert(
                    format!("listeners[{}]", item.as_str().unwrap_or_default()),
                    Value::Bool(true),
                );
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            for (i, item) in items.iter().enumerate() {
                flatten(format!("{prefix}[{i}]"), item, out);
            }
        }
        other => {
            out.insert(prefix, other.clone());
        }
    }
}

fn category(path: &str) -> &'static str {
    if path.starts_with("listeners") {
        return "listener";
    }
    if path.starts_with("server.") {
        return "server";
    }
    // services.<name>.<what>: judged by what, whatever the service is called.
    let what = path.splitn(3, '.').nth(2).unwrap_or_default();
    let what = what.strip_prefix("settings.").unwrap_or(what);
    let first = what.split(['.', '[']).next().unwrap_or_default();
    match first {
        "certificates" => "certificate",
        "limits" | "rate_limits" => "limits",
        "auth" => "auth",
        "servers" if what.contains(".upstream") => "upstream",
        "servers" => "route",
        "publisher" | "subscriber" | "upstream_tls" => "upstream",
        "listen" | "public" | "bind" | "proxy_map" => "route",
        _ => "setting",
    }
}

/// One line per change, for people.
pub fn describe(change: &Change) -> String {
    let show = |v: &Option<Value>| v.as_ref().map_or_else(String::new, Value::to_string);
    match change.change {
        "added" if change.category == "listener" => {
            format!("+ listener {}", listener_name(&change.path))
        }
        "removed" if change.category == "listener" => {
            format!("- listener {}", listener_name(&change.path))
        }
        "added" => format!(
            "+ {} {}: {}",
            change.category,
            change.path,
            show(&change.after)
        ),
        "removed" => format!(
            "- {} {}: {}",
            change.category,
            change.path,
            show(&change.before)
        ),
        _ if change.path == "server.admin_token" => "~ server server.admin_token: changed".into(),
        _ => format!(
            "~ {} {}: {} -> {}",
            change.category,
            change.path,
            show(&change.before),
            show(&change.after)
        ),
    }
}

fn listener_name(path: &str) -> &str {
    path.strip_prefix("listeners[")
        .and_then(|p| p.strip_suffix(']'))
        .unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> Value {
        json!({
            "server": {"grace_period_seconds": 30},
            "listeners": ["127.0.0.1:8443 (cc)", "127.0.0.1:9900 (admin)"],
            "services": {"cc": {"settings": {
                "limits": {"max_body_bytes": 100},
                "publisher": {"address": "pub:8445"},
                "rate_limits": [{"path_prefix": "/", "per_second": 5}],
            }, "certificates": [{"file": "a.crt", "expires": "2027-01-01T00:00:00Z"}]}},
        })
    }

    #[test]
    fn equal_summaries_have_no_changes() {
        assert!(diff(&running(), &running()).is_empty());
    }

    #[test]
    fn each_change_is_named_by_its_path_and_category() {
        let mut new = running();
        new["listeners"] = json!(["127.0.0.1:8443 (cc)", "127.0.0.1:9443 (cc)"]);
        new["services"]["cc"]["settings"]["limits"]["max_body_bytes"] = json!(200);
        new["services"]["cc"]["settings"]["publisher"]["address"] = json!("pub2:8445");
        new["services"]["cc"]["certificates"][0]["expires"] = json!("2028-01-01T00:00:00Z");
        new["services"]["cc"]["settings"]["rate_limits"][0]["per_second"] = json!(9);
        let lines: Vec<String> = diff(&running(), &new).iter().map(describe).collect();
        assert_eq!(
            lines,
            [
                "+ listener 127.0.0.1:9443 (cc)",
                "- listener 127.0.0.1:9900 (admin)",
                "~ certificate services.cc.certificates[0].expires: \"2027-01-01T00:00:00Z\" -> \"2028-01-01T00:00:00Z\"",
                "~ limits services.cc.settings.limits.max_body_bytes: 100 -> 200",
                "~ upstream services.cc.settings.publisher.address: \"pub:8445\" -> \"pub2:8445\"",
                "~ limits services.cc.settings.rate_limits[0].per_second: 5 -> 9",
            ]
        );
    }
}

#[cfg(test)]
mod category_tests {
    use super::category;

    #[test]
    fn the_service_name_does_not_decide_the_category() {
        assert_eq!(
            category("services.auth-site.settings.limits.max_body_bytes"),
            "limits"
        );
        assert_eq!(
            category("services.publisher1.settings.clients.allow"),
            "setting"
        );
        assert_eq!(category("services.cc.settings.public.host"), "route");
        assert_eq!(
            category("services.site.settings.servers[0].upstream.address"),
            "upstream"
        );
        assert_eq!(category("services.site.settings.servers[0].role"), "route");
        assert_eq!(
            category("services.site.settings.auth.lockout.failures"),
            "auth"
        );
        assert_eq!(
            category("services.site.certificates[0].expires"),
            "certificate"
        );
    }
}
