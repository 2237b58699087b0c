#!/usr/bin/env bash
# Benchmark, not a test: static files through nginx, h2o (when installed) and Portico,
# same worker/thread count, same run: a 1 KiB file (req/s) and a 10 MiB file (MB/s).
# nginx runs with `sendfile on; tcp_nopush on`, as Debian's nginx.conf ships it;
# Portico with its default (files over 64 KiB copied to plain sockets through a
# per-worker buffer). The 10 MiB file is also measured through `nginx_cp` (nginx's
# compiled-in default, `sendfile off`) and `portico_sf` (`sendfile = true`), so each
# way of sending has its peer. ROUNDS alternating rounds (default 3), the median round
# per server. Prints req/s, p99 and each server's CPU time per request, with ratios to
# nginx; for the big file also MB/s.
#
#   bash protocol-tests/bench/static.sh [WORKERS] [DURATION] [CONNECTIONS] [BIG_CONNECTIONS]
#
# Needs: cargo build --release -p portico; nginx, wrk; h2o is optional.
set -euo pipefail
cd "$(dirname "$0")/../.."
source protocol-tests/bench/lib.sh
workers=${1:-1}
duration=${2:-8s}
conns=${3:-32}
big_conns=${4:-8}
bench_start
rounds=${ROUNDS:-3}
nginx_port=18871; portico_port=18872; h2o_port=18873; nginx_cp_port=18874; portico_sf_port=18875
mkdir -p "$tmp/nginx/logs" "$tmp/nginx_cp/logs" "$tmp/www"
head -c 1024 /dev/urandom | base64 -w0 | head -c 1024 > "$tmp/www/1k.txt"
head -c $((10 * 1024 * 1024)) /dev/urandom > "$tmp/www/10m.bin"
cat > "$tmp/nginx/nginx.conf" <<CONF
$(nginx_head "$tmp/nginx" "$workers")
events { worker_connections 4096; }
http { $(temp "$tmp/nginx") access_log off; keepalive_requests 1000000; sendfile on; tcp_nopush on;
  server { listen 127.0.0.1:$nginx_port; root $tmp/www; } }
CONF
cat > "$tmp/nginx_cp/nginx.conf" <<CONF
$(nginx_head "$tmp/nginx_cp" "$workers")
events { worker_connections 4096; }
http { $(temp "$tmp/nginx_cp") access_log off; keepalive_requests 1000000; sendfile off;
  server { listen 127.0.0.1:$nginx_cp_port; root $tmp/www; } }
CONF
cat > "$tmp/portico.toml" <<CONF
$(portico_head "$workers")
[[listeners]]
listen = ["127.0.0.1:$portico_port"]
  [[listeners.routes]]
  path = "/"
  static = { root = "$tmp/www" }
[[listeners]]
listen = ["127.0.0.1:$portico_sf_port"]
  [[listeners.routes]]
  path = "/"
  static = { root = "$tmp/www", sendfile = true }
CONF
nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" &
nginx_pid=$!
nginx -c "$tmp/nginx_cp/nginx.conf" -p "$tmp/nginx_cp" &
nginx_cp_pid=$!
"$bin" --config "$tmp/portico.toml" 2>"$tmp/portico.log" &
portico_pid=$!
# one process, two listeners: only one of them is loaded at a time
portico_sf_pid=$portico_pid
declare -A port=([nginx]=$nginx_port [portico]=$portico_port [nginx_cp]=$nginx_cp_port [portico_sf]=$portico_sf_port)
servers=(nginx portico)
start_h2o "$h2o_port" "      /:
        file.dir: $tmp/www" && servers=(nginx h2o portico)
wait_http "${port[@]}"

measure "static file, 1 KiB" /1k.txt "${servers[@]}"
conns=$big_conns
measure "static file, 10 MiB" /10m.bin "${servers[@]}" nginx_cp portico_sf
for l in "${lines[@]}"; do
  set -- $l
  python3 -c "import sys; print(f'{sys.argv[1]:<10} {float(sys.argv[2]) * 10 * 1024 * 1024 / 1e6:10.0f} MB/s')" "$1" "$2"
done
