#!/usr/bin/env bash
# SSH benchmark: OpenSSH's sshd reached directly and through Gate, in one run. See
# docs/benchmarks.md ("SSH").
#
# 1. set-up: runs scripts/test-setup.sh if the OpenSSH programs are missing, builds
#    gate-connector (release), starts a throwaway sshd in a temp dir (the same configuration
#    as gate-test-support's sshd module: free loopback port, ed25519 host key, the
#    `gate-ssh-test` login user), generates the client key and the upstream key;
# 2. gate-connector with an SSH resource for that sshd (dedicated listener, identity `alice`
#    by its SSH public key, upstream key auth, pinned host key fingerprint, recording and
#    audit on); the gateway's host key is learnt with ssh-keyscan;
# 3. throughput: `ssh … 'head -c 1G /dev/zero'` (bytes counted on arrival), BENCH_ROUNDS
#    rounds, targets alternating; round trip: `ssh … true` (connect, key exchange, auth,
#    exec, exit), N runs per target, alternating;
# 4. medians, gate/direct ratios and the targets: throughput >= 0.5 x direct, round trip
#    <= 2.0 x direct;
# 5. everything it started is stopped on exit (also on Ctrl-C or error).
# If the Gate half cannot be set up or fails its first session, the direct figures are still
# measured and printed, and the script then fails (status 2) saying what went wrong.
#
# Settings (environment):
#   BENCH_QUICK=1            quick mode: 256M per transfer, 2 rounds, 10 round trips
#   BENCH_BYTES              bytes per transfer, as `head -c` takes them (default 1G; quick 256M)
#   BENCH_ROUNDS             transfers per target (default 3; quick 2)
#   BENCH_RTT_RUNS           `ssh … true` runs per target (default 20; quick 10)
#   BENCH_CIPHER             force a cipher on the client (`ssh -c`), e.g. aes128-gcm@openssh.com
#                            (default: what OpenSSH negotiates; printed for every leg)
#   BENCH_KEX                the client's key exchange, for both targets (default
#                            curve25519-sha256; empty: OpenSSH's default, sntrup761x25519-sha512
#                            with OpenSSH 9, which Gate does not offer: see docs/benchmarks.md)
#   BENCH_SKIP_BUILD=1       use the existing target/release/gate-connector
#   GATE_CONNECTOR_BIN       run this gate-connector instead (not built; e.g. a debug build)
#   BENCH_KEEP=1             keep the temp dir (configs, logs, keys, results) after the run
#   BENCH_STRICT=1           exit 3 when a target is missed (default: report only)
#   GATE_SSHD                the sshd to run (default: PATH, then /usr/sbin)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
STARTED_AT=$SECONDS

if [ "${BENCH_QUICK:-0}" = 1 ]; then
  BYTES=${BENCH_BYTES:-256M}
  ROUNDS=${BENCH_ROUNDS:-2}
  RTT_RUNS=${BENCH_RTT_RUNS:-10}
  MODE_NAME=quick
else
  BYTES=${BENCH_BYTES:-1G}
  ROUNDS=${BENCH_ROUNDS:-3}
  RTT_RUNS=${BENCH_RTT_RUNS:-20}
  MODE_NAME=normal
fi
CIPHER=${BENCH_CIPHER:-}
KEX=${BENCH_KEX-curve25519-sha256}
READY_TIMEOUT=${BENCH_READY_TIMEOUT:-60}
START_TIMEOUT=60
TPUT_TARGET=0.5
RTT_TARGET=2.0

TEST_USER=gate-ssh-test
TEST_HOME=/var/lib/gate-ssh-test
# Shared with gate-test-support's sshd module (crates/gate-test-support/src/sshd.rs).
PASSWORD_FILE=$TEST_HOME/.gate-test-password
SHADOW_MARK_FILE=$TEST_HOME/.gate-test-password.shadow
LOCK_FILE=$TEST_HOME/.gate-test-lock

say() { printf '\033[1mbench-ssh:\033[0m %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

for v in ROUNDS RTT_RUNS; do
  case "${!v}" in '' | *[!0-9]*) die "$v must be a positive integer (got '${!v}')" ;; esac
  [ "${!v}" -gt 0 ] || die "$v must be a positive integer"
