# Shared by the wrk benchmarks: nginx temp paths, waiting for ports, one wrk run, and the
# side-by-side table with ratios. Callers set $tmp, $conns, $duration and $workers.

# The temp-path lines an nginx run from a private prefix needs.
temp() { echo "client_body_temp_path $1/ct; proxy_temp_path $1/pt; fastcgi_temp_path $1/ft; uwsgi_temp_path $1/ut; scgi_temp_path $1/st;"; }

# The main-context head of an nginx config run from prefix $1 with $2 worker processes.
nginx_head() { echo "daemon off; user root; worker_processes $2; pid $1/pid; error_log $1/logs/error.log;"; }

# The head of a Portico config: $1 workers, warnings only, no access log.
portico_head() { printf '[runtime]\nworkers = %s\n[log]\nlevel = "warn"\naccess_log = "off"\n' "$1"; }

# Waits (up to 10 s each) until every port answers an HTTP request.
wait_http() {
  for port in "$@"; do
    ok=
    for _ in $(seq 1 200); do curl -s -o /dev/null "http://127.0.0.1:$port/" && ok=1 && break; sleep 0.05; done
    [ -n "$ok" ] || { echo "nothing answers on port $port (is an old run still there?)" >&2; exit 1; }
  done
}

# CPU time in clock ticks used so far by process $1 and its child processes (nginx's
# workers); 0 without a pid.
cpu_ticks() {
  local t=0 p
  [ -n "${1:-}" ] || { echo 0; return; }
  for p in "$1" $(pgrep -P "$1" 2>/dev/null); do
    [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$p/stat")))
  done
  echo $t
}

# One measured wrk run through the server `name` (nginx or portico); prints
# "name req/s p99_ms non2xx cpu_us_per_request". The CPU figure is the server's own
# (user + system, from /proc) when the caller set ${name}_pid, else "-". WRK_THREADS
# (default 2) is wrk's -t.
run() { # name url
  local pid_var="${1}_pid" pid t0 t1
  pid=${!pid_var:-}
  wrk -t"${WRK_THREADS:-2}" -c"$conns" -d2s "$2" >/dev/null   # warm-up
  t0=$(cpu_ticks "$pid")
  wrk -t"${WRK_THREADS:-2}" -c"$conns" -d"$duration" --latency "$2" > "$tmp/$1.wrk"
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
# The side-by-side table: the first line is the reference (nginx), every other line
# gets its ratios to it. The title names the load: $load when the caller set it, else wrk.
table() { # title reference-line other-lines...
  echo "$1: ${load:-wrk -t${WRK_THREADS:-2} -c$conns -d$duration}, workers=$workers"
  shift
  python3 - "$@" <<'PY'
import sys
rows = [a.split() for a in sys.argv[1:]]
print(f"{'server':<10} {'req/s':>12} {'p99 ms':>10} {'non2xx':>8} {'CPU us/req':>11}")
for r in rows:
    print(f"{r[0]:<10} {r[1]:>12} {r[2]:>10} {r[3]:>8} {r[4]:>11}")
def ratio(a, b):
    return f"{float(a) / float(b):.2f}x" if b not in ("-", "0") and float(b) > 0 and a != "-" else "n/a"
n = rows[0]
for p in rows[1:]:
    print(f"ratio {p[0]}/{n[0]}: req/s {ratio(p[1], n[1])}, p99 {ratio(p[2], n[2])}, "
          f"CPU per request {ratio(p[4], n[4])}")
PY
}

# Of several `run` lines of one server, the one with the median req/s.
median() { # lines...
  printf '%s\n' "$@" | sort -k2,2n | sed -n "$(( ($# + 1) / 2 ))p"
}

# Sets $bin (the Portico to measure: $PORTICO_BIN, else the release build, built when
# missing; PORTICO_BIN is then unset, as Portico would read it as config) and $tmp (a
# temp dir), and on exit stops every job the script started and removes $tmp.
bench_start() {
  bin=${PORTICO_BIN:-target/release/portico}
  unset PORTICO_BIN
  [ -x "$bin" ] || cargo build --release -p portico
  tmp=$(mktemp -d)
  trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"' EXIT
}

# h2o (optional: Debian's h2o) with $workers threads on port $1, serving the `paths:`
# YAML block $2 (indented for `paths:`); sets h2o_pid and port[h2o] (the caller's
# associative array) and returns 0, or says how to install it and returns 1.
start_h2o() { # port paths-yaml
  command -v h2o >/dev/null || { echo "(h2o not installed: apt-get install h2o to measure it too)"; return 1; }
  # user root: h2o drops to nobody, who cannot read the 0700 temp dir
  printf 'num-threads: %s\nuser: root\nlisten:\n  host: 127.0.0.1\n  port: %s\nhosts:\n  default:\n    paths:\n%s\n' \
    "$workers" "$1" "$2" > "$tmp/h2o.conf"
  h2o -c "$tmp/h2o.conf" >"$tmp/h2o.log" 2>&1 &
  h2o_pid=$!
  port[h2o]=$1
}

# measure TITLE PATH SERVER...: ROUNDS (default 3) alternating rounds of `run` (or the
# caller's $runner, with the same arguments and output) through each server (on
# port[SERVER], over $scheme: http unless set), so a noisy minute hits all of them;
# prints the table of the median round per server and leaves those lines in `lines`.
measure() {
  local title=$1 path=$2 r s
  shift 2
  declare -A got=()
  for r in $(seq 1 "${rounds:-3}"); do
    for s in "$@"; do
      got[$s]="${got[$s]:-}|$(${runner:-run} "$s" "${scheme:-http}://127.0.0.1:${port[$s]}$path")"
    done
  done
  lines=()
  for s in "$@"; do
    IFS='|' read -r -a all <<<"${got[$s]#|}"
    lines+=("$(median "${all[@]}")")
  done
  table "$title (${rounds:-3} rounds, median)" "${lines[@]}"
}
