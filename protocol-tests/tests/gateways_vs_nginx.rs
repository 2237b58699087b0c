//! Side by side with nginx: the same app server (uWSGI, flup, php-fpm) behind nginx
//! (`uwsgi_pass` / `fastcgi_pass` with Debian's param files) and behind Portico, the
//! same requests from curl, and the app must see the same environment — except where the
//! two proxies necessarily differ (their own ports and SERVER_SOFTWARE, curl's source
//! port).

mod common;

use std::collections::BTreeMap;

use common::*;

/// Variables that differ by construction: each proxy's listening port, the client's
/// source port towards it, and the proxy's name.
const DIFFERENT_BY_CONSTRUCTION: [&str; 3] = ["SERVER_PORT", "REMOTE_PORT", "SERVER_SOFTWARE"];

fn env_of(url: &str, args: &[&str]) -> Option<BTreeMap<String, String>> {
    let r = curl(args, url);
    if r.status != 200 {
        return None;
    }
    let v: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&r.body).unwrap();
    v.into_iter()
        .filter(|(k, _)| !DIFFERENT_BY_CONSTRUCTION.contains(&k.as_str()))
        .map(|(k, v)| (k, v.as_str().map(str::to_string).unwrap_or(v.to_string())))
        .collect::<BTreeMap<_, _>>()
        .into()
}

