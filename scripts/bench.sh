#!/usr/bin/env bash
# `make bench`: Gate against PostgreSQL direct and pgbouncer, plus idle-session memory and
# login latency. See docs/benchmarks.md.
#
# 1. set-up: installs pgbouncer if missing (apt), builds gate-connector and gate-bench
#    (release), starts a throwaway PostgreSQL in a temp dir, `pgbench -i -s 10`, a SCRAM role;
# 2. pgbouncer (session pooling, client TLS, SCRAM, pool 20) in front of it;
# 3. gate-connector (TLS, token identity, pool 20, policies/example.rego at all three stages,
#    recording and audit on, log level warn) in front of it;
# 4. pgbench -S, simple and extended protocol, -c 1 and -c 8, the three targets alternating
#    within each round; medians and medians of per-round ratios (gate-bench report);
# 5. 2,000 idle TLS sessions through Gate: RSS per session, login latency while they are
#    open (gate-bench idle);
# 6. everything it started is stopped on exit (also on Ctrl-C or error).
#
# Settings (environment):
#   BENCH_QUICK=1            quick mode: 3 rounds x 2 s instead of 5 rounds x 7 s
#   BENCH_ROUNDS, BENCH_SECONDS   rounds and seconds per pgbench run (override either mode)
#   BENCH_MODES="simple extended"  BENCH_CLIENTS="1 8"  BENCH_SCALE=10
#   BENCH_IDLE_SESSIONS=2000 BENCH_LOGIN_PROBES=20
#   BENCH_SKIP_IDLE=1        skip the idle-session part;  BENCH_SKIP_PGBENCH=1  skip pgbench
#   BENCH_SKIP_BUILD=1       use the existing target/release binaries
#   BENCH_KEEP=1             keep the temp dir (logs, configs, results) after the run
#   BENCH_STRICT=1           exit 3 when a target is missed (default: report only)
#   BENCH_HOLD=1             after set-up, print each target's libpq settings and keep the
#                            servers running until Ctrl-C (for profiling by hand)
#   GATE_PG_BINDIR           PostgreSQL programs (default: newest /usr/lib/postgresql/*/bin)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
STARTED_AT=$SECONDS

if [ "${BENCH_QUICK:-0}" = 1 ]; then
  ROUNDS=${BENCH_ROUNDS:-3}
  RUN_SECS=${BENCH_SECONDS:-2}
  MODE_NAME=quick
else
  ROUNDS=${BENCH_ROUNDS:-5}
  RUN_SECS=${BENCH_SECONDS:-7}
  MODE_NAME=normal
fi
MODES=${BENCH_MODES:-simple extended}
CLIENT_COUNTS=${BENCH_CLIENTS:-1 8}
SCALE=${BENCH_SCALE:-10}
IDLE_SESSIONS=${BENCH_IDLE_SESSIONS:-2000}
LOGIN_PROBES=${BENCH_LOGIN_PROBES:-20}
READY_TIMEOUT=${BENCH_READY_TIMEOUT:-60}

