#!/usr/bin/env bash
# Benchmark, not a test: wrk through Portico and through nginx to the same fast backend
# (an nginx answering "hello" itself, so the proxy is the bottleneck), same worker
# count, same run. Prints req/s and p99 for both and the ratios.
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

backend=18801; nginx_port=18802; portico_port=18803
mkdir -p "$tmp/backend/logs" "$tmp/nginx/logs"
temp() { echo "client_body_temp_path $1/ct; proxy_temp_path $1/pt; fastcgi_temp_path $1/ft; uwsgi_temp_path $1/ut; scgi_temp_path $1/st;"; }

cat > "$tmp/backend/nginx.conf" <<CONF
daemon off; user root; worker_processes 1; pid $tmp/backend/pid; error_log $tmp/backend/logs/error.log;
events { worker_connections 4096; }
http { $(temp "$tmp/backend") access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$backend; location / { return 200 "hello\n"; } } }
CONF
cat > "$tmp/nginx/nginx.conf" <<CONF
daemon off; user root; worker_processes $workers; pid $tmp/nginx/pid; error_log $tmp/nginx/logs/error.log;
events { worker_connections 4096; }
http { $(temp "$tmp/nginx") access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$backend; keepalive 64; }
  server { listen 127.0.0.1:$nginx_port;
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
[[listeners]]
listen = ["127.0.0.1:$portico_port"]
  [[listeners.routes]]
  path = "/"
  upstream = "app"
CONF

nginx -c "$tmp/backend/nginx.conf" -p "$tmp/backend" &
nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" &
"$bin" --config "$tmp/portico.toml" 2>"$tmp/portico.log" &
for port in $backend $nginx_port $portico_port; do
  for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.05; done
done

run() { # name port
  wrk -t2 -c"$conns" -d2s "http://127.0.0.1:$2/" >/dev/null   # warm-up
  wrk -t2 -c"$conns" -d"$duration" --latency "http://127.0.0.1:$2/" > "$tmp/$1.wrk"
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
n=$(run nginx $nginx_port); p=$(run portico $portico_port)
echo "wrk -t2 -c$conns -d$duration, proxy workers=$workers, backend: nginx return 200"
printf "%-8s %12s %10s %8s\n" proxy "req/s" "p99 ms" non2xx
for line in "$n" "$p"; do set -- $line; printf "%-8s %12s %10s %8s\n" "$1" "$2" "$3" "$4"; done
python3 - "$n" "$p" <<'PY'
import sys
n, p = sys.argv[1].split(), sys.argv[2].split()
print(f"ratio portico/nginx: req/s {float(p[1])/float(n[1]):.2f}x, p99 {float(p[2])/float(n[2]):.2f}x")
PY
