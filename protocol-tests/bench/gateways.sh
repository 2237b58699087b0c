#!/usr/bin/env bash
# Benchmark, not a test: wrk through Portico and through nginx to the same app servers,
# same run: uWSGI (2 processes) serving the Flask app's "/" over the uwsgi protocol (on
# TCP, and the same uWSGI on a Unix socket), and one php-fpm pool (pm = static, 2
# workers) serving index.php over FastCGI. nginx runs
# as users configure it (uwsgi_params / fastcgi_params, a connection per request), and
# once more with FastCGI keep-alive (fastcgi_keep_conn + upstream keepalive 2).
# Portico keeps FastCGI connections under max_conns = 2 (the pool's workers).
# Prints req/s, p99 and each proxy's own CPU time per request for both, and the ratios.
#
#   bash protocol-tests/bench/gateways.sh [WORKERS] [DURATION] [CONNECTIONS]
#
# Needs: cargo build --release -p portico; protocol-tests/peers/install.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
source protocol-tests/bench/lib.sh
workers=${1:-1}
duration=${2:-10s}
conns=${3:-64}
bin=${PORTICO_BIN:-target/release/portico}
unset PORTICO_BIN # Portico reads PORTICO_* as config: it would refuse the unknown key "bin"
[ -x "$bin" ] || cargo build --release -p portico
venv=${PORTICO_VENV:-protocol-tests/.venv}
apps=$(pwd)/protocol-tests/apps
tmp=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

uwsgi_port=18811; fpm_port=18812; nginx_port=18813; portico_port=18814
nginx_unix_port=18815; portico_unix_port=18816; uwsgi_sock=$tmp/uwsgi.sock
mkdir -p "$tmp/nginx/logs"
fpm=$(ls /usr/sbin/php-fpm* | head -1)

"$venv/bin/uwsgi" --socket 127.0.0.1:$uwsgi_port --socket "$uwsgi_sock" --chdir "$apps" --module flask_app:app \
  --processes 2 --master --die-on-term --disable-logging >"$tmp/uwsgi.log" 2>&1 &
uwsgi_pid=$!
cat > "$tmp/fpm.conf" <<CONF
[global]
error_log = $tmp/fpm.log
daemonize = no
[www]
listen = 127.0.0.1:$fpm_port
listen.backlog = 4096
pm = static
pm.max_children = 2
clear_env = no
CONF
"$fpm" -R -F -y "$tmp/fpm.conf" &
fpm_pid=$!

cat > "$tmp/nginx/nginx.conf" <<CONF
$(nginx_head "$tmp/nginx" $workers)
events { worker_connections 4096; }
http { $(temp "$tmp/nginx") access_log off; keepalive_requests 1000000;
  upstream fpm_keep { server 127.0.0.1:$fpm_port; keepalive 2; }
  server { listen 127.0.0.1:$nginx_port; root $apps/php;
    location /php-keep/ { fastcgi_keep_conn on; include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME $apps/php/index.php; fastcgi_pass fpm_keep; }
    location /php/ { include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME $apps/php/index.php; fastcgi_pass 127.0.0.1:$fpm_port; }
    location / { include /etc/nginx/uwsgi_params; uwsgi_pass 127.0.0.1:$uwsgi_port; } }
  server { listen 127.0.0.1:$nginx_unix_port;
    location / { include /etc/nginx/uwsgi_params; uwsgi_pass unix:$uwsgi_sock; } } }
CONF
cat > "$tmp/portico.toml" <<CONF
$(portico_head $workers)
[upstreams.uwsgi]
servers = [{ addr = "127.0.0.1:$uwsgi_port" }]
[upstreams.uwsgi_unix]
servers = [{ addr = "unix:$uwsgi_sock" }]
[upstreams.fpm]
servers = [{ addr = "127.0.0.1:$fpm_port", max_conns = 2 }]
keepalive = 2
queue = 4096
queue_timeout = "30s"
[[listeners]]
listen = ["127.0.0.1:$portico_port"]
  [[listeners.routes]]
  path = "/php/"
  upstream = "fpm"
  via = "fastcgi"
  params = { SCRIPT_FILENAME = "$apps/php/index.php" }
  [[listeners.routes]]
  path = "/"
  upstream = "uwsgi"
  via = "uwsgi"
[[listeners]]
listen = ["127.0.0.1:$portico_unix_port"]
  [[listeners.routes]]
  path = "/"
  upstream = "uwsgi_unix"
  via = "uwsgi"
CONF

nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" &
nginx_pid=$!
"$bin" --config "$tmp/portico.toml" 2>"$tmp/portico.log" &
portico_pid=$!
wait_http $nginx_port $portico_port $nginx_unix_port $portico_unix_port
# Something else on one of the fixed ports would be measured instead: refuse.
for p in $uwsgi_pid $fpm_pid $nginx_pid $portico_pid; do
  kill -0 "$p" 2>/dev/null || { echo "a server of this run exited (port in use?): see $tmp" >&2; exit 1; }
done
for u in "http://127.0.0.1:$nginx_port/" "http://127.0.0.1:$portico_port/" \
         "http://127.0.0.1:$nginx_port/php/" "http://127.0.0.1:$portico_port/php/"; do
  curl -sf "$u" >/dev/null || { echo "no 200 from $u" >&2; exit 1; }
done

n=$(run nginx "http://127.0.0.1:$nginx_port/"); p=$(run portico "http://127.0.0.1:$portico_port/")
table "uwsgi: Flask under uWSGI, 2 processes" "$n" "$p"
n=$(run nginx "http://127.0.0.1:$nginx_unix_port/"); p=$(run portico "http://127.0.0.1:$portico_unix_port/")
table "uwsgi over a Unix socket: the same uWSGI" "$n" "$p"
n=$(run nginx "http://127.0.0.1:$nginx_port/php/"); p=$(run portico "http://127.0.0.1:$portico_port/php/")
table "FastCGI: php-fpm, 2 workers (nginx: a connection per request)" "$n" "$p"
# Portico first: nginx's kept-alive connections pin both php-fpm workers for good
# (php-fpm serves one connection per worker), so nothing else gets served after it.
p=$(run portico "http://127.0.0.1:$portico_port/php/"); n=$(run nginx "http://127.0.0.1:$nginx_port/php-keep/")
table "FastCGI: php-fpm, 2 workers (nginx: fastcgi_keep_conn, keepalive 2)" "$n" "$p"
