#!/usr/bin/env bash
# Benchmark, not a test: what route matching costs as the number of routes grows. nginx
# and Portico each get N routes — N/10 regex routes (`~ \.extNNN$`), the rest prefixes
# (`/sectionNNN/`) — every one answering `return 200` itself, so matching is the work;
# the request goes to the last prefix, so nginx tries every regex before it (Portico:
# one RegexSet pass, a trie walk). Same worker count, same run, N = 1, 100, 1000.
#
#   bash protocol-tests/bench/routes.sh [WORKERS] [DURATION] [CONNECTIONS]
#
# Needs: cargo build --release -p portico; protocol-tests/peers/install.sh (nginx, wrk).
set -euo pipefail
cd "$(dirname "$0")/../.."
source protocol-tests/bench/lib.sh
workers=${1:-1}
duration=${2:-10s}
conns=${3:-64}
bench_start

for n in 1 100 1000; do
  nginx_port=18821; portico_port=18822
  mkdir -p "$tmp/$n/nginx/logs"
  regexes=$((n / 10)); prefixes=$((n - regexes))
  {
    echo "$(nginx_head "$tmp/$n/nginx" "$workers")"
    echo "events { worker_connections 4096; }"
    echo "http { $(temp "$tmp/$n/nginx") access_log off; keepalive_requests 1000000;"
    echo "  server { listen 127.0.0.1:$nginx_port;"
    for i in $(seq 1 $regexes); do echo "    location ~ \\.ext$i\$ { return 200 \"r$i\\n\"; }"; done
    for i in $(seq 1 $prefixes); do echo "    location /section$i/ { return 200 \"p$i\\n\"; }"; done
    echo "  } }"
  } > "$tmp/$n/nginx.conf"
  {
    portico_head "$workers"
    echo "[[listeners]]"
    echo "listen = [\"127.0.0.1:$portico_port\"]"
    for i in $(seq 1 $regexes); do
      printf '  [[listeners.routes]]\n  regex = '"'"'\\.ext%s$'"'"'\n  return = { status = 200, body = "r%s\\n" }\n' "$i" "$i"
    done
    for i in $(seq 1 $prefixes); do
      printf '  [[listeners.routes]]\n  path = "/section%s/"\n  return = { status = 200, body = "p%s\\n" }\n' "$i" "$i"
    done
  } > "$tmp/$n/portico.toml"
  nginx -c "$tmp/$n/nginx.conf" -p "$tmp/$n/nginx" &
  nginx_pid=$!
  "$bin" --config "$tmp/$n/portico.toml" 2>"$tmp/$n/portico.log" &
  portico_pid=$!
  url="/section$prefixes/page"
  for port in $nginx_port $portico_port; do
    for _ in $(seq 1 200); do curl -s -o /dev/null "http://127.0.0.1:$port$url" && break; sleep 0.05; done
  done
  a=$(run nginx "http://127.0.0.1:$nginx_port$url"); b=$(run portico "http://127.0.0.1:$portico_port$url")
  table "$n routes ($regexes regex), GET $url" "$a" "$b"
  kill "$nginx_pid" "$portico_pid"; wait "$nginx_pid" "$portico_pid" 2>/dev/null || true
done
