#!/usr/bin/env bash
# MySQL benchmark: sysbench oltp_point_select against MariaDB directly (TLS) and through Gate
# (TLS). The MySQL counterpart of scripts/bench.sh; see docs/benchmarks.md ("MySQL / MariaDB").
#
# 1. set-up: installs sysbench if missing (apt), runs scripts/test-setup.sh if the MariaDB
#    server programs are missing, builds gate-connector (release), starts a throwaway MariaDB
#    in a temp dir (TLS, max_connections 500, small InnoDB), database and user `sbtest`
#    (mysql_native_password), `sysbench oltp_point_select prepare` (4 tables x 10,000 rows);
# 2. gate-connector (TLS, token identity, resource `sbtest-db`, pool 20,
#    policies/example.rego at all three stages, recording and audit on, log level warn);
# 3. sysbench oltp_point_select (server-side prepared statements, --db-ps-mode=auto) at
#    --threads 1 and 8, direct-over-TLS and Gate-over-TLS alternating within each round;
#    median TPS per target and gate/direct as the median of per-round ratios;
# 4. if PG_GATE_DIRECT_RATIO_1 / PG_GATE_DIRECT_RATIO_8 are given (gate/direct of the
#    PostgreSQL run of `make bench`), checks MySQL gate/direct >= 0.9 x that ratio;
# 5. everything it started is stopped on exit (also on Ctrl-C or error).
#
# Settings (environment):
#   BENCH_QUICK=1            quick mode: 3 rounds x 2 s instead of 5 rounds x 8 s
#   BENCH_ROUNDS, BENCH_SECONDS   rounds and seconds per sysbench run (override either mode)
#   BENCH_THREADS="1 8"      sysbench --threads values
#   BENCH_TABLES=4 BENCH_TABLE_SIZE=10000   sysbench --tables / --table-size
#   PG_GATE_DIRECT_RATIO_<threads>   PostgreSQL gate/direct ratio to compare with (optional)
#   BENCH_SKIP_BUILD=1       use the existing target/release/gate-connector
#   BENCH_KEEP=1             keep the temp dir (logs, configs, results) after the run
#   BENCH_STRICT=1           exit 3 when the target is missed (default: report only)
#   GATE_MARIADB_BINDIR      MariaDB server programs (default: PATH, then /usr/sbin etc.)
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
  RUN_SECS=${BENCH_SECONDS:-8}
  MODE_NAME=normal
fi
THREAD_COUNTS=${BENCH_THREADS:-1 8}
TABLES=${BENCH_TABLES:-4}
TABLE_SIZE=${BENCH_TABLE_SIZE:-10000}
READY_TIMEOUT=${BENCH_READY_TIMEOUT:-60}
START_TIMEOUT=120

say() { printf '\033[1mbench-mysql:\033[0m %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

for v in ROUNDS RUN_SECS TABLES TABLE_SIZE; do
  case "${!v}" in '' | *[!0-9]*) die "$v must be a positive integer (got '${!v}')" ;; esac
  [ "${!v}" -gt 0 ] || die "$v must be a positive integer"
done
for t in $THREAD_COUNTS; do
  case "$t" in '' | *[!0-9]*) die "BENCH_THREADS: '$t' is not a number" ;; esac
  ratio_var="PG_GATE_DIRECT_RATIO_$t"
  if [ -n "${!ratio_var:-}" ] && ! awk -v x="${!ratio_var}" 'BEGIN {exit !(x ~ /^[0-9]*\.?[0-9]+$/ && x > 0)}'; then
    die "$ratio_var must be a positive number (got '${!ratio_var}')"
  fi
done

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

# find_prog NAME...: the first of NAME... in $GATE_MARIADB_BINDIR (only, if set), else on PATH
# or in the sbin/bin directories (mariadbd lives in /usr/sbin, often not on PATH).
find_prog() {
  local n d dirs
  if [ -n "${GATE_MARIADB_BINDIR:-}" ]; then
    dirs=$GATE_MARIADB_BINDIR
  else
    dirs="${PATH//:/ } /usr/sbin /usr/local/sbin /sbin /usr/bin /usr/local/bin /usr/local/mysql/bin"
  fi
  for n in "$@"; do
    for d in $dirs; do
      if [ -x "$d/$n" ] && [ -f "$d/$n" ]; then echo "$d/$n"; return 0; fi
    done
  done
  return 1
}

