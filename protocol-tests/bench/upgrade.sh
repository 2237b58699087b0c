#!/usr/bin/env bash
# Benchmark, not a test: failed requests across binary upgrades under load, Portico and
# nginx side by side in one run. For each proxy (to the same nginx backend answering
# "hello"): wrk with kept-alive connections and wrk with a new connection per request
# (`Connection: close`) run for DURATION while the proxy's binary is upgraded UPGRADES
# times, 3 s apart — Portico by `portico upgrade`, nginx by its own sequence (USR2 to
# the master, then WINCH and QUIT to the old one once the new master runs). Prints
# requests, socket errors (connect/read/write/timeout) and non-2xx answers per proxy.
#
#   bash protocol-tests/bench/upgrade.sh [DURATION_S] [UPGRADES] [WORKERS]
#
# A read error in wrk's keep-alive run is a kept-alive connection the draining process
# closed while wrk was sending its next request (wrk does not retry, browsers and most
# HTTP clients do); a connect error is a refused connection — the failure that matters.
#
# Needs: cargo build --release -p portico; protocol-tests/peers/install.sh (nginx, wrk).
set -euo pipefail
cd "$(dirname "$0")/../.."
source protocol-tests/bench/lib.sh
duration=${1:-16}
upgrades=${2:-3}
workers=${3:-1}
bench_start
bin=$(realpath "$bin")

backend=18851; nginx_port=18852; portico_port=18853
mkdir -p "$tmp/backend/logs" "$tmp/nginx/logs"
cat > "$tmp/backend/nginx.conf" <<CONF
$(nginx_head "$tmp/backend" 1)
events { worker_connections 4096; }
http { $(temp "$tmp/backend") access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$backend; location / { return 200 "hello\n"; } } }
CONF
# the nginx under test runs as a daemon with a pid file: its binary upgrade needs a master
# that can fork a new master (pid file renamed to .oldbin meanwhile)
cat > "$tmp/nginx/nginx.conf" <<CONF
user root; worker_processes $workers; pid $tmp/nginx/nginx.pid; error_log $tmp/nginx/logs/error.log;
events { worker_connections 4096; }
http { $(temp "$tmp/nginx") access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$backend; keepalive 64; }
  server { listen 127.0.0.1:$nginx_port;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat > "$tmp/portico.toml" <<CONF
[runtime]
workers = $workers
pid_file = "$tmp/portico.pid"
shutdown_timeout = "10s"
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
# by its full path: USR2 re-executes argv[0], and execve does not search PATH
/usr/sbin/nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx"   # daemonizes; stopped through its pid file
"$bin" run --config "$tmp/portico.toml" 2>"$tmp/portico.log" &
stop_by_pid_files() {
  for f in "$tmp/nginx/nginx.pid" "$tmp/nginx/nginx.pid.oldbin" "$tmp/portico.pid"; do
    [ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null || true
  done
}
trap 'stop_by_pid_files; kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"' EXIT
wait_http "$backend" "$nginx_port" "$portico_port"

# Waits (10 s) until process $1 is gone.
wait_gone() { for _ in $(seq 1 400); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.025; done; echo "process $1 still runs" >&2; }

upgrade_nginx() {
  local old new
  old=$(cat "$tmp/nginx/nginx.pid")
  kill -USR2 "$old"
  for _ in $(seq 1 400); do
    [ -f "$tmp/nginx/nginx.pid.oldbin" ] && [ -f "$tmp/nginx/nginx.pid" ] && break
    sleep 0.025
  done
  new=$(cat "$tmp/nginx/nginx.pid")
  [ "$new" != "$old" ] || { echo "nginx: no new master after USR2" >&2; return 1; }
  kill -WINCH "$old"; kill -QUIT "$old"
  wait_gone "$old"
}
upgrade_portico() { "$bin" upgrade --config "$tmp/portico.toml" >/dev/null; }

measure() { # name port
  local name=$1 port=$2
  wrk -t1 -c32 -d"${duration}s" "http://127.0.0.1:$port/" > "$tmp/$name.ka" &
  local ka=$!
  wrk -t1 -c8 -d"${duration}s" -H "Connection: close" "http://127.0.0.1:$port/" > "$tmp/$name.new" &
  local fresh=$!
  sleep 2
  for _ in $(seq 1 "$upgrades"); do
    "upgrade_$name"
    sleep 3
  done
  wait $ka $fresh
  python3 - "$name" "$tmp/$name.ka" "$tmp/$name.new" <<'PY'
import re, sys
def parse(path):
    t = open(path).read()
    n = int(re.search(r"(\d+) requests in", t).group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    errs = tuple(int(x) for x in m.groups()) if m else (0, 0, 0, 0)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    return n, errs, int(bad.group(1)) if bad else 0
for kind, path in (("keep-alive", sys.argv[2]), ("new-conn", sys.argv[3])):
    n, (c, r, w, t), bad = parse(path)
    print(f"{sys.argv[1]:<8} {kind:<11} {n:>10} {c:>8} {r:>6} {w:>6} {t:>8} {bad:>7}")
PY
}

echo "binary upgrades under load: ${upgrades} upgrades in ${duration}s, workers=$workers"
printf '%-8s %-11s %10s %8s %6s %6s %8s %7s\n' proxy load requests connect read write timeout non2xx
measure nginx "$nginx_port"
measure portico "$portico_port"