done
case "$BYTES" in '' | *[!0-9KMGkmg]* | [!0-9]*) die "BENCH_BYTES must look like 1G, 256M or 1000000 (got '$BYTES')" ;; esac
# BYTES in bytes, as GNU head reads the suffixes (K, M, G: powers of 1024).
BYTE_COUNT=$(awk -v b="$BYTES" 'BEGIN {
  n = b + 0; s = toupper(substr(b, length(b)))
  if (s == "K") n *= 1024; else if (s == "M") n *= 1048576; else if (s == "G") n *= 1073741824
  printf "%d", n }')
[ "$BYTE_COUNT" -gt 0 ] || die "BENCH_BYTES must be more than 0"

is_root || die "needs root: sshd must switch to the $TEST_USER user to log it in"

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
now_ns() { date +%s%N; }

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

# The first line a TCP server sends (the SSH banner), or nothing.
banner() { # port
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 0
    IFS= read -r -t 5 line <&3 || true
    printf '%s' "${line%$'\r'}"
  ) 2>/dev/null || true
}

# find_prog NAME: on PATH or in the sbin/bin directories (sshd lives in /usr/sbin).
find_prog() {
  local d
  if command -v "$1" >/dev/null 2>&1; then command -v "$1"; return 0; fi
  for d in /usr/sbin /usr/local/sbin /sbin /usr/bin /usr/local/bin; do
    if [ -x "$d/$1" ] && [ -f "$d/$1" ]; then echo "$d/$1"; return 0; fi
  done
  return 1
}

# --- clean-up ------------------------------------------------------------------------------

WORK=""
CHILD_PID=""      # the client run in progress
COUNTER_PID=""    # its byte counter
CONNECTOR_PID=""
SSHD_PID=""
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
descendants() { # pid: every process under it (by parent pid, from /proc)
  local level=$1 next d pp p all=""
  while [ -n "$level" ]; do
    next=""
    for d in /proc/[0-9]*; do
      pp=$(sed -n 's/^PPid:[[:space:]]*//p' "$d/status" 2>/dev/null || true)
      for p in $level; do
        if [ "$pp" = "$p" ]; then next="$next ${d#/proc/}"; fi
      done
    done
    all="$all$next"
    level=${next# }
  done
  echo "$all"
}
# shellcheck disable=SC2317
stop_sshd() { # the listener and whatever connections it still has, as gate-test-support does:
  # freeze the listener (no new connections) and its descendants (none can fork any more),
  # then SIGKILL them all; a listener let go on SIGTERM would first accept a queued connection.
  local kids p
  alive "$SSHD_PID" || { wait "$SSHD_PID" 2>/dev/null || true; return 0; }
  say "stopping sshd (pid $SSHD_PID)"
  kill -STOP "$SSHD_PID" 2>/dev/null || true
  sleep 0.1
  kids=$(descendants "$SSHD_PID")
  for p in $kids; do kill -STOP "$p" 2>/dev/null || true; done
  kids="$kids $(descendants "$SSHD_PID")"
  kill -KILL "$SSHD_PID" 2>/dev/null || true
  for p in $kids; do kill -KILL "$p" 2>/dev/null || true; done
  wait "$SSHD_PID" 2>/dev/null || true
  return 0
}
# shellcheck disable=SC2317
cleanup() {
  local code=$?
  trap - INT TERM EXIT
  set +e
  [ -n "$CHILD_PID" ] && stop_pid "$CHILD_PID" "benchmark client"
  [ -n "$COUNTER_PID" ] && stop_pid "$COUNTER_PID" "byte counter"
  [ -n "$CONNECTOR_PID" ] && stop_pid "$CONNECTOR_PID" gate-connector 30
  [ -n "$SSHD_PID" ] && stop_sshd
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "$code" -ne 0 ] && [ "$code" -ne 130 ] && [ "$code" -ne 143 ]; then
      for f in "$WORK/gate/connector.log" "$WORK/sshd/sshd.log"; do
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

# run_child OUT COMMAND...: runs COMMAND in the background (stdout and stderr to file OUT) and
# waits for it, so that a signal reaches the trap at once (and the trap stops the command).
run_child() {
  local out=$1
  shift
  "$@" >"$out" 2>&1 </dev/null &
  CHILD_PID=$!
  local rc=0
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  return "$rc"
}

# --- 1. set-up -----------------------------------------------------------------------------

if [ -n "${GATE_SSHD:-}" ]; then
  SSHD=$GATE_SSHD
  [ -x "$SSHD" ] || die "GATE_SSHD=$SSHD is not an executable"
else
  missing=""
  for p in sshd ssh ssh-keygen ssh-keyscan; do find_prog "$p" >/dev/null || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    say "OpenSSH programs missing:$missing; running scripts/test-setup.sh"
    "$ROOT/scripts/test-setup.sh" || die "scripts/test-setup.sh failed"
  fi
  SSHD=$(find_prog sshd) || die "sshd not found (apt-get install openssh-server)"
fi
SSHD=$(readlink -f "$SSHD") # sshd re-executes itself: it needs an absolute path
SSH=$(find_prog ssh) || die "ssh not found (apt-get install openssh-client)"
SSH_KEYGEN=$(find_prog ssh-keygen) || die "ssh-keygen not found"
SSH_KEYSCAN=$(find_prog ssh-keyscan) || die "ssh-keyscan not found"

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -n "${GATE_CONNECTOR_BIN:-}" ]; then
  say "using GATE_CONNECTOR_BIN=$GATE_CONNECTOR_BIN (not built here)"
