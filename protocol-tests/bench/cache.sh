#!/usr/bin/env bash
# Benchmark, not a test: cache hits through nginx proxy_cache, Varnish (-s malloc) and
# Portico's cache, in one run, for a 1 KiB and a 100 KiB object; then a Flask view
# (gunicorn, 2 workers) behind Portico cached and uncached; then the memory one cached
# small object costs Portico (RSS growth over 20,000 objects of 200 bytes).
#
# A backend nginx serves the files with Cache-Control: max-age=3600; every proxy has
# one worker (Varnish: one thread pool; it has no single-thread mode). ROUNDS (default
# 3) alternated rounds, the median round per proxy: req/s, p99 and CPU per request, and
# the ratios against nginx and Varnish.
# Needs Debian's varnish (apt-get install varnish) besides the suite's peers.
#
#   bash protocol-tests/bench/cache.sh [WORKERS] [DURATION] [CONNECTIONS]
#
# WRK_THREADS=1 leaves one core to the proxy (with wrk -t2 and one worker, three busy
# threads share two cores, and the tail latency is the scheduler's).
set -euo pipefail
cd "$(dirname "$0")/../.."
source protocol-tests/bench/lib.sh
workers=${1:-1}
duration=${2:-10s}
conns=${3:-32}
command -v varnishd >/dev/null || { echo "varnishd missing: apt-get install varnish" >&2; exit 1; }
bench_start
backend=18841; nginx_port=18842; varnish_port=18843; portico_port=18844; app=18845; plain_port=18846
mkdir -p "$tmp/backend/logs" "$tmp/nginx/logs" "$tmp/www" "$tmp/varnish"
python3 -c 'import base64, os, sys
for name, n in (("1k.txt", 1024), ("100k.txt", 102400)):
    open(os.path.join(sys.argv[1], name), "wb").write(base64.b64encode(os.urandom(n))[:n])' "$tmp/www"
cat > "$tmp/backend/nginx.conf" <<CONF
$(nginx_head "$tmp/backend" 1)
events { worker_connections 4096; }
http { $(temp "$tmp/backend") access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$backend; root $tmp/www; add_header Cache-Control "max-age=3600";
    location /small/ { default_type text/plain; return 200 "$(printf 'x%.0s' $(seq 1 199))\n"; } } }
CONF
cat > "$tmp/nginx/nginx.conf" <<CONF
$(nginx_head "$tmp/nginx" "$workers")
events { worker_connections 4096; }
http { $(temp "$tmp/nginx") access_log off; keepalive_requests 1000000;
  proxy_cache_path $tmp/nginx/cache keys_zone=main:10m max_size=256m;
  upstream app { server 127.0.0.1:$backend; keepalive 64; }
  server { listen 127.0.0.1:$nginx_port;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache main; proxy_cache_lock on; add_header X-Cache-Status \$upstream_cache_status; } } }
CONF
cat > "$tmp/portico.toml" <<CONF
$(portico_head "$workers")
[admin]
listen = "127.0.0.1:18847"
[caches.main]
memory = "256MiB"
[upstreams.app]
servers = [{ addr = "127.0.0.1:$backend" }]
keepalive = 64
[upstreams.flask]
servers = [{ addr = "127.0.0.1:$app" }]
[[listeners]]
listen = ["127.0.0.1:$portico_port"]
  [[listeners.routes]]
  path = "/"
  upstream = "app"
    [listeners.routes.cache]
    zone = "main"
    lock = true
    status_header = "X-Cache-Status"
  [[listeners.routes]]
  path = "/cached/"
  upstream = "flask"
    [listeners.routes.cache]
    zone = "main"
    lock = true
    status_header = "X-Cache-Status"
[[listeners]]
listen = ["127.0.0.1:$plain_port"]
  [[listeners.routes]]
  path = "/"
  upstream = "flask"
