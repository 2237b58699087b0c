#!/usr/bin/env bash
# Benchmark, not a test: instructions per proxied GET, counted by valgrind's callgrind,
# which gives the same count on every run (wrk figures on a shared VM do not). Portico
# (one worker) fronts an nginx answering `return 200`; one keep-alive client sends
# N1 then N2 GETs in two runs; (I(N1) − I(N2)) / (N1 − N2) is the cost of one request,
# start-up and shutdown cancelled out.
#
#   bash protocol-tests/bench/instructions.sh [N1] [N2]
#
# CACHE=1: the route caches (valid 200 = 10m): every GET after the first is a cache
# hit, so the figure is the cost of a hit. STATIC=1: the route serves a 1 KiB file
# from a directory instead (the cost of a small static file). H2=1: the client speaks
# h2 (prior knowledge) on its one connection, one request at a time, so the connection
# goes idle between requests (protocol-tests/.venv's h2 package). LOG=1: the access
# log (combined lines) goes to a file (the cost of a line).
#
# Needs: cargo build --release -p portico; valgrind; nginx.
set -euo pipefail
cd "$(dirname "$0")/../.."
source protocol-tests/bench/lib.sh
n1=${1:-2500}
n2=${2:-500}
bench_start
backend=18851; port=18852
mkdir -p "$tmp/nginx/logs"
cat > "$tmp/nginx.conf" <<NGX
$(nginx_head "$tmp/nginx" 1)
events {}
http { $(temp "$tmp/nginx") access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$backend; location / { return 200 "ok\n"; } } }
NGX
nginx -c "$tmp/nginx.conf" -p "$tmp/nginx" &
{
  if [ -n "${LOG:-}" ]; then
    portico_head 1 | sed "s|^access_log = \"off\"|access_log = \"$tmp/access.log\"|"
  else
    portico_head 1
  fi
  [ -n "${CACHE:-}" ] && printf '[caches.main]\nmemory = "64MiB"\n'
  printf '[upstreams.app]\nservers = [{ addr = "127.0.0.1:%s" }]\n[[listeners]]\nlisten = ["127.0.0.1:%s"]\n  [[listeners.routes]]\n  path = "/"\n' "$backend" "$port"
  if [ -n "${STATIC:-}" ]; then
    mkdir -p "$tmp/www" && head -c 1024 /dev/zero | tr '\0' x > "$tmp/www/x"
    printf '  static = { root = "%s" }\n' "$tmp/www"
  else
    printf '  upstream = "app"\n'
  fi
  [ -n "${CACHE:-}" ] && printf '    [listeners.routes.cache]\n    zone = "main"\n    valid = { "200" = "10m" }\n'
  true
} > "$tmp/portico.toml"
count() { # requests -> instructions
  valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.$1" "$bin" --config "$tmp/portico.toml" \
    2>"$tmp/vg.$1.log" &
  local pid=$!
  for _ in $(seq 1 400); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  if [ -n "${H2:-}" ]; then
    protocol-tests/.venv/bin/python - "$port" "$1" <<'PY'
import socket, sys
import h2.config, h2.connection, h2.events
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
c.initiate_connection(); s.sendall(c.data_to_send())
for _ in range(int(sys.argv[2])):
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, [(":method", "GET"), (":path", "/x"), (":scheme", "http"),
                         (":authority", "bench")], end_stream=True)
    s.sendall(c.data_to_send())
    status, done = None, False
    while not done:
        data = s.recv(65536)
        assert data, "connection closed"
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                status = dict(ev.headers)[b":status"]
            elif isinstance(ev, h2.events.DataReceived):
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                done = True
        s.sendall(c.data_to_send())
    assert status == b"200", status
PY
  else
    python3 - "$port" "$1" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
for _ in range(int(sys.argv[2])):
    c.request("GET", "/x"); r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
  fi
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  grep -h '^summary:' "$tmp"/cg."$1"* | awk '{s += $2} END {print s}'
}
i1=$(count "$n1"); i2=$(count "$n2")
echo "instructions: $n1 GETs $i1, $n2 GETs $i2"
echo "per proxied GET: $(( (i1 - i2) / (n1 - n2) ))"
# CGDIR=DIR: keep the callgrind files there (callgrind_annotate --tree=calling reads them)
[ -n "${CGDIR:-}" ] && mkdir -p "$CGDIR" && cp "$tmp"/cg.* "$CGDIR"/
# where they go (TOP=N): the exclusive cost (INCLUSIVE=yes: inclusive) of the calls callgrind_annotate lists, the
# difference of the two runs per request (nested calls are counted in their callers too)
if [ -n "${TOP:-}" ]; then
  for n in "$n1" "$n2"; do
    callgrind_annotate --inclusive=${INCLUSIVE:-no} --threshold=100 "$tmp"/cg."$n"* 2>/dev/null \
      | awk '/^ *[0-9,]+ / {gsub(",", "", $1); c=$1; $1=""; sub(/^ *\([^)]*\) */, ""); print c "\t" $0}' > "$tmp/top.$n"
  done
  python3 - "$tmp/top.$n1" "$tmp/top.$n2" "$((n1 - n2))" "$TOP" <<'PY'
import sys
def load(p):
    d = {}
    for line in open(p):
        c, _, f = line.rstrip("\n").partition("\t")
        d[f.strip()] = d.get(f.strip(), 0) + int(c)
    return d
a, b, n, top = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
diff = sorted(((a[f] - b.get(f, 0)) / n, f) for f in a)
for per, f in reversed(diff[-top:]):
    print(f"{per:8.0f}  {f[:110]}")
PY
fi
# CALLERS=SYMBOL: who calls SYMBOL, by instructions (callgrind's caller tree, the larger run)
if [ -n "${CALLERS:-}" ]; then
  callgrind_annotate --tree=caller --inclusive=yes "$tmp"/cg."$n1"* 2>/dev/null \
    | python3 -c '
import re, sys
block = []
for line in sys.stdin:
    if not line.strip():
        block = []
        continue
    block.append(line.rstrip())
    if re.search(r"\*\s.*" + re.escape(sys.argv[1]), line):
        callers = [l for l in block if "<" in l]
        callers.sort(key=lambda l: -int(l.split()[0].replace(",", "")))
        print("\n".join(c[:160] for c in callers[:25]))
        break
' "$CALLERS"
fi
