#!/usr/bin/env bash
# Benchmark, not a test: gzip'ed JSON answers through each proxy at the same level (3).
# A backend nginx serves a 60 KB JSON file uncompressed; nginx (gzip on, gzip_comp_level
# 3) and Portico (compress = { algorithms = ["gzip"], levels = { gzip = 3 } }) proxy it
# to a wrk client sending Accept-Encoding: gzip. Prints req/s and CPU per request; CPU
# per MB of JSON compressed = CPU µs/req ÷ 0.06.
#
#   bash protocol-tests/bench/compress.sh [WORKERS] [DURATION] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/../.."
source protocol-tests/bench/lib.sh
workers=${1:-1}
duration=${2:-10s}
conns=${3:-32}
bench_start
backend=18831; nginx_port=18832; portico_port=18833
mkdir -p "$tmp/backend/logs" "$tmp/nginx/logs" "$tmp/www"
python3 - "$tmp/www/items.json" <<'PY'
import json, sys
items = [{"id": i, "name": f"item {i}", "price": i % 97, "tags": ["a", "b"]} for i in range(1000)]
open(sys.argv[1], "w").write(json.dumps(items)[:60000])
PY
cat > "$tmp/backend/nginx.conf" <<CONF
$(nginx_head "$tmp/backend" 1)
events { worker_connections 4096; }
http { $(temp "$tmp/backend") access_log off; keepalive_requests 1000000; types { application/json json; }
  server { listen 127.0.0.1:$backend; root $tmp/www; } }
CONF
cat > "$tmp/nginx/nginx.conf" <<CONF
$(nginx_head "$tmp/nginx" "$workers")
events { worker_connections 4096; }
http { $(temp "$tmp/nginx") access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$backend; keepalive 64; }
  server { listen 127.0.0.1:$nginx_port; gzip on; gzip_comp_level 3; gzip_types application/json; gzip_proxied any;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat > "$tmp/portico.toml" <<CONF
$(portico_head "$workers")
[upstreams.app]
servers = [{ addr = "127.0.0.1:$backend" }]
keepalive = 64
[[listeners]]
listen = ["127.0.0.1:$portico_port"]
compress = { algorithms = ["gzip"], levels = { gzip = 3 } }
  [[listeners.routes]]
  path = "/"
  upstream = "app"
CONF
nginx -c "$tmp/backend/nginx.conf" -p "$tmp/backend" &
nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" &
nginx_pid=$!
"$bin" --config "$tmp/portico.toml" 2>"$tmp/portico.log" &
portico_pid=$!
for port in $backend $nginx_port $portico_port; do
  for _ in $(seq 1 200); do curl -s -o /dev/null "http://127.0.0.1:$port/items.json" && break; sleep 0.05; done
done
for port in $nginx_port $portico_port; do
  enc=$(curl -s -o /dev/null -D - -H 'Accept-Encoding: gzip' "http://127.0.0.1:$port/items.json" | tr -d '\r' | awk -F': ' 'tolower($1)=="content-encoding"{print $2}')
  [ "$enc" = gzip ] || { echo "port $port does not gzip (got '$enc')" >&2; exit 1; }
done
cat > "$tmp/gzip.lua" <<'LUA'
wrk.headers["Accept-Encoding"] = "gzip"
LUA
run() { # name url — lib.sh's run with the gzip header
  local pid_var="${1}_pid" pid t0 t1
  pid=${!pid_var:-}
  wrk -t2 -c"$conns" -d2s -s "$tmp/gzip.lua" "$2" >/dev/null
  t0=$(cpu_ticks "$pid")
  wrk -t2 -c"$conns" -d"$duration" -s "$tmp/gzip.lua" --latency "$2" > "$tmp/$1.wrk"
  t1=$(cpu_ticks "$pid")
  python3 - "$tmp/$1.wrk" "$1" "$((t1 - t0))" "$(getconf CLK_TCK)" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)", t)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
n = int(re.search(r"(\d+) requests in", t).group(1))
cpu = f"{int(sys.argv[3]) * 1e6 / int(sys.argv[4]) / n:.1f}"
print(f"{sys.argv[2]} {rps:.0f} {p99:.3f} 0 {cpu}")
PY
}
n=$(run nginx "http://127.0.0.1:$nginx_port/items.json"); p=$(run portico "http://127.0.0.1:$portico_port/items.json")
table "gzip level 3, 60 KB JSON through the proxy" "$n" "$p"