elif [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  # The same packages as scripts/bench.sh: building gate-connector alone unifies dependency
  # features differently and rebuilds (and replaces) the binary bench.sh just built.
  say "building gate-connector (release, with gate-bench as bench.sh does; slow the first time)"
  cargo build --release -p gate-connector -p gate-bench
fi
BUILT_AT=$SECONDS
CONNECTOR=${GATE_CONNECTOR_BIN:-$TARGET_DIR/release/gate-connector}
[ -x "$CONNECTOR" ] || die "$CONNECTOR not found"

# sshd's privilege separation directory and user (Debian's openssh-server makes the user).
[ -d /run/sshd ] || install -d -m 0755 /run/sshd
if ! id sshd >/dev/null 2>&1; then
  say "creating system user sshd"
  useradd --system --home-dir /run/sshd --shell /usr/sbin/nologin --user-group sshd
fi

# The login user, as gate-test-support makes it: a real shell and home, and an unlocked
# account (with `UsePAM no` sshd refuses even key logins to an account whose shadow password
# starts with `!`, which is how useradd leaves it). The password is the shared one in
# $PASSWORD_FILE, set (under the same lock) only when the shadow hash is not the one recorded.
if ! id "$TEST_USER" >/dev/null 2>&1; then
  say "creating system user $TEST_USER"
  if getent group "$TEST_USER" >/dev/null 2>&1; then
    useradd --system --home-dir "$TEST_HOME" --shell /bin/bash --gid "$TEST_USER" "$TEST_USER" || true
  else
    useradd --system --home-dir "$TEST_HOME" --shell /bin/bash --user-group "$TEST_USER" || true
  fi
  id "$TEST_USER" >/dev/null 2>&1 || die "could not create the $TEST_USER user"
fi
USER_HOME=$(getent passwd "$TEST_USER" | cut -d: -f6)
install -d -m 0755 "$TEST_HOME"
if [ "$USER_HOME" = "$TEST_HOME" ] && [ "$(stat -c %U "$TEST_HOME")" != "$TEST_USER" ]; then
  chown "$TEST_USER:$(id -gn "$TEST_USER")" "$TEST_HOME"
fi
(
  flock 9
  if [ ! -s "$PASSWORD_FILE" ]; then
    tmp="$PASSWORD_FILE.$(random_hex 16)"
    (umask 077 && printf 'gate-ssh-%s\n' "$(random_hex 16)" >"$tmp")
    ln "$tmp" "$PASSWORD_FILE" 2>/dev/null || true # exactly one creator wins, like O_EXCL
    rm -f "$tmp"
  fi
  hash=$(getent shadow "$TEST_USER" | cut -d: -f2)
  mark=$(cat "$SHADOW_MARK_FILE" 2>/dev/null || true)
  case "$hash" in '' | '!'* | '*'*) mark="" ;; esac
  if [ -z "$mark" ] || [ "$hash" != "$mark" ]; then
    printf '%s:%s\n' "$TEST_USER" "$(head -n 1 "$PASSWORD_FILE")" | LC_ALL=C chpasswd
    tmp="$SHADOW_MARK_FILE.$(random_hex 16)"
    (umask 077 && getent shadow "$TEST_USER" | cut -d: -f2 >"$tmp")
    mv -f "$tmp" "$SHADOW_MARK_FILE"
  fi
) 9>>"$LOCK_FILE" || die "could not set up the $TEST_USER account (chpasswd)"

