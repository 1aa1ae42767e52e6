#!/usr/bin/env bash
# `make demo`: gate-connector in front of a throwaway PostgreSQL, with the sample config
# (configs/connector.yaml) and policy (policies/example.rego), registered with a
# gate-control (SQLite store in .data/control.db).
#
# 1. builds gate-connector and gate-control (release),
# 2. starts PostgreSQL in .data/demo-pg on a free loopback port, with database appdb,
#    table users and role app (random password),
# 3. makes a random token for identity alice, a self-signed TLS certificate (.data/tls/),
#    and writes every setting to .data/demo.env,
# 4. starts gate-control, creates the org "demo" and a registration token,
# 5. starts the connector (configs/connector.yaml plus a control_plane section, written to
#    .data/demo-connector.yaml), waits until it is ready, and prints how to connect.
# Ctrl-C stops the connector, the control plane and PostgreSQL.
#
# Overrides: GATE_LISTEN_ADDR (127.0.0.1:6432), GATE_HEALTH_ADDR (127.0.0.1:8081),
# GATE_CONTROL_ADDR (127.0.0.1:8080), GATE_CONNECTOR_BIN / GATE_CONTROL_BIN (skip the build
# and run these binaries), GATE_PG_BINDIR.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
DATA="$ROOT/.data"
READY_TIMEOUT=${GATE_DEMO_READY_TIMEOUT:-60}

say() { printf '\033[1mdemo:\033[0m %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

GATE_LISTEN_ADDR=${GATE_LISTEN_ADDR:-127.0.0.1:6432}
GATE_HEALTH_ADDR=${GATE_HEALTH_ADDR:-127.0.0.1:8081}
GATE_CONTROL_ADDR=${GATE_CONTROL_ADDR:-127.0.0.1:8080}
LISTEN_HOST=${GATE_LISTEN_ADDR%:*}
LISTEN_PORT=${GATE_LISTEN_ADDR##*:}

is_root() { [ "$(id -u)" -eq 0 ]; }

# --- helpers -----------------------------------------------------------------------------

port_in_use() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
    return
  fi
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 40000))
    if ! port_in_use 127.0.0.1 "$p"; then echo "$p"; return; fi
  done
  die "no free port found"
}

random_hex() { # bytes
  od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'
}

# HTTP status of GET http://$1$2, or nothing.
http_status() {
  local hostport=$1 path=$2 line
  if command -v curl >/dev/null 2>&1; then
    curl -s -o /dev/null -m 5 -w '%{http_code}' "http://$hostport$path" 2>/dev/null || true
    return
  fi
  (
    exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}" || exit 0
    printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$hostport" >&3
    IFS=' ' read -r -t 5 _ line _ <&3 || true
    echo "$line"
  ) 2>/dev/null || true
}

