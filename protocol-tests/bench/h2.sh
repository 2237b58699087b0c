#!/usr/bin/env bash
# Benchmark, not a test: HTTP over TLS — HTTP/2 (h2load from nghttp2-client:
# CONNECTIONS connections, 10 streams at once on each), then HTTP/1.1 (wrk, CONNECTIONS
# keep-alive connections) — through nginx, h2o (when installed), HAProxy and Portico
# with the same worker/thread count and the same ECDSA P-256 certificate, same run: a
# small static file (nginx, h2o, Portico: HAProxy serves no files), and proxied to one
# fast backend (an nginx answering "hello" itself) over HTTP/1.1 keep-alive. ROUNDS
# alternating rounds (default 3), the median round per server; prints req/s, answers
# other than 2xx (and wrk's p99) and each server's own CPU time per request, with
# ratios to nginx.
#
#   bash protocol-tests/bench/h2.sh [WORKERS] [DURATION_S] [CONNECTIONS]
#
# Needs: cargo build --release -p portico; protocol-tests/peers/install.sh (nginx,
# haproxy, nghttp2-client); h2o is optional (apt-get install h2o).
set -euo pipefail
cd "$(dirname "$0")/../.."
source protocol-tests/bench/lib.sh
workers=${1:-1}
secs=${2:-6}
conns=${3:-32}
streams=10
command -v h2load >/dev/null || { echo "h2load missing: apt-get install nghttp2-client" >&2; exit 1; }
bench_start
rounds=${ROUNDS:-3}
load="h2load -c$conns -m$streams -D$secs, TLS 1.3"
backend=18881
declare -A port=([nginx]=18882 [haproxy]=18883 [h2o]=18884 [portico]=18885)
mkdir -p "$tmp/backend/logs" "$tmp/nginx/logs" "$tmp/www/static"
printf 'hello from a file\n' > "$tmp/www/static/hello.txt"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/key.pem" \
  -out "$tmp/cert.pem" -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost" -days 2 2>/dev/null
cat "$tmp/cert.pem" "$tmp/key.pem" > "$tmp/both.pem"

cat > "$tmp/backend/nginx.conf" <<CONF
$(nginx_head "$tmp/backend" 1)
events { worker_connections 4096; }
http { $(temp "$tmp/backend") access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$backend; location / { return 200 "hello\n"; } } }
CONF
# nginx 1.22's default ssl_protocols has no TLSv1.3: named, as in bench/tls.sh
cat > "$tmp/nginx/nginx.conf" <<CONF
$(nginx_head "$tmp/nginx" "$workers")
events { worker_connections 4096; }
http { $(temp "$tmp/nginx") access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$backend; keepalive 64; }
  server { listen 127.0.0.1:${port[nginx]} ssl http2;
    ssl_certificate $tmp/cert.pem; ssl_certificate_key $tmp/key.pem; ssl_protocols TLSv1.2 TLSv1.3;
    location /static/ { root $tmp/www; }
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat > "$tmp/haproxy.cfg" <<CONF
global
  fd-hard-limit 20000
  maxconn 9500
  nbthread $workers
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend f
  bind 127.0.0.1:${port[haproxy]} ssl crt $tmp/both.pem alpn h2,http/1.1
  default_backend app
backend app
  http-reuse always
  server s 127.0.0.1:$backend
CONF
cat > "$tmp/portico.toml" <<CONF
$(portico_head "$workers")
[upstreams.app]
servers = [{ addr = "127.0.0.1:$backend" }]
keepalive = 64
[[listeners]]
listen = ["127.0.0.1:${port[portico]}"]
  [listeners.tls]
  cert = "$tmp/cert.pem"
  key = "$tmp/key.pem"
  [[listeners.routes]]
  path = "/static/"
  static = { root = "$tmp/www" }
  [[listeners.routes]]
  path = "/"
  upstream = "app"
CONF

nginx -c "$tmp/backend/nginx.conf" -p "$tmp/backend" &
nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" &
nginx_pid=$!
haproxy -f "$tmp/haproxy.cfg" -db 2>"$tmp/haproxy.log" &
haproxy_pid=$!
"$bin" --config "$tmp/portico.toml" 2>"$tmp/portico.log" &
portico_pid=$!
servers=(nginx haproxy portico)
if command -v h2o >/dev/null; then
  # user root: h2o drops to nobody, who cannot read the 0700 temp dir
  cat > "$tmp/h2o.conf" <<CONF
num-threads: $workers
user: root
listen:
  host: 127.0.0.1
  port: ${port[h2o]}
  ssl:
    certificate-file: $tmp/cert.pem
    key-file: $tmp/key.pem
hosts:
  default:
    paths:
      /static/:
        file.dir: $tmp/www/static
      /:
        proxy.reverse.url: http://127.0.0.1:$backend/
CONF
  h2o -c "$tmp/h2o.conf" >"$tmp/h2o.log" 2>&1 &
  h2o_pid=$!
  servers=(nginx haproxy h2o portico)
else
  echo "(h2o not installed: apt-get install h2o to measure it too)"
fi
wait_http "$backend"
for s in "${servers[@]}"; do
  ok=
  for _ in $(seq 1 200); do
    curl -sk -o /dev/null --http2 "https://127.0.0.1:${port[$s]}/" && ok=1 && break
    sleep 0.05
  done
  [ -n "$ok" ] || { echo "$s does not answer on ${port[$s]}" >&2; exit 1; }
done

# One measured h2load run through `name`: "name req/s - non2xx cpu_us_per_request"
# (h2load gives no percentiles: the p99 column stays "-").
run_h2() { # name url
  local pid_var="${1}_pid" pid t0 t1
  pid=${!pid_var:-}
  h2load -c"$conns" -m"$streams" -D2 "$2" >/dev/null 2>&1   # warm-up
  t0=$(cpu_ticks "$pid")
  h2load -c"$conns" -m"$streams" -D"$secs" "$2" > "$tmp/$1.h2load" 2>&1
  t1=$(cpu_ticks "$pid")
  python3 - "$tmp/$1.h2load" "$1" "$((t1 - t0))" "$(getconf CLK_TCK)" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", t).group(1))
done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", t).group(1))
ok = int(re.search(r"status codes: (\d+) 2xx", t).group(1))
cpu = f"{int(sys.argv[3]) * 1e6 / int(sys.argv[4]) / done:.1f}" if done else "-"
print(f"{sys.argv[2]} {rps:.0f} - {done - ok} {cpu}")
PY
}

statics=(nginx portico); [ -n "${h2o_pid:-}" ] && statics=(nginx h2o portico)
scheme=https
runner=run_h2
measure "h2 over TLS, static file (18 bytes)" /static/hello.txt "${statics[@]}"
measure "h2 over TLS, reverse proxy (backend: nginx return 200)" / "${servers[@]}"

# HTTP/1.1 over TLS: wrk (lib.sh's run) on the same ports, ALPN http/1.1
duration=${secs}s
load=
runner=run
measure "HTTP/1.1 over TLS, static file (18 bytes)" /static/hello.txt "${statics[@]}"
measure "HTTP/1.1 over TLS, reverse proxy (backend: nginx return 200)" / "${servers[@]}"