WORK=$(mktemp -d /tmp/gate-bench-ssh.XXXXXX)
# sshd reads authorized_keys as the user: the directories must be searchable by it.
chmod 755 "$WORK"
mkdir -p "$WORK/sshd/authorized_keys" "$WORK/client" "$WORK/gate" "$WORK/runs"
chmod 755 "$WORK/sshd" "$WORK/sshd/authorized_keys"

keygen() { # path comment
  "$SSH_KEYGEN" -q -t ed25519 -N '' -C "$2" -f "$1" >/dev/null || die "ssh-keygen $1 failed"
}
HOST_KEY="$WORK/sshd/ssh_host_ed25519_key"
UPSTREAM_KEY="$WORK/gate/upstream_ed25519"
CLIENT_KEY="$WORK/client/id_ed25519"
keygen "$HOST_KEY" gate-bench-host-key
keygen "$UPSTREAM_KEY" gate-bench-upstream
keygen "$CLIENT_KEY" gate-bench-client
HOST_FP=$("$SSH_KEYGEN" -lf "$HOST_KEY.pub" | awk '{print $2}')
CLIENT_PUB=$(cat "$CLIENT_KEY.pub")
cat "$UPSTREAM_KEY.pub" "$CLIENT_KEY.pub" >"$WORK/sshd/authorized_keys/$TEST_USER"
chmod 644 "$WORK/sshd/authorized_keys/$TEST_USER"

# sshd ---------------------------------------------------------------------------------------
SSHD_CONFIG="$WORK/sshd/sshd_config"
SSHD_LOG="$WORK/sshd/sshd.log"
SFTP_SERVER=internal-sftp
[ -x /usr/lib/openssh/sftp-server ] && SFTP_SERVER=/usr/lib/openssh/sftp-server
free_port SSHD_PORT
# gate-test-support's configuration, but LogLevel DEBUG1: it names the cipher of each
# connection (the Gate → sshd leg included). No per-packet logging at that level.
cat >"$SSHD_CONFIG" <<EOF
# Written by scripts/bench-ssh.sh.
Port $SSHD_PORT
ListenAddress 127.0.0.1
AddressFamily inet
HostKey $HOST_KEY
PidFile $WORK/sshd/sshd.pid
AuthorizedKeysFile $WORK/sshd/authorized_keys/%u
StrictModes no
UsePAM no
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
AllowTcpForwarding yes
AllowAgentForwarding yes
X11Forwarding no
PermitUserEnvironment no
AcceptEnv LANG LC_* GATE_TEST_*
Subsystem sftp $SFTP_SERVER
LogLevel DEBUG1
MaxStartups 100:30:200
MaxSessions 50
PrintMotd no
PrintLastLog no
EOF
SSHD_VERSION=$("$SSHD" -V 2>&1 | head -n 1 || true)
case "$SSHD_VERSION" in
  OpenSSH_9.[89]* | OpenSSH_[1-9][0-9].*) echo "PerSourcePenalties no" >>"$SSHD_CONFIG" ;;
esac
say "sshd: starting on 127.0.0.1:$SSHD_PORT ($SSHD_VERSION)"
: >"$SSHD_LOG"
LC_ALL=C "$SSHD" -D -e -f "$SSHD_CONFIG" >>"$SSHD_LOG" 2>&1 </dev/null &
SSHD_PID=$!
deadline=$((SECONDS + START_TIMEOUT))
until [[ "$(banner "$SSHD_PORT")" == SSH-2.0-* ]]; do
  alive "$SSHD_PID" || { SSHD_PID=""; die "sshd exited during start-up (see the log below)"; }
  [ "$SECONDS" -lt "$deadline" ] || die "sshd sent no SSH-2.0 banner within ${START_TIMEOUT}s"
  sleep 0.1
done

# Clients ------------------------------------------------------------------------------------
DIRECT_KNOWN_HOSTS="$WORK/client/known_hosts.direct"
GATE_KNOWN_HOSTS="$WORK/client/known_hosts.gate"
printf '[127.0.0.1]:%s %s\n' "$SSHD_PORT" "$(cut -d' ' -f1-2 "$HOST_KEY.pub")" >"$DIRECT_KNOWN_HOSTS"