CONF
nginx -c "$tmp/backend/nginx.conf" -p "$tmp/backend" &
nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" &
nginx_pid=$!
varnishd -F -n "$tmp/varnish" -a "127.0.0.1:$varnish_port" -b "127.0.0.1:$backend" \
  -s malloc,256m -p thread_pools=1 -p thread_pool_min=10 >"$tmp/varnish.log" 2>&1 &
varnish_pid=$!
"$bin" --config "$tmp/portico.toml" 2>"$tmp/portico.log" >/dev/null &
portico_pid=$!
protocol-tests/.venv/bin/gunicorn --chdir protocol-tests/apps -w 2 -b "127.0.0.1:$app" flask_app:app \
  >"$tmp/gunicorn.log" 2>&1 &
for p in $backend $nginx_port $varnish_port $portico_port $app; do
  for _ in $(seq 1 200); do curl -s -o /dev/null "http://127.0.0.1:$p/1k.txt" && break; sleep 0.05; done
done
# fill every cache, and check the second request is a hit
for p in $nginx_port $varnish_port $portico_port; do
  for f in 1k.txt 100k.txt; do
    curl -s -o /dev/null "http://127.0.0.1:$p/$f"
    h=$(curl -s -o /dev/null -D - "http://127.0.0.1:$p/$f" | tr -d '\r')
    echo "$h" | grep -qiE '^(x-cache-status: HIT|x-varnish: [0-9]+ [0-9]+)' \
      || { echo "port $p: $f is not a cache hit:"; echo "$h"; exit 1; } >&2
  done
done

# measure (lib.sh) reads each server's port from this
declare -A port=([nginx]=$nginx_port [varnish]=$varnish_port [portico]=$portico_port)
# ROUNDS (default 3) alternated rounds through the three (lib.sh's measure), medians,
# ratios to nginx; then Portico's to Varnish
hits() { # title path
  measure "$1" "/$2" nginx varnish portico
  python3 - "${lines[1]}" "${lines[2]}" <<'PY'
import sys
v, p = sys.argv[1].split(), sys.argv[2].split()
f = lambda a, b: f"{float(a) / float(b):.2f}x"
print(f"ratio portico/varnish: req/s {f(p[1], v[1])}, p99 {f(p[2], v[2])}, CPU per request {f(p[4], v[4])}")
PY
  echo
}
hits "cache hit, 1 KiB" 1k.txt
hits "cache hit, 100 KiB" 100k.txt

# a Flask view: what the cache buys an app (the view answers max-age=3600)
view="cached/bench?cc=max-age=3600&size=1024"
curl -s -o /dev/null "http://127.0.0.1:$portico_port/$view"
u=$(run portico "http://127.0.0.1:$plain_port/$view")
c=$(run portico "http://127.0.0.1:$portico_port/$view")
echo "Flask view (gunicorn -w 2) behind Portico: wrk -t${WRK_THREADS:-2} -c$conns -d$duration"
python3 - "$u" "$c" <<'PY'
import sys
u, c = sys.argv[1].split(), sys.argv[2].split()
print(f"uncached {u[1]:>8} req/s  p99 {u[2]} ms")
print(f"cached   {c[1]:>8} req/s  p99 {c[2]} ms   ({float(c[1]) / float(u[1]):.0f}x)")
PY
echo

# memory per cached small object: RSS growth over 20,000 objects of 200 bytes
rss() { awk '/VmRSS/ {print $2}' "/proc/$portico_pid/status"; }
before=$(rss)
python3 - "$portico_port" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for i in range(20000):
    c.request("GET", f"/small/{i}")
    r = c.getresponse(); r.read()
PY
after=$(rss)
objects=$(curl -s http://127.0.0.1:18847/status | python3 -c 'import json,sys; z=json.load(sys.stdin)["caches"]["main"]; print(z["memory"]["entries"], z["memory"]["bytes"])')
echo "memory per cached small object (200-byte body, ~300 bytes of headers): RSS +$(( (after - before) * 1024 / 20000 )) bytes per object over 20,000; the zone counts: entries and bytes = $objects"