# as_mysql COMMAND...: as the `mysql` system user when we are root (MariaDB refuses root).
as_mysql() {
  if is_root; then
    HOME=/nonexistent USER=mysql setpriv --reuid=mysql --regid=mysql --init-groups "$@"
  else
    "$@"
  fi
}

# --- clean-up ------------------------------------------------------------------------------

WORK=""
CHILD_PID=""      # the sysbench run in progress
CONNECTOR_PID=""
MARIADB_PID=""
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
  [ -n "$MARIADB_PID" ] && stop_pid "$MARIADB_PID" mariadbd 60
  # Backstop: a server still running from our data dir (by its pid file) is stopped too.
  if [ -n "$WORK" ] && [ -s "$WORK/mysql/mariadbd.pid" ]; then
    local mpid
    mpid=$(head -n 1 "$WORK/mysql/mariadbd.pid")
    if [ -n "$mpid" ] && alive "$mpid" && tr '\0' ' ' <"/proc/$mpid/cmdline" 2>/dev/null | grep -F -- "--datadir=$WORK/mysql/data" >/dev/null; then
      kill -TERM "$mpid" 2>/dev/null
      for _ in $(seq 1 600); do alive "$mpid" || break; sleep 0.1; done
      alive "$mpid" && kill -KILL "$mpid" 2>/dev/null
    fi
  fi
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "$code" -ne 0 ] && [ "$code" -ne 130 ] && [ "$code" -ne 143 ]; then
      for f in "$WORK/gate/connector.log" "$WORK/mysql/error.log"; do
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

# run_child OUT COMMAND...: runs COMMAND in the background (output to file OUT) and waits for
# it, so that a signal reaches the trap at once (and the trap stops the command).
run_child() {
  local out=$1
  shift
  "$@" >"$out" 2>&1 &
  CHILD_PID=$!
  local rc=0
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  return "$rc"
}

# --- 1. set-up -----------------------------------------------------------------------------

if ! find_prog mariadbd mysqld >/dev/null || ! find_prog mariadb-install-db mysql_install_db >/dev/null \
  || ! find_prog mariadb mysql >/dev/null; then
  say "MariaDB programs missing: running scripts/test-setup.sh"
  "$ROOT/scripts/test-setup.sh" || die "scripts/test-setup.sh failed"
fi
MARIADBD=$(find_prog mariadbd mysqld) || die "mariadbd not found (run scripts/test-setup.sh or set GATE_MARIADB_BINDIR)"
INSTALL_DB=$(find_prog mariadb-install-db mysql_install_db) || die "mariadb-install-db not found"
MARIADB=$(find_prog mariadb mysql) || die "the mariadb client not found"

need_apt=""
command -v sysbench >/dev/null 2>&1 || need_apt="$need_apt sysbench"
command -v openssl >/dev/null 2>&1 || need_apt="$need_apt openssl"
if [ -n "$need_apt" ]; then
  is_root || die "missing:$need_apt (install them: apt-get install$need_apt)"
  say "installing$need_apt"
  # shellcheck disable=SC2086
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need_apt >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need_apt >/dev/null
  fi
fi
SYSBENCH=$(command -v sysbench) || die "sysbench not found after installing it"
# sysbench 1.0's --mysql-ssl=on reads client-key.pem, client-cert.pem and cacert.pem from
# the current directory and, with MYSQL_OPT_SSL_MODE where the client library has it, sets
# SSL_MODE_REQUIRED. (sysbench 1.1 names the option --mysql-ssl=REQUIRED.)
if "$SYSBENCH" --help 2>/dev/null | grep -- '--mysql-ssl=STRING' >/dev/null; then
  SSL_OPT="--mysql-ssl=REQUIRED"
else
  SSL_OPT="--mysql-ssl=on"
fi

if is_root && ! id mysql >/dev/null 2>&1; then
  say "creating system user mysql"
  useradd --system --home-dir /nonexistent --shell /bin/false --user-group mysql
fi

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  # The same packages as scripts/bench.sh: building gate-connector alone unifies dependency
  # features differently and rebuilds (and replaces) the binary bench.sh just built.
  say "building gate-connector (release, with gate-bench as bench.sh does; slow the first time)"
  cargo build --release -p gate-connector -p gate-bench
