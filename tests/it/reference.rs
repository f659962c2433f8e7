//! The configuration's three descriptions agree with the loader and with each other: the JSON
//! Schema `ccedge schema` derives from the loader's own types, the reference an administrator
//! reads (docs/configuration.md), and the complete example (conf/example.yaml).

use crate::harness::fixtures::{conf_example, example_config, repo_file};
use crate::harness::{binary, Ca, TestDir};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What `ccedge schema` prints.
fn schema() -> Value {
    let out = Command::new(binary()).arg("schema").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ccedge schema prints JSON")
}

/// A key the schema allows, by its path (`finesse[].servers[].upstream`).
struct Key {
    default: Option<Value>,
    required: bool,
}

/// Every key path the schema allows.
fn schema_keys(root: &Value) -> BTreeMap<String, Key> {
    let mut keys = BTreeMap::new();
    walk_schema(root, root, "", &mut keys);
    keys
}

/// Follows references, single-entry `allOf` wrappers and the non-null side of `anyOf`; with the
/// name of the block (the schema definition) reached, `Config` for the top level.
fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> (&'a Value, &'a str) {
    let mut block = "Config";
    loop {
        if let Some(name) = schema["$ref"].as_str() {
            block = name
                .strip_prefix("#/definitions/")
                .expect("local reference");
            schema = &root["definitions"][block];
        } else if let Some([only]) = schema["allOf"].as_array().map(Vec::as_slice) {
            schema = only;
        } else if let Some(any) = schema["anyOf"].as_array() {
            schema = any.iter().find(|s| s["type"] != "null").unwrap();
        } else {
            return (schema, block);
        }
    }
}