GATE_USER=alice
CIPHER_OPTS=()
[ -z "$CIPHER" ] || CIPHER_OPTS=(-c "$CIPHER")
[ -z "$KEX" ] || CIPHER_OPTS+=(-o "KexAlgorithms=$KEX")
# ssh_to TARGET ARGS...: ssh to a target with the client key, hermetic options.
ssh_to() {
  local target=$1 port user kh
  shift
  case "$target" in
    direct) port=$SSHD_PORT user=$TEST_USER kh=$DIRECT_KNOWN_HOSTS ;;
    gate) port=$GATE_SSH_PORT user=$GATE_USER kh=$GATE_KNOWN_HOSTS ;;
    *) die "unknown target $target" ;;
  esac
  "$SSH" -F none -p "$port" -i "$CLIENT_KEY" -o IdentitiesOnly=yes -o BatchMode=yes \
    -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$kh" -o GlobalKnownHostsFile=/dev/null \
    -o UpdateHostKeys=no -o ConnectTimeout=20 -o LogLevel=ERROR "${CIPHER_OPTS[@]}" \
    -l "$user" 127.0.0.1 "$@"
}

# check_target TARGET: one session that must print the marker and the upstream user; on
# failure CHECK_MSG says what happened. (Not run in $(…): run_child must set CHILD_PID in
# this shell, for the traps.)
CHECK_MSG=""
check_target() {
  local out="$WORK/runs/check-$1.log"
  CHECK_MSG=""
  if ! run_child "$out" ssh_to "$1" 'echo gate-bench-ok; id -un'; then
    CHECK_MSG="ssh exited with an error: $(tr '\n' ' ' <"$out" | cut -c1-400)"
    return 1
  fi
  if [ "$(head -n 2 "$out" | tr '\n' ' ')" != "gate-bench-ok $TEST_USER " ]; then
    CHECK_MSG="unexpected output: $(tr '\n' ' ' <"$out" | cut -c1-400)"
    return 1
  fi
}

# cipher_of TARGET: the cipher (and key exchange) `ssh -v` reports for the client's own
# connection, into CIPHER_OF.
CIPHER_OF=""
cipher_of() {
  local out="$WORK/runs/cipher-$1.log" kex
  run_child "$out" ssh_to "$1" -v true || true
  CIPHER_OF=$(sed -n 's/.*kex: server->client cipher: \([^ ]*\).*/\1/p' "$out" | head -n 1)
  kex=$(sed -n 's/.*kex: algorithm: \([^ ]*\).*/\1/p' "$out" | head -n 1)
  [ -z "$kex" ] || CIPHER_OF="$CIPHER_OF (kex $kex)"
}

check_target direct || die "direct ssh to sshd failed: $CHECK_MSG"
cipher_of direct
DIRECT_CIPHER=$CIPHER_OF
say "direct: ssh -p $SSHD_PORT $TEST_USER@127.0.0.1 works (cipher ${DIRECT_CIPHER:-?})"

# 2. Gate ------------------------------------------------------------------------------------
# GATE_ERR says why the Gate half is not measured; the direct half runs regardless.
GATE_ERR=""
free_port GATE_PORT
free_port GATE_HEALTH_PORT
free_port GATE_SSH_PORT
GATE_TOKEN="gate_bench_$(random_hex 24)"
GATE_TOKEN_SHA256=$(printf '%s' "$GATE_TOKEN" | "$CONNECTOR" hash-token) || die "gate-connector hash-token failed"
GATE_CONFIG="$WORK/gate/connector.yaml"
GATE_LOG="$WORK/gate/connector.log"
cat >"$GATE_CONFIG" <<EOF
# Written by scripts/bench-ssh.sh.
listen_addr: "127.0.0.1:$GATE_PORT"
health_addr: "127.0.0.1:$GATE_HEALTH_PORT"
data_dir: "$WORK/gate/gate-data"
auth:
  tokens:
    - name: $GATE_USER
      email: $GATE_USER@example.com
      groups: [engineering]
      token_sha256: "$GATE_TOKEN_SHA256"
      ssh_public_keys: ["$CLIENT_PUB"]
resources:
  - name: bench-ssh
    protocol: ssh
    host: 127.0.0.1
    port: $SSHD_PORT
    credentials: {username: $TEST_USER, private_key_file: "$UPSTREAM_KEY"}
    host_key_fingerprint: "$HOST_FP"
    listen_port: $GATE_SSH_PORT
