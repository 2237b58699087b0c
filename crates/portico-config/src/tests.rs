use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    p
}

const BASE: &str = r#"
[upstreams.app]
servers = [{ addr = "127.0.0.1:9001", weight = 3 }, { addr = "unix:/run/app.sock" }]

[[listeners]]
name = "web"
listen = ["127.0.0.1:8080"]

  [[listeners.routes]]
  path = "/"
  upstream = "app"
"#;

/// Whether `errs` has one at `file:line` for `key`.
fn has_error(errs: &[ConfigError], file: &str, line: usize, key: &str) -> bool {
    errs.iter()
        .any(|e| e.location == format!("{file}:{line}") && e.key == key)
}

#[test]
fn embedded_default_is_valid() {
    let loaded = load(&[], vec![]).unwrap();
    assert_eq!(loaded.config.listeners.len(), 1);
    assert_eq!(
        loaded.config.listeners[0].listen,
        vec![ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap())]
    );
}

#[test]
fn toml_file_with_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(&dir, "a.toml", BASE);
    let c = load(&[f], vec![]).unwrap().config;
    let app = &c.upstreams["app"];
    assert_eq!(app.servers[0].weight, 3);
    assert_eq!(app.servers[1].addr, PeerAddr::Unix("/run/app.sock".into()));
    assert_eq!(app.balance, Balance::RoundRobin);
    assert_eq!(c.listeners[0].limits.idle_timeout, Duration::from_secs(75));
    assert_eq!(c.runtime.shutdown_timeout, Duration::from_secs(30));
}

#[test]
fn yaml_is_the_same_tree() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "a.yaml",
        r#"
upstreams:
  app:
    servers:
      - addr: "127.0.0.1:9001"
        weight: 3
      - addr: unix:/run/app.sock
listeners:
  - name: web
    listen: ["127.0.0.1:8080"]
    routes:
      - path: /
        upstream: app
"#,
    );
    let y = load(&[f], vec![]).unwrap().config;
    let t = load(&[write(&dir, "b.toml", BASE)], vec![]).unwrap().config;
    assert_eq!(y, t);
}

#[test]
fn later_files_win_key_by_key_and_env_wins_last() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(
        &dir,
        "a.toml",
        &format!("{BASE}\n[log]\nlevel = \"warn\"\nformat = \"json\"\n"),
    );
    let b = write(&dir, "b.yaml", "log:\n  level: debug\n");
    let c = load(&[a.clone(), b.clone()], vec![]).unwrap().config;
    assert_eq!(c.log.level, "debug");
    assert_eq!(
        c.log.format,
        LogFormat::Json,
        "keys b does not set stay from a"
    );
    let env = vec![("PORTICO_LOG__LEVEL".to_string(), "error".to_string())];
    let loaded = load(&[a, b.clone()], env).unwrap();
    assert_eq!(loaded.config.log.level, "error");
    let explain = loaded.explain();
    let origin = |key: &str| explain.iter().find(|(k, _, _)| k == key).unwrap().2.clone();
    assert_eq!(
        origin("log.level"),
        Origin::Env("PORTICO_LOG__LEVEL".into())
    );
    assert!(
        matches!(origin("log.format"), Origin::File { line: Some(15), .. }),
        "{:?}",
        origin("log.format")
    );
    assert_eq!(origin("runtime.shutdown_timeout"), Origin::Default);
    assert_eq!(
        origin("upstreams.app.servers.0.weight"),
        Origin::File {
            path: dir.path().join("a.toml"),
            line: Some(3)
        }
    );
}

#[test]
fn every_error_is_reported_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "bad.toml",
        r#"[runtime]
shutdown_timeout = "10x"
colour = "blue"

[upstreams.app]
balance = "fastest"
servers = [{ addr = "127.0.0.1:9001", wieght = 3 }]

[[listeners]]
listen = ["127.0.0.1:8080", "nonsense"]
  [listeners.limits]
  idle_timeout = 5
  [[listeners.routes]]
  path = "/"
  upstream = "nope"
"#,
    );
    let errs = load(std::slice::from_ref(&f), vec![]).unwrap_err();
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let file = f.display().to_string();
    let has = |line: usize, key: &str| has_error(&errs, &file, line, key);
    assert!(has(3, "runtime.colour"), "{text:#?}");
    assert!(has(7, "upstreams.app.servers.0.wieght"), "{text:#?}");
    assert!(has(12, "listeners.0.limits.idle_timeout"), "{text:#?}");
    // the type and unknown-key errors above stop serde; validation errors still appear
    assert!(has(2, "runtime.shutdown_timeout"), "{text:#?}");
    assert!(has(6, "upstreams.app.balance"), "{text:#?}");
    assert!(has(10, "listeners.0.listen.1"), "{text:#?}");
    assert!(has(15, "listeners.0.routes.0.upstream"), "{text:#?}");
    assert!(text.iter().all(|t| t.starts_with(&file)), "{text:#?}");
}

