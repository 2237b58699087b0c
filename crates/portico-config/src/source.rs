//! Where configuration values come from: files (TOML or YAML, by extension) and
//! `PORTICO_` environment variables, merged with figment, plus the line index that maps a
//! key path back to the line that set it (figment itself drops line numbers).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::value::{Dict, Map, Num, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::ConfigError;

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "PORTICO_";

/// One loaded config file: its tree and, for every key path, the line that wrote it.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub dict: Dict,
    pub lines: BTreeMap<String, usize>,
}

impl SourceFile {
    /// Reads and parses `path`; the format is chosen by its extension.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            location: path.display().to_string(),
            key: String::new(),
            message: format!("cannot read config file: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses `text` as the file `path` would be parsed.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "toml" => parse_toml(path, text),
            "yaml" | "yml" => parse_yaml(path, text),
            other => Err(ConfigError {
                location: path.display().to_string(),
                key: String::new(),
                message: format!(
                    "unknown config format {other:?}: use a .toml, .yaml or .yml file name"
                ),
            }),
        }
    }

    /// The line of the deepest key on `path` that this file wrote.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(line) = self.lines.get(p) {
                return Some(*line);
            }
            p = &p[..p.rfind('.')?];
        }
    }
}

fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn parse_toml(path: &Path, text: &str) -> Result<SourceFile, ConfigError> {
    let syntax_err = |line: usize, msg: String| ConfigError {
        location: format!("{}:{line}", path.display()),
        key: String::new(),
        message: format!("syntax error: {msg}"),
    };
    let doc = toml_edit::Document::parse(text).map_err(|e| {
        let line = e.span().map(|s| line_at(text, s.start)).unwrap_or(1);
        let msg = e.message().trim().to_string();
        syntax_err(line, msg)
    })?;
    let dict = figment::providers::Format::string(text);
    let dict: figment::providers::Data<figment::providers::Toml> = dict;
    let dict = dict
        .data()
        .map_err(|e| syntax_err(1, e.to_string()))?
        .remove(&Profile::Default)
        .unwrap_or_default();
    let mut lines = BTreeMap::new();
    index_toml_table(text, doc.as_table(), "", &mut lines);
    Ok(SourceFile {
        path: path.to_path_buf(),
        dict,
        lines,
    })
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn index_toml_table(
    text: &str,
    table: &toml_edit::Table,
    prefix: &str,
    lines: &mut BTreeMap<String, usize>,
) {
    for (key, item) in table.iter() {
        let path = join(prefix, key);
        let span = table
            .key(key)
            .and_then(|k| k.span())
            .or_else(|| item.span());
        if let Some(span) = span {
            lines.insert(path.clone(), line_at(text, span.start));
        }
        index_toml_item(text, item, &path, lines);
    }
}

fn index_toml_item(
    text: &str,
    item: &toml_edit::Item,
    path: &str,
    lines: &mut BTreeMap<String, usize>,
) {
    match item {
        toml_edit::Item::Table(t) => {
            if let Some(span) = t.span() {
                lines
                    .entry(path.to_string())
                    .or_insert(line_at(text, span.start));
            }
            index_toml_table(text, t, path, lines)
        }
        toml_edit::Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                let p = join(path, &i.to_string());
                if let Some(span) = t.span() {
                    lines.insert(p.clone(), line_at(text, span.start));
                }
                index_toml_table(text, t, &p, lines);
            }
        }
        toml_edit::Item::Value(v) => index_toml_value(text, v, path, lines),
        toml_edit::Item::None => {}
    }
}

fn index_toml_value(
    text: &str,
    value: &toml_edit::Value,
    path: &str,
    lines: &mut BTreeMap<String, usize>,
) {
    match value {
        toml_edit::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let p = join(path, &i.to_string());
                if let Some(span) = v.span() {
                    lines.insert(p.clone(), line_at(text, span.start));
                }
                index_toml_value(text, v, &p, lines);
            }
        }
        toml_edit::Value::InlineTable(t) => {
            for (key, v) in t.iter() {
                let p = join(path, key);
                let span = t.key(key).and_then(|k| k.span()).or_else(|| v.span());
                if let Some(span) = span {
                    lines.insert(p.clone(), line_at(text, span.start));
                }
                index_toml_value(text, v, &p, lines);
            }
        }
        _ => {}
    }
}

/// Builds figment values and the line index from YAML parser events.
#[derive(Default)]
struct YamlBuilder {
    /// Open containers: (path, partial value, pending map key).
    stack: Vec<(String, Value, Option<String>)>,
    root: Option<Value>,
    lines: BTreeMap<String, usize>,
    error: Option<(usize, String)>,
}

