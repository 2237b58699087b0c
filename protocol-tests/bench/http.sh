#!/usr/bin/env bash
# Benchmark, not a test: wrk through Portico and through nginx to the same fast backend
# (an nginx answering "hello" itself, so the proxy is the bottleneck), same worker
# count, same run; then to three backends (round-robin, one upstream block each); then
# both serving the same small static file. Prints req/s and p99
# for both and the ratios.
#
#   bash protocol-tests/bench/http.sh [WORKERS] [DURATION] [CONNECTIONS]
#
# Needs: cargo build --release -p portico; protocol-tests/peers/install.sh (nginx, wrk).
set -euo pipefail
cd "$(dirname "$0")/../.."
workers=${1:-1}
duration=${2:-10s}
conns=${3:-64}
bin=${PORTICO_BIN:-target/release/portico}
[ -x "$bin" ] || cargo build --release -p portico
tmp=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

backend=18801; nginx_port=18802; portico_port=18803; b2=18804; b3=18805
mkdir -p "$tmp/backend/logs" "$tmp/nginx/logs" "$tmp/www/static"
printf 'hello from a file\n' > "$tmp/www/static/hello.txt"
temp() { echo "client_body_temp_path $1/ct; proxy_temp_path $1/pt; fastcgi_temp_path $1/ft; uwsgi_temp_path $1/ut; scgi_temp_path $1/st;"; }

cat > "$tmp/backend/nginx.conf" <<CONF
daemon off; user root; worker_processes 1; pid $tmp/backend/pid; error_log $tmp/backend/logs/error.log;
events { worker_connections 4096; }
http { $(temp "$tmp/backend") access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$backend; listen 127.0.0.1:$b2; listen 127.0.0.1:$b3;
    location / { return 200 "hello\n"; } } }
CONF
cat > "$tmp/nginx/nginx.conf" <<CONF
daemon off; user root; worker_processes $workers; pid $tmp/nginx/pid; error_log $tmp/nginx/logs/error.log;
events { worker_connections 4096; }
http { $(temp "$tmp/nginx") access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$backend; keepalive 64; }
  upstream three { server 127.0.0.1:$backend; server 127.0.0.1:$b2; server 127.0.0.1:$b3; keepalive 64; }
  server { listen 127.0.0.1:$nginx_port;
    location /static/ { root $tmp/www; }
    location /three/ { proxy_pass http://three; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; }
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } } }
CONF
cat > "$tmp/portico.toml" <<CONF
[runtime]
workers = $workers
[log]
level = "warn"
access_log = "off"
[upstreams.app]
servers = [{ addr = "127.0.0.1:$backend" }]
keepalive = 64
[upstreams.three]
servers = [{ addr = "127.0.0.1:$backend" }, { addr = "127.0.0.1:$b2" }, { addr = "127.0.0.1:$b3" }]
keepalive = 64
[[listeners]]
listen = ["127.0.0.1:$portico_port"]
  [[listeners.routes]]
  path = "/static/"
  static = { root = "$tmp/www" }
  [[listeners.routes]]
  path = "/three/"
  upstream = "three"
  [[listeners.routes]]
  path = "/"
  upstream = "app"
CONF

nginx -c "$tmp/backend/nginx.conf" -p "$tmp/backend" &
nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" &
"$bin" --config "$tmp/portico.toml" 2>"$tmp/portico.log" &
for port in $backend $nginx_port $portico_port; do
  ok=
  for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$port/" >/dev/null && ok=1 && break; sleep 0.05; done
  [ -n "$ok" ] || { echo "nothing answers on port $port (is an old run still there?)" >&2; exit 1; }
done

run() { # name url
  wrk -t2 -c"$conns" -d2s "$2" >/dev/null   # warm-up
  wrk -t2 -c"$conns" -d"$duration" --latency "$2" > "$tmp/$1.wrk"
  python3 - "$tmp/$1.wrk" "$1" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)", t)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
errs = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
print(f"{sys.argv[2]} {rps:.0f} {p99:.3f} {errs.group(1) if errs else 0}")
PY
}
table() { # title nginx-line portico-line
  echo "$1: wrk -t2 -c$conns -d$duration, workers=$workers"
  python3 - "$2" "$3" <<'PY'
import sys
n, p = sys.argv[1].split(), sys.argv[2].split()
print(f"{'server':<8} {'req/s':>12} {'p99 ms':>10} {'non2xx':>8}")
for r in (n, p):
    print(f"{r[0]:<8} {r[1]:>12} {r[2]:>10} {r[3]:>8}")
print(f"ratio portico/nginx: req/s {float(p[1])/float(n[1]):.2f}x, p99 {float(p[2])/float(n[2]):.2f}x")
PY
}
n=$(run nginx "http://127.0.0.1:$nginx_port/"); p=$(run portico "http://127.0.0.1:$portico_port/")
table "reverse proxy (backend: nginx return 200)" "$n" "$p"
n=$(run nginx "http://127.0.0.1:$nginx_port/three/"); p=$(run portico "http://127.0.0.1:$portico_port/three/")
table "reverse proxy, three backends round-robin" "$n" "$p"
n=$(run nginx "http://127.0.0.1:$nginx_port/static/hello.txt"); p=$(run portico "http://127.0.0.1:$portico_port/static/hello.txt")
table "static file (18 bytes)" "$n" "$p"