recording: {dir: "$WORK/gate/recordings"}
audit: {file: "$WORK/gate/audit.jsonl"}
logging: {level: warn, format: json}
EOF
chmod 600 "$GATE_CONFIG"
say "gate-connector: SSH resource bench-ssh on 127.0.0.1:$GATE_SSH_PORT -> sshd 127.0.0.1:$SSHD_PORT"
"$CONNECTOR" --config "$GATE_CONFIG" >"$GATE_LOG" 2>&1 </dev/null &
CONNECTOR_PID=$!
deadline=$((SECONDS + READY_TIMEOUT))
until [ "$(http_status "127.0.0.1:$GATE_HEALTH_PORT" /ready)" = 200 ]; do
  if ! alive "$CONNECTOR_PID"; then
    wait "$CONNECTOR_PID" 2>/dev/null || true
    CONNECTOR_PID=""
    GATE_ERR="gate-connector exited before it was ready: $(grep -v '^[[:space:]]*$' "$GATE_LOG" | tail -n 3 | tr '\n' ' ' | cut -c1-600)"
    break
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    GATE_ERR="gate-connector not ready after ${READY_TIMEOUT}s"
    break
  fi
  sleep 0.2
done
if [ -z "$GATE_ERR" ]; then
  deadline=$((SECONDS + 10))
  until [[ "$(banner "$GATE_SSH_PORT")" == SSH-2.0-* ]]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      GATE_ERR="nothing speaks SSH on Gate's listener 127.0.0.1:$GATE_SSH_PORT (no SSH-2.0 banner; is the SSH handler there?)"
      break
    fi
    sleep 0.2
  done
fi
if [ -z "$GATE_ERR" ]; then
  # Trust on first use, which is fine for a benchmark: the key Gate serves right now.
  "$SSH_KEYSCAN" -T 10 -p "$GATE_SSH_PORT" 127.0.0.1 2>/dev/null | grep -v '^#' >"$GATE_KNOWN_HOSTS" || true
  if [ ! -s "$GATE_KNOWN_HOSTS" ]; then
    GATE_ERR="ssh-keyscan got no host key from Gate's listener 127.0.0.1:$GATE_SSH_PORT"
  fi
fi
if [ -z "$GATE_ERR" ]; then
  sshd_lines=$(wc -l <"$SSHD_LOG")
  if check_target gate; then
    # The Gate → sshd leg: the cipher sshd negotiated for the connection Gate just made.
    UPSTREAM_CIPHER=$(tail -n +"$((sshd_lines + 1))" "$SSHD_LOG" | sed -n 's/.*kex: client->server cipher: \([^ ]*\).*/\1/p' | head -n 1)
    upstream_kex=$(tail -n +"$((sshd_lines + 1))" "$SSHD_LOG" | sed -n 's/.*kex: algorithm: \([^ ]*\).*/\1/p' | head -n 1)
    [ -z "$upstream_kex" ] || UPSTREAM_CIPHER="$UPSTREAM_CIPHER (kex $upstream_kex)"
    cipher_of gate
    GATE_CIPHER=$CIPHER_OF
    say "gate: ssh -p $GATE_SSH_PORT $GATE_USER@127.0.0.1 works (client->gate ${GATE_CIPHER:-?}, gate->sshd ${UPSTREAM_CIPHER:-?})"
  else
    GATE_ERR="the first session through Gate failed: $CHECK_MSG"
  fi
fi
if [ -n "$GATE_ERR" ]; then
  say "GATE HALF NOT AVAILABLE: $GATE_ERR"
  say "measuring the direct half only; the script fails at the end"
  TARGETS=(direct)
else
  TARGETS=(direct gate)
fi

GATE_REV="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (+uncommitted changes)')"
cat <<EOF

== Gate SSH benchmark ($MODE_NAME mode) — $(date -u '+%Y-%m-%d %H:%M UTC') ==
machine     $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load average $(cut -d' ' -f1-3 /proc/loadavg) at start
versions    sshd $SSHD_VERSION; ssh $("$SSH" -V 2>&1 | head -n 1); gate $GATE_REV
targets     direct  ssh -p $SSHD_PORT $TEST_USER@127.0.0.1 (ed25519 client key)
            gate    ssh -p $GATE_SSH_PORT $GATE_USER@127.0.0.1 (same client key) -> gate-connector -> sshd (upstream key)