fi
BUILT_AT=$SECONDS
CONNECTOR="$TARGET_DIR/release/gate-connector"
[ -x "$CONNECTOR" ] || die "$CONNECTOR not found"

WORK=$(mktemp -d /tmp/gate-bench-mysql.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/gate" "$WORK/mysql" "$WORK/runs" "$WORK/sysbench"
if is_root; then chown mysql: "$WORK/mysql"; fi

# TLS: one self-signed certificate for MariaDB and Gate, and as sysbench's CA and client cert.
CERT="$WORK/tls-cert.pem"
KEY="$WORK/tls-key.pem"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$KEY" -out "$CERT" >/dev/null 2>&1 || die "openssl could not make a certificate"
chmod 600 "$KEY"
if is_root; then chown mysql: "$KEY" "$CERT"; fi # MariaDB runs as mysql; Gate as root
# sysbench runs in $WORK/sysbench: the CA that verifies both servers is the certificate itself;
# the client certificate is sent to MariaDB (which asks for one) and verifies against it too.
cp "$CERT" "$WORK/sysbench/cacert.pem"
cp "$CERT" "$WORK/sysbench/client-cert.pem"
cp "$KEY" "$WORK/sysbench/client-key.pem"
chmod 600 "$WORK/sysbench/client-key.pem"

# MariaDB ------------------------------------------------------------------------------------
MY_DIR="$WORK/mysql"
MY_SOCK="$MY_DIR/mysql.sock"
MY_LOG="$MY_DIR/error.log"
say "MariaDB: mariadb-install-db in $MY_DIR"
(cd "$MY_DIR" && as_mysql env LC_ALL=C "$INSTALL_DB" --no-defaults --datadir="$MY_DIR/data" \
  --auth-root-authentication-method=normal --skip-test-db --skip-name-resolve \
  --innodb-buffer-pool-size=64M --innodb-log-file-size=16M) >"$WORK/install-db.log" 2>&1 \
  || { cat "$WORK/install-db.log" >&2; die "mariadb-install-db failed"; }

root_sql() { # SQL as root over the unix socket; -N -B output
  env -u MYSQL_PWD -u MYSQL_HOST -u MYSQL_TCP_PORT -u MYSQL_UNIX_PORT "$MARIADB" --no-defaults \
    --socket="$MY_SOCK" --protocol=SOCKET -u root -N -B --connect-timeout=10 "$@"
}

free_port MY_PORT
say "MariaDB: starting on 127.0.0.1:$MY_PORT (TLS, max_connections 500)"
: >"$MY_LOG"
if is_root; then chown mysql: "$MY_LOG"; fi
# Not through as_mysql: a function run in the background is a subshell, and its pid (what $!
# gives) is not mariadbd's; setpriv execs mariadbd, so $! is the server itself.
MY_ARGS=(--no-defaults --datadir="$MY_DIR/data" --socket="$MY_SOCK" --port="$MY_PORT" \
  --bind-address=127.0.0.1 --log-error="$MY_LOG" --pid-file="$MY_DIR/mariadbd.pid" \
  --tmpdir="$MY_DIR" --ssl-cert="$CERT" --ssl-key="$KEY" --ssl-ca="$CERT" \
  --skip-name-resolve --max-connections=500 \
  --innodb-buffer-pool-size=128M --innodb-log-file-size=16M \
  --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 --skip-log-bin \
  --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
  --default-time-zone=+00:00 --lc-messages=en_US)
if is_root; then
  HOME=/nonexistent USER=mysql setpriv --reuid=mysql --regid=mysql --init-groups \
    "$MARIADBD" "${MY_ARGS[@]}" >>"$MY_LOG" 2>&1 </dev/null &
else
  "$MARIADBD" "${MY_ARGS[@]}" >>"$MY_LOG" 2>&1 </dev/null &
fi
MARIADB_PID=$!
deadline=$((SECONDS + START_TIMEOUT))
until [ -S "$MY_SOCK" ] && root_sql -e 'SELECT 1' >/dev/null 2>&1; do
  alive "$MARIADB_PID" || { MARIADB_PID=""; die "mariadbd exited during start-up (see the log below)"; }
  [ "$SECONDS" -lt "$deadline" ] || die "mariadbd did not accept connections within ${START_TIMEOUT}s"
  sleep 0.2
done

DB_USER=sbtest
DB_NAME=sbtest
DB_PASSWORD="sb_$(random_hex 16)"
{
  echo "CREATE DATABASE $DB_NAME;"
  for host in '%' 127.0.0.1 localhost; do
    echo "CREATE USER '$DB_USER'@'$host' IDENTIFIED VIA mysql_native_password USING PASSWORD('$DB_PASSWORD');"
    echo "GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'$host';"
  done
} | root_sql || die "could not create database and user $DB_USER"

SB_COMMON=(oltp_point_select --db-driver=mysql --tables="$TABLES" --table-size="$TABLE_SIZE")
say "sysbench oltp_point_select prepare (--tables=$TABLES --table-size=$TABLE_SIZE, directly)"
env -C "$WORK/sysbench" "$SYSBENCH" "${SB_COMMON[@]}" --mysql-host=127.0.0.1 --mysql-port="$MY_PORT" \
  --mysql-user="$DB_USER" --mysql-password="$DB_PASSWORD" --mysql-db="$DB_NAME" prepare \
  >"$WORK/sysbench-prepare.log" 2>&1 || { cat "$WORK/sysbench-prepare.log" >&2; die "sysbench prepare failed"; }

# 2. Gate ------------------------------------------------------------------------------------
free_port GATE_PORT
free_port GATE_HEALTH_PORT
GATE_USER=alice
GATE_RESOURCE=sbtest-db
GATE_TOKEN="gate_bench_$(random_hex 24)"
GATE_TOKEN_SHA256=$(printf '%s' "$GATE_TOKEN" | "$CONNECTOR" hash-token)
GATE_CONFIG="$WORK/gate/connector.yaml"
GATE_LOG="$WORK/gate/connector.log"
cat >"$GATE_CONFIG" <<EOF
# Written by scripts/bench-mysql.sh.
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
    protocol: mysql
    host: 127.0.0.1
    port: $MY_PORT
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
  alive "$CONNECTOR_PID" || { CONNECTOR_PID=""; die "gate-connector exited before it was ready"; }
  [ "$SECONDS" -lt "$deadline" ] || die "gate-connector not ready after ${READY_TIMEOUT}s"
  sleep 0.2
done

# Connection options per target (sysbench), TLS required for both.
target_opts() { # target -> prints sysbench options
  case "$1" in
    direct) echo "--mysql-host=127.0.0.1 --mysql-port=$MY_PORT --mysql-user=$DB_USER --mysql-password=$DB_PASSWORD --mysql-db=$DB_NAME $SSL_OPT" ;;
    gate) echo "--mysql-host=127.0.0.1 --mysql-port=$GATE_PORT --mysql-user=$GATE_USER --mysql-password=$GATE_TOKEN --mysql-db=$GATE_RESOURCE $SSL_OPT" ;;
  esac
}
# The same with the mariadb client (password from the environment).
client_sql() { # target sql
  local port user pw db
  case "$1" in
    direct) port=$MY_PORT user=$DB_USER pw=$DB_PASSWORD db=$DB_NAME ;;
    gate) port=$GATE_PORT user=$GATE_USER pw=$GATE_TOKEN db=$GATE_RESOURCE ;;
  esac
  env -u MYSQL_HOST -u MYSQL_TCP_PORT -u MYSQL_UNIX_PORT MYSQL_PWD="$pw" "$MARIADB" --no-defaults \
    --protocol=TCP -h 127.0.0.1 -P "$port" --user="$user" --database="$db" -N -B --connect-timeout=10 \
    --ssl --ssl-ca="$CERT" --ssl-verify-server-cert -e "$2"
}
TARGETS=(direct gate)
for t in "${TARGETS[@]}"; do
  got=$(client_sql "$t" "SELECT COUNT(*) FROM sbtest1" 2>&1) || die "$t: mariadb client failed: $got"
  [ "$got" = "$TABLE_SIZE" ] || die "$t: unexpected answer: $got"
