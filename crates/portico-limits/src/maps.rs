//! nginx's `map` and `geo` (and the geoip2 module): `$map_NAME` is a value chosen by the
//! request — from the address ranges its source falls in (the longest prefix wins), or
//! a field of the source address's record in a MaxMind DB (the maxminddb crate), then an
//! exact value, else the first matching `~regex`, else the default. The module renders
//! the source (with its template engine) and asks [`Map::lookup`].

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use portico_config::{Cidr, MapConfig};

#[derive(Debug)]
pub struct Map {
    pub config: MapConfig,
    /// Longest prefix first.
    cidr: Vec<(Cidr, String)>,
    exact: HashMap<Vec<u8>, String>,
    regex: Vec<(regex::bytes::Regex, String)>,
    /// The opened MaxMind DB and the field path.
    mmdb: Option<(maxminddb::Reader<Vec<u8>>, Vec<String>)>,
}

impl Map {
    /// Compiles `config` (its regexes were checked when it was validated).
    pub fn new(config: &MapConfig) -> Result<Self, String> {
        let mut cidr = config.cidr.clone();
        cidr.sort_by_key(|(c, _)| std::cmp::Reverse(c.prefix));
        let regex = config
            .regex
            .iter()
            .map(|(r, v)| {
                regex::bytes::Regex::new(r)
                    .map(|re| (re, v.clone()))
                    .map_err(|e| format!("maps.{}: {e}", config.name))
            })
            .collect::<Result<_, _>>()?;
        let mmdb = match &config.mmdb {
            Some((path, field)) => Some((
                maxminddb::Reader::open_readfile(path)
                    .map_err(|e| format!("maps.{}: {}: {e}", config.name, path.display()))?,
                field.clone(),
            )),
            None => None,
        };
        Ok(Self {
            mmdb,
            config: config.clone(),
            cidr,
            exact: config
                .exact
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
                .collect(),
            regex,
        })
    }

    /// The value for a rendered source, appended to `out`.
    pub fn lookup_into(&self, source: &[u8], out: &mut Vec<u8>) {
        match &self.mmdb {
            None => out.extend_from_slice(self.lookup(source).as_bytes()),
            Some((reader, field)) => {
                let found = std::str::from_utf8(source)
                    .ok()
                    .and_then(|s| s.parse::<IpAddr>().ok())
                    .and_then(|ip| field_of(reader, ip, field));
                match found {
                    // a field's value goes through the listed values, if any
                    Some(v) if !(self.exact.is_empty() && self.regex.is_empty()) => {
                        out.extend_from_slice(self.listed(v.as_bytes()).as_bytes())
                    }
                    Some(v) => out.extend_from_slice(v.as_bytes()),
                    None => out.extend_from_slice(self.config.default.as_bytes()),
                }
            }
        }
    }

    /// The value for a rendered source (maps without an mmdb file).
    pub fn lookup(&self, source: &[u8]) -> &str {
        if !self.cidr.is_empty() {
            let ip = std::str::from_utf8(source)
                .ok()
                .and_then(|s| s.parse::<IpAddr>().ok());
            if let Some(ip) = ip {
                if let Some((_, v)) = self.cidr.iter().find(|(c, _)| c.contains(ip)) {
                    return v;
                }
            }
            return &self.config.default;
        }
        self.listed(source)
    }

    /// The exact, then regex values.
    fn listed(&self, source: &[u8]) -> &str {
        if let Some(v) = self.exact.get(source) {
            return v;
        }
        self.regex
            .iter()
            .find(|(re, _)| re.is_match(source))
            .map_or(&self.config.default, |(_, v)| v)
    }
}

/// The text at `field` (`country.iso_code`) in the record of `ip`.
fn field_of(reader: &maxminddb::Reader<Vec<u8>>, ip: IpAddr, field: &[String]) -> Option<String> {
    let record: serde_json::Value = reader.lookup(ip).ok()??;
    let mut at = &record;
    for step in field {
        at = match at {
            serde_json::Value::Object(m) => m.get(step)?,
            serde_json::Value::Array(a) => a.get(step.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match at {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The maps of one config generation, by name.
#[derive(Debug, Default)]
pub struct Maps(BTreeMap<String, Arc<Map>>);

impl Maps {
    pub fn build(maps: &BTreeMap<String, MapConfig>) -> Result<Self, String> {
        maps.iter()
            .map(|(n, c)| Map::new(c).map(|m| (n.clone(), Arc::new(m))))
            .collect::<Result<_, _>>()
            .map(Maps)
    }

    pub fn get(&self, name: &str) -> Option<&Map> {
        self.0.get(name).map(|m| &**m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_config::KeyTemplate;

    fn map(cidr: &[(&str, &str)], values: &[(&str, &str)], regex: &[(&str, &str)]) -> Map {
        Map::new(&MapConfig {
            name: "m".into(),
            source: KeyTemplate::parse_value("$remote_addr").unwrap(),
            cidr: cidr
                .iter()
                .map(|(c, v)| (Cidr::parse(c).unwrap(), v.to_string()))
                .collect(),
            exact: values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            regex: regex
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            default: "dflt".into(),
            mmdb: None,
        })
        .unwrap()
    }

    #[test]
    fn the_longest_prefix_wins() {
        let m = map(
            &[
                ("10.0.0.0/8", "wide"),
                ("10.1.0.0/16", "narrow"),
                ("::1", "six"),
            ],
            &[],
            &[],
        );
        assert_eq!(m.lookup(b"10.1.2.3"), "narrow");
        assert_eq!(m.lookup(b"10.2.2.3"), "wide");
        assert_eq!(m.lookup(b"::1"), "six");
        assert_eq!(m.lookup(b"::ffff:10.1.0.1"), "narrow");
        assert_eq!(m.lookup(b"192.0.2.1"), "dflt");
        assert_eq!(m.lookup(b"not an address"), "dflt");
    }

    #[test]
    fn exact_values_before_regexes() {
        let m = map(
            &[],
            &[("curl", "tool")],
            &[("(?i)^mozilla", "browser"), ("url", "other")],
        );
        assert_eq!(m.lookup(b"curl"), "tool");
        assert_eq!(m.lookup(b"Mozilla/5.0"), "browser");
        assert_eq!(m.lookup(b"xcurl"), "other");
        assert_eq!(m.lookup(b"wget"), "dflt");
    }
}
