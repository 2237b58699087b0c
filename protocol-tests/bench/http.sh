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
source protocol-tests/bench/lib.sh
workers=${1:-1}
duration=${2:-10s}
conns=${3:-64}
bench_start

backend=18801; nginx_port=18802; portico_port=18803; b2=18804; b3=18805
mkdir -p "$tmp/backend/logs" "$tmp/nginx/logs" "$tmp/www/static"
printf 'hello from a file\n' > "$tmp/www/static/hello.txt"

cat > "$tmp/backend/nginx.conf" <<CONF
$(nginx_head "$tmp/backend" 1)
events { worker_connections 4096; }
http { $(temp "$tmp/backend") access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$backend; listen 127.0.0.1:$b2; listen 127.0.0.1:$b3;
    location / { return 200 "hello\n"; } } }
CONF
cat > "$tmp/nginx/nginx.conf" <<CONF
$(nginx_head "$tmp/nginx" $workers)
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
$(portico_head $workers)
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
nginx_pid=$!
"$bin" --config "$tmp/portico.toml" 2>"$tmp/portico.log" &
portico_pid=$!
wait_http $backend $nginx_port $portico_port

n=$(run nginx "http://127.0.0.1:$nginx_port/"); p=$(run portico "http://127.0.0.1:$portico_port/")
table "reverse proxy (backend: nginx return 200)" "$n" "$p"
n=$(run nginx "http://127.0.0.1:$nginx_port/three/"); p=$(run portico "http://127.0.0.1:$portico_port/three/")
table "reverse proxy, three backends round-robin" "$n" "$p"
n=$(run nginx "http://127.0.0.1:$nginx_port/static/hello.txt"); p=$(run portico "http://127.0.0.1:$portico_port/static/hello.txt")
table "static file (18 bytes)" "$n" "$p"
