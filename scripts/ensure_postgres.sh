#!/usr/bin/env bash
# Starts the local PostgreSQL cluster if it is not running and makes sure database `test` exists with trust auth on
# 127.0.0.1 (used by the scale-out tests). Safe to run repeatedly.
set -euo pipefail
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then :; else
  ver=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1 || true)
  if [ -z "$ver" ]; then echo "ensure_postgres: no PostgreSQL cluster found" >&2; exit 1; fi
  hba=/etc/postgresql/$ver/main/pg_hba.conf
  if ! grep -q "^host all all 127.0.0.1/32 trust" "$hba"; then
    $SUDO sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "$hba"
  fi
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start
  for i in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE test"
