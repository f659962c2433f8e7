//! The YAML configuration: read (`raw`), checked and turned into the model the proxy runs on
//! (`model`). A rejection names the file, the line and the key path.

pub mod cidr;
mod locate;
pub mod model;
mod raw;
pub mod summary;
pub mod tls;
pub mod validate;

pub use model::*;
pub use raw::schema;

use locate::LineIndex;
use std::fmt;
use std::path::Path;

/// Why a configuration file was rejected: one line per problem, each `file:line: path: message`.
#[derive(Debug)]
pub struct ConfigError {
    pub lines: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines.join("\n"))
    }
}

impl std::error::Error for ConfigError {}

/// Reads, parses and validates `file`. Loads certificate files and resolves upstream names, but
/// binds nothing.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let shown = file.display();
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        lines: vec![format!("{shown}: cannot read the configuration: {e}")],
    })?;
    parse(&text, file)
}

/// Parses and validates configuration `text`, naming `file` in errors.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    parse_with(text, file, validate::system_resolve)
}

/// As `parse`, with upstream names resolved by `resolve` (the fuzz targets resolve without DNS).
pub fn parse_with(
    text: &str,
    file: &Path,
    resolve: validate::Resolve,
) -> Result<Config, ConfigError> {
    let shown = file.display();
    let raw: raw::RawConfig = if text.trim().is_empty() {
        raw::RawConfig::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| ConfigError {
            lines: vec![describe_yaml_error(&shown.to_string(), &e)],
        })?
    };
    validate::validate(raw, file, resolve).map_err(|problems| {
        let index = LineIndex::new(text);
        ConfigError {
            lines: problems
                .iter()
                .map(|p| {
                    let at = match index.line_of(&p.path) {
                        Some(line) => format!("{shown}:{line}"),
                        None => shown.to_string(),
                    };
                    if p.path.is_empty() {
                        format!("{at}: {}", p.message)
                    } else {
                        format!("{at}: {}: {}", p.path, p.message)
                    }
                })
                .collect(),
        }
    })
}

/// `file` read as YAML only: no DNS, no certificate files.
fn read_raw(file: &Path) -> Result<raw::RawConfig, ConfigError> {
    let shown = file.display().to_string();
    let fail = |line: String| ConfigError { lines: vec![line] };
    let text = std::fs::read_to_string(file)
        .map_err(|e| fail(format!("{shown}: cannot read the configuration: {e}")))?;
    serde_yaml::from_str(&text).map_err(|e| fail(describe_yaml_error(&shown, &e)))
}

/// The files of a running ccedge that `file` names.
pub struct ProcessFiles {
    pub pid_file: String,
    /// The access log, when it is a file.
    pub access_log: Option<std::path::PathBuf>,
}

/// Just the pid file and the access log of `file`, for `ccedge reopen` (which a log rotation
/// runs: it must not depend on DNS or certificate files).
pub fn process_files(file: &Path) -> Result<ProcessFiles, ConfigError> {
    let server = read_raw(file)?.server;
    let access_log = match server.access_log.as_str() {
        "stdout" | "off" => None,
        path => Some(path.into()),
    };
    Ok(ProcessFiles {
        pid_file: server.pid_file,
        access_log,
    })
}

/// Just the admin listener of `file` (its address and token), for the commands that talk to a
/// running ccedge, without validating the rest (no DNS, no files).
pub fn admin_access(file: &Path) -> Result<Option<AdminSettings>, ConfigError> {
    let shown = file.display().to_string();
    let fail = |line: String| ConfigError { lines: vec![line] };
    let raw = read_raw(file)?;
    raw.server
        .admin
        .map(|a| {
            let listen = a.listen.parse().map_err(|_| {
                fail(format!(
                    "{shown}: server.admin.listen: `{}` is not IP:port",
                    a.listen
                ))
            })?;
            Ok(AdminSettings {
                listen,
                hosts: a.hosts,
                token: a.token.map(Secret),
            })
        })
        .transpose()
}

/// serde_yaml names the key path in its message and appends the position; put the position in
/// front, as `file:line:column`, like every other rejection.
fn describe_yaml_error(file: &str, e: &serde_yaml::Error) -> String {
    let message = e.to_string();
    match e.location() {
        Some(loc) => {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            let message = message.strip_suffix(&suffix).unwrap_or(&message);
            format!("{file}:{}:{}: {message}", loc.line(), loc.column())
        }
        None => format!("{file}: {message}"),
    }
}

#[cfg(test)]
mod tests;
