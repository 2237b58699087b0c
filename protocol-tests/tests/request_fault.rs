//! One request must not take a server out of rotation: failures that are the request's
//! fault do not feed passive health. A 40,000-byte query string to php-fpm (its PARAMS
//! records never split a pair), a var too long for any FastCGI record (414 before
//! anything is sent), and a 5 KB header to uWSGI at its default 4096-byte buffer-size
//! (uWSGI closes without an answer: 502 for that request only).

mod common;

use common::*;

fn states(p: &Portico) -> Vec<(String, u64)> {
    let s = curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json();
    s["upstreams"]["app"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["state"].as_str().unwrap_or("").to_string(),
                s["failures"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn two_server_config(a: u16, b: u16, route: &str, limits: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:{{admin}}\"\n[upstreams.app]\nservers = [{{ addr = \"127.0.0.1:{a}\" }}, {{ addr = \"127.0.0.1:{b}\" }}]\n[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\n{limits}\n  [[listeners.routes]]\n  path = \"/\"\n  upstream = \"app\"\n  {route}\n"
    )
}

#[test]
fn long_query_strings_to_php_fpm() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (free_port(), free_port());
    let _a = php_fpm(dir.path(), Bind::Tcp(a), 2);
    let _b = php_fpm(dir.path(), Bind::Tcp(b), 2);
    let route = format!(
        "via = \"fastcgi\"\n  root = \"{}\"\n  index = \"index.php\"",
        php_root().display()
    );
    let p = Portico::start(&two_server_config(
        a,
        b,
        &route,
        "[listeners.limits]\nmax_header_bytes = 262144",
    ));
    let q = "q".repeat(40_000);
    let r = curl(&[], &p.url(&format!("/env.php?x={q}")));
    assert_eq!(r.status, 200, "php-fpm takes the whole query");
    assert_eq!(
        r.json()["QUERY_STRING"].as_str().map(str::len),
        Some(40_002)
    );
    // a var over one FastCGI record: refused before sending, the servers untouched
    let huge = "q".repeat(70_000);
    assert_eq!(curl(&[], &p.url(&format!("/env.php?x={huge}"))).status, 414);
    for _ in 0..4 {
        assert_eq!(curl(&[], &p.url("/index.php")).status, 200);
    }
    assert_eq!(states(&p), vec![("up".into(), 0), ("up".into(), 0)]);

    // nginx, defaults (large_client_header_buffers 4 8k): 414 for the 40,000-byte query
    let nginx_port = free_port();
    let conf = format!(
        "http {{\n {temp}\n access_log off;\n upstream php {{ server 127.0.0.1:{a}; server 127.0.0.1:{b}; }}\n server {{ listen 127.0.0.1:{nginx_port}; root {root}; location ~ \\.php$ {{ include /etc/nginx/fastcgi_params; fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name; fastcgi_pass php; }} }}\n}}",
        temp = nginx_http_temp(dir.path()),
        root = php_root().display()
    );
    let _nginx = nginx(dir.path(), &conf, nginx_port);
    let n = curl(&[], &format!("http://127.0.0.1:{nginx_port}/env.php?x={q}"));
    assert_eq!(n.status, 414, "nginx refuses the URI itself");
}

#[test]
fn a_header_over_uwsgis_buffer_size_fails_that_request_only() {
    let (a, b) = (free_port(), free_port());
    let _a = uwsgi_with(Bind::Tcp(a), &[], &[]);
    let _b = uwsgi_with(Bind::Tcp(b), &[], &[]);
    let p = Portico::start(&two_server_config(a, b, "via = \"uwsgi\"", ""));
    let big = format!("X-Big: {}", "b".repeat(5_000));
    assert_eq!(curl(&["-H", &big], &p.url("/")).status, 502);
    for _ in 0..4 {
        assert_eq!(curl(&[], &p.url("/")).status, 200);
    }
    assert_eq!(
        states(&p),
        vec![("up".into(), 0), ("up".into(), 0)],
        "{}",
        p.log_text()
    );
    assert!(p.log_text().contains("over its buffer-size"));

    // nginx answers 502 too, and counts it against the server (max_fails = 1)
    let dir = tempfile::tempdir().unwrap();
    let nginx_port = free_port();
    let conf = format!(
        "http {{\n {temp}\n access_log off;\n upstream app {{ server 127.0.0.1:{a}; server 127.0.0.1:{b}; }}\n server {{ listen 127.0.0.1:{nginx_port}; location / {{ include /etc/nginx/uwsgi_params; uwsgi_pass app; }} }}\n}}",
        temp = nginx_http_temp(dir.path()),
    );
    let _nginx = nginx(dir.path(), &conf, nginx_port);
    let n = curl(&["-H", &big], &format!("http://127.0.0.1:{nginx_port}/"));
    assert_eq!(n.status, 502);
}