impl YamlBuilder {
    fn child_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some((path, Value::Array(_, items), _)) => join(path, &items.len().to_string()),
            Some((path, _, Some(key))) => join(path, key),
            Some((path, _, None)) => path.clone(),
        }
    }

    fn push_value(&mut self, value: Value) {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some((_, Value::Array(_, items), _)) => items.push(value),
            Some((_, Value::Dict(_, dict), key)) => {
                if let Some(k) = key.take() {
                    dict.insert(k, value);
                }
            }
            Some(_) => {}
        }
    }

    fn scalar(&mut self, s: String, style: TScalarStyle, mark: Marker) {
        // A scalar in key position of a mapping is a key.
        if let Some((path, Value::Dict(..), key @ None)) = self.stack.last_mut() {
            let p = join(path, &s);
            self.lines.insert(p, mark.line());
            *key = Some(s);
            return;
        }
        let path = self.child_path();
        self.lines.entry(path).or_insert(mark.line());
        let value = if style == TScalarStyle::Plain {
            yaml_plain_scalar(&s)
        } else {
            Value::from(s)
        };
        self.push_value(value);
    }
}

fn yaml_plain_scalar(s: &str) -> Value {
    match s {
        // figment has no null: an empty string fails type checks with a clear message.
        "~" | "null" | "Null" | "NULL" | "" => return Value::from(String::new()),
        "true" | "True" | "TRUE" => return Value::from(true),
        "false" | "False" | "FALSE" => return Value::from(false),
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::Num(figment::value::Tag::Default, Num::I64(i));
    }
    if s.contains('.') {
        if let Ok(f) = s.parse::<f64>() {
            return Value::Num(figment::value::Tag::Default, Num::F64(f));
        }
    }
    Value::from(s.to_string())
}

impl MarkedEventReceiver for YamlBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match ev {
            Event::Scalar(s, style, _, _) => self.scalar(s, style, mark),
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                let path = self.child_path();
                self.lines.entry(path.clone()).or_insert(mark.line());
                let value = if matches!(ev, Event::SequenceStart(..)) {
                    Value::from(Vec::<Value>::new())
                } else {
                    Value::from(Dict::new())
                };
                self.stack.push((path, value, None));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((_, value, _)) = self.stack.pop() {
                    self.push_value(value);
                }
            }
            Event::Alias(_) => {
                self.error = Some((mark.line(), "YAML aliases are not supported".into()));
            }
            _ => {}
        }
    }
}

fn parse_yaml(path: &Path, text: &str) -> Result<SourceFile, ConfigError> {
    let mut builder = YamlBuilder::default();
    let mut parser = Parser::new_from_str(text);
    let err = |line: usize, msg: String| ConfigError {
        location: format!("{}:{line}", path.display()),
        key: String::new(),
        message: format!("syntax error: {msg}"),
    };
    parser
        .load(&mut builder, false)
        .map_err(|e| err(e.marker().line(), e.info().to_string()))?;
    if let Some((line, msg)) = builder.error {
        return Err(err(line, msg));
    }
    let dict = match builder.root {
        Some(Value::Dict(_, d)) => d,
        None => Dict::new(),
        Some(Value::String(_, s)) if s.is_empty() => Dict::new(),
        Some(_) => return Err(err(1, "the top level must be a mapping".into())),
    };
    Ok(SourceFile {
        path: path.to_path_buf(),
        dict,
        lines: builder.lines,
    })
}

/// A figment provider for one parsed file, so figment knows the value came from it.
struct FileLayer<'a>(&'a SourceFile);

impl Provider for FileLayer<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::from(
            format!("file {}", self.0.path.display()),
            Source::File(self.0.path.clone()),
        )
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Map::from([(Profile::Default, self.0.dict.clone())]))
    }
}

/// The `PORTICO_` variables, `__` nesting: `PORTICO_LOG__LEVEL=debug` sets `log.level`,
/// and a number reaches into a list: `PORTICO_LISTENERS__0__LISTEN` sets the first
/// listener's `listen`. `base` is what the files say, so that a list an index reaches
/// into is given whole (figment replaces lists): its other elements are the files'
/// values, tags and all, so their origins stay the files'.
struct EnvLayer {
    vars: Vec<(String, String)>,
    base: Dict,
}

fn env_var_name(keys: &[&str]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| k.to_ascii_uppercase()).collect();
    format!("{ENV_PREFIX}{}", keys.join("__"))
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment").interpolater(|_: &Profile, keys: &[&str]| env_var_name(keys))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Value::from(Dict::new());
        let base = Value::from(self.base.clone());
        for (name, raw) in &self.vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let keys: Vec<String> = rest.split("__").map(|k| k.to_ascii_lowercase()).collect();
            if keys.iter().any(|k| k.is_empty()) {
                continue;
            }
            let value: Value = raw.parse().unwrap_or_else(|_| Value::from(raw.clone()));
            set_in(&mut root, Some(&base), &keys, value)
                .map_err(|e| figment::Error::from(format!("env {name}: {e}")))?;
        }
        let Value::Dict(_, dict) = root else {
            return Ok(Map::new());
        };
        Ok(Map::from([(Profile::Default, dict)]))
    }
}

