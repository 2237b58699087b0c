#!/usr/bin/env bash
# Benchmark helper, not a test: one wrk run against URL, and the CPU the process PID
# spent on it (utime + stime from /proc, over the run) per request. For A/B runs of two
# builds side by side, alternated, where whole-box figures swing more than the change:
#
#   bash protocol-tests/bench/cpu.sh PID URL [wrk args...]
#   bash protocol-tests/bench/cpu.sh "$(cat old.pid)" http://127.0.0.1:18963/ -t2 -c32 -d4s
#
# Prints "REQ/S req/s  US us/req". Needs: wrk.
set -euo pipefail
pid=$1; url=$2; shift 2
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
t0=$(ticks)
out=$(wrk "$@" "$url")
t1=$(ticks)
rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
reqs=$(awk '/requests in/ {print $1}' <<<"$out")
awk -v a="$t0" -v b="$t1" -v n="$reqs" -v hz="$hz" -v r="$rps" \
  'BEGIN { printf "%s req/s  %.2f us/req\n", r, (b - a) * 1e6 / hz / n }'
