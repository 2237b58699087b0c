#!/usr/bin/env bash
# Benchmark, not a test: one client floods, a rate limit refuses it, another client
# should not notice. nginx and Portico each front gunicorn (Flask /echo, 2 workers) with
# a limit keyed on X-Client (10 r/s, burst 20, nodelay). Measured, per proxy, same run:
#   - the calm client's latency (Python, 50 requests/s for the duration, its own key)
#     alone, and while wrk floods with X-Client: flood (-t2 -c64);
#   - the proxy's CPU per refused request (the flood) and per served request (wrk with
#     a new key per request, so nothing is refused, through to gunicorn).
#
#   bash protocol-tests/bench/flood.sh [WORKERS] [DURATION_S]
#
# Needs: cargo build --release -p portico; protocol-tests/peers/install.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
source protocol-tests/bench/lib.sh
workers=${1:-1}
secs=${2:-10}
duration=${secs}s
conns=64
bench_start
venv=protocol-tests/.venv

app_port=18841; nginx_port=18842; portico_port=18843
"$venv/bin/gunicorn" --chdir protocol-tests/apps -w 2 -b 127.0.0.1:$app_port flask_app:app \
  >"$tmp/gunicorn.log" 2>&1 &
mkdir -p "$tmp/nginx/logs"
cat > "$tmp/nginx.conf" <<NGX
$(nginx_head "$tmp/nginx" "$workers")
events { worker_connections 4096; }
http { $(temp "$tmp/nginx") access_log off; error_log /dev/null crit;
  limit_req_zone \$http_x_client zone=c:16m rate=10r/s; limit_req_status 429;
  upstream app { server 127.0.0.1:$app_port; keepalive 16; }
  server { listen 127.0.0.1:$nginx_port;
    location / { limit_req zone=c burst=20 nodelay; proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
{
  portico_head "$workers"
  cat <<TOML
[rate_limits.c]
key = "\$http_x_client"
rate = "10r/s"
burst = 20
nodelay = true
log_level = "debug"
[upstreams.app]
servers = [{ addr = "127.0.0.1:$app_port" }]
[[listeners]]
listen = ["127.0.0.1:$portico_port"]
  [[listeners.routes]]
  path = "/"
  upstream = "app"
  rate_limit = ["c"]
TOML
} > "$tmp/portico.toml"
nginx -c "$tmp/nginx.conf" -p "$tmp/nginx" &
nginx_pid=$!
"$bin" --config "$tmp/portico.toml" 2>"$tmp/portico.log" &
portico_pid=$!
wait_http $app_port $nginx_port $portico_port

cat > "$tmp/flood.lua" <<'LUA'
wrk.headers["X-Client"] = "flood"
LUA
cat > "$tmp/served.lua" <<'LUA'
local i = 0
request = function()
  i = i + 1
  wrk.headers["X-Client"] = "served-" .. i
  return wrk.format(nil, "/echo")
end
LUA
# the calm client: prints "p50_ms p99_ms non200"
calm() { # port
  "$venv/bin/python" - "$1" "$secs" <<'PY'
import http.client, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
lat, bad, start = [], 0, time.monotonic()
n = 0
while time.monotonic() - start < secs:
    t = time.monotonic()
    c.request("GET", "/echo", headers={"X-Client": "calm-%d" % (n // 5)})  # 10 r/s per key
    r = c.getresponse(); r.read()
    if r.status != 200: bad += 1
    lat.append((time.monotonic() - t) * 1000)
    n += 1
    time.sleep(max(0, start + n / 50 - time.monotonic()))
lat.sort()
print(f"{lat[len(lat)//2]:.2f} {lat[int(len(lat)*0.99)]:.2f} {bad}")
PY
}
cpu_per() { # name port lua -> "req/s non2xx cpu_us_per_request"
  local pid_var="${1}_pid" t0 t1
  t0=$(cpu_ticks "${!pid_var}")
  wrk -t2 -c$conns -d"$duration" -s "$3" "http://127.0.0.1:$2/echo" > "$tmp/$1.wrk"
  t1=$(cpu_ticks "${!pid_var}")
  python3 - "$tmp/$1.wrk" "$((t1 - t0))" "$(getconf CLK_TCK)" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
n = int(re.search(r"(\d+) requests in", t).group(1))
errs = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
print(f"{rps:.0f} {errs.group(1) if errs else 0} {int(sys.argv[2]) * 1e6 / int(sys.argv[3]) / n:.1f}")
PY
}

echo "flood: wrk -t2 -c$conns for ${secs}s, one key, 10 r/s burst 20; workers=$workers"
printf '%-8s %-28s %-28s %-26s %-22s\n' server "calm alone p50/p99 ms" "calm under flood p50/p99 ms" "flood req/s, refused, CPU us" "served req/s, CPU us"
for name in nginx portico; do
  port_var="${name}_port"; port=${!port_var}
  alone=$(calm "$port")
  calm "$port" > "$tmp/calm.$name" &
  calm_pid=$!
  flood=$(cpu_per "$name" "$port" "$tmp/flood.lua")
  wait "$calm_pid"
  under=$(cat "$tmp/calm.$name")
  served=$(cpu_per "$name" "$port" "$tmp/served.lua")
  read -r a50 a99 abad <<< "$alone"; read -r u50 u99 ubad <<< "$under"
  read -r frps fbad fcpu <<< "$flood"; read -r srps sbad scpu <<< "$served"
  printf '%-8s %-28s %-28s %-26s %-22s\n' "$name" "$a50 / $a99 (non200 $abad)" "$u50 / $u99 (non200 $ubad)" "$frps, $fbad, $fcpu" "$srps, $scpu"
done
