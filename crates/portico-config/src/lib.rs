//! Portico's configuration: built-in defaults < TOML/YAML files (later files win key by
//! key) < `PORTICO_` environment variables (`__` nests), merged with figment.
//!
//! Loading goes in three steps: [`source`] parses each file and remembers which line wrote
//! which key; the merged tree is deserialized into the [`raw`] structs (the file format,
//! `deny_unknown_fields`); [`validate`] turns those into the internal [`Config`] of
//! [`model`]. Every error found on the way is reported, each as `file:line: key: message`
//! (or `env PORTICO_X: message`), not only the first.

pub mod model;
pub mod raw;
pub mod source;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::Serialized;
use figment::value::{Dict, Value};
use figment::Figment;

pub use model::*;
pub use source::{Layers, Origin, SourceFile, ENV_PREFIX};
pub use validate::{parse_duration, parse_rate};

use raw::RawConfig;

/// The config Portico runs when no config file is found.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");
/// The name the embedded default goes by in logs and `--explain`.
pub const EMBEDDED_NAME: &str = "<embedded default>.toml";

/// The files looked for, in order, when no `--config` is given.
pub const SEARCH_PATHS: &[&str] = &[
    "./portico.toml",
    "./portico.yaml",
    "/etc/portico/portico.toml",
];

/// One configuration error, with where the offending value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `file:line`, `env PORTICO_X`, or `default`.
    pub location: String,
    /// The dotted key path, array elements by index (`listeners.0.listen`).
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn at(origin: Origin, key: &str, message: String) -> Self {
        Self {
            location: origin.to_string(),
            key: key.to_string(),
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.starts_with("env ") || self.key.is_empty() {
            write!(f, "{}: {}", self.location, self.message)
        } else {
            write!(f, "{}: {}: {}", self.location, self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A loaded, validated configuration and what it was made from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The merged raw tree, defaults filled in: what `portico check` prints.
    pub raw: RawConfig,
    pub layers: Layers,
}

impl Loaded {
    /// The merged config as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.raw).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }

    /// Every leaf key of the merged config with its value and where it came from.
    pub fn explain(&self) -> Vec<(String, String, Origin)> {
        let value = match Figment::from(Serialized::defaults(&self.raw)).extract::<Dict>() {
            Ok(d) => Value::from(d),
            Err(_) => return Vec::new(),
        };
        let mut out = Vec::new();
        walk_leaves(&value, String::new(), &mut |path, v| {
            let origin = self.layers.origin(&path);
            // an optional key nobody set does not apply: not listed
            if matches!(v, Value::Empty(..)) && origin == Origin::Default {
                return;
            }
            out.push((path.clone(), render_value(v), origin));
        });
        out
    }
}

fn render_value(v: &Value) -> String {
    match v {
        Value::String(_, s) => format!("{s:?}"),
        Value::Char(_, c) => format!("{c:?}"),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => match (n.to_i128(), n.to_u128(), n.to_f64()) {
            (Some(i), _, _) => i.to_string(),
            (None, Some(u), _) => u.to_string(),
            (None, None, Some(f)) => f.to_string(),
            _ => String::new(),
        },
        Value::Empty(..) => "none".into(),
        Value::Array(_, a) if a.is_empty() => "[]".into(),
        Value::Dict(_, d) if d.is_empty() => "{}".into(),
        _ => String::new(),
    }
}

fn walk_leaves(v: &Value, path: String, f: &mut impl FnMut(String, &Value)) {
    let child = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Dict(_, d) if !d.is_empty() => {
            for (k, v) in d {
                walk_leaves(v, child(k), f);
            }
        }
        Value::Array(_, a) if !a.is_empty() => {
            for (i, v) in a.iter().enumerate() {
                walk_leaves(v, child(&i.to_string()), f);
            }
        }
        _ => f(path, v),
    }
}

/// The variable that pins the log filter (`PORTICO_LOG=portico_http=debug`); it is not
/// a config key, unlike `PORTICO_LOG__LEVEL`.
pub const LOG_FILTER_VAR: &str = "PORTICO_LOG";

/// The `PORTICO_` variables of this process that set config keys.
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != LOG_FILTER_VAR)
        .collect()
}

/// The config files to load: the given ones, else the first of [`SEARCH_PATHS`] that
/// exists; `None` means run the embedded default.
pub fn find_config_files(given: &[PathBuf]) -> Option<Vec<PathBuf>> {
    if !given.is_empty() {
        return Some(given.to_vec());
    }
    SEARCH_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .map(|p| vec![p])
}

