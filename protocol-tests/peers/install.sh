#!/usr/bin/env bash
# Installs every real peer the protocol tests and benchmarks need, idempotently.
# Debian packages via apt, Python packages into a venv at protocol-tests/.venv.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${PORTICO_VENV:-$here/.venv}"

apt_pkgs=(iproute2 nginx libnginx-mod-mail wrk curl nghttp2-client php-fpm php-cli dovecot-imapd dovecot-pop3d swaks postfix apache2-utils redis-server haproxy systemd pebble)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install.sh: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Postfix asks how it is used: a local-only system, never started as a service here.
  printf '%s\n' "postfix postfix/main_mailer_type select Local only" \
    "postfix postfix/mailname string localhost" | debconf-set-selections
  # Debian starts nginx, php-fpm, Dovecot and Postfix as services on install; the tests run
  # their own. A policy-rc.d that answers 101 ("action forbidden") keeps invoke-rc.d and
  # deb-systemd-invoke from starting them at all, so nothing has to be stopped afterwards
  # and no process this script did not start is touched. It is removed again on exit,
  # and only when this script put it there.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$(trap -p EXIT)" = "" ]; then
    # Someone else's policy-rc.d may allow starts: stop what the packages installed just
    # now started, through the service manager that started it (never by process name,
    # never a service of a package that was already installed).
    svcs=()
    for p in "${missing[@]}"; do
      case "$p" in
        nginx) svcs+=(nginx) ;;
        php-fpm) svcs+=(php8.2-fpm) ;;
        dovecot-imapd | dovecot-pop3d) svcs+=(dovecot) ;;
        postfix) svcs+=(postfix) ;;
      esac
    done
    for svc in "${svcs[@]}"; do
      if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
        systemctl stop "$svc" >/dev/null 2>&1 || true
      elif [ -x "/etc/init.d/$svc" ]; then
        "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
      fi
    done
  fi
fi

# uwsgi from pip compiles its C core (≈25 s once) and needs no --plugin.
py_pkgs=(flask gunicorn uvicorn websockets flup uwsgi aiosmtpd h2 brotli zstandard grpcio bcrypt mmdb-writer prometheus-client)
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! { "$venv/bin/python" -c 'import flask, gunicorn, uvicorn, websockets, flup, aiosmtpd, h2, brotli, zstandard, grpc, bcrypt, mmdb_writer, prometheus_client' 2>/dev/null && [ -x "$venv/bin/uwsgi" ]; }; then
  echo "install.sh: pip install ${py_pkgs[*]}"
  "$venv/bin/pip" install -q "${py_pkgs[@]}"
fi
echo "install.sh: peers ready (venv $venv)"
