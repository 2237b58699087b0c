#!/usr/bin/env bash
# Benchmark, not a test: what an idle keep-alive connection costs each proxy — nginx,
# HAProxy and Portico (one worker/thread each) in front of the same backend, in the
# same run. For each proxy and kind, N connections are opened; each sends one GET and
# reads the answer (h1: HTTP/1.1 keep-alive; h2: h2 prior knowledge over TCP; tls:
# HTTP/1.1 keep-alive over TLS 1.3, the same ECDSA P-256 certificate for all; none:
# connected, nothing sent), then all N stay open and idle while the proxy's RSS is
# read, one second after the last connection and again after SETTLE seconds (default
# 12: jemalloc gives the pages of the connect burst back after its 10 s decay time).
# Prints RSS growth per connection at both.
#
#   bash protocol-tests/bench/idle.sh [N]
#   KINDS="h1 tls" SETTLE=20 bash protocol-tests/bench/idle.sh 3000
set -euo pipefail
cd "$(dirname "$0")/../.."
source protocol-tests/bench/lib.sh
n=${1:-9000}
bin=${PORTICO_BIN:-target/release/portico}
unset PORTICO_BIN
py=protocol-tests/.venv/bin/python
[ -x "$bin" ] || cargo build --release -p portico
ulimit -n "$(ulimit -Hn)"
tmp=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
backend=18911
declare -A h1=([nginx]=18912 [haproxy]=18913 [portico]=18914)
declare -A h2=([nginx]=18915 [haproxy]=18916 [portico]=18917)
declare -A tls=([nginx]=18918 [haproxy]=18919 [portico]=18920)
mkdir -p "$tmp/backend/logs" "$tmp/nginx/logs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/key.pem" \
  -out "$tmp/cert.pem" -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost" -days 2 2>/dev/null
cat "$tmp/cert.pem" "$tmp/key.pem" > "$tmp/both.pem"
cat > "$tmp/backend/nginx.conf" <<CONF
$(nginx_head "$tmp/backend" 1)
events { worker_connections 1024; }
http { access_log off; $(temp "$tmp/backend")
  server { listen 127.0.0.1:$backend; location / { return 200 "hello\n"; } } }
CONF
cat > "$tmp/nginx/nginx.conf" <<CONF
$(nginx_head "$tmp/nginx" 1)
worker_rlimit_nofile 40000;
events { worker_connections 40000; }
http { access_log off; $(temp "$tmp/nginx") keepalive_timeout 1h; keepalive_requests 100000;
  upstream b { server 127.0.0.1:$backend; keepalive 64; }
  server { listen 127.0.0.1:${h1[nginx]}; listen 127.0.0.1:${h2[nginx]} http2;
    listen 127.0.0.1:${tls[nginx]} ssl; ssl_certificate $tmp/cert.pem; ssl_certificate_key $tmp/key.pem;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat > "$tmp/haproxy.cfg" <<CONF
global
  fd-hard-limit 20000
  maxconn 9500
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout http-keep-alive 1h
frontend f
  bind 127.0.0.1:${h1[haproxy]}
  bind 127.0.0.1:${h2[haproxy]} proto h2
  bind 127.0.0.1:${tls[haproxy]} ssl crt $tmp/both.pem alpn http/1.1
  default_backend b
backend b
  http-reuse always
  server s 127.0.0.1:$backend
CONF
cat > "$tmp/portico.toml" <<CONF
$(portico_head 1)
[upstreams.b]
servers = [{ addr = "127.0.0.1:$backend" }]
keepalive = 64
[[listeners]]
listen = ["127.0.0.1:${h1[portico]}", "127.0.0.1:${h2[portico]}"]
  [listeners.limits]
  max_connections = 40000
  idle_timeout = "1h"
  [[listeners.routes]]
  path = "/"
  upstream = "b"
[[listeners]]
listen = ["127.0.0.1:${tls[portico]}"]
  [listeners.tls]
  cert = "$tmp/cert.pem"
  key = "$tmp/key.pem"
  [listeners.limits]
  max_connections = 40000
  idle_timeout = "1h"
  [[listeners.routes]]
  path = "/"
  upstream = "b"
CONF
nginx -c "$tmp/backend/nginx.conf" -p "$tmp/backend" &
wait_http $backend
# each kind against fresh proxies: memory freed by the previous kind's connections
# would otherwise be reused and hide what the next kind costs
start() {
  nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" &
  haproxy -f "$tmp/haproxy.cfg" -db 2>"$tmp/haproxy.log" &
  haproxy_pid=$!
  "$bin" --config "$tmp/portico.toml" 2>"$tmp/portico.log" &
  portico_pid=$!
  wait_http ${h1[nginx]} ${h1[haproxy]} ${h1[portico]}
  nginx_master=$(cat "$tmp/nginx/pid")
  pids=([nginx]="$nginx_master $(pgrep -P "$nginx_master" | tr '\n' ' ')" [haproxy]=$haproxy_pid [portico]=$portico_pid)
}
stop() {
  kill "$nginx_master" "$haproxy_pid" "$portico_pid"
  wait "$haproxy_pid" "$portico_pid" 2>/dev/null || true
  while [ -e "$tmp/nginx/pid" ]; do sleep 0.05; done
}
declare -A pids
printf '%-8s %-5s %8s %12s %14s %12s %14s\n' proxy kind answered "RSS growth" "per conn, 1 s" \
  "settled" "per conn"
for kind in ${KINDS:-none h1 h2 tls}; do
  start
  for p in nginx haproxy portico; do
    port=${h1[$p]}; [ "$kind" = h2 ] && port=${h2[$p]}; [ "$kind" = tls ] && port=${tls[$p]}
    read -r before after settled ok < <($py protocol-tests/apps/idle_bench.py "$kind" "$port" "$n" ${pids[$p]})
    python3 -c "
b, a, s, ok, n = $before, $after, $settled, $ok, $n
print(f'{\"$p\":<8} {\"$kind\":<5} {ok:>8} {(a-b)/1024:>9.1f} MiB {(a-b)*1024/n:>12.0f} B'
      f' {(s-b)/1024:>9.1f} MiB {(s-b)*1024/n:>11.0f} B')"
  done
  stop
done
