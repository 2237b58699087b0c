#!/usr/bin/env bash
# Benchmark, not a test: what a rate-limit check costs on every request. nginx and
# Portico each answer `return 200` themselves (so the limit is a visible part of the
# work), first without a limit, then with one keyed on an X-Client header that wrk
# cycles through 100,000 values (a Lua script), so the table holds 100,000 active keys;
# the rate is high enough that nothing is refused. Same run, same worker count.
#
#   bash protocol-tests/bench/limits.sh [WORKERS] [DURATION] [CONNECTIONS]
#
# Needs: cargo build --release -p portico; protocol-tests/peers/install.sh (nginx, wrk).
set -euo pipefail
cd "$(dirname "$0")/../.."
source protocol-tests/bench/lib.sh
workers=${1:-1}
duration=${2:-10s}
conns=${3:-64}
bench_start

cat > "$tmp/keys.lua" <<'LUA'
local i = 0
request = function()
  i = i + 1
  wrk.headers["X-Client"] = "client-" .. (i % 100000)
  return wrk.format(nil)
end
LUA
# run with the Lua script: the same as lib.sh's run(), with -s
run_keys() { # name url
  local pid_var="${1}_pid" pid t0 t1
  pid=${!pid_var:-}
  wrk -t2 -c"$conns" -d3s -s "$tmp/keys.lua" "$2" >/dev/null   # warm-up: fills the table
  t0=$(cpu_ticks "$pid")
  wrk -t2 -c"$conns" -d"$duration" --latency -s "$tmp/keys.lua" "$2" > "$tmp/$1.wrk"
  t1=$(cpu_ticks "$pid")
  python3 - "$tmp/$1.wrk" "$1" "${pid:+$((t1 - t0))}" "$(getconf CLK_TCK)" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)", t)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
errs = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
n = int(re.search(r"(\d+) requests in", t).group(1))
cpu = f"{int(sys.argv[3]) * 1e6 / int(sys.argv[4]) / n:.1f}" if sys.argv[3] and n else "-"
print(f"{sys.argv[2]} {rps:.0f} {p99:.3f} {errs.group(1) if errs else 0} {cpu}")
PY
}

for limited in no yes; do
  nginx_port=18831; portico_port=18832; admin_port=18833
  d="$tmp/$limited"; mkdir -p "$d/nginx/logs"
  if [ $limited = yes ]; then
    nginx_zone='limit_req_zone $http_x_client zone=k:32m rate=100r/s;'
    nginx_limit='limit_req zone=k burst=10 nodelay;'
    portico_limit='  rate_limit = ["k"]'
    portico_zone=$'[rate_limits.k]\nkey = "$http_x_client"\nrate = "100r/s"\nburst = 10\nnodelay = true\nkeys = 200000'
  else
    nginx_zone=; nginx_limit=; portico_limit=; portico_zone=
  fi
  cat > "$d/nginx.conf" <<NGX
$(nginx_head "$d/nginx" "$workers")
events { worker_connections 4096; }
http { $(temp "$d/nginx") access_log off; keepalive_requests 1000000; $nginx_zone
  server { listen 127.0.0.1:$nginx_port; location / { $nginx_limit return 200 "ok\n"; } } }
NGX
  {
    portico_head "$workers"
    printf '[admin]\nlisten = "127.0.0.1:%s"\n%s\n' "$admin_port" "$portico_zone"
    printf '[[listeners]]\nlisten = ["127.0.0.1:%s"]\n  [[listeners.routes]]\n  path = "/"\n  return = { status = 200, body = "ok\\n" }\n%s\n' "$portico_port" "$portico_limit"
  } > "$d/portico.toml"
  nginx -c "$d/nginx.conf" -p "$d/nginx" &
  nginx_pid=$!
  "$bin" --config "$d/portico.toml" 2>"$d/portico.log" &
  portico_pid=$!
  wait_http $nginx_port $portico_port
  a=$(run_keys nginx "http://127.0.0.1:$nginx_port/"); b=$(run_keys portico "http://127.0.0.1:$portico_port/")
  table "rate limit: $limited (X-Client over 100000 keys)" "$a" "$b"
  if [ $limited = yes ]; then
    curl -s "http://127.0.0.1:$admin_port/status" | python3 -c 'import json,sys; k=json.load(sys.stdin)["rate_limits"]["k"]; print("portico table: %s keys, %s refused" % (k["keys"], k["refused"]))'
  fi
  echo "$limited $a" >> "$tmp/nginx.rows"; echo "$limited $b" >> "$tmp/portico.rows"
  kill "$nginx_pid" "$portico_pid"; wait "$nginx_pid" "$portico_pid" 2>/dev/null || true
done
python3 - "$tmp/nginx.rows" "$tmp/portico.rows" <<'PY'
import sys
for f in sys.argv[1:]:
    rows = {l.split()[0]: l.split() for l in open(f)}
    no, yes = rows["no"], rows["yes"]
    name = no[1]
    cost = 1 - float(yes[2]) / float(no[2])
    cpu = f"{float(yes[5]) - float(no[5]):+.1f} us CPU/req" if no[5] != "-" else ""
    print(f"{name}: the limit costs {cost * 100:.1f}% req/s {cpu}")
PY