/// Loads and validates `files` (in order) plus `env`. An empty `files` loads the
/// embedded default.
pub fn load(files: &[PathBuf], env: Vec<(String, String)>) -> Result<Loaded, Vec<ConfigError>> {
    let mut parsed = Vec::new();
    let mut errors = Vec::new();
    if files.is_empty() {
        match SourceFile::parse(Path::new(EMBEDDED_NAME), EMBEDDED_DEFAULT) {
            Ok(f) => parsed.push(f),
            Err(e) => errors.push(e),
        }
    }
    for f in files {
        match SourceFile::load(f) {
            Ok(f) => parsed.push(f),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let layers = Layers::load(&parsed, env).map_err(|e| vec![e])?;
    let raw = deserialize_all(&layers, &mut errors);
    let Some(raw) = raw else {
        return Err(sorted(errors));
    };
    match validate::validate(&raw, &layers) {
        Ok(config) if errors.is_empty() => Ok(Loaded {
            config,
            raw,
            layers,
        }),
        Ok(_) => Err(sorted(errors)),
        Err(more) => {
            errors.extend(more);
            Err(sorted(errors))
        }
    }
}

/// Errors in file order (file, then line), environment variables last.
fn sorted(mut errors: Vec<ConfigError>) -> Vec<ConfigError> {
    let key = |e: &ConfigError| {
        let env = e.location.starts_with("env ");
        let (file, line) = match e.location.rsplit_once(':') {
            Some((f, l)) => match l.parse::<usize>() {
                Ok(n) => (f.to_string(), n),
                Err(_) => (e.location.clone(), 0),
            },
            None => (e.location.clone(), 0),
        };
        (env, file, line)
    };
    errors.sort_by_key(key);
    errors
}

/// Deserializes the merged tree into [`RawConfig`]. serde stops at the first bad key, so
/// each bad key is recorded, removed, and the rest tried again: the user sees them all.
fn deserialize_all(layers: &Layers, errors: &mut Vec<ConfigError>) -> Option<RawConfig> {
    let mut tree = layers.merged.clone();
    for _ in 0..100 {
        match Figment::from(Serialized::defaults(&tree)).extract::<RawConfig>() {
            Ok(raw) => return Some(raw),
            Err(e) => {
                for e in e {
                    let (path, message) = describe(&e);
                    errors.push(ConfigError::at(layers.origin(&path), &path, message));
                    if !remove_path(&mut tree, &path) {
                        return None;
                    }
                }
            }
        }
    }
    None
}

/// The candidate nearest to `word` by edit distance, if it is near enough to be what
/// was meant (at most a third of the word's length, at least one edit).
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance (insert, delete, substitute: one each).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn describe(e: &figment::Error) -> (String, String) {
    use figment::error::Kind;
    let mut path = e.path.join(".");
    let message = match &e.kind {
        Kind::UnknownField(field, expected) => {
            if e.path.last() != Some(field) {
                path = if path.is_empty() {
                    field.clone()
                } else {
                    format!("{path}.{field}")
                };
            }
            match closest(field, expected.iter().copied()) {
                Some(near) => format!(
                    "unknown key {field:?} (did you mean {near:?}?); expected one of: {}",
                    expected.join(", ")
                ),
                None => format!(
                    "unknown key {field:?}; expected one of: {}",
                    expected.join(", ")
                ),
            }
        }
        Kind::InvalidType(actual, expected) => {
            format!("invalid type: found {actual}, expected {expected}")
        }
        other => other.to_string(),
    };
    (path, message)
}

fn remove_path(tree: &mut Dict, path: &str) -> bool {
    fn remove(v: &mut Value, segs: &[&str]) -> bool {
        match (v, segs) {
            (Value::Dict(_, d), [last]) => d.remove(*last).is_some(),
            (Value::Array(_, a), [last]) => match last.parse::<usize>() {
                Ok(i) if i < a.len() => {
                    a.remove(i);
                    true
                }
                _ => false,
            },
            (Value::Dict(_, d), [first, rest @ ..]) => {
                d.get_mut(*first).is_some_and(|v| remove(v, rest))
            }
            (Value::Array(_, a), [first, rest @ ..]) => first
                .parse::<usize>()
                .ok()
                .and_then(|i| a.get_mut(i))
                .is_some_and(|v| remove(v, rest)),
            _ => false,
        }
    }
    let segs: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
    if segs.is_empty() {
        return false;
    }
    let mut root = Value::from(std::mem::take(tree));
    let removed = remove(&mut root, &segs);
    if let Value::Dict(_, d) = root {
        *tree = d;
    }
    removed
}

#[cfg(test)]
mod tests;