# PostgreSQL refuses to run as root: run its programs as the postgres user then.
as_pg() {
  if is_root; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_bindir() {
  local d
  if [ -n "${GATE_PG_BINDIR:-}" ] && [ -x "$GATE_PG_BINDIR/initdb" ]; then echo "$GATE_PG_BINDIR"; return 0; fi
  if command -v pg_config >/dev/null 2>&1; then
    d=$(pg_config --bindir 2>/dev/null || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  fi
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n | tail -n 1 || true)
  if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  return 1
}

# --- clean-up ------------------------------------------------------------------------------

CONNECTOR_PID=""
PGDATA=""
PGBIN=""
SOCKDIR_TMP=""
# shellcheck disable=SC2317  # invoked by the traps
cleanup() {
  local code=$?
  trap - INT TERM EXIT
  if [ -n "$CONNECTOR_PID" ] && kill -0 "$CONNECTOR_PID" 2>/dev/null; then
    say "stopping gate-connector (pid $CONNECTOR_PID)"
    kill -TERM "$CONNECTOR_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$CONNECTOR_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$CONNECTOR_PID" 2>/dev/null || true
    wait "$CONNECTOR_PID" 2>/dev/null || true
  fi
  # After the connector, which deregisters from it on the way out.
  if [ -n "${CONTROL_PID:-}" ] && kill -0 "$CONTROL_PID" 2>/dev/null; then
    say "stopping gate-control (pid $CONTROL_PID)"
    kill -TERM "$CONTROL_PID" 2>/dev/null || true
    wait "$CONTROL_PID" 2>/dev/null || true
  fi
  if [ -n "$PGDATA" ] && [ -f "$PGDATA/postmaster.pid" ]; then
    say "stopping PostgreSQL"
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null 2>&1 \
      || as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
  if [ -n "$SOCKDIR_TMP" ]; then rm -rf "$SOCKDIR_TMP"; fi
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- prerequisites -----------------------------------------------------------------------

mkdir -p "$DATA"
have_postgres() {
  PGBIN=$(pg_bindir) || return 1
  PSQL="$PGBIN/psql"
  [ -x "$PSQL" ] || PSQL=$(command -v psql) || return 1
}
if ! have_postgres; then
  say "PostgreSQL not found: running scripts/test-setup.sh"
  scripts/test-setup.sh
  have_postgres || die "PostgreSQL programs still not found"
fi

for tool in openssl curl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    is_root || die "$tool is missing; install it (apt-get install $tool)"
    say "installing $tool"
    DEBIAN_FRONTEND=noninteractive apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$tool"
  fi
done

if is_root && ! id postgres >/dev/null 2>&1; then
  say "creating system user postgres"
  if getent group postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash --gid postgres postgres
  else
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash --user-group postgres
  fi
fi

for addr in "$GATE_LISTEN_ADDR" "$GATE_HEALTH_ADDR" "$GATE_CONTROL_ADDR"; do
  if port_in_use "${addr%:*}" "${addr##*:}"; then
    die "$addr is already in use; stop what listens there or set GATE_LISTEN_ADDR / GATE_HEALTH_ADDR / GATE_CONTROL_ADDR"
  fi
done

# --- 1. build ------------------------------------------------------------------------------

if [ -n "${GATE_CONNECTOR_BIN:-}" ]; then
  CONNECTOR=$GATE_CONNECTOR_BIN
  say "using $CONNECTOR"
else
  say "building gate-connector (release)"
  cargo build --release --locked -p gate-connector
  CONNECTOR="${CARGO_TARGET_DIR:-$ROOT/target}/release/gate-connector"
fi
[ -x "$CONNECTOR" ] || die "$CONNECTOR not found"
if [ -n "${GATE_CONTROL_BIN:-}" ]; then
  CONTROL=$GATE_CONTROL_BIN
else
  say "building gate-control (release)"
  cargo build --release --locked -p gate-control
  CONTROL="${CARGO_TARGET_DIR:-$ROOT/target}/release/gate-control"
fi
[ -x "$CONTROL" ] || die "$CONTROL not found"

# --- 2. PostgreSQL -------------------------------------------------------------------------

PGROOT="$DATA/demo-pg"
if [ -d "$PGROOT/data" ] && [ -f "$PGROOT/data/postmaster.pid" ]; then
  # A previous demo that was killed outright: stop its server before starting afresh.
  as_pg "$PGBIN/pg_ctl" -D "$PGROOT/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
fi
rm -rf "$PGROOT"
mkdir -p "$PGROOT"
if is_root; then
  chown postgres: "$PGROOT"
  if ! as_pg test -w "$PGROOT"; then
    # The postgres user cannot reach the repository (e.g. it lives under /root): keep the
    # cluster in /tmp and point .data/demo-pg at it.
    rmdir "$PGROOT"
    tmp=$(mktemp -d /tmp/gate-demo-pg.XXXXXX)
    chown postgres: "$tmp"
    ln -s "$tmp" "$PGROOT"
    say "postgres user cannot write to $DATA; cluster is in $tmp"
  fi
fi
PGROOT=$(cd "$PGROOT" && pwd -P)
PGDATA="$PGROOT/data"
PG_PORT=$(free_port)
SOCKDIR="$PGROOT"
if [ $(( ${#SOCKDIR} + 20 )) -gt 100 ]; then # unix socket paths are limited to 107 bytes
  SOCKDIR_TMP=$(mktemp -d /tmp/gate-demo-sock.XXXXXX)
  is_root && chown postgres: "$SOCKDIR_TMP"
  SOCKDIR=$SOCKDIR_TMP
fi

say "initdb $PGDATA"
as_pg "$PGBIN/initdb" -D "$PGDATA" --auth=trust --username=postgres -E UTF8 --locale=C --no-sync >"$PGROOT/initdb.log" 2>&1 \
  || { cat "$PGROOT/initdb.log" >&2; die "initdb failed"; }
as_pg tee -a "$PGDATA/postgresql.conf" >/dev/null <<EOF

# --- scripts/demo.sh ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$SOCKDIR'
password_encryption = 'scram-sha-256'
fsync = off
max_connections = 100
shared_buffers = 32MB
log_connections = on
EOF
as_pg tee "$PGDATA/pg_hba.conf" >/dev/null <<'EOF'
# scripts/demo.sh: superuser over the (private) unix socket, everyone else with SCRAM over TCP.
local all postgres trust
host  all all 127.0.0.1/32 scram-sha-256
EOF

say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGROOT/postgres.log" -w -t 60 start >/dev/null \
  || { tail -n 30 "$PGROOT/postgres.log" >&2 || true; die "PostgreSQL did not start"; }

APP_DB_USER=app
APP_DB_PASSWORD="app_$(random_hex 16)"
"$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$SOCKDIR" -p "$PG_PORT" -U postgres -d postgres <<EOF
CREATE ROLE $APP_DB_USER LOGIN PASSWORD '$APP_DB_PASSWORD';
CREATE DATABASE appdb OWNER $APP_DB_USER;
\connect appdb
SET ROLE $APP_DB_USER;
CREATE TABLE users (id serial PRIMARY KEY, name text, email text, ssn text);
INSERT INTO users (name, email, ssn) VALUES
  ('alice', 'alice@example.com', '123-45-6789'),
  ('bob',   'bob@example.com',   '987-65-4321'),
  ('carol', 'carol@example.com', '555-12-3456');
EOF

# --- 3. token, TLS, env --------------------------------------------------------------------

GATE_DEMO_TOKEN="gate_demo_$(random_hex 24)"
GATE_DEMO_TOKEN_SHA256=$(printf '%s' "$GATE_DEMO_TOKEN" | sha256sum | cut -d' ' -f1)

mkdir -p "$DATA/tls"
GATE_TLS_CERT="$DATA/tls/cert.pem"
GATE_TLS_KEY="$DATA/tls/key.pem"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$GATE_TLS_KEY" -out "$GATE_TLS_CERT" >/dev/null 2>&1 \
  || die "openssl could not make a certificate"
chmod 600 "$GATE_TLS_KEY"

PG_HOST=127.0.0.1
export GATE_LISTEN_ADDR GATE_HEALTH_ADDR PG_HOST PG_PORT APP_DB_USER APP_DB_PASSWORD \
  GATE_DEMO_TOKEN_SHA256 GATE_TLS_CERT GATE_TLS_KEY
umask 077
cat >"$DATA/demo.env" <<EOF
# Written by scripts/demo.sh; \`set -a; . .data/demo.env; set +a\` to reuse it.
GATE_LISTEN_ADDR=$GATE_LISTEN_ADDR
GATE_HEALTH_ADDR=$GATE_HEALTH_ADDR
PG_HOST=$PG_HOST
PG_PORT=$PG_PORT
PG_SOCKET_DIR=$SOCKDIR
APP_DB_USER=$APP_DB_USER
APP_DB_PASSWORD=$APP_DB_PASSWORD
GATE_DEMO_TOKEN=$GATE_DEMO_TOKEN
GATE_DEMO_TOKEN_SHA256=$GATE_DEMO_TOKEN_SHA256
GATE_TLS_CERT=$GATE_TLS_CERT
GATE_TLS_KEY=$GATE_TLS_KEY
EOF
umask 022

# --- 4. control plane ----------------------------------------------------------------------

# A fresh control plane each run: its store, and the connector's registration with it.
rm -rf "$DATA/control.db" "$DATA/control.db-wal" "$DATA/control.db-shm" "$DATA/control-plane"
GATE_API_KEY="gate_sys_$(random_hex 24)"
CONTROL_LOG="$DATA/demo-control.log"
cat >"$DATA/demo-control.yaml" <<YAML
# Written by scripts/demo.sh (configs/control.yaml has the documented sample).
listen_addr: "$GATE_CONTROL_ADDR"
api_key: "\${GATE_API_KEY}"
database: {dsn: "sqlite://$DATA/control.db", max_open_conns: 5, min_conns: 1}
recording: {dir: "$DATA/recordings"}
logging: {level: info, format: json}
YAML
say "starting gate-control on $GATE_CONTROL_ADDR (log: $CONTROL_LOG)"
GATE_API_KEY=$GATE_API_KEY "$CONTROL" --config "$DATA/demo-control.yaml" >"$CONTROL_LOG" 2>&1 </dev/null &
CONTROL_PID=$!
deadline=$((SECONDS + READY_TIMEOUT))
until [ "$(http_status "$GATE_CONTROL_ADDR" /health)" = 200 ]; do
  kill -0 "$CONTROL_PID" 2>/dev/null || { tail -n 40 "$CONTROL_LOG" >&2 || true; die "gate-control exited"; }
  [ "$SECONDS" -lt "$deadline" ] || die "gate-control not up after ${READY_TIMEOUT}s"
  sleep 0.2
done
api() { # method path [json]
  curl -sS --fail-with-body -X "$1" -H "authorization: Bearer $GATE_API_KEY" \
    ${ORG_ID:+-H "x-org-id: $ORG_ID"} -H 'content-type: application/json' \
    ${3:+--data "$3"} "http://$GATE_CONTROL_ADDR$2"
}
json_field() { # field: reads JSON on stdin
  python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}
ORG_ID=""
ORG_ID=$(api POST /api/v1/organizations '{"name": "demo"}' | json_field id) || die "cannot create the demo org"
REGISTRATION_TOKEN=$(api POST /api/v1/registration-tokens '{"name": "demo-connector"}' | json_field secret) \
  || die "cannot create a registration token"
say "control plane: org demo ($ORG_ID), registration token created"
printf 'GATE_CONTROL_ADDR=%s\nGATE_API_KEY=%s\nGATE_ORG_ID=%s\n' "$GATE_CONTROL_ADDR" "$GATE_API_KEY" "$ORG_ID" >>"$DATA/demo.env"

# --- 5. connector --------------------------------------------------------------------------

LOG="$DATA/demo-connector.log"
CONNECTOR_CONFIG="$DATA/demo-connector.yaml"
{
  cat configs/connector.yaml
  printf '\n# Added by scripts/demo.sh: register with the demo control plane.\n'
  printf 'control_plane: {url: "http://%s", registration_token: "%s", heartbeat_interval: 5s}\n' \
    "$GATE_CONTROL_ADDR" "$REGISTRATION_TOKEN"
} >"$CONNECTOR_CONFIG"
say "starting gate-connector (log: $LOG)"
"$CONNECTOR" --config "$CONNECTOR_CONFIG" >"$LOG" 2>&1 </dev/null &
CONNECTOR_PID=$!

deadline=$((SECONDS + READY_TIMEOUT))
until [ "$(http_status "$GATE_HEALTH_ADDR" /ready)" = 200 ]; do
  if ! kill -0 "$CONNECTOR_PID" 2>/dev/null; then
    wait "$CONNECTOR_PID" 2>/dev/null && status=0 || status=$?
    CONNECTOR_PID=""
    tail -n 40 "$LOG" >&2 || true
    die "gate-connector exited (status $status) before it was ready"
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    tail -n 40 "$LOG" >&2 || true
    die "gate-connector not ready on http://$GATE_HEALTH_ADDR/ready after ${READY_TIMEOUT}s"
  fi
  sleep 0.2
done

cat <<EOF

Gate is up: PostgreSQL resource "primary-db" behind $GATE_LISTEN_ADDR (TLS), health on http://$GATE_HEALTH_ADDR.
Connect as alice (the token is the password; the database password never leaves Gate):

psql "host=$LISTEN_HOST port=$LISTEN_PORT user=alice dbname=primary-db password=$GATE_DEMO_TOKEN sslmode=require"

Then try:

  SELECT id, name, email, ssn FROM users;   -- email partially masked, ssn redacted
  DROP TABLE users;                         -- blocked: "DROP statements are not allowed through Gate"

Audit log: .data/audit.jsonl   recordings: .data/recordings/   connector log: $LOG
Settings: .data/demo.env   metrics: http://$GATE_HEALTH_ADDR/metrics

Control plane on http://$GATE_CONTROL_ADDR (org demo; its system key is GATE_API_KEY in .data/demo.env):
  curl -H "authorization: Bearer \$GATE_API_KEY" -H "x-org-id: $ORG_ID" http://$GATE_CONTROL_ADDR/api/v1/connectors
  gate recordings --url http://$GATE_CONTROL_ADDR --token \$GATE_API_KEY --org $ORG_ID list
Press Ctrl-C to stop.
EOF

wait "$CONNECTOR_PID" && status=0 || status=$?
CONNECTOR_PID=""
say "gate-connector exited (status $status); see $LOG"
exit "$status"