#[test]
fn yaml_errors_have_lines() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "bad.yml",
        "log:\n  level: loud\nlisteners:\n  - listen: [\"127.0.0.1:1\"]\n    limits:\n      header_timeout: soon\n",
    );
    let errs = load(std::slice::from_ref(&f), vec![]).unwrap_err();
    let file = f.display().to_string();
    assert!(
        errs.iter()
            .any(|e| e.location == format!("{file}:2") && e.key == "log.level"),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.location == format!("{file}:6")
                && e.key == "listeners.0.limits.header_timeout"),
        "{errs:#?}"
    );
}

#[test]
fn env_errors_name_the_variable() {
    let env = vec![(
        "PORTICO_RUNTIME__SHUTDOWN_TIMEOUT".to_string(),
        "forever".to_string(),
    )];
    let errs = load(&[], env).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0]
            .to_string()
            .starts_with("env PORTICO_RUNTIME__SHUTDOWN_TIMEOUT: "),
        "{}",
        errs[0]
    );
}

#[test]
fn syntax_errors_have_lines() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(&dir, "s.toml", "[log]\nlevel = \"info\"\nformat = \n");
    let errs = load(std::slice::from_ref(&f), vec![]).unwrap_err();
    assert!(
        errs[0].location.starts_with(&format!("{}:3", f.display())),
        "{errs:?}"
    );
    let y = write(&dir, "s.yaml", "log:\n  level: [unclosed\n");
    let errs = load(std::slice::from_ref(&y), vec![]).unwrap_err();
    assert!(
        errs[0].location.starts_with(&y.display().to_string()),
        "{errs:?}"
    );
}

#[test]
fn unknown_extension_and_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(&dir, "a.ini", "x=1");
    assert!(load(&[f], vec![]).is_err());
    assert!(load(&[dir.path().join("missing.toml")], vec![]).is_err());
}

#[test]
fn shared_addresses_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "v.toml",
        r#"
[[listeners]]
name = "a"
listen = ["127.0.0.1:8080"]
server_names = ["a.example"]
[[listeners]]
name = "b"
listen = ["127.0.0.1:8080"]
server_names = ["*.b.example"]
[[listeners]]
name = "c"
listen = ["127.0.0.1:8080"]
proxy_protocol = true
"#,
    );
    let errs = load(&[f], vec![]).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].key, "listeners.2.listen.0");
}

#[test]
fn relative_paths_resolve_against_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("www")).unwrap();
    let f = write(
        &dir,
        "s.toml",
        "[[listeners]]\nlisten = [\"127.0.0.1:1\"]\n[[listeners.routes]]\npath = \"/\"\nstatic = { root = \"www\" }\n",
    );
    let c = load(&[f], vec![]).unwrap().config;
    match &c.listeners[0].routes[0].action {
        RouteAction::Static(s) => assert_eq!(s.root, dir.path().join("www")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn check_output_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = load(&[write(&dir, "a.toml", BASE)], vec![]).unwrap();
    let printed = write(&dir, "printed.toml", &loaded.to_toml());
    let again = load(&[printed], vec![]).unwrap();
    assert_eq!(again.config, loaded.config);
}

#[test]
fn gateway_route_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "g.toml",
        r#"[upstreams.app]
servers = [{ addr = "127.0.0.1:9001" }]
max_vars = 0

[[listeners]]
listen = ["127.0.0.1:8080"]
  [[listeners.routes]]
  path = "/a/"
  upstream = "app"
  params = { X = "1" }
  [[listeners.routes]]
  path = "/b/"
  upstream = "app"
  via = "uwsgi"
  index = "index.php"
  [[listeners.routes]]
  path = "/c/"
  upstream = "app"
  via = "fastcgi"
  split_path_info = '^(.+\.php)$'
  params = { X = "$nope" }
  [[listeners.routes]]
  path = "/d/"
  upstream = "app"
  via = "fastcgi"
  split_path_info = '(unclosed'
"#,
    );
    let errs = load(std::slice::from_ref(&f), vec![]).unwrap_err();
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    for (line, key) in [
        (3, "upstreams.app.max_vars"),
        (10, "listeners.0.routes.0.params"),
        (15, "listeners.0.routes.1.index"),
        (20, "listeners.0.routes.2.split_path_info"),
        (21, "listeners.0.routes.2.params.X"),
        (26, "listeners.0.routes.3.split_path_info"),
    ] {
        let want = format!("g.toml:{line}: {key}");
        assert!(
            text.iter().any(|t| t.contains(&want)),
            "{want} in {text:#?}"
        );
    }
}

#[test]
fn gateway_route_settings_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "g.toml",
        r#"[upstreams.php]
