# Shared by the wrk benchmarks: nginx temp paths, waiting for ports, one wrk run, and the
# side-by-side table with ratios. Callers set $tmp, $conns, $duration and $workers.

# The temp-path lines an nginx run from a private prefix needs.
temp() { echo "client_body_temp_path $1/ct; proxy_temp_path $1/pt; fastcgi_temp_path $1/ft; uwsgi_temp_path $1/ut; scgi_temp_path $1/st;"; }

# Waits (up to 10 s each) until every port answers an HTTP request.
wait_http() {
  for port in "$@"; do
    ok=
    for _ in $(seq 1 200); do curl -s -o /dev/null "http://127.0.0.1:$port/" && ok=1 && break; sleep 0.05; done
    [ -n "$ok" ] || { echo "nothing answers on port $port (is an old run still there?)" >&2; exit 1; }
  done
}

run() { # name url
  wrk -t2 -c"$conns" -d2s "$2" >/dev/null   # warm-up
  wrk -t2 -c"$conns" -d"$duration" --latency "$2" > "$tmp/$1.wrk"
  python3 - "$tmp/$1.wrk" "$1" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)", t)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
errs = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
print(f"{sys.argv[2]} {rps:.0f} {p99:.3f} {errs.group(1) if errs else 0}")
PY
}
table() { # title nginx-line portico-line
  echo "$1: wrk -t2 -c$conns -d$duration, workers=$workers"
  python3 - "$2" "$3" <<'PY'
import sys
n, p = sys.argv[1].split(), sys.argv[2].split()
print(f"{'server':<8} {'req/s':>12} {'p99 ms':>10} {'non2xx':>8}")
for r in (n, p):
    print(f"{r[0]:<8} {r[1]:>12} {r[2]:>10} {r[3]:>8}")
print(f"ratio portico/nginx: req/s {float(p[1])/float(n[1]):.2f}x, p99 {float(p[2])/float(n[2]):.2f}x")
PY
}
