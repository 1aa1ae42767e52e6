#!/usr/bin/env bash
# Prepares a machine for `make test`: PostgreSQL server and client programs, and the
# `postgres` system user the test servers run as when the tests run as root.
# Idempotent: on a machine that already has everything it only reports what it found.
# Debian/Ubuntu; needs root (or passwordless sudo) only when something must be installed.
set -euo pipefail

say() { printf 'test-setup: %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    say "need root for: $*"
    return 1
  fi
}

# The directory with initdb/pg_ctl: GATE_PG_BINDIR, pg_config --bindir, or the highest
# /usr/lib/postgresql/<version>/bin (the same search gate-test-support does).
pg_bindir() {
  local d
  if [ -n "${GATE_PG_BINDIR:-}" ] && [ -x "$GATE_PG_BINDIR/initdb" ]; then
    echo "$GATE_PG_BINDIR"; return 0
  fi
  if command -v pg_config >/dev/null 2>&1; then
    d=$(pg_config --bindir 2>/dev/null || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
      echo "$d"; return 0
    fi
  fi
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n | tail -n 1 || true)
  if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
    echo "$d"; return 0
  fi
  return 1
}

missing=()
if bindir=$(pg_bindir); then
  say "PostgreSQL server programs: $bindir ($("$bindir/postgres" --version 2>/dev/null || echo '?'))"
else
  missing+=(postgresql)
fi
for tool in psql pgbench; do
  if command -v "$tool" >/dev/null 2>&1 || { [ -n "${bindir:-}" ] && [ -x "$bindir/$tool" ]; }; then
    say "$tool: found"
  else
    missing+=(postgresql-client)
  fi
done
# pgbench ships with the server package on Debian; install both when anything is missing.
if [ "${#missing[@]}" -gt 0 ]; then
  say "missing: ${missing[*]} -> apt-get install postgresql postgresql-client"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update
  as_root apt-get install -y --no-install-recommends postgresql postgresql-client
  # The Debian package creates and starts a default cluster on 5432; the tests never use it.
  bindir=$(pg_bindir) || { say "PostgreSQL installed but initdb/pg_ctl still not found"; exit 1; }
  say "installed: $bindir ($("$bindir/postgres" --version))"
fi

if id postgres >/dev/null 2>&1; then
  say "system user postgres: exists ($(id postgres))"
elif [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null 2>&1; then
  say "creating system user postgres"
  if getent group postgres >/dev/null 2>&1; then
    as_root useradd --system --home-dir /var/lib/postgresql --shell /bin/bash --gid postgres postgres
  else
    as_root useradd --system --home-dir /var/lib/postgresql --shell /bin/bash --user-group postgres
  fi
else
  say "system user postgres: missing (only needed when the tests run as root)"
fi

say "ready"
