#!/usr/bin/env bash
# Benchmark, not a test: TLS handshakes per second, full and resumed, Portico beside
# nginx in one run, the same ECDSA P-256 certificate, both answering `return 200`.
# `openssl s_time` opens connection after connection for DURATION (-new: a full
# handshake each; -reuse: the session resumed), CLIENTS of them at once; the figure is
# connections per real second, summed over the clients. Each connection sends a GET and
# reads the answer (-www /): TLS 1.3 tickets come after the handshake, and a client that
# reads nothing (s_time without -www) never gets one from rustls, so never resumes.
# TLS 1.3 and TLS 1.2 are measured apart (s_time -tls1_3 / -tls1_2): a TLS 1.2
# resumption is an abbreviated handshake with no key exchange, a TLS 1.3 one still does
# X25519. nginx 1.22's default ssl_protocols has no TLSv1.3, so the config names both
# (Mozilla's intermediate profile, nginx ≥ 1.23.4's default).
#
#   bash protocol-tests/bench/tls.sh [WORKERS] [DURATION_S] [CLIENTS]
#
# Needs: cargo build --release -p portico; protocol-tests/peers/install.sh (nginx).
set -euo pipefail
cd "$(dirname "$0")/../.."
source protocol-tests/bench/lib.sh
workers=${1:-1}
duration=${2:-10}
clients=${3:-2}
bench_start

nginx_port=18871; portico_port=18872
mkdir -p "$tmp/nginx/logs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/key.pem" \
  -out "$tmp/cert.pem" -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost" -days 2 2>/dev/null
cat > "$tmp/nginx/nginx.conf" <<CONF
$(nginx_head "$tmp/nginx" "$workers")
events { worker_connections 4096; }
http { $(temp "$tmp/nginx") access_log off;
  ssl_session_cache shared:SSL:10m; ssl_session_tickets on; ssl_protocols TLSv1.2 TLSv1.3;
  server { listen 127.0.0.1:$nginx_port ssl; ssl_certificate $tmp/cert.pem; ssl_certificate_key $tmp/key.pem;
    location / { return 200 "hello\n"; } } }
CONF
cat > "$tmp/portico.toml" <<CONF
$(portico_head "$workers")
[[listeners]]
listen = ["127.0.0.1:$portico_port"]
  [listeners.tls]
  cert = "$tmp/cert.pem"
  key = "$tmp/key.pem"
  [[listeners.routes]]
  path = "/"
  return = { status = 200, body = "hello\n" }
CONF
nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" &
"$bin" run --config "$tmp/portico.toml" &
for port in "$nginx_port" "$portico_port"; do
  for _ in $(seq 1 200); do curl -sk -o /dev/null "https://127.0.0.1:$port/" && break; sleep 0.05; done
done

rate() { # port mode [version flag] → connections per real second, summed over the clients
  local port=$1 mode=$2 version=${3:-} i
  for i in $(seq 1 "$clients"); do
    openssl s_time -connect "127.0.0.1:$port" "$mode" $version -www / -time "$duration" 2>/dev/null > "$tmp/st.$i" &
  done
  wait $(jobs -p | tail -n "$clients")
  python3 - "$tmp" "$clients" <<'PY'
import re, sys
total = 0.0
for i in range(1, int(sys.argv[2]) + 1):
    t = open(f"{sys.argv[1]}/st.{i}").read()
    m = re.search(r"(\d+) connections in (\d+) real seconds", t)
    total += int(m.group(1)) / max(int(m.group(2)), 1)
print(f"{total:.0f}")
PY
}

echo "TLS handshakes per second (openssl s_time, $clients clients, ${duration}s each, workers=$workers)"
printf '%-8s %-8s %12s %12s\n' server version full resumed
declare -A r
for v in 1.3 1.2; do
  for srv in nginx portico; do
    port=$nginx_port; [ $srv = portico ] && port=$portico_port
    r[$srv.$v.full]=$(rate "$port" -new "-tls${v/./_}")
    r[$srv.$v.res]=$(rate "$port" -reuse "-tls${v/./_}")
    printf '%-8s %-8s %12s %12s\n' $srv "TLS$v" "${r[$srv.$v.full]}" "${r[$srv.$v.res]}"
  done
  python3 -c "import sys; a=list(map(float,sys.argv[1:])); print(f'TLS$v ratio portico/nginx: full {a[1]/a[0]:.2f}x, resumed {a[3]/a[2]:.2f}x')" \
    "${r[nginx.$v.full]}" "${r[portico.$v.full]}" "${r[nginx.$v.res]}" "${r[portico.$v.res]}"
done