/// The requests both proxies get, as curl arguments and a path.
fn requests(dir: &std::path::Path, env: &str, extra_path: &str) -> Vec<(Vec<String>, String)> {
    let body = dir.join("body.bin");
    std::fs::write(
        &body,
        (0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    let at = format!("@{}", body.display());
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        (s(&[]), format!("{env}?x=1&y=%20z&u=%E2%9C%93")),
        (
            s(&[
                "-H",
                "X-Custom: one",
                "-H",
                "Cookie: a=1; b=2",
                "-H",
                "Accept-Language: fr",
                "-A",
                "side-by-side/1.0",
                "-u",
                "alice:secret",
            ]),
            env.to_string(),
        ),
        (s(&["-d", "name=%C3%A9l%C3%A8ve&n=1"]), env.to_string()),
        (
            s(&[
                "-X",
                "POST",
                "--data-binary",
                &at,
                "-H",
                "Content-Type: application/octet-stream",
            ]),
            env.to_string(),
        ),
        (s(&[]), format!("{env}{extra_path}")),
        (s(&["-H", "Host: Shop.Example:8080"]), env.to_string()),
    ]
}

/// The variables on which two environments differ: (name, Portico's, nginx's).
fn differences(
    ours: &BTreeMap<String, String>,
    theirs: &BTreeMap<String, String>,
) -> Vec<(String, Option<String>, Option<String>)> {
    let mut keys: Vec<&String> = ours.keys().chain(theirs.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| ours.get(*k) != theirs.get(*k))
        .map(|k| ((*k).clone(), ours.get(k).cloned(), theirs.get(k).cloned()))
        .collect()
}

fn compare(nginx_port: u16, p: &Portico, env: &str, extra_path: &str) {
    let nginx_url = |path: &str| format!("http://127.0.0.1:{nginx_port}{path}");
    let dir = tempfile::tempdir().unwrap();
    for (args, path) in requests(dir.path(), env, extra_path) {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let theirs = env_of(&nginx_url(&path), &a).expect("nginx answers 200");
        let ours = env_of(&p.url(&path), &a).expect("Portico answers 200");
        let diff = differences(&ours, &theirs);
        assert!(
            diff.is_empty(),
            "{path} {args:?}: (var, Portico, nginx) {diff:?}"
        );
    }

    // A chunked body: nginx de-chunks it but still passes HTTP_TRANSFER_ENCODING, so
    // uWSGI refuses the request (502) and werkzeug under flup reads no body. Portico
    // drops that var: the app gets the body and CONTENT_LENGTH. Everything else matches.
    let file = dir.path().join("body.bin");
    std::fs::write(&file, vec![7u8; 100_000]).unwrap();
    let at = format!("@{}", file.display());
    let args = [
        "-X",
        "PUT",
        "--data-binary",
        &at,
        "-H",
        "Transfer-Encoding: chunked",
    ];
    let mut ours = env_of(&p.url(env), &args).expect("Portico answers 200");
    assert_eq!(ours["_body_len"], "100000");
    assert_eq!(ours["CONTENT_LENGTH"], "100000");
    assert!(!ours.contains_key("HTTP_TRANSFER_ENCODING"));
    if let Some(mut theirs) = env_of(&nginx_url(env), &args) {
        for k in ["HTTP_TRANSFER_ENCODING", "_body_len", "_body_sha256"] {
            theirs.remove(k);
            ours.remove(k);
        }
        let diff = differences(&ours, &theirs);
        assert!(
            diff.is_empty(),
            "chunked PUT: (var, Portico, nginx) {diff:?}"
        );
    }
}

fn nginx_conf(dir: &std::path::Path, port: u16, location: &str) -> String {
    format!(
        "http {{\n  access_log off;\n  {temp}\n  server {{\n    listen 127.0.0.1:{port};\n    server_name localhost;\n    root {root};\n    {location}\n  }}\n}}\n",
        temp = nginx_http_temp(dir),
        root = php_root().display(),
    )
}

fn portico_conf(server: &str, via: &str, route: &str) -> String {
    format!(
        "[upstreams.app]\nservers = [{{ addr = \"{server}\" }}]\n\n[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\nserver_names = [\"localhost\"]\n  [[listeners.routes]]\n  path = \"/\"\n  upstream = \"app\"\n  via = \"{via}\"\n  root = \"{root}\"\n  {route}\n",
        root = php_root().display()
    )
}

#[test]
fn uwsgi_env_matches_nginx() {
    let dir = tempfile::tempdir().unwrap();
    let app_port = free_port();
    let _app = uwsgi(Bind::Tcp(app_port), &[]);
    let nginx_port = free_port();
    let _nginx = nginx(
        dir.path(),
        &nginx_conf(
            dir.path(),
            nginx_port,
            &format!("location / {{ include /etc/nginx/uwsgi_params; uwsgi_pass 127.0.0.1:{app_port}; }}"),
        ),
        nginx_port,
    );
    let p = Portico::start(&portico_conf(&format!("127.0.0.1:{app_port}"), "uwsgi", ""));

    compare(nginx_port, &p, "/env", "/caf%C3%A9/a%2Fb/../c");
}

#[test]
fn flup_env_matches_nginx() {
    let dir = tempfile::tempdir().unwrap();
    let app_port = free_port();
    let _app = flup(Bind::Tcp(app_port));
    let nginx_port = free_port();
    let _nginx = nginx(
        dir.path(),
        &nginx_conf(
            dir.path(),
            nginx_port,
            &format!(
                "location / {{ include /etc/nginx/fastcgi_params; fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name; fastcgi_param SCRIPT_NAME \"\"; fastcgi_param PATH_INFO $document_uri; fastcgi_pass 127.0.0.1:{app_port}; }}"
            ),
        ),
        nginx_port,
    );
    let p = Portico::start(&portico_conf(
        &format!("127.0.0.1:{app_port}"),
        "fastcgi",
        r#"params = { SCRIPT_NAME = "", PATH_INFO = "$document_uri" }"#,
    ));
    compare(nginx_port, &p, "/env", "/caf%C3%A9/x");
}

#[test]
fn php_fpm_env_matches_nginx() {
    let dir = tempfile::tempdir().unwrap();
    let app_port = free_port();
    let _fpm = php_fpm(dir.path(), Bind::Tcp(app_port), 2);
    let nginx_port = free_port();
    let _nginx = nginx(
        dir.path(),
        &nginx_conf(
            dir.path(),
            nginx_port,
            &format!(
                // Debian's snippets/fastcgi-php.conf, with fastcgi_params (as the other
                // two tests) in place of fastcgi.conf, which lacks the HTTP_HOST $host
                // line, and without its try_files, which rewrites $uri (DOCUMENT_URI) to
                // the script's path; php-fpm answers 404 for missing scripts itself.
                "index index.php;\n    location ~ \\.php(/|$) {{ fastcgi_split_path_info ^(.+?\\.php)(/.*)$; fastcgi_param PATH_INFO $fastcgi_path_info; fastcgi_index index.php; include /etc/nginx/fastcgi_params; fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name; fastcgi_pass 127.0.0.1:{app_port}; }}"
            ),
        ),
        nginx_port,
    );
    let p = Portico::start(&portico_conf(
        &format!("127.0.0.1:{app_port}"),
        "fastcgi",
        "index = \"index.php\"\n  split_path_info = '^(.+?\\.php)(/.*)$'",
    ));
    compare(nginx_port, &p, "/env.php", "/caf%C3%A9/x");
}