done
DIRECT_TLS=$(client_sql direct "SHOW SESSION STATUS LIKE 'Ssl_version'" 2>/dev/null | cut -f2)
[ -n "$DIRECT_TLS" ] || die "direct: the mariadb client's session is not TLS"
say "both targets answer over TLS (direct: $DIRECT_TLS)"

status_vars() { # -> "Ssl_accepts Com_stmt_execute Com_stmt_prepare Aborted_clients Aborted_connects"
  root_sql -e "SHOW GLOBAL STATUS WHERE Variable_name IN
    ('Ssl_accepts','Com_stmt_execute','Com_stmt_prepare','Aborted_clients','Aborted_connects')" \
    | awk '{v[$1] = $2} END {printf "%d %d %d %d %d\n", v["Ssl_accepts"], v["Com_stmt_execute"],
      v["Com_stmt_prepare"], v["Aborted_clients"], v["Aborted_connects"]}'
}

MY_VERSION=$(root_sql -e 'SELECT VERSION()')
GATE_REV="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (+uncommitted changes)')"
cat <<EOF

== Gate MySQL benchmark ($MODE_NAME mode) — $(date -u '+%Y-%m-%d %H:%M UTC') ==
machine   $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load average $(cut -d' ' -f1-3 /proc/loadavg) at start
versions  MariaDB $MY_VERSION; $("$SYSBENCH" --version) ($SSL_OPT); gate $GATE_REV
targets   direct  MariaDB 127.0.0.1:$MY_PORT, TLS required ($DIRECT_TLS), mysql_native_password
          gate    127.0.0.1:$GATE_PORT, TLS required, token login, pool 20, example.rego x3, recording+audit on
