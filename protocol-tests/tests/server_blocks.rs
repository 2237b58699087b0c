//! What a real nginx `server {}` block writes, side by side with nginx on the same
//! requests: route precedence (exact, `^~`, regexes in order, longest prefix), `return`
//! redirects with captures, the HTTP → HTTPS redirect plus HSTS in front of gunicorn,
//! methods, and header rules on requests and responses.

mod common;

use common::*;

/// The same eight routes in Portico and nginx, each answering its own name.
const PORTICO_ROUTES: &str = r#"
  [[listeners.routes]]
  path = "/"
  return = { status = 200, body = "r0" }
  [[listeners.routes]]
  path = "/static/"
  prefix_wins = true
  return = { status = 200, body = "r1" }
  [[listeners.routes]]
  regex = '\.php$'
  return = { status = 200, body = "r2" }
  [[listeners.routes]]
  path = "/app/"
  return = { status = 200, body = "r3" }
  [[listeners.routes]]
  exact = "/app/x.php"
  return = { status = 200, body = "r4" }
  [[listeners.routes]]
  regex = '(?i)\.png$'
  return = { status = 200, body = "r5" }
  [[listeners.routes]]
  path = "/app/deep/"
  return = { status = 200, body = "r6" }
  [[listeners.routes]]
  regex = '^/old/([a-z]+)/(\d+)$'
  return = { status = 301, location = "/new/$2/$1" }
"#;

const NGINX_ROUTES: &str = r#"
        location / { return 200 "r0"; }
        location ^~ /static/ { return 200 "r1"; }
        location ~ \.php$ { return 200 "r2"; }
        location /app/ { return 200 "r3"; }
        location = /app/x.php { return 200 "r4"; }
        location ~* \.png$ { return 200 "r5"; }
        location /app/deep/ { return 200 "r6"; }
        location ~ ^/old/([a-z]+)/(\d+)$ { return 301 /new/$2/$1; }
"#;

fn nginx_server(dir: &std::path::Path, server_body: &str) -> (Proc, u16) {
    let port = free_port();
    let conf = format!(
        "http {{\n {temp}\n access_log off;\n server {{\n listen 127.0.0.1:{port};\n {server_body}\n }}\n}}",
        temp = nginx_http_temp(dir)
    );
    (nginx(dir, &conf, port), port)
}

fn portico_server(routes: &str) -> Portico {
    Portico::start(&format!(
        "[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\n{routes}"
    ))
}

#[test]
fn route_precedence_and_captures_match_nginx() {
    let dir = tempfile::tempdir().unwrap();
    let (_nginx, nginx_port) = nginx_server(dir.path(), NGINX_ROUTES);
    let p = portico_server(PORTICO_ROUTES);
    let paths = [
        "/",
        "/other",
        "/static/a.php",
        "/static/a.PNG",
        "/app/x.php",
        "/app/y.php",
        "/app/deep/a.png",
        "/app/deep/a.PNG",
        "/app/deep/a",
        "/app/",
        "/app",
        "/old/news/42",
        "/old/news/x",
        "/x.php?a=1",
    ];
    for path in paths {
        let n = curl(&[], &format!("http://127.0.0.1:{nginx_port}{path}"));
        let ours = curl(&[], &format!("http://127.0.0.1:{}{path}", p.port));
        assert_eq!(ours.status, n.status, "{path}");
        if n.status == 200 {
            assert_eq!(ours.text(), n.text(), "{path}: the same route answers");
        }
        // nginx makes relative redirects absolute with the Host the client sent
        let fix = |l: Option<&str>, port: u16| l.map(|l| l.replace(&format!(":{port}"), ":PORT"));
        assert_eq!(
            fix(ours.header("location"), p.port),
            fix(n.header("location"), nginx_port),
            "{path}"
        );
    }
}

