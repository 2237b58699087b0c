//! `error_pages` and `intercept_errors` beside nginx's `error_page` and
//! `proxy_intercept_errors` / `uwsgi_intercept_errors`, on the same requests: Portico's
//! own errors (no route, a dead app, a body too large, a method refused), an app's
//! errors under gunicorn and uWSGI (replaced only with intercept_errors), a page that
//! is itself missing, a redirect page, a named route, HEAD, and a page served by a
//! proxied route. The client always keeps the original status.

mod common;

use common::*;

struct Setup {
    _dir: tempfile::TempDir,
    _apps: Vec<Proc>,
    _nginx: Proc,
    nginx_port: u16,
    portico: Portico,
}

/// gunicorn (Flask) and uWSGI (the same app) behind both proxies; pages on disk.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(www.join("errors")).unwrap();
    std::fs::write(www.join("404.html"), "custom 404\n").unwrap();
    std::fs::write(www.join("errors/50x.html"), "custom 50x\n").unwrap();
    std::fs::write(www.join("index.html"), "home\n").unwrap();
    let (g, u) = (free_port(), free_port());
    let apps = vec![gunicorn_tcp(g, "err", &[]), uwsgi(Bind::Tcp(u), &[])];
    let dead = free_port();
    let portico = Portico::start(&format!(
        r#"
[upstreams.app]
servers = [{{ addr = "127.0.0.1:{g}" }}]
[upstreams.wsgi]
servers = [{{ addr = "127.0.0.1:{u}" }}]
[upstreams.dead]
servers = [{{ addr = "127.0.0.1:{dead}" }}]
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
error_pages = {{ "404" = "/404.html", "500 502 503 504" = "/errors/50x.html" }}
  [[listeners.routes]]
  path = "/"
  static = {{ root = "{www}" }}
  [[listeners.routes]]
  path = "/app/"
  upstream = "app"
  upstream_path = "/"
  intercept_errors = true
  [[listeners.routes]]
  path = "/plain/"
  upstream = "app"
  upstream_path = "/"
  [[listeners.routes]]
  path = "/status/"
  upstream = "wsgi"
  via = "uwsgi"
  intercept_errors = true
  [[listeners.routes]]
  path = "/dead/"
  upstream = "dead"
  [[listeners.routes]]
  path = "/missing-page/"
  upstream = "dead"
  error_pages = {{ "502" = "/no-such-page.html" }}
  [[listeners.routes]]
  path = "/elsewhere/"
  upstream = "dead"
  error_pages = {{ "502" = "https://status.example.com/down" }}
  [[listeners.routes]]
  path = "/named/"
  upstream = "dead"
  error_pages = {{ "502" = "@sorry" }}
  [[listeners.routes]]
  name = "sorry"
  return = {{ status = 200, body = "sorry, try later\n" }}
  [[listeners.routes]]
  path = "/by-app/"
  upstream = "dead"
  error_pages = {{ "502" = "/app/status/200" }}
  [[listeners.routes]]
  path = "/small/"
  upstream = "app"
  max_body_bytes = 10
  error_pages = {{ "413" = "/errors/50x.html" }}
  [[listeners.routes]]
  path = "/get-only/"
  methods = ["GET"]
  return = {{ status = 200, body = "got\n" }}
  error_pages = {{ "405" = "/404.html" }}
"#,
        www = www.display()
    ));
    let nginx_port = free_port();
    let nginx = nginx(
        dir.path(),
        &format!(
            r#"http {{
 {temp}
 access_log off;
 client_max_body_size 10;
 server {{
  listen 127.0.0.1:{nginx_port};
  root {www};
  error_page 404 /404.html;
  error_page 500 502 503 504 /errors/50x.html;
  location / {{ }}
  location /app/ {{ proxy_pass http://127.0.0.1:{g}/; proxy_intercept_errors on; }}
  location /plain/ {{ proxy_pass http://127.0.0.1:{g}/; }}
  location /status/ {{ include /etc/nginx/uwsgi_params; uwsgi_pass 127.0.0.1:{u}; uwsgi_intercept_errors on; }}
  location /dead/ {{ proxy_pass http://127.0.0.1:{dead}; }}
  location /missing-page/ {{ proxy_pass http://127.0.0.1:{dead}; error_page 502 /no-such-page.html; }}
  location /elsewhere/ {{ proxy_pass http://127.0.0.1:{dead}; error_page 502 https://status.example.com/down; }}
  location /named/ {{ proxy_pass http://127.0.0.1:{dead}; error_page 502 @sorry; }}
  location @sorry {{ return 200 "sorry, try later\n"; }}
  location /by-app/ {{ proxy_pass http://127.0.0.1:{dead}; error_page 502 /app/status/200; }}
  location /small/ {{ proxy_pass http://127.0.0.1:{g}/; error_page 413 /errors/50x.html; }}
  location /get-only/ {{ limit_except GET {{ deny all; }} return 200 "got\n"; error_page 403 /404.html; }}
 }}
}}"#,
            temp = nginx_http_temp(dir.path()),
            www = www.display()
        ),
        nginx_port,
    );
    Setup {
        _dir: dir,
        _apps: apps,
        _nginx: nginx,
        nginx_port,
        portico,
    }
}

#[test]
fn error_pages_replace_answers_like_nginx() {
    let s = setup();
    // (path, the status and body both must give)
    let cases: &[(&str, u16, &str)] = &[
        ("/nope", 404, "custom 404\n"),
        ("/index.html", 200, "home\n"),
        ("/dead/x", 502, "custom 50x\n"),
        // the app's own 404 and 500, replaced because intercept_errors is on
        ("/app/status/404", 404, "custom 404\n"),
        ("/app/status/500", 500, "custom 50x\n"),
        ("/app/status/503", 503, "custom 50x\n"),
        // statuses without a page pass as the app sent them
        ("/app/status/418", 418, "status 418\n"),
        // without intercept_errors the app's answer is the client's
        ("/plain/status/404", 404, "status 404\n"),
        ("/plain/status/500", 500, "status 500\n"),
        // the same through the uwsgi gateway
        ("/status/404", 404, "custom 404\n"),
        ("/status/502", 502, "custom 50x\n"),
        ("/status/201", 201, "status 201\n"),
        // the page of a named route, and a page a proxied route serves
        ("/named/x", 502, "sorry, try later\n"),
        ("/by-app/x", 502, "status 200\n"),
    ];
    for (path, status, body) in cases {
        let ours = curl(&[], &s.portico.url(path));
        let n = curl(&[], &format!("http://127.0.0.1:{}{path}", s.nginx_port));
        assert_eq!(n.status, *status, "nginx {path}");
        assert_eq!(n.text(), *body, "nginx {path}");
        assert_eq!(ours.status, *status, "{path}");
        assert_eq!(ours.text(), *body, "{path}");
    }
}

#[test]
fn a_missing_page_a_redirect_head_and_refusals() {
    let s = setup();
    let nginx_url = |p: &str| format!("http://127.0.0.1:{}{p}", s.nginx_port);
    // the page itself is missing: its own error is answered (recursive_error_pages off)
    let ours = curl(&[], &s.portico.url("/missing-page/x"));
    let n = curl(&[], &nginx_url("/missing-page/x"));
    assert_eq!((ours.status, n.status), (404, 404));
    assert!(ours.text().contains("404 Not Found"), "{}", ours.text());

    // an http(s):// page is a 302 there
    let ours = curl(&[], &s.portico.url("/elsewhere/x"));
    let n = curl(&[], &nginx_url("/elsewhere/x"));
    assert_eq!((ours.status, n.status), (302, 302));
    assert_eq!(
        ours.header("location"),
        Some("https://status.example.com/down")
    );
    assert_eq!(ours.header("location"), n.header("location"));

    // HEAD: the page's headers, the original status, no body
    let ours = curl(&["-I"], &s.portico.url("/nope"));
    let n = curl(&["-I"], &nginx_url("/nope"));
    assert_eq!((ours.status, n.status), (404, 404));
    assert_eq!(ours.header("content-length"), Some("11"));
    assert_eq!(ours.header("content-length"), n.header("content-length"));
    assert!(!ours.text().contains("custom 404"), "no body on HEAD");

    // a conditional or range request does not make the page a 304 or a 206
    let etag = curl(&[], &s.portico.url("/404.html"));
    let etag = etag.header("etag").unwrap().to_string();
    let ours = curl(
        &[
            "-H",
            &format!("If-None-Match: {etag}"),
            "-H",
            "Range: bytes=0-3",
        ],
        &s.portico.url("/nope"),
    );
    assert_eq!(ours.status, 404);
    assert_eq!(ours.text(), "custom 404\n");

    // a body over the route's limit: the 413 has the route's page
    let ours = curl(
        &["--data-binary", "0123456789abcdef"],
        &s.portico.url("/small/echo"),
    );
    let n = curl(
        &["--data-binary", "0123456789abcdef"],
        &nginx_url("/small/echo"),
    );
    assert_eq!((ours.status, n.status), (413, 413));
    assert_eq!(ours.text(), "custom 50x\n");
    assert_eq!(ours.text(), n.text());

    // a POST whose answer is an error page gets the page (fetched with GET)
    let ours = curl(&["--data-binary", "x=1"], &s.portico.url("/nope"));
    let n = curl(&["--data-binary", "x=1"], &nginx_url("/nope"));
    assert_eq!((ours.status, n.status), (404, 404));
    assert_eq!(ours.text(), n.text());

    // a method refused: 405 keeps its Allow header under the page (nginx's
    // limit_except answers 403, so this one has no side-by-side)
    let ours = curl(&["-X", "DELETE"], &s.portico.url("/get-only/"));
    assert_eq!(ours.status, 405);
    assert_eq!(ours.header("allow"), Some("GET, HEAD"));
    assert_eq!(ours.text(), "custom 404\n");
}

#[test]
fn error_page_keys_are_checked() {
    check_errors(
        r#"[[listeners]]
listen = ["127.0.0.1:8080"]
error_pages = { "200" = "/ok.html", "50x" = "/x.html" }
  [[listeners.routes]]
  path = "/"
  return = { status = 200, body = "ok" }
  error_pages = { "404" = "@nowhere", "502" = "oops.html" }
"#,
        &[
            "bad.toml:3",
            "\"200\": error pages are for statuses from 300 to 599",
            "\"50x\"",
            "@nowhere: no route has name",
            "\"oops.html\": an error page is a URI",
        ],
    );
}
