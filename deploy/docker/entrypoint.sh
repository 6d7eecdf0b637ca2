#!/bin/sh
# Container entry point: `totalreg <args>` (default: serve --config /etc/totalreg/node.yaml).
# Credentials come from files, never from the image or node.yaml: if PGPASSWORD_FILE names a readable file (a
# Docker/Kubernetes secret) and PGPASSWORD is unset, its first line becomes PGPASSWORD for libpq, so node.yaml can
# say `database: postgresql://totalreg@postgres:5432/totalreg` without a password.
set -eu
if [ -n "${PGPASSWORD_FILE:-}" ] && [ -z "${PGPASSWORD:-}" ]; then
  if [ ! -r "$PGPASSWORD_FILE" ]; then
    echo "totalreg-entrypoint: PGPASSWORD_FILE=$PGPASSWORD_FILE is not readable" >&2
    exit 2
  fi
  PGPASSWORD=$(head -n 1 "$PGPASSWORD_FILE")
  export PGPASSWORD
fi
exec totalreg "$@"