sysbench  oltp_point_select --db-ps-mode=auto (server-side prepared statements), --tables=$TABLES --table-size=$TABLE_SIZE,
          --threads {${THREAD_COUNTS// /,}}, $ROUNDS rounds x ${RUN_SECS}s per run, targets alternating (start rotates per round)

EOF

# 3. sysbench --------------------------------------------------------------------------------
RESULTS="$WORK/results.tsv" # threads round target tps avg_ms p95_ms errors reconnects stmt_exec/tx ssl_accepts
: >"$RESULTS"
FAILED_RUNS=0
run_no=0
for th in $THREAD_COUNTS; do
  for round in $(seq 1 "$ROUNDS"); do
    line="$(printf -- '--threads %-2s round %d/%d:' "$th" "$round" "$ROUNDS")"
    for k in 0 1; do
      t=${TARGETS[$(((round - 1 + k) % 2))]}
      run_no=$((run_no + 1))
      out="$WORK/runs/$run_no-t$th-r$round-$t.log"
      read -r ssl0 exec0 _ ab_cl0 ab_co0 <<<"$(status_vars)"
      rc=0
      # shellcheck disable=SC2046
      run_child "$out" env -C "$WORK/sysbench" "$SYSBENCH" "${SB_COMMON[@]}" $(target_opts "$t") \
        --db-ps-mode=auto --threads="$th" --time="$RUN_SECS" --forced-shutdown=30 \
        --report-interval=0 --percentile=95 run || rc=$?
      read -r ssl1 exec1 _ ab_cl1 ab_co1 <<<"$(status_vars)"
      tps=$(sed -n 's/^[[:space:]]*transactions:[[:space:]]*[0-9]*[[:space:]]*(\([0-9.]*\) per sec.*/\1/p' "$out" | head -n1)
      txs=$(sed -n 's/^[[:space:]]*transactions:[[:space:]]*\([0-9]*\).*/\1/p' "$out" | head -n1)
      lat=$(sed -n 's/^[[:space:]]*avg:[[:space:]]*\([0-9.]*\).*/\1/p' "$out" | head -n1)
      p95=$(sed -n 's/^[[:space:]]*95th percentile:[[:space:]]*\([0-9.]*\).*/\1/p' "$out" | head -n1)
      errs=$(sed -n 's/^[[:space:]]*ignored errors:[[:space:]]*\([0-9]*\).*/\1/p' "$out" | head -n1)
      recon=$(sed -n 's/^[[:space:]]*reconnects:[[:space:]]*\([0-9]*\).*/\1/p' "$out" | head -n1)
      if [ "$rc" -ne 0 ] || [ -z "$tps" ] || grep -q 'FATAL' "$out"; then
        say "$t --threads $th round $round: sysbench failed (status $rc):"
        grep -m 5 -E 'FATAL|ERROR|error' "$out" >&2 || tail -n 5 "$out" >&2
        cp "$out" "$WORK/failed-$run_no.log"
        FAILED_RUNS=$((FAILED_RUNS + 1))
        tps=NA
      fi
      if [ "$((ab_cl1 - ab_cl0 + ab_co1 - ab_co0))" -gt 0 ]; then
        say "$t --threads $th round $round: MariaDB counted $((ab_cl1 - ab_cl0)) aborted clients, $((ab_co1 - ab_co0)) aborted connects"
      fi
      per_tx=$(awk -v e="$((exec1 - exec0))" -v n="${txs:-0}" 'BEGIN {if (n > 0) printf "%.2f", e / n; else print "NA"}')
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$th" "$round" "$t" "$tps" "${lat:-NA}" "${p95:-NA}" \
        "${errs:-NA}" "${recon:-NA}" "$per_tx" "$((ssl1 - ssl0))" >>"$RESULTS"
      line="$line $(printf '%s %s' "$t" "${tps%.*}")"
    done
    say "$line tps"
  done
done
echo

# Report: medians per target, median of per-round gate/direct ratios [min-max], target check.
REPORT="$WORK/report.tsv" # threads ratio
awk -F'\t' -v ratio_out="$REPORT" '
  function median(arr, n,    i, j, tmp) {
    for (i = 2; i <= n; i++) { tmp = arr[i]; for (j = i - 1; j >= 1 && arr[j] > tmp; j--) arr[j + 1] = arr[j]; arr[j + 1] = tmp }
    if (n == 0) return "NA"
    return (n % 2) ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2
  }
  function collect(th, t, col, out,    i, n) {
    n = 0
    for (i = 1; i <= nr; i++) if (T[i] == th && G[i] == t && V[i, col] != "NA" && V[i, 4] != "NA") out[++n] = V[i, col]
    return n
  }
  {
    nr++; T[nr] = $1; R[nr] = $2; G[nr] = $3
    for (c = 4; c <= 10; c++) V[nr, c] = $c
    if (!($1 in seen)) { seen[$1] = 1; order[++nth] = $1 }
    if ($4 != "NA") tps[$1, $2, $3] = $4
    if ($4 == "NA") failed[$1, $3]++
    if ($7 != "NA" && $7 > 0) errs[$1, $3] += $7
    if ($8 != "NA" && $8 > 0) recon[$1, $3] += $8
  }
  END {
    printf "%-9s | %-22s | %-22s | %-18s | %-13s | %s\n", "threads", "direct TPS (avg/p95 ms)", "gate TPS (avg/p95 ms)", "gate/direct", "stmt_exec/tx", "TLS logins"
    printf "----------+------------------------+------------------------+--------------------+---------------+-----------\n"
    for (o = 1; o <= nth; o++) {
      th = order[o]
      for (g = 1; g <= 2; g++) {
        t = (g == 1) ? "direct" : "gate"
        delete a; n = collect(th, t, 4, a); mt[t] = (n ? sprintf("%.0f", median(a, n)) : "NA")
        delete a; n = collect(th, t, 5, a); ml[t] = (n ? sprintf("%.3f", median(a, n)) : "NA")
        delete a; n = collect(th, t, 6, a); mp[t] = (n ? sprintf("%.2f", median(a, n)) : "NA")
        delete a; n = collect(th, t, 9, a); me[t] = (n ? sprintf("%.2f", median(a, n)) : "NA")
        ssl[t] = 0; for (i = 1; i <= nr; i++) if (T[i] == th && G[i] == t) ssl[t] += V[i, 10]
      }
      delete rr; n = 0; lo = ""; hi = ""
      for (i = 1; i <= nr; i++) if (T[i] == th && G[i] == "direct") {
        r = R[i]
        if (((th, r, "direct") in tps) && ((th, r, "gate") in tps) && tps[th, r, "direct"] > 0) {
          x = tps[th, r, "gate"] / tps[th, r, "direct"]; rr[++n] = x
          if (lo == "" || x < lo) lo = x; if (hi == "" || x > hi) hi = x
        }
      }
      if (n) { m = median(rr, n); ratio = sprintf("%.3f [%.2f-%.2f]", m, lo, hi); printf "%s\t%.4f\n", th, m > ratio_out }
      else { ratio = "NA"; printf "%s\tNA\n", th > ratio_out }
      printf "%-9s | %-22s | %-22s | %-18s | %-13s | %s\n", th, mt["direct"] " (" ml["direct"] "/" mp["direct"] ")", \
        mt["gate"] " (" ml["gate"] "/" mp["gate"] ")", ratio, me["direct"] " / " me["gate"], \
        "direct " ssl["direct"] ", gate 0 (upstream plain)"
      for (g = 1; g <= 2; g++) {
        t = (g == 1) ? "direct" : "gate"
        if (failed[th, t]) printf "  WARNING: %d failed sysbench run(s) for %s at --threads %s\n", failed[th, t], t, th
        if (errs[th, t]) printf "  WARNING: %d ignored errors for %s at --threads %s\n", errs[th, t], t, th
        if (recon[th, t]) printf "  WARNING: %d reconnects for %s at --threads %s\n", recon[th, t], t, th
      }
    }
  }' "$RESULTS"
cat <<'EOF'
(TPS and latency: medians over rounds; gate/direct: median of per-round TPS ratios [min-max];
 stmt_exec/tx: MariaDB COM_STMT_EXECUTE per sysbench transaction, ~1 = binary protocol;
 TLS logins: MariaDB Ssl_accepts during the runs; Gate's own upstream link is plain TCP)
EOF
echo

# 4. target context --------------------------------------------------------------------------
MISSED=0
echo "target: MySQL gate/direct >= 0.9 x PostgreSQL gate/direct (same make bench run)"
while IFS=$'\t' read -r th ratio; do
  ratio_var="PG_GATE_DIRECT_RATIO_$th"
  pg=${!ratio_var:-}
  if [ -z "$pg" ] && [ "$ratio" = NA ]; then
    echo "  --threads $th: MySQL gate/direct NA (no complete round)"
  elif [ -z "$pg" ]; then
    printf '  --threads %s: MySQL gate/direct %.3f (set %s to compare)\n' "$th" "$ratio" "$ratio_var"
  elif [ "$ratio" = NA ]; then
    echo "  --threads $th: MySQL gate/direct NA (no complete round): MISS"
    MISSED=1
  else
    verdict=$(awk -v m="$ratio" -v p="$pg" 'BEGIN {print (m >= 0.9 * p) ? "PASS" : "MISS"}')
    [ "$verdict" = PASS ] || MISSED=1
    awk -v th="$th" -v m="$ratio" -v p="$pg" -v v="$verdict" 'BEGIN {
      printf "  --threads %s: MySQL gate/direct %.3f vs 0.9 x PostgreSQL %.3f = %.3f (MySQL/PostgreSQL ratio %.2f): %s\n", th, m, p, 0.9 * p, m / p, v }'
  fi
done <"$REPORT"
echo

# Gate's own view: still up? anything in its log (level warn and above)?
if alive "$CONNECTOR_PID"; then
  gate_state="running"
else
  gate_state="EXITED"
  MISSED=1
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
my_errors=$(grep -c '\[ERROR\]' "$MY_LOG" || true)
my_warns=$(grep -c '\[Warning\]' "$MY_LOG" || true)
echo "MariaDB error log: $my_errors errors, $my_warns warnings"
if [ "$my_errors" -gt 0 ] || [ "$my_warns" -gt 0 ]; then
  grep -E '\[(ERROR|Warning)\]' "$MY_LOG" | sed -e 's/^[0-9-]* [0-9:]* [0-9]* //' -e 's/connection [0-9]* to/connection N to/' | sort | uniq -c | sort -rn | head -n 5 | cut -c1-200 | sed 's/^/   /'
fi
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg); took $((SECONDS - BUILT_AT)) s (+ $((BUILT_AT - STARTED_AT)) s checking/building)"

if [ "$FAILED_RUNS" -gt 0 ]; then
  say "$FAILED_RUNS sysbench run(s) failed (outputs: $WORK/failed-*.log with BENCH_KEEP=1)"
fi
if [ "${BENCH_STRICT:-0}" = 1 ] && { [ "$MISSED" -ne 0 ] || [ "$FAILED_RUNS" -ne 0 ]; }; then
  say "a target was missed or a run failed (BENCH_STRICT=1)"
  exit 3
fi
exit 0