/// Setup (a), the example config/gunicorn-https.toml: plain HTTP redirects to HTTPS,
/// the TLS site in front of gunicorn adds HSTS on every answer (`always`, as
/// `add_header … always`).
#[test]
fn http_to_https_redirect_and_hsts_in_front_of_gunicorn() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let _app = gunicorn_unix(&sock, "a", &[]);
    let site_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(site_dir.path().join("certs")).unwrap();
    write_cert(&site_dir.path().join("certs"), "localhost", &["localhost"]);
    let tls_port = free_port();
    let text = std::fs::read_to_string(root().join("config/gunicorn-https.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:{port}")
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{tls_port}"))
        .replace("/tmp/portico-flask.sock", &sock.display().to_string());
    let p = Portico::start_in(site_dir, &text, "toml");
    let (_nginx, nginx_port) = nginx_server(dir.path(), "return 301 https://$host$request_uri;");
    for path in ["/", "/a/b?c=d%20e"] {
        let ours = curl(&["-H", "Host: Shop.Example:8080"], &p.url(path));
        let n = curl(
            &["-H", "Host: Shop.Example:8080"],
            &format!("http://127.0.0.1:{nginx_port}{path}"),
        );
        assert_eq!((ours.status, n.status), (301, 301));
        assert_eq!(ours.header("location"), n.header("location"), "{path}");
        assert_eq!(
            ours.header("location"),
            Some(format!("https://shop.example{path}").as_str())
        );
    }
    let site = |path: &str| {
        curl(
            &[
                "-k",
                "--resolve",
                &format!("localhost:{tls_port}:127.0.0.1"),
            ],
            &format!("https://localhost:{tls_port}{path}"),
        )
    };
    for (path, status) in [("/", 200), ("/status/404", 404), ("/status/500", 500)] {
        let r = site(path);
        assert_eq!(r.status, status);
        assert_eq!(
            r.header("strict-transport-security"),
            Some("max-age=63072000"),
            "{path}: always"
        );
    }
}

/// Header rules: set and remove towards the upstream, remove upstream headers
/// (Server, X-Powered-By) and set on the response with nginx's status rule.
#[test]
fn request_and_response_header_rules() {
    fn answer(r: &Recorded) -> Vec<u8> {
        let status = if r.target().starts_with("/missing") {
            "404 Not Found"
        } else {
            "200 OK"
        };
        format!("HTTP/1.1 {status}\r\nContent-Length: 3\r\nServer: gunicorn\r\nX-Powered-By: PHP/8.2\r\nX-Keep: 1\r\n\r\nok\n").into_bytes()
    }
    let backend = Recorder::start(answer);
    let p = Portico::start(&format!(
        r#"
[upstreams.app]
servers = [{{ addr = "{}" }}]
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [[listeners.routes]]
  path = "/"
  upstream = "app"
  request_headers = {{ set = {{ "X-Real-IP" = "$remote_addr", "X-Route" = "$uri?$args" }}, remove = ["X-Debug"] }}
  response_headers = {{ set = {{ "X-Frame-Options" = "DENY" }}, remove = ["Server", "X-Powered-By"] }}
"#,
        backend.addr()
    ));
    let r = curl(&["-H", "X-Debug: secret"], &p.url("/page?x=1"));
    assert_eq!(r.status, 200);
    let got = &backend.received("/page")[0];
    assert_eq!(got.header("x-real-ip"), vec!["127.0.0.1"]);
    assert_eq!(got.header("x-route"), vec!["/page?x=1"]);
    assert!(got.header("x-debug").is_empty(), "{got:?}");
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("x-keep"), Some("1"));
    assert_eq!(r.header("server"), None, "{:?}", r.headers_named("server"));
    assert_eq!(r.header("x-powered-by"), None);
    // without `always`: a 404 gets the removals but not the set header (nginx's rule)
    let missing = curl(&[], &p.url("/missing"));
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("x-frame-options"), None);
    assert_eq!(missing.header("x-powered-by"), None);

    // nginx: add_header without always skips the 404 as well
    let dir = tempfile::tempdir().unwrap();
    let nginx_backend = Recorder::start(answer);
    let (_nginx, port) = nginx_server(
        dir.path(),
        &format!(
            "location / {{ proxy_pass http://{}; proxy_hide_header X-Powered-By; add_header X-Frame-Options DENY; }}",
            nginx_backend.addr()
        ),
    );
    let n = curl(&[], &format!("http://127.0.0.1:{port}/missing"));
    assert_eq!((n.status, n.header("x-frame-options")), (404, None));
    let n = curl(&[], &format!("http://127.0.0.1:{port}/page"));
    assert_eq!(n.header("x-frame-options"), Some("DENY"));
}