servers = [{ addr = "127.0.0.1:9000" }]
max_vars = 4096

[[listeners]]
listen = ["127.0.0.1:8080"]
  [[listeners.routes]]
  path = "/"
  upstream = "php"
  via = "fastcgi"
  root = "/srv/www"
  index = "index.php"
  split_path_info = '^(.+?\.php)(/.*)$'
  params = { SCRIPT_NAME = "", APP = "$remote_addr:$http_x_tenant" }
"#,
    );
    let c = load(&[f], vec![]).unwrap().config;
    assert_eq!(c.upstreams["php"].max_vars, 4096);
    let RouteAction::Proxy(p) = &c.listeners[0].routes[0].action else {
        panic!("a proxy route")
    };
    assert_eq!(p.via, Via::Fastcgi);
    assert_eq!(p.root.as_deref(), Some(std::path::Path::new("/srv/www")));
    assert_eq!(p.index.as_deref(), Some("index.php"));
    let app = p.params.iter().find(|(n, _)| n == "APP").unwrap();
    assert_eq!(
        app.1.parts,
        vec![
            KeyPart::RemoteAddr,
            KeyPart::Literal(":".into()),
            KeyPart::Header("x-tenant".into())
        ]
    );
    let script = p.params.iter().find(|(n, _)| n == "SCRIPT_NAME").unwrap();
    assert!(script.1.parts.is_empty());
}

#[test]
fn server_block_keys_are_checked_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "routes.toml",
        r#"[upstreams.app]
servers = [{ addr = "127.0.0.1:9001" }]
[[listeners]]
listen = ["127.0.0.1:8080"]
  [[listeners.routes]]
  regex = '^/old/(.*$'
  return = { status = 301, location = "/new/$1" }
  [[listeners.routes]]
  regex = '^/a/(.*)$'
  return = { status = 301, location = "/b/$2" }
  [[listeners.routes]]
  path = "/p/"
  upstream = "app"
  request_headers = { set = { "Bad Name" = "x", "X-Ok" = "$1" } }
  [[listeners.routes]]
  exact = "/r"
  return = { status = 302 }
  [[listeners.routes]]
  path = "/m/"
  methods = ["GET", "P O S T"]
  upstream = "app"
  response_headers = { set = { "X-Unknown" = "$nope" } }
"#,
    );
    let errs = load(std::slice::from_ref(&f), vec![]).unwrap_err();
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let file = f.display().to_string();
    let has = |line: usize, key: &str| has_error(&errs, &file, line, key);
    assert!(has(6, "listeners.0.routes.0.regex"), "{text:#?}");
    assert!(has(10, "listeners.0.routes.1.return.location"), "{text:#?}");
    assert!(
        text.iter()
            .any(|t| t.contains("$2 but the regex has 1 capture")),
        "{text:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.key == "listeners.0.routes.2.request_headers.set.Bad Name"),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|t| t.contains("$1 needs a regex route")),
        "{text:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.key == "listeners.0.routes.3.return.location"),
        "{text:#?}"
    );
    assert!(has(20, "listeners.0.routes.4.methods.1"), "{text:#?}");
    assert!(
        text.iter().any(|t| t.contains("unknown variable $nope")),
        "{text:#?}"
    );
}

#[test]
fn route_matchers_and_return_routes_load() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "ok.toml",
        r#"[[listeners]]
listen = ["127.0.0.1:8080"]
  [[listeners.routes]]
  exact = "/favicon.ico"
  return = { status = 204 }
  [[listeners.routes]]
  regex = '(?i)^/old/(.*)$'
  return = { status = 301, location = "https://$host/new/$1" }
  [[listeners.routes]]
  path = "/static/"
  prefix_wins = true
  methods = ["get"]
  static = { root = "/srv" }
  response_headers = { set = { "Cache-Control" = "max-age=60" }, remove = ["X-Powered-By"], always = true }
"#,
    );
    let c = load(&[f], vec![]).unwrap().config;
    let r = &c.listeners[0].routes;
    assert_eq!(r[0].matcher, RouteMatch::Exact("/favicon.ico".into()));
    assert!(matches!(
        &r[1].matcher,
        RouteMatch::Regex { captures: 1, .. }
    ));
    assert_eq!(r[1].path, "~ (?i)^/old/(.*)$");
    assert_eq!(r[2].methods, vec!["GET".to_string(), "HEAD".to_string()]);
    assert!(r[2].response_headers.always);
    assert!(matches!(
        r[2].matcher,
        RouteMatch::Prefix { wins: true, .. }
    ));
}