fn walk_schema(root: &Value, schema: &Value, prefix: &str, keys: &mut BTreeMap<String, Key>) {
    let (schema, _) = resolve(root, schema);
    if let Some(properties) = schema["properties"].as_object() {
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (name, property) in properties {
            let path = join(prefix, name);
            let key = Key {
                default: property.get("default").cloned(),
                required: required.contains(&name.as_str()),
            };
            keys.insert(path.clone(), key);
            walk_schema(root, property, &path, keys);
        }
    }
    if let Some(items) = schema.get("items") {
        walk_schema(root, items, &format!("{prefix}[]"), keys);
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Every key of every block the schema defines, as `Block.key` (`UpstreamTls.server_name`).
fn block_keys(root: &Value) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let blocks = root["definitions"].as_object().unwrap().iter();
    let blocks = blocks.map(|(block, schema)| (block.as_str(), schema));
    for (block, schema) in blocks.chain([("Config", root)]) {
        for name in schema["properties"]
            .as_object()
            .into_iter()
            .flat_map(|p| p.keys())
        {
            keys.insert(format!("{block}.{name}"));
        }
    }
    keys
}

/// The `Block.key` of every key a YAML document uses, reading it along the schema.
fn used_block_keys(
    root: &Value,
    schema: &Value,
    value: &serde_yaml::Value,
    used: &mut BTreeSet<String>,
) {
    let (schema, block) = resolve(root, schema);
    match value {
        serde_yaml::Value::Mapping(map) => {
            for (name, value) in map {
                let name = name.as_str().expect("string keys");
                used.insert(format!("{block}.{name}"));
                used_block_keys(root, &schema["properties"][name], value, used);
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for item in items {
                used_block_keys(root, &schema["items"], item, used);
            }
        }
        _ => {}
    }
}

/// The reference's key tables: each row's key and its *default* cell.
fn documented_keys() -> BTreeMap<String, String> {
    let mut keys = BTreeMap::new();
    for line in repo_file("docs/configuration.md").lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 6 || !cells[0].is_empty() {
            continue;
        }
        let Some(key) = cells[1].strip_prefix('`').and_then(|c| c.strip_suffix('`')) else {
            continue;
        };
        if key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.[]".contains(c))
        {
            let previous = keys.insert(key.to_string(), cells[3].to_string());
            assert!(previous.is_none(), "`{key}` has two rows in the reference");
        }
    }
    keys
}

/// Whether the reference's row for `documented` describes key `path`: the same path, or its end
/// for a block every service kind has (`limits.max_body_bytes`).
fn describes(documented: &str, path: &str) -> bool {
    path == documented
        || path
            .strip_suffix(documented)
            .is_some_and(|head| head.ends_with('.'))
}

/// A default as the reference writes it: `2000`, `true`, `/dataconn/`, `[a, b]`. None for
/// defaults that are blocks, which the reference describes in words.
fn shown(default: &Value) -> Option<String> {
    match default {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(default.to_string()),
        Value::Array(items) => items
            .iter()
            .map(shown)
            .collect::<Option<Vec<_>>>()
            .map(|items| format!("[{}]", items.join(", "))),
        _ => None,
    }
}

#[test]
fn reference_documents_every_key_the_loader_accepts_and_no_other() {
    let keys = schema_keys(&schema());
    let documented = documented_keys();
    assert!(
        keys.len() > 50 && documented.len() > 50,
        "the walks found too little"
    );
    let mut problems = Vec::new();
    for (path, key) in &keys {
        let rows: Vec<_> = documented
            .iter()
            .filter(|(d, _)| describes(d, path))
            .collect();
        if rows.is_empty() {
            problems.push(format!(
                "`{path}` is accepted but not in docs/configuration.md"
            ));
        }
        for (row, default) in rows {
            if key.required != (default == "required") {
                let want = if key.required {
                    "required"
                } else {
                    "a default"
                };
                problems.push(format!("`{row}` says `{default}`, but `{path}` has {want}"));
            }
            if let Some(value) = key.default.as_ref().and_then(shown) {
                if !default.contains(&format!("`{value}`")) {
                    problems.push(format!(
                        "`{row}` gives the default {default}, but `{path}` defaults to `{value}`"
                    ));
                }
            }
        }
    }
    for row in documented.keys() {
        if !keys.keys().any(|path| describes(row, path)) {
            problems.push(format!(
                "docs/configuration.md documents `{row}`, which the loader does not accept"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn complete_example_uses_every_key_and_matches_the_schema() {
    let schema = schema();
    let example: serde_yaml::Value = serde_yaml::from_str(&repo_file("conf/example.yaml")).unwrap();
    let mut used = BTreeSet::new();
    used_block_keys(&schema, &schema, &example, &mut used);
    let accepted = block_keys(&schema);
    let unused: Vec<_> = accepted.difference(&used).collect();
    assert!(unused.is_empty(), "conf/example.yaml leaves out {unused:?}");
    let unknown: Vec<_> = used.difference(&accepted).collect();
    assert!(unknown.is_empty(), "conf/example.yaml uses {unknown:?}");

    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let as_json = serde_json::to_value(&example).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&as_json)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    // The schema rejects what the loader rejects: an unknown key, a wrong type, a zero timeout.
    for (from, to) in [
        (
            "    publisher_only_paths:",
            "    colour: blue\n    publisher_only_paths:",
        ),
        ("interval_ms: 2000", "interval_ms: 2s"),
        ("keepalive_timeout_ms: 20000", "keepalive_timeout_ms: 0"),
        ("role: cuic", "role: pbx"),
    ] {
        let text = repo_file("conf/example.yaml").replacen(from, to, 1);
        let broken: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let broken = serde_json::to_value(&broken).unwrap();
        assert!(!validator.is_valid(&broken), "the schema accepts {to:?}");
    }
    let dir = TestDir::new("reference-example");
    let file = conf_example(&dir, "example.yaml");
    let out = Command::new(binary())
        .args(["-t", "-c", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn committed_schema_is_the_one_ccedge_prints() {
    let committed: Value = serde_json::from_str(&repo_file("docs/ccedge.schema.json")).unwrap();
    assert!(
        committed == schema(),
        "docs/ccedge.schema.json is out of date: run `cargo run -q -- schema > docs/ccedge.schema.json`"
    );
}

#[test]
fn configuration_files_in_conf_name_the_schema() {
    for name in [
        "example.yaml",
        "digital-channels.yaml",
        "vpnless-finesse.yaml",
        "both.yaml",
        "demo.yaml",
    ] {
        let first = repo_file(&format!("conf/{name}"));
        assert!(
            first.starts_with("# yaml-language-server: $schema=../docs/ccedge.schema.json\n"),
            "conf/{name} does not name the schema on its first line"
        );
    }
}

/// The configurations of `deploy/` (the Compose pair's file, the Kubernetes ConfigMap's) pass
/// `ccedge -t`, with their files made where they name them.
#[test]
fn deployment_configurations_load() {
    let configmap: Vec<serde_yaml::Value> =
        serde_yaml::Deserializer::from_str(&repo_file("deploy/kubernetes/ccedge.yaml"))
            .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
            .collect();
    let embedded = configmap
        .iter()
        .find(|doc| doc["kind"] == "ConfigMap")
        .and_then(|doc| doc["data"]["ccedge.yaml"].as_str())
        .expect("the ConfigMap holds ccedge.yaml")
        .to_string();
    for (name, text) in [
        (
            "compose.yaml",
            repo_file("deploy/compose/ccedge/ccedge.yaml"),
        ),
        ("kubernetes.yaml", embedded),
    ] {
        let dir = TestDir::new(&format!("deploy-{name}"));
        let file = example_config(&dir, name, &text);
        let out = Command::new(binary())
            .args(["-t", "-c", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Redis on another host without TLS is said to be so.
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("is not rediss://"), "{name}: {said}");
    }
}

/// The configuration contract this project is built to (`../shared/spec/example.yaml`, beside
/// the repository on the project's CI machine, not part of a clone). Checked when it is there.
#[test]
fn contract_example_beside_the_repository_loads() {
    let contract = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/spec/example.yaml");
    let Ok(text) = std::fs::read_to_string(&contract) else {
        eprintln!(
            "skipped: the contract example {} is not present (it only exists beside the \
             repository on the project's CI machine)",
            contract.display()
        );
        return;
    };
    // The certificate files it names, where it names them.
    let tls = PathBuf::from("/tmp/ccedge-example-tls");
    std::fs::create_dir_all(&tls).unwrap();
    let ca = Ca::new("contract");
    ca.write(&tls.join("ca.crt"));
    ca.server(&tls, "proxy", &["dc.example.com", "finesse1.example.com"]);
    ca.client(&tls, "client");
    let dir = TestDir::new("reference-contract");
    let file = dir.write("contract.yaml", &text);
    let out = Command::new(binary())
        .args(["-t", "-c", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the contract example is rejected:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let document: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&schema()).unwrap();
    assert!(validator.is_valid(&serde_json::to_value(&document).unwrap()));
}
