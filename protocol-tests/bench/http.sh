#!/usr/bin/env bash
# Benchmark, not a test: wrk through nginx, HAProxy, h2o (when installed) and Portico to
# the same fast backend (an nginx answering "hello" itself, so the proxy is the
# bottleneck), same worker/thread count, same run; then to three backends (round-robin);
# then the same small static file (nginx, h2o, Portico: HAProxy serves no files); and
# the backend direct, the ceiling. ROUNDS alternating rounds (default 3: every server
# once per round, so a noisy minute hits all of them), the median round per server.
# Prints req/s, p99 and each server's own CPU time per request, with ratios to nginx.
#
#   bash protocol-tests/bench/http.sh [WORKERS] [DURATION] [CONNECTIONS]
#   ROUNDS=5 bash protocol-tests/bench/http.sh 2 8s 256
#
# Needs: cargo build --release -p portico; protocol-tests/peers/install.sh (nginx, wrk,
# haproxy); h2o is optional (apt-get install h2o).
set -euo pipefail
cd "$(dirname "$0")/../.."
source protocol-tests/bench/lib.sh
workers=${1:-1}
duration=${2:-10s}
conns=${3:-64}
bench_start

rounds=${ROUNDS:-3}
backend=18801; nginx_port=18802; portico_port=18803; b2=18804; b3=18805
haproxy_port=18806; h2o_port=18807
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
  option forwardfor
frontend f
  bind 127.0.0.1:$haproxy_port
  use_backend three if { path_beg /three/ }
  default_backend app
backend app
  http-reuse always
  server s 127.0.0.1:$backend
backend three
  http-reuse always
  balance roundrobin
  server s1 127.0.0.1:$backend
  server s2 127.0.0.1:$b2
  server s3 127.0.0.1:$b3
CONF

nginx -c "$tmp/backend/nginx.conf" -p "$tmp/backend" &
nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" &
nginx_pid=$!
"$bin" --config "$tmp/portico.toml" 2>"$tmp/portico.log" &
portico_pid=$!
haproxy -f "$tmp/haproxy.cfg" -db 2>"$tmp/haproxy.log" &
haproxy_pid=$!
declare -A port=([nginx]=$nginx_port [portico]=$portico_port [haproxy]=$haproxy_port [backend]=$backend)
proxies=(nginx haproxy portico)
start_h2o "$h2o_port" "      /static/:
        file.dir: $tmp/www/static
      /:
        proxy.reverse.url: http://127.0.0.1:$backend/" && proxies=(nginx haproxy h2o portico)
wait_http $backend "${port[@]}"

measure "backend direct (the ceiling), then each proxy in front of it" / nginx backend
measure "reverse proxy (backend: nginx return 200)" / "${proxies[@]}"
measure "reverse proxy, three backends round-robin" /three/ nginx haproxy portico
statics=(nginx portico); [ -n "${port[h2o]:-}" ] && statics=(nginx h2o portico)
measure "static file (18 bytes)" /static/hello.txt "${statics[@]}"