cipher      ${CIPHER:+forced with -c $CIPHER; }${KEX:+client kex forced to $KEX; }direct ${DIRECT_CIPHER:-?}; gate: client->gate ${GATE_CIPHER:-n/a}, gate->sshd ${UPSTREAM_CIPHER:-n/a}
throughput  ssh … 'head -c $BYTES /dev/zero' ($BYTE_COUNT bytes, counted on arrival), $ROUNDS rounds, targets alternating
round trip  ssh … true (connect, key exchange, auth, exec, exit), $RTT_RUNS runs per target, alternating

EOF

# 3. measurements ----------------------------------------------------------------------------
RESULTS="$WORK/results.tsv" # kind target round value (tput: MB/s, rtt: ms) or NA
: >"$RESULTS"
FAILED_RUNS=0
FIFO="$WORK/runs/stream.fifo"
mkfifo "$FIFO"

# throughput TARGET ROUND: MB/s (10^6 bytes per second), or NA, into TPUT. (Not run in
# $(…), for the same reason as check_target.)
TPUT=""
throughput() {
  local t=$1 r=$2 count="$WORK/runs/tput-$1-$2.count" err="$WORK/runs/tput-$1-$2.err" t0 t1 rc=0 n
  wc -c <"$FIFO" >"$count" &
  COUNTER_PID=$!
  t0=$(now_ns)
  ssh_to "$t" "head -c $BYTES /dev/zero" >"$FIFO" 2>"$err" </dev/null &
  CHILD_PID=$!
  wait "$CHILD_PID" || rc=$?
  t1=$(now_ns)
  CHILD_PID=""
  wait "$COUNTER_PID" || true
  COUNTER_PID=""
  n=$(tr -d ' \n' <"$count")
  if [ "$rc" -ne 0 ] || [ "$n" != "$BYTE_COUNT" ]; then
    say "$t round $r: transfer failed (ssh status $rc, $n of $BYTE_COUNT bytes): $(head -c 300 "$err")"
    FAILED_RUNS=$((FAILED_RUNS + 1))
    TPUT=NA
    return
  fi
  TPUT=$(awk -v n="$n" -v ns="$((t1 - t0))" 'BEGIN {printf "%.1f", n / (ns / 1e9) / 1e6}')
}

