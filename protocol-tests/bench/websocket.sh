#!/usr/bin/env bash
# Benchmark, not a test: WebSocket through Portico and through nginx to the same
# `websockets` echo server, in the same run. Prints the proxy's memory per idle socket
# (RSS growth with N idle sockets open) and echo round trips per second.
#
#   bash protocol-tests/bench/websocket.sh [IDLE_SOCKETS] [ECHO_SOCKETS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
source protocol-tests/bench/lib.sh
n=${1:-10000}
c=${2:-50}
secs=${3:-10}
bin=${PORTICO_BIN:-target/release/portico}
unset PORTICO_BIN # Portico reads PORTICO_* as config: it would refuse the unknown key "bin"
py=protocol-tests/.venv/bin/python
[ -x "$bin" ] || cargo build --release -p portico
ulimit -n 65536 2>/dev/null || true
tmp=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
backend=18901; nginx_port=18902; portico_port=18903
mkdir -p "$tmp/nginx/logs"
cat > "$tmp/nginx/nginx.conf" <<CONF
$(nginx_head "$tmp/nginx" 1)
worker_rlimit_nofile 65536;
events { worker_connections 40000; }
http { access_log off; client_body_temp_path $tmp/ct; proxy_temp_path $tmp/pt; fastcgi_temp_path $tmp/ft; uwsgi_temp_path $tmp/ut; scgi_temp_path $tmp/st;
  server { listen 127.0.0.1:$nginx_port;
    location / { proxy_pass http://127.0.0.1:$backend; proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade; proxy_set_header Connection "upgrade";
      proxy_read_timeout 1h; } } }
CONF
cat > "$tmp/portico.toml" <<CONF
$(portico_head 1)
[upstreams.ws]
servers = [{ addr = "127.0.0.1:$backend" }]
[[listeners]]
listen = ["127.0.0.1:$portico_port"]
  [listeners.limits]
  max_connections = 40000
  [[listeners.routes]]
  path = "/"
  upstream = "ws"
CONF
$py protocol-tests/apps/ws_echo.py $backend &
nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" &
"$bin" --config "$tmp/portico.toml" 2>"$tmp/portico.log" &
for port in $backend $nginx_port $portico_port; do
  for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
done
nginx_master=$(pgrep -f "nginx -c $tmp/nginx")
nginx_pids="$nginx_master $(pgrep -P "$nginx_master" | tr '\n' ' ')"
portico_pids=$(pgrep -f "$tmp/portico.toml" | tr '\n' ' ')
ni="nginx $($py protocol-tests/apps/ws_bench.py idle "ws://127.0.0.1:$nginx_port/" "$n" $nginx_pids)"
pi="portico $($py protocol-tests/apps/ws_bench.py idle "ws://127.0.0.1:$portico_port/" "$n" $portico_pids)"
ne=$($py protocol-tests/apps/ws_bench.py echo "ws://127.0.0.1:$nginx_port/" "$c" "$secs")
pe=$($py protocol-tests/apps/ws_bench.py echo "ws://127.0.0.1:$portico_port/" "$c" "$secs")
python3 - "$ni" "$pi" "$ne" "$pe" "$n" "$c" <<'PY'
import sys
ni, pi = sys.argv[1].split(), sys.argv[2].split()
ne, pe, n, c = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
per = lambda r: (int(r[2]) - int(r[1])) * 1024 / n
print(f"{n} idle WebSockets: RSS growth per socket: nginx {per(ni):.0f} B, portico {per(pi):.0f} B "
      f"(ratio {per(pi)/per(ni):.2f}x); RSS with them open: nginx {int(ni[2])//1024} MiB, portico {int(pi[2])//1024} MiB")
print(f"echo round trips/s with {c} sockets: nginx {ne:.0f}, portico {pe:.0f} (ratio {pe/ne:.2f}x)")
PY