say() { printf '\033[1mbench:\033[0m %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

as_pg() {
  if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

port_in_use() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# free_port VAR: a free loopback port (not handed out before) into VAR.
USED_PORTS=" "
free_port() {
  local p
  for _ in $(seq 1 500); do
    # Below Linux's ephemeral range (32768+): a port some outgoing connection is using
    # locally passes the connect probe yet cannot be listened on.
    p=$((20000 + RANDOM % 12000))
    case "$USED_PORTS" in *" $p "*) continue ;; esac
    if ! port_in_use 127.0.0.1 "$p"; then
      USED_PORTS="$USED_PORTS$p "
      printf -v "$1" '%s' "$p"
      return
    fi
  done
  die "no free port found"
}

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

http_status() { # host:port path
  if command -v curl >/dev/null 2>&1; then
    curl -s -o /dev/null -m 5 -w '%{http_code}' "http://$1$2" 2>/dev/null || true
    return
  fi
  (
    exec 3<>"/dev/tcp/${1%:*}/${1##*:}" || exit 0
    printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$2" "$1" >&3
    IFS=' ' read -r -t 5 _ line _ <&3 || true
    echo "$line"
  ) 2>/dev/null || true
}

pg_bindir() {
  local d
  if [ -n "${GATE_PG_BINDIR:-}" ] && [ -x "$GATE_PG_BINDIR/initdb" ]; then echo "$GATE_PG_BINDIR"; return 0; fi
  if command -v pg_config >/dev/null 2>&1; then
    d=$(pg_config --bindir 2>/dev/null || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  fi
  # shellcheck disable=SC2012
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n | tail -n 1 || true)
  if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  return 1
}

# --- clean-up ------------------------------------------------------------------------------

WORK=""
PGDATA=""
PGBIN=""
CHILD_PID=""      # the pgbench / gate-bench run in progress
CONNECTOR_PID=""
PGB_PID=""
# shellcheck disable=SC2317  # invoked by the traps
alive() { # pid: running (a zombie does not count)
  kill -0 "$1" 2>/dev/null || return 1
  local state
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)
  [ "$state" != Z ]
}
# shellcheck disable=SC2317
stop_pid() { # pid name [seconds before SIGKILL]
  local pid=$1 tenths=$(( ${3:-10} * 10 ))
  alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
  say "stopping $2 (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 "$tenths"); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    say "$2 did not stop on SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
# shellcheck disable=SC2317
cleanup() {
  local code=$?
  trap - INT TERM EXIT
  set +e
  [ -n "$CHILD_PID" ] && stop_pid "$CHILD_PID" "benchmark client"
  [ -n "$CONNECTOR_PID" ] && stop_pid "$CONNECTOR_PID" gate-connector 30
  [ -n "$PGB_PID" ] && stop_pid "$PGB_PID" pgbouncer 5
  if [ -n "$PGDATA" ] && [ -f "$PGDATA/postmaster.pid" ]; then
    say "stopping PostgreSQL"
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null 2>&1 \
      || as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w -t 30 stop >/dev/null 2>&1
  fi
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "$code" -ne 0 ] && [ "$code" -ne 130 ] && [ "$code" -ne 143 ]; then
      for f in "$WORK/gate/connector.log" "$WORK/pgbouncer/pgbouncer.log" "$WORK/postgres.log"; do
        if [ -s "$f" ]; then say "last lines of $f:"; tail -n 15 "$f" >&2; fi
      done
    fi
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
      say "kept $WORK"
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run_child OUT COMMAND...: runs COMMAND in the background (output to file OUT, or "-" for
# ours) and waits for it, so that a signal reaches the trap at once (and the trap stops the
# command) instead of after the command ends. (Redirecting the call itself would redirect the
# trap's output too.)
run_child() {
  local out=$1
  shift
  if [ "$out" = - ]; then "$@" & else "$@" >"$out" 2>&1 & fi
  CHILD_PID=$!
  local rc=0
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  return "$rc"
}

# --- 1. set-up -----------------------------------------------------------------------------

# Idle sessions need a file descriptor each, in Gate and in the client.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [ "$NOFILE" != unlimited ] && [ "$NOFILE" -lt $((IDLE_SESSIONS + 200)) ]; then
  say "warning: ulimit -n is $NOFILE; $IDLE_SESSIONS idle sessions may not fit"
fi

PGBIN=$(pg_bindir) || die "PostgreSQL programs not found (run scripts/test-setup.sh or set GATE_PG_BINDIR)"
PGBENCH="$PGBIN/pgbench"
[ -x "$PGBENCH" ] || PGBENCH=$(command -v pgbench) || die "pgbench not found"
PSQL="$PGBIN/psql"
[ -x "$PSQL" ] || PSQL=$(command -v psql) || die "psql not found"

need_apt=""
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || need_apt="$need_apt pgbouncer"
command -v openssl >/dev/null 2>&1 || need_apt="$need_apt openssl"
if [ -n "$need_apt" ]; then
  is_root || die "missing:$need_apt (install them: apt-get install$need_apt)"
  say "installing$need_apt"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need_apt >/dev/null
fi
PGBOUNCER=$(command -v pgbouncer 2>/dev/null || echo /usr/sbin/pgbouncer)
[ -x "$PGBOUNCER" ] || die "pgbouncer not found after installing it"

if is_root && ! id postgres >/dev/null 2>&1; then
  say "creating system user postgres"
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash --user-group postgres
fi

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  say "building gate-connector and gate-bench (release; slow the first time)"
  cargo build --release -p gate-connector -p gate-bench
fi
BUILT_AT=$SECONDS
CONNECTOR="$TARGET_DIR/release/gate-connector"
BENCHTOOL="$TARGET_DIR/release/gate-bench"
[ -x "$CONNECTOR" ] || die "$CONNECTOR not found"
[ -x "$BENCHTOOL" ] || die "$BENCHTOOL not found"

WORK=$(mktemp -d /tmp/gate-bench.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/gate" "$WORK/pgbouncer" "$WORK/runs"
if is_root; then chown postgres: "$WORK" "$WORK/pgbouncer"; fi

# PostgreSQL ---------------------------------------------------------------------------------
PGDATA_DIR="$WORK/pgdata"
free_port PG_PORT
say "PostgreSQL: initdb in $WORK, port $PG_PORT"
as_pg "$PGBIN/initdb" -D "$PGDATA_DIR" --auth=trust --username=postgres -E UTF8 --locale=C --no-sync \
  >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
as_pg tee -a "$PGDATA_DIR/postgresql.conf" >/dev/null <<EOF

# --- scripts/bench.sh ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
password_encryption = 'scram-sha-256'
max_connections = 200
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
as_pg tee "$PGDATA_DIR/pg_hba.conf" >/dev/null <<'EOF'
local all postgres trust
host  all all 127.0.0.1/32 scram-sha-256
EOF
as_pg touch "$WORK/postgres.log"
as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$WORK/postgres.log" -w -t 60 start >/dev/null \
  || die "PostgreSQL did not start"
PGDATA=$PGDATA_DIR

DB_USER=bench
DB_NAME=bench
DB_PASSWORD="pw_$(random_hex 16)"
"$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PG_PORT" -U postgres -d postgres <<EOF
CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASSWORD';
CREATE DATABASE $DB_NAME OWNER $DB_USER;
EOF
say "pgbench -i -s $SCALE"
PGPASSWORD=$DB_PASSWORD "$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" "$DB_NAME" \
  >"$WORK/pgbench-init.log" 2>&1 || { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }

# TLS: one self-signed certificate for pgbouncer and Gate -----------------------------------
CERT="$WORK/tls-cert.pem"
KEY="$WORK/tls-key.pem"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$KEY" -out "$CERT" >/dev/null 2>&1 || die "openssl could not make a certificate"
chmod 600 "$KEY"
if is_root; then chown postgres: "$KEY" "$CERT"; fi # pgbouncer runs as postgres; Gate as root

# 2. pgbouncer -------------------------------------------------------------------------------
free_port PGB_PORT
PGB_DIR="$WORK/pgbouncer"
printf '"%s" "%s"\n' "$DB_USER" "$DB_PASSWORD" >"$PGB_DIR/userlist.txt"
cat >"$PGB_DIR/pgbouncer.ini" <<EOF
[databases]
$DB_NAME = host=127.0.0.1 port=$PG_PORT dbname=$DB_NAME

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
pidfile = $PGB_DIR/pgbouncer.pid
logfile = $PGB_DIR/pgbouncer.log
auth_type = scram-sha-256
auth_file = $PGB_DIR/userlist.txt
pool_mode = session
default_pool_size = 20
max_client_conn = 3000
client_tls_sslmode = require
client_tls_cert_file = $CERT
client_tls_key_file = $KEY
server_tls_sslmode = disable
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
EOF
if is_root; then chown postgres: "$PGB_DIR"/*; chmod 600 "$PGB_DIR/userlist.txt"; fi
say "pgbouncer: 127.0.0.1:$PGB_PORT (session pooling, client TLS, SCRAM, pool 20)"
# In the foreground (no -d) as a child of this script, so that it is ours to stop and reap;
# setpriv (not runuser) keeps the raised file descriptor limit and the pid.
if is_root; then
  setpriv --reuid=postgres --regid=postgres --init-groups "$PGBOUNCER" -q "$PGB_DIR/pgbouncer.ini" \
    >"$PGB_DIR/stderr.log" 2>&1 </dev/null &
else
  "$PGBOUNCER" -q "$PGB_DIR/pgbouncer.ini" >"$PGB_DIR/stderr.log" 2>&1 </dev/null &
fi
PGB_PID=$!
for _ in $(seq 1 100); do
  port_in_use 127.0.0.1 "$PGB_PORT" && break
  alive "$PGB_PID" || { cat "$PGB_DIR/stderr.log" >&2; PGB_PID=""; die "pgbouncer exited"; }
  sleep 0.1
done
port_in_use 127.0.0.1 "$PGB_PORT" || die "pgbouncer is not listening on $PGB_PORT"

# 3. Gate ------------------------------------------------------------------------------------
free_port GATE_PORT
free_port GATE_HEALTH_PORT
GATE_USER=alice
GATE_RESOURCE=bench-db
GATE_TOKEN="gate_bench_$(random_hex 24)"
GATE_TOKEN_SHA256=$(printf '%s' "$GATE_TOKEN" | "$CONNECTOR" hash-token)
GATE_CONFIG="$WORK/gate/connector.yaml"
GATE_LOG="$WORK/gate/connector.log"
cat >"$GATE_CONFIG" <<EOF
# Written by scripts/bench.sh.
listen_addr: "127.0.0.1:$GATE_PORT"
health_addr: "127.0.0.1:$GATE_HEALTH_PORT"
tls: {enabled: true, cert_file: "$CERT", key_file: "$KEY"}
auth:
  tokens:
    - name: $GATE_USER
      email: $GATE_USER@example.com
      groups: [engineering]
      token_sha256: "$GATE_TOKEN_SHA256"
resources:
  - name: $GATE_RESOURCE
    protocol: postgres
    host: 127.0.0.1
    port: $PG_PORT
    database: $DB_NAME
    credentials: {username: "$DB_USER", password: "$DB_PASSWORD"}
    pool: {max_connections: 20, idle_timeout: "5m"}
policies:
  - {path: "$ROOT/policies/example.rego", stage: session}
  - {path: "$ROOT/policies/example.rego", stage: pre_request}
  - {path: "$ROOT/policies/example.rego", stage: post_request}
recording: {dir: "$WORK/gate/recordings"}
audit: {file: "$WORK/gate/audit.jsonl"}
logging: {level: warn, format: json}
EOF
chmod 600 "$GATE_CONFIG"
say "gate-connector: 127.0.0.1:$GATE_PORT (TLS, token, pool 20, example.rego x3, recording+audit on)"
"$CONNECTOR" --config "$GATE_CONFIG" >"$GATE_LOG" 2>&1 </dev/null &
CONNECTOR_PID=$!
deadline=$((SECONDS + READY_TIMEOUT))
until [ "$(http_status "127.0.0.1:$GATE_HEALTH_PORT" /ready)" = 200 ]; do
  kill -0 "$CONNECTOR_PID" 2>/dev/null || { CONNECTOR_PID=""; die "gate-connector exited before it was ready"; }
  [ "$SECONDS" -lt "$deadline" ] || die "gate-connector not ready after ${READY_TIMEOUT}s"
  sleep 0.2
done

# Connection settings per target (libpq environment variables).
target_env() { # target -> prints env assignments
  case "$1" in
    direct) echo "PGHOST=127.0.0.1 PGPORT=$PG_PORT PGUSER=$DB_USER PGPASSWORD=$DB_PASSWORD PGDATABASE=$DB_NAME PGSSLMODE=disable" ;;
    pgbouncer) echo "PGHOST=127.0.0.1 PGPORT=$PGB_PORT PGUSER=$DB_USER PGPASSWORD=$DB_PASSWORD PGDATABASE=$DB_NAME PGSSLMODE=require" ;;
    gate) echo "PGHOST=127.0.0.1 PGPORT=$GATE_PORT PGUSER=$GATE_USER PGPASSWORD=$GATE_TOKEN PGDATABASE=$GATE_RESOURCE PGSSLMODE=require" ;;
  esac
}
TARGETS=(direct pgbouncer gate)
# CPU ticks (user, system) the proxy of a target has used so far; nothing for direct.
proxy_ticks() {
  local pid=""
  case "$1" in
    pgbouncer) pid=$PGB_PID ;;
    gate) pid=$CONNECTOR_PID ;;
  esac
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 0
  # The command name is in parentheses and may hold spaces: count fields after it.
  sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12, $13}'
}
CLK_TCK=$(getconf CLK_TCK)
for t in "${TARGETS[@]}"; do
  # shellcheck disable=SC2046
  got=$(env -u PGSERVICE -u PGSSLROOTCERT $(target_env "$t") "$PSQL" -X -At -c "SELECT count(*) FROM pgbench_branches" 2>&1) \
    || die "$t: psql failed: $got"
  [ "$got" = "$SCALE" ] || die "$t: unexpected answer: $got"
done
say "all three targets answer; TLS: direct plain TCP (sslmode=disable), pgbouncer and Gate sslmode=require"
if [ "${BENCH_HOLD:-0}" = 1 ]; then
  for t in "${TARGETS[@]}"; do say "$t: $(target_env "$t")"; done
  say "gate-connector pid $CONNECTOR_PID, pgbouncer pid $PGB_PID; holding until Ctrl-C"
  # `wait` (not a foreground sleep) lets the exit trap run as soon as a signal arrives.
  while :; do sleep 3600 & wait $!; done
fi

cat <<EOF

== Gate benchmark ($MODE_NAME mode) — $(date -u '+%Y-%m-%d %H:%M UTC') ==
machine   $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load average $(cut -d' ' -f1-3 /proc/loadavg) at start, ulimit -n $NOFILE
versions  $("$PGBIN/postgres" --version | head -n1); $("$PGBOUNCER" --version | head -n1); gate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (+uncommitted changes)')
targets   direct    PostgreSQL 127.0.0.1:$PG_PORT, sslmode=disable (plain TCP on loopback), SCRAM
          pgbouncer 127.0.0.1:$PGB_PORT, sslmode=require, SCRAM, session pooling, pool 20
          gate      127.0.0.1:$GATE_PORT, sslmode=require, token login, pool 20, example.rego x3, recording+audit on
pgbench   -S -n, -M {${MODES// /,}} x -c {${CLIENT_COUNTS// /,}}, $ROUNDS rounds x ${RUN_SECS}s per run, targets alternating (start rotates per round), scale $SCALE

EOF

# 4. pgbench ---------------------------------------------------------------------------------
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
REPORT_RC=0
if [ "${BENCH_SKIP_PGBENCH:-0}" != 1 ]; then
  run_no=0
  for mode in $MODES; do
    for c in $CLIENT_COUNTS; do
      j=1
      [ "$c" -ge 2 ] && j=2
      for round in $(seq 1 "$ROUNDS"); do
        line="$(printf '%-8s -c %-2s round %d/%d:' "$mode" "$c" "$round" "$ROUNDS")"
        for k in 0 1 2; do
          t=${TARGETS[$(((round - 1 + k) % 3))]}
          run_no=$((run_no + 1))
          out="$WORK/runs/$run_no-$mode-c$c-r$round-$t.log"
          rc=0
          ticks0=$(proxy_ticks "$t")
          # shellcheck disable=SC2046
          run_child "$out" env -u PGSERVICE -u PGSSLROOTCERT $(target_env "$t") \
            "$PGBENCH" -n -S -M "$mode" -c "$c" -j "$j" -T "$RUN_SECS" || rc=$?
          ticks1=$(proxy_ticks "$t")
          txs=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out" | head -n1)
          # The proxy's CPU time per transaction, user and system, in µs (NA for direct).
          cpu=$(awk -v a="$ticks0" -v b="$ticks1" -v n="${txs:-0}" -v hz="$CLK_TCK" 'BEGIN {
            split(a, x, " "); split(b, y, " ")
            if (a == "" || b == "" || n <= 0) { print "NA\tNA"; exit }
            printf "%.2f\t%.2f\n", (y[1] - x[1]) * 1e6 / hz / n, (y[2] - x[2]) * 1e6 / hz / n }')
          tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out" | head -n1)
          lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$out" | head -n1)
          failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out" | head -n1)
          if [ "$rc" -ne 0 ] || [ -z "$tps" ]; then
            say "$t $mode -c $c round $round: pgbench failed (status $rc):"
            tail -n 5 "$out" >&2
            tps=NA
          fi
          printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$c" "$round" "$t" "$tps" "${lat:-NA}" "${failed:-0}" "$cpu" >>"$RESULTS"
          line="$line $(printf '%s %s' "$t" "${tps%.*}")"
        done
        say "$line tps"
      done
    done
  done
  echo
  "$BENCHTOOL" report "$RESULTS" || REPORT_RC=$?
  [ "$REPORT_RC" -eq 0 ] || [ "$REPORT_RC" -eq 3 ] || die "gate-bench report failed"
  echo
fi

# 5. idle sessions ---------------------------------------------------------------------------
IDLE_RC=0
if [ "${BENCH_SKIP_IDLE:-0}" != 1 ]; then
  say "opening $IDLE_SESSIONS idle sessions through Gate"
  GATE_BENCH_PASSWORD=$GATE_TOKEN run_child - "$BENCHTOOL" idle \
    --host 127.0.0.1 --port "$GATE_PORT" --user "$GATE_USER" --dbname "$GATE_RESOURCE" \
    --cert "$CERT" --pid "$CONNECTOR_PID" --sessions "$IDLE_SESSIONS" --probes "$LOGIN_PROBES" \
    || IDLE_RC=$?
  [ "$IDLE_RC" -eq 0 ] || [ "$IDLE_RC" -eq 3 ] || die "gate-bench idle failed"
  echo
fi

# Gate's own view: still up? anything in its log (level warn and above)?
if kill -0 "$CONNECTOR_PID" 2>/dev/null; then
  gate_state="running"
else
  gate_state="EXITED"
  REPORT_RC=3
fi
warns=$(grep -c '"level":"WARN"' "$GATE_LOG" || true)
errors=$(grep -c '"level":"ERROR"' "$GATE_LOG" || true)
other=$(grep -vc '"level":"\(WARN\|ERROR\)"' "$GATE_LOG" || true)
echo "gate-connector: $gate_state; log: $warns warnings, $errors errors, $other other lines"
if [ $((warns + errors + other)) -gt 0 ]; then
  echo "  distinct messages (up to 5):"
  sed -n 's/.*"message":"\([^"]*\)".*/\1/p' "$GATE_LOG" | sort | uniq -c | sort -rn | head -n 5 | sed 's/^/   /'
  { grep -v '"message":"' "$GATE_LOG" || true; } | head -n 3 | cut -c1-200 | sed 's/^/   /'
fi
if [ "$gate_state" = running ]; then
  echo "  threads: $(cat /proc/"$CONNECTOR_PID"/task/*/comm 2>/dev/null | sort | uniq -c | sort -rn | awk '{printf "%s%s x%s", sep, $2, $1; sep=", "}')"
  # Stop it here (the trap would too) to see how long a graceful shutdown takes.
  log_lines=$(wc -l <"$GATE_LOG")
  t0=$(date +%s.%N)
  stop_pid "$CONNECTOR_PID" gate-connector 30
  CONNECTOR_PID=""
  echo "  graceful shutdown (SIGTERM) took $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s"
  tail -n +"$((log_lines + 1))" "$GATE_LOG" | sed -n 's/.*"level":"\([A-Z]*\)".*"message":"\([^"]*\)".*/   at shutdown: \1 \2/p'
fi
audit_lines=$(wc -l <"$WORK/gate/audit.jsonl" 2>/dev/null || echo 0)
audit_size=$(du -sh "$WORK/gate/audit.jsonl" 2>/dev/null | cut -f1 || true)
rec_size=$(du -sh "$WORK/gate/recordings" 2>/dev/null | cut -f1 || true)
echo "  audit: $audit_lines events (${audit_size:-0}); recordings: ${rec_size:-0}"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg); took $((SECONDS - BUILT_AT)) s (+ $((BUILT_AT - STARTED_AT)) s checking/building)"

if [ "${BENCH_STRICT:-0}" = 1 ] && { [ "$REPORT_RC" -ne 0 ] || [ "$IDLE_RC" -ne 0 ]; }; then
  say "a target was missed (BENCH_STRICT=1)"
  exit 3
fi
exit 0
