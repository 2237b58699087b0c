#!/usr/bin/env bash
# Installs every real peer the protocol tests and benchmarks need, idempotently.
# Debian packages via apt, Python packages into a venv at protocol-tests/.venv.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${PORTICO_VENV:-$here/.venv}"

apt_pkgs=(nginx libnginx-mod-mail wrk curl nghttp2-client php-fpm php-cli dovecot-imapd dovecot-pop3d swaks postfix)
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
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts nginx as a service on install; the tests run their own.
  (systemctl stop nginx 2>/dev/null || service nginx stop 2>/dev/null || pkill -x nginx || true) >/dev/null 2>&1
  (pkill -f 'php-fpm: master' || true) >/dev/null 2>&1
  (systemctl stop dovecot 2>/dev/null || pkill -x dovecot || true) >/dev/null 2>&1
  (systemctl stop postfix 2>/dev/null || postfix stop 2>/dev/null || true) >/dev/null 2>&1
fi

# uwsgi from pip compiles its C core (≈25 s once) and needs no --plugin.
py_pkgs=(flask gunicorn uvicorn websockets flup uwsgi aiosmtpd)
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! { "$venv/bin/python" -c 'import flask, gunicorn, uvicorn, websockets, flup, aiosmtpd' 2>/dev/null && [ -x "$venv/bin/uwsgi" ]; }; then
  echo "install.sh: pip install ${py_pkgs[*]}"
  "$venv/bin/pip" install -q "${py_pkgs[@]}"
fi
echo "install.sh: peers ready (venv $venv)"