for round in $(seq 1 "$ROUNDS"); do
  line="$(printf 'throughput round %d/%d:' "$round" "$ROUNDS")"
  for k in $(seq 0 $((${#TARGETS[@]} - 1))); do
    t=${TARGETS[$(((round - 1 + k) % ${#TARGETS[@]}))]}
    throughput "$t" "$round"
    v=$TPUT
    printf 'tput\t%s\t%s\t%s\n' "$t" "$round" "$v" >>"$RESULTS"
    line="$line $t $v MB/s"
  done
  say "$line"
done

for i in $(seq 1 "$RTT_RUNS"); do
  for k in $(seq 0 $((${#TARGETS[@]} - 1))); do
    t=${TARGETS[$(((i - 1 + k) % ${#TARGETS[@]}))]}
    out="$WORK/runs/rtt-$t-$i.log"
    t0=$(now_ns)
    rc=0
    run_child "$out" ssh_to "$t" true || rc=$?
    t1=$(now_ns)
    if [ "$rc" -ne 0 ]; then
      say "$t round trip $i: ssh failed (status $rc): $(head -c 300 "$out")"
      FAILED_RUNS=$((FAILED_RUNS + 1))
      v=NA
    else
      v=$(awk -v ns="$((t1 - t0))" 'BEGIN {printf "%.2f", ns / 1e6}')
    fi
    printf 'rtt\t%s\t%s\t%s\n' "$t" "$i" "$v" >>"$RESULTS"
  done
done
say "round trips done ($RTT_RUNS per target)"
echo

# 4. report ----------------------------------------------------------------------------------
MISSED=0
REPORT=$(awk -F'\t' -v tt="$TPUT_TARGET" -v rt="$RTT_TARGET" '
  function sort(a, n,    i, j, x) { for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x } }
  function median(a, n) { if (n == 0) return "NA"; sort(a, n); return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  function stats(kind, t, out,    i, n, a, lo, hi) {
    n = 0
    for (i = 1; i <= nr; i++) if (K[i] == kind && T[i] == t && V[i] != "NA") a[++n] = V[i] + 0
    if (n == 0) { out["med"] = "NA"; out["lo"] = "NA"; out["hi"] = "NA"; out["n"] = 0; return }
    out["med"] = median(a, n); out["lo"] = a[1]; out["hi"] = a[n]; out["n"] = n
  }
  { nr++; K[nr] = $1; T[nr] = $2; V[nr] = $4 }
  END {
    stats("tput", "direct", td); stats("tput", "gate", tg)
    stats("rtt", "direct", rd); stats("rtt", "gate", rg)
    printf "%-36s | %-26s | %-26s | %-11s | %s\n", "", "direct", "gate", "gate/direct", "target"
    printf "-------------------------------------+----------------------------+----------------------------+-------------+---------------\n"
    row("throughput MB/s", td, tg, "%.0f", ">=", tt)
    row("round trip ms", rd, rg, "%.1f", "<=", rt)
  }
  function fmt(s, f) { return (s["med"] == "NA") ? "NA" : sprintf(f " [" f "-" f "] n=%d", s["med"], s["lo"], s["hi"], s["n"]) }
  function row(name, d, g, f, op, target,    ratio, verdict) {
    if (d["med"] == "NA" || g["med"] == "NA" || d["med"] == 0) { ratio = "NA"; verdict = (g["n"] == 0 && d["n"] > 0) ? "n/a" : "MISS" }
    else {
      ratio = sprintf("%.3f", g["med"] / d["med"])
      verdict = (op == ">=") ? ((ratio + 0 >= target) ? "PASS" : "MISS") : ((ratio + 0 <= target) ? "PASS" : "MISS")
    }
    printf "%-36s | %-26s | %-26s | %-11s | %s %s %s\n", name " (median [min-max])", fmt(d, f), fmt(g, f), ratio, op, target, verdict
  }' "$RESULTS")
echo "$REPORT"
cat <<'EOF'
(throughput: bytes / wall time of the whole ssh run, connection set-up included; MB = 10^6 bytes;
 round trip: wall time of one `ssh … true`; medians over runs, ratios of the medians)
EOF
if grep -q 'MISS$' <<<"$REPORT"; then MISSED=1; fi
echo

# Gate's own view, as in the other benchmarks.
if [ -n "$CONNECTOR_PID" ]; then
  if alive "$CONNECTOR_PID"; then gate_state=running; else gate_state=EXITED; MISSED=1; fi
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
    t0=$(date +%s.%N)
    stop_pid "$CONNECTOR_PID" gate-connector 30
    CONNECTOR_PID=""
    echo "  graceful shutdown (SIGTERM) took $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s"
  fi
  audit_lines=$(wc -l <"$WORK/gate/audit.jsonl" 2>/dev/null || echo 0)
  rec_size=$(du -sh "$WORK/gate/recordings" 2>/dev/null | cut -f1 || true)
  echo "  audit: $audit_lines events; recordings: ${rec_size:-0}"
fi
sshd_errors=$(grep -cE '^(error|fatal):' "$SSHD_LOG" || true)
echo "sshd log: $sshd_errors error lines; $(grep -c 'Accepted publickey' "$SSHD_LOG" || true) logins"
if [ "$sshd_errors" -gt 0 ]; then
  grep -E '^(error|fatal):' "$SSHD_LOG" | sed 's/port [0-9]*/port N/g' | sort | uniq -c | sort -rn | head -n 5 | cut -c1-200 | sed 's/^/   /'
fi
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg); took $((SECONDS - BUILT_AT)) s (+ $((BUILT_AT - STARTED_AT)) s checking/building)"

if [ "$FAILED_RUNS" -gt 0 ]; then
  say "$FAILED_RUNS run(s) failed (outputs in $WORK/runs with BENCH_KEEP=1)"
fi
if [ -n "$GATE_ERR" ]; then
  say "error: the Gate half failed, only the direct half was measured: $GATE_ERR"
  exit 2
fi
if [ "${BENCH_STRICT:-0}" = 1 ] && { [ "$MISSED" -ne 0 ] || [ "$FAILED_RUNS" -ne 0 ]; }; then
  say "a target was missed or a run failed (BENCH_STRICT=1)"
  exit 3
fi
exit 0