#[test]
fn methods_outside_the_list_are_405_with_allow() {
    let p = portico_server(
        r#"
  [[listeners.routes]]
  path = "/"
  methods = ["GET", "POST"]
  return = { status = 200, body = "ok" }
"#,
    );
    assert_eq!(curl(&[], &p.url("/")).status, 200);
    assert_eq!(curl(&["-I"], &p.url("/")).status, 200, "GET allows HEAD");
    assert_eq!(curl(&["-X", "POST"], &p.url("/")).status, 200);
    let r = curl(&["-X", "DELETE"], &p.url("/"));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST, HEAD"));
}

/// Setup (c), the example config/php-front-controller.toml, beside nginx with the same
/// server block: pretty URLs reach the front controller, directories their index.php,
/// static files are served, and no .php file is ever sent as source whatever the URL.
#[test]
fn php_front_controller_with_pretty_urls_like_nginx() {
    let dir = tempfile::tempdir().unwrap();
    let root = apps_dir().join("php-front");
    let php_port = free_port();
    let _php = php_fpm(dir.path(), Bind::Tcp(php_port), 2);
    let text = std::fs::read_to_string(common::root().join("config/php-front-controller.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:{port}")
        .replace("127.0.0.1:9000", &format!("127.0.0.1:{php_port}"))
        .replace("/srv/app", &root.display().to_string());
    let p = Portico::start(&text);
    let (_nginx, nginx_port) = nginx_server(
        dir.path(),
        &format!(
            r#"root {root}; index index.php index.html;
        location / {{ try_files $uri $uri/ /index.php?$args; }}
        location ~ \.php$ {{ include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
            fastcgi_pass 127.0.0.1:{php_port}; }}"#,
            root = root.display()
        ),
    );
    for path in [
        "/",
        "/hello-world/",
        "/2026/12/a-post?p=1&q=two",
        "/style.css",
        "/wp-admin/",
        "/wp-admin",
        "/wp-content/plugins/p/ajax.php",
        "/wp-config.php",
        "/wp-config.php.",
        "/wp-config.php/",
        "/wp-config%2ephp",
        "/wp-config.ph%70",
        "/index.php/extra/path",
        "/wp-content/plugins/p/ajax.php/x",
        "/WP-CONFIG.PHP",
        "/wp-content/plugins/p/",
    ] {
        let ours = curl(&[], &p.url(path));
        let n = curl(&[], &format!("http://127.0.0.1:{nginx_port}{path}"));
        assert!(
            !ours.text().contains("never-shown"),
            "{path}: PHP source served: {}",
            ours.text()
        );
        assert!(!ours.text().contains("<?php"), "{path}: PHP source served");
        assert_eq!(
            ours.status,
            n.status,
            "{path}: {} vs nginx {}",
            ours.text(),
            n.text()
        );
        if n.status == 200 {
            assert_eq!(ours.text(), n.text(), "{path}");
        }
    }
    assert_eq!(
        curl(&[], &p.url("/style.css")).text(),
        "body { color: teal; }\n"
    );
    assert_eq!(curl(&[], &p.url("/wp-admin/")).text(), "admin index\n");
}

/// Rewrites beside nginx: `last` (routes matched again), `permanent`, `redirect` to
/// another host, a chain that sets the query, and a loop that stops after 10 steps.
#[test]
fn rewrites_like_nginx() {
    let dir = tempfile::tempdir().unwrap();
    let (_nginx, nginx_port) = nginx_server(
        dir.path(),
        r#"location /old/ { rewrite ^/old/(.*)$ /new/$1 last; }
        location /new/ { return 200 "new:$uri:$args"; }
        location /perm/ { rewrite ^/perm/(.*)$ /new/$1 permanent; }
        location /away/ { rewrite ^/away/(.*)$ https://example.com/$1 redirect; }
        location /chain/ { rewrite ^/chain/a$ /chain/b; rewrite ^/chain/b$ /new/b?x=1 last; }
        location /plain/ { rewrite ^/plain/(.*)$ /new/$1? last; }
        location /loop/ { rewrite ^/loop/(.*)$ /loop/$1 last; }"#,
    );
    let p = portico_server(
        r#"
  [[listeners.routes]]
  path = "/old/"
  rewrite = [{ from = '^/old/(.*)$', to = "/new/$1", flag = "last" }]
  [[listeners.routes]]
  path = "/new/"
  return = { status = 200, body = "new:$uri:$args" }
  [[listeners.routes]]
  path = "/perm/"
  rewrite = [{ from = '^/perm/(.*)$', to = "/new/$1", flag = "permanent" }]
  [[listeners.routes]]
  path = "/away/"
  rewrite = [{ from = '^/away/(.*)$', to = "https://example.com/$1", flag = "redirect" }]
  [[listeners.routes]]
  path = "/chain/"
  rewrite = [{ from = '^/chain/a$', to = "/chain/b" }, { from = '^/chain/b$', to = "/new/b?x=1", flag = "last" }]
  [[listeners.routes]]
  path = "/plain/"
  rewrite = [{ from = '^/plain/(.*)$', to = "/new/$1?", flag = "last" }]
  [[listeners.routes]]
  path = "/loop/"
  rewrite = [{ from = '^/loop/(.*)$', to = "/loop/$1", flag = "last" }]
"#,
    );
    for path in [
        "/old/a/b?k=v",
        "/perm/x?k=v",
        "/away/y?k=v",
        "/chain/a?k=v",
        "/plain/z?k=v",
        "/loop/x",
    ] {
        let ours = curl(&[], &p.url(path));
        let n = curl(&[], &format!("http://127.0.0.1:{nginx_port}{path}"));
        assert_eq!(ours.status, n.status, "{path}");
        if n.status == 200 {
            assert_eq!(ours.text(), n.text(), "{path}");
        }
        let fix = |l: Option<&str>, port: u16| l.map(|l| l.replace(&format!(":{port}"), ":PORT"));
        assert_eq!(
            fix(ours.header("location"), p.port),
            fix(n.header("location"), nginx_port),
            "{path}"
        );
    }
    assert!(
        p.log_text().contains("internal redirects"),
        "the loop is logged"
    );
}

/// `upstream_path`: the matched prefix replaced, as `proxy_pass http://up/`.
#[test]
fn upstream_path_replaces_the_prefix() {
    let backend = Recorder::start(ok_answer);
    let p = Portico::start(&format!(
        r#"
[upstreams.app]
servers = [{{ addr = "{}" }}]
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [[listeners.routes]]
  path = "/api/"
  upstream = "app"
  upstream_path = "/"
"#,
        backend.addr()
    ));
    assert_eq!(curl(&[], &p.url("/api/v1/items?page=2")).status, 200);
    assert_eq!(backend.received("/v1/")[0].target(), "/v1/items?page=2");
}

/// Setup (b), the example config/django.toml, beside nginx: /static/ (root) and /media/
/// (alias) from disk with expires, the rest to the app under gunicorn.
#[test]
fn django_static_and_media_with_expires_like_nginx() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let _app = gunicorn_unix(&sock, "django", &[]);
    let site = dir.path().join("django");
    let media = dir.path().join("django-media");
    std::fs::create_dir_all(site.join("static/css")).unwrap();
    std::fs::create_dir_all(media.join("uploads")).unwrap();
    std::fs::write(site.join("static/css/site.css"), "h1 { color: teal; }\n").unwrap();
    std::fs::write(media.join("uploads/a.txt"), "an upload\n").unwrap();
    let text = std::fs::read_to_string(common::root().join("config/django.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:{port}")
        .replace("/tmp/portico-django.sock", &sock.display().to_string())
        .replace("/srv/django-media/", &format!("{}/", media.display()))
        .replace("/srv/django", &site.display().to_string());
    let p = Portico::start(&text);
    let (_nginx, nginx_port) = nginx_server(
        dir.path(),
        &format!(
            "location /static/ {{ root {site}; expires 30d; }}\n location /media/ {{ alias {media}/; expires 7d; }}\n location / {{ proxy_pass http://unix:{sock}:; }}",
            site = site.display(),
            media = media.display(),
            sock = sock.display()
        ),
    );
    for (path, max_age) in [
        ("/static/css/site.css", Some("max-age=2592000")),
        ("/media/uploads/a.txt", Some("max-age=604800")),
        ("/media/uploads/missing.txt", None),
        ("/static/../media/uploads/a.txt", Some("max-age=604800")),
        ("/", None),
    ] {
        let ours = curl(&[], &p.url(path));
        let n = curl(
            &["--path-as-is"],
            &format!("http://127.0.0.1:{nginx_port}{path}"),
        );
        assert_eq!(ours.status, n.status, "{path}");
        if ours.status == 200 {
            assert_eq!(ours.text(), n.text(), "{path}");
            assert_eq!(ours.header("cache-control"), max_age, "{path}");
            assert_eq!(
                ours.header("cache-control"),
                n.header("cache-control"),
                "{path}"
            );
            assert_eq!(
                ours.header("expires").is_some(),
                max_age.is_some(),
                "{path}"
            );
        }
    }
    // compress = {}: a stylesheet of 20 bytes stays as it is (under min_bytes), a larger
    // app answer goes gzip'ed to a client that asks
    let css = curl(
        &["-H", "Accept-Encoding: gzip"],
        &p.url("/static/css/site.css"),
    );
    assert_eq!(css.header("content-encoding"), None, "under min_bytes");
    let json = curl(
        &["-H", "Accept-Encoding: gzip", "-o", "/dev/null"],
        &p.url("/json?n=100"),
    );
    assert_eq!(json.header("content-encoding"), Some("gzip"));
}

/// `real_ip` beside nginx's realip module: behind trusted proxies the client is read
/// from X-Forwarded-For, from the right past every trusted hop; $remote_addr (here sent
/// as X-Real-IP), X-Forwarded-For and the access log see it.
#[test]
fn real_ip_from_trusted_proxies_like_nginx() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Recorder::start(ok_answer);
    let nginx_backend = Recorder::start(ok_answer);
    let config = |recursive: bool, from: &str| {
        format!(
            r#"
[log]
access_log = "{{dir}}/access.log"
[upstreams.app]
servers = [{{ addr = "{}" }}]
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [listeners.real_ip]
  from = [{from}]
  header = "X-Forwarded-For"
  recursive = {recursive}
  [[listeners.routes]]
  path = "/"
  upstream = "app"
  request_headers = {{ set = {{ "X-Real-IP" = "$remote_addr" }} }}
"#,
            backend.addr()
        )
    };
    let (_nginx, nginx_port) = nginx_server(
        dir.path(),
        &format!(
            "set_real_ip_from 127.0.0.1; set_real_ip_from 10.0.0.0/8; real_ip_header X-Forwarded-For; real_ip_recursive on;\n location / {{ proxy_pass http://{}; proxy_set_header X-Real-IP $remote_addr; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }}",
            nginx_backend.addr()
        ),
    );
    let xff = "X-Forwarded-For: 203.0.113.7, 10.0.0.2";
    let p = Portico::start(&config(true, r#""127.0.0.1/32", "10.0.0.0/8""#));
    assert_eq!(curl(&["-H", xff], &p.url("/r")).status, 200);
    assert_eq!(
        curl(&["-H", xff], &format!("http://127.0.0.1:{nginx_port}/r")).status,
        200
    );
    let ours = &backend.received("/r")[0];
    let theirs = &nginx_backend.received("/r")[0];
    assert_eq!(ours.header("x-real-ip"), vec!["203.0.113.7"]);
    assert_eq!(ours.header("x-real-ip"), theirs.header("x-real-ip"));
    assert_eq!(
        ours.header("x-forwarded-for"),
        theirs.header("x-forwarded-for")
    );
    let log = wait_file_contains(&p.dir.path().join("access.log"), "/r");
    assert!(log.starts_with("203.0.113.7 "), "{log}");

    // not recursive: the last address; an untrusted peer: its own address
    let p2 = Portico::start(&config(false, r#""127.0.0.1/32", "10.0.0.0/8""#));
    curl(&["-H", xff], &p2.url("/last"));
    assert_eq!(
        backend.received("/last")[0].header("x-real-ip"),
        vec!["10.0.0.2"]
    );
    let p3 = Portico::start(&config(true, r#""192.0.2.0/24""#));
    curl(&["-H", xff], &p3.url("/untrusted"));
    assert_eq!(
        backend.received("/untrusted")[0].header("x-real-ip"),
        vec!["127.0.0.1"]
    );
}

/// `charset` adds `; charset=…` to text and JSON answers that name none (nginx's
/// `charset` for its text types), and leaves others and named charsets alone.
#[test]
fn charset_is_added_to_text_answers_without_one() {
    fn answer(r: &Recorded) -> Vec<u8> {
        let ct = match r.target() {
            "/json" => "application/json",
            "/named" => "text/html; charset=iso-8859-1",
            "/png" => "image/png",
            _ => "text/plain",
        };
        format!("HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: 3\r\n\r\nok\n")
            .into_bytes()
    }
    let backend = Recorder::start(answer);
    let p = Portico::start(&format!(
        "[upstreams.app]\nservers = [{{ addr = \"{}\" }}]\n[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\n  [[listeners.routes]]\n  path = \"/\"\n  upstream = \"app\"\n  charset = \"utf-8\"\n",
        backend.addr()
    ));
    let ct = |path: &str| {
        curl(&[], &p.url(path))
            .header("content-type")
            .map(str::to_string)
    };
    assert_eq!(ct("/text").as_deref(), Some("text/plain; charset=utf-8"));
    assert_eq!(
        ct("/json").as_deref(),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        ct("/named").as_deref(),
        Some("text/html; charset=iso-8859-1")
    );
    assert_eq!(ct("/png").as_deref(), Some("image/png"));
}

/// `internal = true` and X-Accel-Redirect beside nginx: the app answers a download with
/// `X-Accel-Redirect: /protected/…`, the file comes from an internal static route that
/// clients cannot reach directly.
#[test]
fn x_accel_redirect_to_an_internal_route_like_nginx() {
    fn answer(r: &Recorded) -> Vec<u8> {
        if r.target().starts_with("/download") {
            b"HTTP/1.1 200 OK\r\nX-Accel-Redirect: /protected/report.txt\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename=r.csv\r\nContent-Length: 7\r\n\r\nignored".to_vec()
        } else if r.target().starts_with("/limited") {
            b"HTTP/1.1 200 OK\r\nX-Accel-Buffering: no\r\nX-Accel-Limit-Rate: 100000\r\nX-Accel-Expires: 60\r\nX-Accel-Charset: koi8-r\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nstream".to_vec()
        } else if r.target().starts_with("/gone") {
            b"HTTP/1.1 200 OK\r\nX-Accel-Redirect: /protected/missing.txt\r\nContent-Length: 0\r\n\r\n".to_vec()
        } else if r.target().starts_with("/nowhere") {
            b"HTTP/1.1 200 OK\r\nX-Accel-Redirect: /elsewhere/x\r\nContent-Length: 0\r\n\r\n"
                .to_vec()
        } else {
            ok_answer(r)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir_all(files.join("protected")).unwrap();
    std::fs::write(files.join("protected/report.txt"), "quarterly figures\n").unwrap();
    let backend = Recorder::start(answer);
    let nginx_backend = Recorder::start(answer);
    let p = Portico::start(&format!(
        r#"
[upstreams.app]
servers = [{{ addr = "{}" }}]
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [[listeners.routes]]
  path = "/protected/"
  internal = true
  static = {{ root = "{}" }}
  [[listeners.routes]]
  path = "/"
  upstream = "app"
"#,
        backend.addr(),
        files.display()
    ));
    let (_nginx, nginx_port) = nginx_server(
        dir.path(),
        &format!(
            "location /protected/ {{ internal; root {}; }}\n location / {{ proxy_pass http://{}; }}",
            files.display(),
            nginx_backend.addr()
        ),
    );
    for path in [
        "/download",
        "/protected/report.txt",
        "/gone",
        "/nowhere",
        "/limited",
    ] {
        let ours = curl(&[], &p.url(path));
        let n = curl(&[], &format!("http://127.0.0.1:{nginx_port}{path}"));
        assert_eq!(ours.status, n.status, "{path}");
        if n.status == 200 {
            assert_eq!(ours.text(), n.text(), "{path}");
        }
        for h in ["content-type", "content-disposition"] {
            assert_eq!(ours.header(h), n.header(h), "{path} {h}");
        }
        // X-Accel-* are for the proxy, never passed on
        assert!(
            !ours
                .headers
                .iter()
                .any(|(k, _)| k.to_ascii_lowercase().starts_with("x-accel")),
            "{path}: {:?}",
            ours.headers
        );
    }
    assert_eq!(curl(&[], &p.url("/limited")).text(), "stream");
    let download = curl(&[], &p.url("/download"));
    assert_eq!(download.text(), "quarterly figures\n");
    // the app's type and disposition are kept over the file's (nginx)
    assert_eq!(download.header("content-type"), Some("text/csv"));
    assert_eq!(curl(&[], &p.url("/protected/report.txt")).status, 404);
    assert_eq!(curl(&[], &p.url("/gone")).status, 404);
    // a target that a proxied route takes is fetched from there with GET
    assert_eq!(curl(&["-d", "x"], &p.url("/nowhere")).text(), "ok\n");
    let fetched = backend.received("/elsewhere/x");
    assert_eq!(fetched.len(), 2);
    assert!(
        fetched[1].head.starts_with("GET /elsewhere/x HTTP/1.1"),
        "{}",
        fetched[1].head
    );
}

/// An app that redirects to its own address (`http://127.0.0.1:PORT/…`, where it is
/// bound) sends the client back through Portico: nginx's `proxy_redirect default`.
#[test]
fn redirects_naming_the_upstream_point_back_like_nginx() {
    fn answer(r: &Recorded) -> Vec<u8> {
        format!(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{p}/landing?x=1\r\nRefresh: 5; url=http://127.0.0.1:{p}/later\r\nContent-Length: 0\r\n\r\n",
            p = r.port
        )
        .into_bytes()
    }
    let dir = tempfile::tempdir().unwrap();
    let backend = Recorder::start(answer);
    let nginx_backend = Recorder::start(answer);
    let p = Portico::start(&format!(
        "[upstreams.app]\nservers = [{{ addr = \"{}\" }}]\n[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\n  [[listeners.routes]]\n  path = \"/app/\"\n  upstream = \"app\"\n  upstream_path = \"/\"\n",
        backend.addr()
    ));
    let (_nginx, nginx_port) = nginx_server(
        dir.path(),
        &format!(
            "location /app/ {{ proxy_pass http://{}/; }}",
            nginx_backend.addr()
        ),
    );
    let ours = curl(&[], &p.url("/app/go"));
    let n = curl(&[], &format!("http://127.0.0.1:{nginx_port}/app/go"));
    assert_eq!(ours.status, 302);
    assert_eq!(
        ours.header("location"),
        Some(format!("http://127.0.0.1:{}/app/landing?x=1", p.port).as_str())
    );
    let fix = |l: Option<&str>, port: u16| l.map(|l| l.replace(&format!(":{port}"), ":PORT"));
    assert_eq!(
        fix(ours.header("location"), p.port),
        fix(n.header("location"), nginx_port)
    );
    assert_eq!(ours.header("refresh"), Some("5; url=/app/later"));
    assert_eq!(ours.header("refresh"), n.header("refresh"));
}

/// A `name`d route as a try_files fallback (`@app`), as nginx's named locations: a path
/// that is no file goes to the app route, a file is served.
#[test]
fn try_files_falls_back_to_a_named_route() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("robots.txt"), "User-agent: *\n").unwrap();
    let backend = Recorder::start(ok_answer);
    let p = Portico::start(&format!(
        r#"
[upstreams.app]
servers = [{{ addr = "{}" }}]
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [[listeners.routes]]
  path = "/"
  static = {{ root = "{}" }}
  try_files = ["$uri", "@app"]
  [[listeners.routes]]
  name = "app"
  upstream = "app"
"#,
        backend.addr(),
        dir.path().display()
    ));
    assert_eq!(curl(&[], &p.url("/robots.txt")).text(), "User-agent: *\n");
    assert_eq!(curl(&[], &p.url("/dashboard?x=1")).text(), "ok\n");
    assert_eq!(backend.received("/dashboard")[0].target(), "/dashboard?x=1");
    assert!(backend.received("/robots").is_empty());
}

/// cookie_path, cookie_domain and cookie_flags beside nginx's proxy_cookie_* on the
/// cookies a Flask app under gunicorn sets: the same Set-Cookie headers, byte for byte.
#[test]
fn cookie_rewriting_like_nginx() {
    let dir = tempfile::tempdir().unwrap();
    let app = free_port();
    let _gunicorn = gunicorn_tcp(app, "cookies", &[]);
    let p = Portico::start(&format!(
        r#"
[upstreams.app]
servers = [{{ addr = "127.0.0.1:{app}" }}]
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [[listeners.routes]]
  path = "/"
  upstream = "app"
  cookie_path = {{ "/app/" = "/" }}
  cookie_domain = {{ "localhost" = "example.org" }}
  cookie_flags = {{ "sessionid" = ["secure", "samesite=lax"], "theme" = ["nosamesite"] }}
"#
    ));
    let (_nginx, nginx_port) = nginx_server(
        dir.path(),
        &format!(
            "location / {{ proxy_pass http://127.0.0.1:{app}; proxy_cookie_path /app/ /; proxy_cookie_domain localhost example.org; proxy_cookie_flags sessionid secure samesite=lax; proxy_cookie_flags theme nosamesite; }}"
        ),
    );
    let ours = curl(&[], &p.url("/app/login"));
    let n = curl(&[], &format!("http://127.0.0.1:{nginx_port}/app/login"));
    assert_eq!(
        ours.headers_named("set-cookie"),
        vec![
            "sessionid=abc; Path=/; HttpOnly; Secure; SameSite=Lax",
            "csrftoken=x1; Domain=example.org; Path=/",
            "theme=dark; Path=/prefs",
        ]
    );
    assert_eq!(
        ours.headers_named("set-cookie"),
        n.headers_named("set-cookie")
    );
    // other answers' cookies are left as the app wrote them
    let plain = curl(&[], &p.url("/cookies"));
    assert_eq!(
        plain.headers_named("set-cookie"),
        vec!["a=1; Path=/", "b=2; Path=/"]
    );
}