#[test]
fn cidr_ranges_contain_what_they_should() {
    let c = Cidr::parse("10.0.0.0/8").unwrap();
    assert!(c.contains("10.200.1.1".parse().unwrap()));
    assert!(!c.contains("11.0.0.1".parse().unwrap()));
    assert!(
        c.contains("::ffff:10.1.2.3".parse().unwrap()),
        "IPv4-mapped"
    );
    let one = Cidr::parse("::1").unwrap();
    assert!(one.contains("::1".parse().unwrap()));
    assert!(!one.contains("::2".parse().unwrap()));
    assert!(Cidr::parse("0.0.0.0/0")
        .unwrap()
        .contains("192.0.2.1".parse().unwrap()));
    assert!(!Cidr::parse("2001:db8::/32")
        .unwrap()
        .contains("10.0.0.1".parse().unwrap()));
    for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/x", "::/129"] {
        assert!(Cidr::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_rewrite_loop_that_can_be_seen_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "loop.toml",
        r#"[[listeners]]
listen = ["127.0.0.1:8080"]
  [[listeners.routes]]
  path = "/a/"
  rewrite = [{ from = '^/a/', to = "/a/again", flag = "last" }]
  [[listeners.routes]]
  path = "/b/"
  rewrite = [{ from = '^/b/x$', to = "/b/y", flag = "last" }]
  return = { status = 200, body = "b" }
"#,
    );
    let errs = load(std::slice::from_ref(&f), vec![]).unwrap_err();
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert!(
        errs.iter()
            .any(|e| e.key == "listeners.0.routes.0.rewrite.0.to"),
        "{text:#?}"
    );
    assert_eq!(
        errs.len(),
        1,
        "/b/x → /b/y does not match its rule again: {text:#?}"
    );
}

#[test]
fn env_vars_reach_into_lists_by_index() {
    let dir = tempfile::tempdir().unwrap();
    let two = format!(
        "{BASE}\n[[listeners]]\nname = \"admin\"\nlisten = [\"127.0.0.1:9090\"]\n  [[listeners.routes]]\n  path = \"/\"\n  static = {{ root = \"/srv\" }}\n"
    );
    let f = write(&dir, "a.toml", &two);
    let env = vec![
        (
            "PORTICO_LISTENERS__0__LISTEN".to_string(),
            "127.0.0.1:9999".to_string(),
        ),
        (
            "PORTICO_LISTENERS__1__ROUTES__0__STATIC__ROOT".to_string(),
            "/data/www".to_string(),
        ),
        (
            "PORTICO_UPSTREAMS__APP__SERVERS__1__WEIGHT".to_string(),
            "7".to_string(),
        ),
    ];
    let loaded = load(std::slice::from_ref(&f), env).unwrap();
    let c = &loaded.config;
    assert_eq!(c.listeners.len(), 2, "the other listener stays");
    assert_eq!(
        c.listeners[0].listen,
        vec![ListenAddr::Tcp("127.0.0.1:9999".parse().unwrap())]
    );
    assert_eq!(c.listeners[0].name, "web", "the element's other keys stay");
    assert_eq!(c.listeners[1].listen.len(), 1);
    match &c.listeners[1].routes[0].action {
        RouteAction::Static(s) => assert_eq!(s.root, PathBuf::from("/data/www")),
        other => panic!("{other:?}"),
    }
    let servers = &c.upstreams["app"].servers;
    assert_eq!((servers[0].weight, servers[1].weight), (3, 7));
    // origins: the env var for what it set, the file's line for the rest
    let explain = loaded.explain();
    let origin = |key: &str| explain.iter().find(|(k, _, _)| k == key).unwrap().2.clone();
    assert_eq!(
        origin("listeners.0.listen.0"),
        Origin::Env("PORTICO_LISTENERS__0__LISTEN".into())
    );
    assert!(
        matches!(
            origin("listeners.0.name"),
            Origin::File { line: Some(6), .. }
        ),
        "{:?}",
        origin("listeners.0.name")
    );
    // integers are shown, defaults are credited to the defaults (not the table's line),
    // optional keys nobody set are not listed
    let entry = |key: &str| explain.iter().find(|(k, _, _)| k == key).cloned();
    let max = entry("listeners.0.limits.max_connections").unwrap();
    assert_eq!((max.1.as_str(), max.2), ("10000", Origin::Default));
    let weight = entry("upstreams.app.servers.0.weight").unwrap();
    assert_eq!(weight.1, "3");
    assert!(entry("listeners.0.routes.0.modifier1").is_none());
    assert!(entry("admin").is_none());
    // past the end of a list: an error naming the variable
    let env = vec![(
        "PORTICO_LISTENERS__5__LISTEN".to_string(),
        "127.0.0.1:1".to_string(),
    )];
    let errs = load(&[f], env).unwrap_err();
    assert!(
        errs.iter().any(
            |e| e.to_string().contains("env PORTICO_LISTENERS__5__LISTEN")
                && e.to_string().contains("past its end")
        ),
        "{errs:?}"
    );
}