/// Sets `keys` in `v` to `value`. A list is entered by index (one past its end adds an
/// element); a list the files have is copied whole first (`base`).
fn set_in(
    v: &mut Value,
    base: Option<&Value>,
    keys: &[String],
    value: Value,
) -> Result<(), String> {
    let Some((k, rest)) = keys.split_first() else {
        return Ok(());
    };
    match v {
        Value::Array(_, a) => {
            let i: usize = k
                .parse()
                .map_err(|_| format!("{k:?} is not an index into a list"))?;
            if i > a.len() {
                return Err(format!(
                    "the list has {} element(s): index {i} is past its end",
                    a.len()
                ));
            }
            if i == a.len() {
                a.push(Value::from(Dict::new()));
            }
            if rest.is_empty() {
                a[i] = value;
                return Ok(());
            }
            // a copy of the files' element: no base needed below it
            set_in(&mut a[i], None, rest, value)
        }
        Value::Dict(_, d) => {
            if rest.is_empty() {
                d.insert(k.clone(), value);
                return Ok(());
            }
            let base_child = match base {
                Some(Value::Dict(_, b)) => b.get(k),
                _ => None,
            };
            let entry = d.entry(k.clone()).or_insert_with(|| match base_child {
                // given whole: figment replaces lists
                Some(Value::Array(_, a)) => Value::from(a.clone()),
                _ => Value::from(Dict::new()),
            });
            if !matches!(entry, Value::Dict(..) | Value::Array(..)) {
                *entry = Value::from(Dict::new());
            }
            set_in(entry, base_child, rest, value)
        }
        other => {
            *other = Value::from(Dict::new());
            set_in(other, None, keys, value)
        }
    }
}

/// The merged layers, and the knowledge of which layer set which key.
#[derive(Debug, Clone)]
pub struct Layers {
    pub figment: Figment,
    pub files: Vec<SourceFile>,
    pub merged: Dict,
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File { path: PathBuf, line: Option<usize> },
    Env(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File {
                path,
                line: Some(l),
            } => write!(f, "{}:{l}", path.display()),
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::Env(name) => write!(f, "env {name}"),
        }
    }
}

impl Layers {
    /// Merges `files` in order (later wins key by key), then the `PORTICO_` variables in `env`.
    pub fn load(files: &[SourceFile], env: Vec<(String, String)>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        for f in files {
            figment = figment.merge(FileLayer(f));
        }
        // what the files say, with their tags (an error there is reported by the full
        // extract below)
        let base: Dict = Provider::data(&figment)
            .ok()
            .and_then(|mut m| m.remove(&Profile::Default))
            .unwrap_or_default();
        figment = figment.merge(EnvLayer { vars: env, base });
        let merged: Dict = figment.extract().map_err(|e| ConfigError {
            location: "config".into(),
            key: e.path.join("."),
            message: e.kind.to_string(),
        })?;
        Ok(Self {
            figment,
            files: files.to_vec(),
            merged,
        })
    }

    /// Which layer set the value at `path` (dotted, array indices as numbers).
    pub fn origin(&self, path: &str) -> Origin {
        let mut value: Option<&Value> = None;
        let mut cur: &Dict = &self.merged;
        let mut segments = Vec::new();
        for seg in path.split('.').filter(|s| !s.is_empty()) {
            let next = match value {
                None => cur.get(seg),
                Some(Value::Dict(_, d)) => d.get(seg),
                Some(Value::Array(_, a)) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                Some(_) => None,
            };
            match next {
                Some(v) => {
                    segments.push(seg);
                    value = Some(v);
                    if let Value::Dict(_, d) = v {
                        cur = d;
                    }
                }
                // below a scalar (`listen = "addr"` read as a list of one): the
                // scalar's origin
                None if matches!(value, Some(v) if !matches!(v, Value::Dict(..) | Value::Array(..))) => {
                    break
                }
                // no layer set this key: its value is the default (not the table's
                // line, not the list's variable)
                None => return Origin::Default,
            }
        }
        let Some(value) = value else {
            return Origin::Default;
        };
        let Some(md) = self.figment.get_metadata(value.tag()) else {
            return Origin::Default;
        };
        match &md.source {
            Some(Source::File(file)) => {
                let line = self
                    .files
                    .iter()
                    .rev()
                    .find(|f| &f.path == file)
                    .and_then(|f| f.line_of(path));
                Origin::File {
                    path: file.clone(),
                    line,
                }
            }
            _ if md.name == "environment" => {
                Origin::Env(md.interpolate(&Profile::Default, &segments))
            }
            _ => Origin::Default,
        }
    }
}
