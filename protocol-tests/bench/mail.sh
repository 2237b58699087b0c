#!/usr/bin/env bash
# Benchmark, not a test: IMAP through Portico and through nginx's mail module to the same
# Dovecot, with the same auth_http server, same run:
#   1. LOGIN + SELECT INBOX + LOGOUT sessions per second (asyncio client, C at a time);
#   2. resident memory of each proxy holding N idle authenticated IMAP sessions.
# Prints both and the ratios.
#
#   bash protocol-tests/bench/mail.sh [IDLE_SESSIONS] [SECONDS] [CONCURRENCY]
#
# Needs: cargo build --release -p portico; protocol-tests/peers/install.sh. Each idle
# session holds two descriptors in the proxy: keep IDLE_SESSIONS under half the hard
# open-files limit (20,000 on the machine the figures come from).
set -euo pipefail
cd "$(dirname "$0")/../.."
source protocol-tests/bench/lib.sh
idle=${1:-9000}
seconds=${2:-10}
conc=${3:-32}
bin=${PORTICO_BIN:-target/release/portico}
unset PORTICO_BIN # Portico reads PORTICO_* as config: it would refuse the unknown key "bin"
[ -x "$bin" ] || cargo build --release -p portico
apps=$(pwd)/protocol-tests/apps
tmp=$(mktemp -d)
chmod 755 "$tmp"
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

imap=18901; auth=18902; ngx=18903; portico=18904
mkdir -p "$tmp/home" "$tmp/nginx/logs"; chmod 777 "$tmp/home"
printf 'alice:{PLAIN}secret\n' > "$tmp/users"
cat > "$tmp/dovecot.conf" <<CONF
base_dir = $tmp/run
state_dir = $tmp/state
log_path = $tmp/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
mail_location = maildir:$tmp/home/%u/Maildir
login_trusted_networks = 127.0.0.1
default_client_limit = 18000
default_process_limit = 100
default_vsz_limit = 0
passdb {
  driver = passwd-file
  args = $tmp/users
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=$tmp/home/%u
}
service imap-login {
  chroot =
  service_count = 0
  process_min_avail = 2
  client_limit = 18000
  inet_listener imap {
    port = $imap
  }
}
service imap {
  service_count = 0
  client_limit = 1000
  process_limit = 64
}
service anvil {
  chroot =
}
service auth {
  client_limit = 18000
}
protocol imap {
  mail_max_userip_connections = 30000
}
CONF
dovecot -F -c "$tmp/dovecot.conf" &
python3 "$apps/auth_http.py" $auth "$tmp/auth.log" imap=127.0.0.1:$imap &
cat > "$tmp/nginx/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_mail_module.so;
$(nginx_head "$tmp/nginx" 1)
worker_rlimit_nofile 30000;
events { worker_connections 25000; }
mail { auth_http 127.0.0.1:$auth/auth; proxy_pass_error_message on;
  server { listen 127.0.0.1:$ngx; protocol imap; } }
CONF
cat > "$tmp/portico.toml" <<CONF
[runtime]
workers = 1
[log]
level = "warn"
[[listeners]]
listen = ["127.0.0.1:$portico"]
protocol = "imap"
auth_http = "http://127.0.0.1:$auth/auth"
  [listeners.limits]
  max_connections = 25000
CONF
nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" &
"$bin" --config "$tmp/portico.toml" 2>"$tmp/portico.log" &
for port in $imap $auth $ngx $portico; do
  for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
done
rm -f "$tmp/auth.log"; touch "$tmp/auth.log"

py=python3
rate() { $py "$apps/imap_bench.py" rate 127.0.0.1 "$1" 2 "$conc" >/dev/null; $py "$apps/imap_bench.py" rate 127.0.0.1 "$1" "$seconds" "$conc"; }
n=$(rate $ngx); p=$(rate $portico)
echo "IMAP LOGIN+SELECT+LOGOUT, $conc at a time, ${seconds}s (1 worker each):"
echo "nginx:   $n"
echo "portico: $p"
python3 - "$n" "$p" <<'PY'
import sys
n = float(sys.argv[1].split()[-1]); p = float(sys.argv[2].split()[-1])
print(f"ratio portico/nginx: sessions/s {p / n:.2f}x")
PY

rss() { # sum of VmRSS (KiB) of the given pids
  local t=0; for pid in "$@"; do t=$((t + $(awk '/VmRSS/ {print $2}' /proc/$pid/status))); done; echo $t; }
ngx_master=$(pgrep -f "$tmp/nginx/nginx.conf" | head -1)
ngx_pids="$ngx_master $(pgrep -P "$ngx_master" | tr '\n' ' ')"   # master and worker
p_pid=$(pgrep -f "$tmp/portico.toml")
hold() { # port → prints RSS before and after N idle sessions, and how many made it
  local port=$1; shift
  local before; before=$(rss "$@")
  exec 5> >($py "$apps/imap_bench.py" idle 127.0.0.1 "$port" "$idle" > "$tmp/idle.out")
  for _ in $(seq 1 600); do grep -q ready "$tmp/idle.out" 2>/dev/null && break; sleep 0.5; done
  local after; after=$(rss "$@")
  echo "$before $after $(awk '{print $2}' "$tmp/idle.out")"
  exec 5>&-
  sleep 2
}
read -r nb na nn <<<"$(hold $ngx $ngx_pids)"
read -r pb pa pn <<<"$(hold $portico $p_pid)"
echo "RSS holding idle authenticated IMAP sessions (asked for $idle):"
python3 - "$nb" "$na" "$nn" "$pb" "$pa" "$pn" <<'PY'
import sys
nb, na, nn, pb, pa, pn = map(int, sys.argv[1:])
print(f"nginx:   {nn} sessions, RSS {nb/1024:.1f} -> {na/1024:.1f} MiB, {(na-nb)/max(nn,1):.2f} KiB/session")
print(f"portico: {pn} sessions, RSS {pb/1024:.1f} -> {pa/1024:.1f} MiB, {(pa-pb)/max(pn,1):.2f} KiB/session")
print(f"ratio portico/nginx (RSS with sessions): {pa/max(na,1):.2f}x, per session {((pa-pb)/max(pn,1))/max((na-nb)/max(nn,1),0.001):.2f}x")
PY
