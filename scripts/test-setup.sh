#!/usr/bin/env bash
# Prepares a machine for `make test`:
# - PostgreSQL server and client programs, and the `postgres` system user the test servers
#   run as when the tests run as root;
# - MariaDB server and client programs (mariadb-install-db, mariadbd, mariadb), and the
#   `mysql` system user;
# - the client libraries the MariaDB end-to-end tests drive: PyMySQL for `python3`, MariaDB
#   Connector/J (and a Java runtime), and node's mysql2 in tests/node/;
# - moto's S3 server (`moto_server`, from `pip install 'moto[server]'`): no real S3 is
#   reachable from the tests, so the S3 recording tests run this documented in-memory mock of
#   the S3 API instead. Into a venv under .data/ when python3 is an externally managed system
#   Python (Debian's), where pip refuses to install.
# - OpenSSH: the server (`sshd`, for the throwaway SSH upstreams of gate-test-support's
#   sshd module) and the clients the SSH tests drive (ssh, scp, sftp, ssh-keygen,
#   ssh-keyscan); rsync; the `sshd` privilege separation user and /run/sshd; and the
#   `gate-ssh-test` login user (home /var/lib/gate-ssh-test, /bin/bash). gate-test-support
#   creates that user itself when the tests run as root and it is missing, and sets its
#   (random) password with chpasswd, keeping it in the root-only file
#   /var/lib/gate-ssh-test/.gate-test-password; this script only creates the account;
# - asciinema 2.x (`pip install 'asciinema<3'`), a real player to check SSH session
#   recordings with; into a venv under .data/ like moto. The script prints where it is;
#   gate-test-support finds it as GATE_ASCIINEMA, .data/asciinema-venv/bin/asciinema, or
#   `asciinema` on PATH.
# - the Python `standardwebhooks` package (the Standard Webhooks reference library), which
#   the webhook tests' receiver verifies Gate's signatures with, independently of Gate's own
#   code: always into a venv, .data/webhooks-venv. gate-test-support finds the Python as
#   GATE_WEBHOOKS_PYTHON, .data/webhooks-venv/bin/python, or a `python3` on PATH that can
#   import it.
# Idempotent: on a machine that already has everything it only reports what it found.
# Debian/Ubuntu; needs root (or passwordless sudo) only when something must be installed.
set -euo pipefail

say() { printf 'test-setup: %s\n' "$*"; }

cd "$(dirname "$0")/.."

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

# A program on PATH or in the sbin directories (mariadbd lives in /usr/sbin, which a
# non-root PATH may lack). The same search gate-test-support does.
find_prog() {
  local p d
  for p in "$@"; do
    if command -v "$p" >/dev/null 2>&1; then
      command -v "$p"; return 0
    fi
    for d in /usr/sbin /usr/local/sbin /sbin /usr/bin /usr/local/bin; do
      if [ -x "$d/$p" ]; then
        echo "$d/$p"; return 0
      fi
    done
  done
  return 1
}

# Whether python3 is an externally managed system Python (PEP 668: pip refuses to install
# into it), like Debian's.
python_externally_managed() {
  python3 -c 'import os, sys, sysconfig
sys.exit(0 if sys.prefix == "/usr" and os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)' 2>/dev/null
}

# moto's S3 server, as gate-test-support looks for it: GATE_MOTO_SERVER, the venv this script
# makes for an externally managed python3, `moto_server` on PATH, then python3's moto module.
# One that does not start (moto without its [server] extras) does not count.
moto_venv=.data/moto-venv
find_moto() {
  local p
  for p in "${GATE_MOTO_SERVER:-}" "$moto_venv/bin/moto_server" "$(command -v moto_server 2>/dev/null || true)"; do
    if [ -n "$p" ] && [ -x "$p" ] && "$p" --help >/dev/null 2>&1; then
      echo "$p"; return 0
    fi
  done
  if command -v python3 >/dev/null 2>&1 && python3 -m moto.server --help >/dev/null 2>&1; then
    echo "python3 -m moto.server"; return 0
  fi
  return 1
}

# asciinema 2.x, as gate-test-support looks for it: GATE_ASCIINEMA, the venv this script makes
# for an externally managed python3, then `asciinema` on PATH. Prints the path and version.
asciinema_venv=.data/asciinema-venv
find_asciinema() {
  local p v
  for p in "${GATE_ASCIINEMA:-}" "$asciinema_venv/bin/asciinema" "$(command -v asciinema 2>/dev/null || true)"; do
    if [ -n "$p" ] && [ -x "$p" ] && v=$("$p" --version 2>/dev/null); then
      case "$v" in
        *" 2."*) echo "$p ($v)"; return 0 ;;
      esac
    fi
  done
  return 1
}

# A Python that can import standardwebhooks, as gate-test-support looks for it:
# GATE_WEBHOOKS_PYTHON, the venv this script makes, then `python3` on PATH.
webhooks_venv=.data/webhooks-venv
find_webhooks_python() {
  local p
  for p in "${GATE_WEBHOOKS_PYTHON:-}" "$webhooks_venv/bin/python" "$(command -v python3 2>/dev/null || true)"; do
    if [ -n "$p" ] && [ -x "$p" ] && "$p" -c 'import standardwebhooks.webhooks' >/dev/null 2>&1; then
      echo "$p"; return 0
    fi
  done
  return 1
}

mariadb_jar=/usr/share/java/mariadb-java-client.jar

# Collect every missing Debian package first: one `apt-get update`, one `apt-get install`.
missing=()
add_missing() {
  local p
  for p in "$@"; do
    case " ${missing[*]:-} " in
      *" $p "*) ;;
      *) missing+=("$p") ;;
    esac
  done
}

# --- PostgreSQL ---
if bindir=$(pg_bindir); then
  say "PostgreSQL server programs: $bindir ($("$bindir/postgres" --version 2>/dev/null || echo '?'))"
else
  # pgbench ships with the server package on Debian; install both when anything is missing.
  add_missing postgresql postgresql-client
fi
for tool in psql pgbench; do
  if command -v "$tool" >/dev/null 2>&1 || { [ -n "${bindir:-}" ] && [ -x "$bindir/$tool" ]; }; then
    say "$tool: found"
  else
    add_missing postgresql postgresql-client
  fi
done

# --- MariaDB ---
if mariadbd=$(find_prog mariadbd mysqld) && find_prog mariadb-install-db mysql_install_db >/dev/null; then
  say "MariaDB server programs: $mariadbd ($("$mariadbd" --version 2>/dev/null || echo '?'))"
else
  add_missing mariadb-server mariadb-client
fi
if find_prog mariadb >/dev/null; then
  say "mariadb (client): found"
else
  add_missing mariadb-client
fi

# --- OpenSSH: sshd, the clients and ssh-keygen; rsync ---
if sshd_bin=$(find_prog sshd); then
  say "sshd: $sshd_bin ($("$sshd_bin" -V 2>&1 | head -n 1 || echo '?'))"
else
  add_missing openssh-server
fi
for tool in ssh scp sftp ssh-keygen ssh-keyscan; do
  if find_prog "$tool" >/dev/null; then
    say "$tool: found"
  else
    add_missing openssh-client
  fi
done
if command -v rsync >/dev/null 2>&1; then
  say "rsync: found"
else
  add_missing rsync
fi

# --- Java: a runtime and MariaDB Connector/J ---
if command -v java >/dev/null 2>&1; then
  say "java: found ($(java -version 2>&1 | head -n 1))"
else
  add_missing default-jre-headless
fi
if [ -f "$mariadb_jar" ]; then
  say "MariaDB Connector/J: $mariadb_jar"
else
  add_missing libmariadb-java
fi

# --- Python: PyMySQL, from Debian when python3 is the system one (PEP 668 forbids pip there;
# otherwise pip installs it below) ---
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import pymysql' >/dev/null 2>&1 \
  && python_externally_managed; then
  add_missing python3-pymysql
fi

# --- Python: moto's venv needs `python3 -m venv`, which on Debian needs python3-venv (it
# ships ensurepip) ---
if command -v python3 >/dev/null 2>&1 \
  && { ! find_moto >/dev/null || ! find_asciinema >/dev/null || ! find_webhooks_python >/dev/null; } \
  && python_externally_managed && ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  add_missing python3-venv
fi

if [ "${#missing[@]}" -gt 0 ]; then
  say "missing: ${missing[*]} -> apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update
  as_root apt-get install -y --no-install-recommends "${missing[@]}"
  # The Debian packages create (and, where services may start, start) default PostgreSQL
  # and MariaDB servers on 5432 and 3306; the tests never use them.
  case " ${missing[*]} " in
    *" postgresql "*)
      bindir=$(pg_bindir) || { say "PostgreSQL installed but initdb/pg_ctl still not found"; exit 1; }
      say "installed: $bindir ($("$bindir/postgres" --version))"
      ;;
  esac
  case " ${missing[*]} " in
    *" mariadb-server "*|*" mariadb-client "*)
      mariadbd=$(find_prog mariadbd mysqld) || { say "MariaDB installed but mariadbd still not found"; exit 1; }
      find_prog mariadb-install-db mysql_install_db >/dev/null || { say "MariaDB installed but mariadb-install-db still not found"; exit 1; }
      find_prog mariadb >/dev/null || { say "MariaDB installed but the mariadb client still not found"; exit 1; }
      say "installed: $mariadbd ($("$mariadbd" --version))"
      ;;
  esac
  case " ${missing[*]} " in
    *" openssh-server "*|*" openssh-client "*)
      # The package may start a system sshd on port 22; the tests never use it.
      sshd_bin=$(find_prog sshd) || { say "openssh-server installed but sshd still not found"; exit 1; }
      for tool in ssh scp sftp ssh-keygen ssh-keyscan; do
        find_prog "$tool" >/dev/null || { say "openssh-client installed but $tool still not found"; exit 1; }
      done
      say "installed: $sshd_bin ($("$sshd_bin" -V 2>&1 | head -n 1))"
      ;;
  esac
  case " ${missing[*]} " in
    *" libmariadb-java "*|*" default-jre-headless "*)
      command -v java >/dev/null 2>&1 || { say "Java runtime installed but java still not found"; exit 1; }
      [ -f "$mariadb_jar" ] || { say "libmariadb-java installed but $mariadb_jar still not found"; exit 1; }
      say "installed: $mariadb_jar, $(java -version 2>&1 | head -n 1)"
      ;;
  esac
fi

# --- System users the throwaway servers run as when the tests run as root ---
# PostgreSQL and MariaDB both refuse to run as root.
ensure_system_user() {
  local user=$1 home=$2 shell=$3
  if id "$user" >/dev/null 2>&1; then
    say "system user $user: exists ($(id "$user"))"
  elif [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null 2>&1; then
    say "creating system user $user"
    if getent group "$user" >/dev/null 2>&1; then
      as_root useradd --system --home-dir "$home" --shell "$shell" --gid "$user" "$user"
    else
      as_root useradd --system --home-dir "$home" --shell "$shell" --user-group "$user"
    fi
  else
    say "system user $user: missing (only needed when the tests run as root)"
  fi
}
ensure_system_user postgres /var/lib/postgresql /bin/bash
# The Debian mariadb-server package creates it like this; a machine with a MariaDB from
# elsewhere may not have it.
ensure_system_user mysql /nonexistent /bin/false
# sshd's privilege separation user and directory (the openssh-server package makes the user;
# /run is often empty in containers). gate-test-support creates both too when it runs as root.
ensure_system_user sshd /run/sshd /usr/sbin/nologin
if [ ! -d /run/sshd ]; then
  if [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null 2>&1; then
    as_root install -d -m 0755 /run/sshd && say "created /run/sshd"
  fi
fi
# The login user of the throwaway sshd: a real shell and a home it can write (scp and sftp
# tests copy files there). Its password is set by gate-test-support (see the top).
ensure_system_user gate-ssh-test /var/lib/gate-ssh-test /bin/bash
if id gate-ssh-test >/dev/null 2>&1 && [ ! -d /var/lib/gate-ssh-test ] \
  && [ "$(getent passwd gate-ssh-test | cut -d: -f6)" = /var/lib/gate-ssh-test ]; then
  as_root install -d -m 0755 -o gate-ssh-test -g "$(id -gn gate-ssh-test)" /var/lib/gate-ssh-test \
    && say "created /var/lib/gate-ssh-test"
fi

# --- Python: PyMySQL ---
if ! command -v python3 >/dev/null 2>&1; then
  say "python3: not found (the Python MariaDB client tests will be skipped)"
elif python3 -c 'import pymysql' >/dev/null 2>&1; then
  say "PyMySQL: found ($(python3 -c 'import pymysql; print(pymysql.__version__)'))"
else
  say "PyMySQL: missing -> python3 -m pip install PyMySQL"
  # PIP_ROOT_USER_ACTION: no "running pip as root" warning (older pips ignore the variable).
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check PyMySQL
  python3 -c 'import pymysql' || { say "PyMySQL installed but python3 still cannot import it"; exit 1; }
  say "installed: PyMySQL $(python3 -c 'import pymysql; print(pymysql.__version__)')"
fi

# --- Python: mysql-connector-python (Oracle's pure-Python driver) ---
if ! command -v python3 >/dev/null 2>&1; then
  :
elif python3 -c 'import mysql.connector' >/dev/null 2>&1; then
  say "mysql-connector-python: found ($(python3 -c 'import mysql.connector as m; print(m.__version__)'))"
elif python_externally_managed; then
  say "mysql-connector-python: missing and pip is blocked for the system python3 (its test will be skipped)"
else
  say "mysql-connector-python: missing -> python3 -m pip install mysql-connector-python"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check mysql-connector-python
  python3 -c 'import mysql.connector' || { say "mysql-connector-python installed but python3 cannot import it"; exit 1; }
fi

# --- Python: moto's S3 server (moto[server]), the local stand-in for S3 ---
if moto=$(find_moto); then
  say "moto_server: found ($moto)"
elif ! command -v python3 >/dev/null 2>&1; then
  say "python3: not found; the S3 recording tests need moto_server (pip install 'moto[server]')"
  exit 1
elif python_externally_managed; then
  say "moto_server: missing -> python3 -m venv $moto_venv; pip install 'moto[server]' there"
  mkdir -p "$(dirname "$moto_venv")"
  [ -x "$moto_venv/bin/python" ] || python3 -m venv "$moto_venv"
  "$moto_venv/bin/python" -m pip install --quiet --disable-pip-version-check 'moto[server]'
  moto=$(find_moto) || { say "moto[server] installed but $moto_venv/bin/moto_server does not start"; exit 1; }
  say "installed: moto $("$moto_venv/bin/python" -c 'import moto; print(moto.__version__)') in $moto_venv"
else
  say "moto_server: missing -> python3 -m pip install 'moto[server]'"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check 'moto[server]'
  moto=$(find_moto) || { say "moto[server] installed but neither moto_server nor python3 -m moto.server starts"; exit 1; }
  say "installed: moto $(python3 -c 'import moto; print(moto.__version__)') ($moto)"
fi

# --- Python: asciinema 2.x, a real player for SSH session recordings ---
if asciinema=$(find_asciinema); then
  say "asciinema: found: $asciinema"
elif ! command -v python3 >/dev/null 2>&1; then
  say "asciinema: missing and python3 not found (the asciinema playback checks will be skipped)"
elif python_externally_managed; then
  say "asciinema: missing -> python3 -m venv $asciinema_venv; pip install 'asciinema>=2,<3' there"
  mkdir -p "$(dirname "$asciinema_venv")"
  [ -x "$asciinema_venv/bin/python" ] || python3 -m venv "$asciinema_venv"
  "$asciinema_venv/bin/python" -m pip install --quiet --disable-pip-version-check 'asciinema>=2,<3'
  asciinema=$(find_asciinema) || { say "asciinema installed but $asciinema_venv/bin/asciinema does not run"; exit 1; }
  say "installed: asciinema: $asciinema"
else
  say "asciinema: missing -> python3 -m pip install 'asciinema>=2,<3'"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check 'asciinema>=2,<3'
  hash -r
  asciinema=$(find_asciinema) || { say "asciinema installed but not found on PATH (set GATE_ASCIINEMA to it)"; exit 1; }
  say "installed: asciinema: $asciinema"
fi

# --- Python: standardwebhooks, the independent signature check of the webhook tests ---
if webhooks_python=$(find_webhooks_python); then
  say "standardwebhooks: found ($webhooks_python)"
elif ! command -v python3 >/dev/null 2>&1; then
  say "python3: not found; the webhook tests need it with standardwebhooks (pip install standardwebhooks)"
  exit 1
else
  say "standardwebhooks: missing -> python3 -m venv $webhooks_venv; pip install 'standardwebhooks>=1.0,<2' there"
  mkdir -p "$(dirname "$webhooks_venv")"
  [ -x "$webhooks_venv/bin/python" ] || python3 -m venv "$webhooks_venv"
  "$webhooks_venv/bin/python" -m pip install --quiet --disable-pip-version-check 'standardwebhooks>=1.0,<2'
  webhooks_python=$(find_webhooks_python) || { say "standardwebhooks installed but $webhooks_venv/bin/python cannot import it"; exit 1; }
  say "installed: standardwebhooks $("$webhooks_venv/bin/python" -c 'import importlib.metadata as m; print(m.version("standardwebhooks"))') in $webhooks_venv"
fi

# --- Node: mysql2 in tests/node/ (a project-local install; node_modules is not committed) ---
node_dir=tests/node
if [ -f "$node_dir/node_modules/mysql2/package.json" ]; then
  say "node mysql2: found in $node_dir/node_modules"
elif ! command -v npm >/dev/null 2>&1; then
  say "node mysql2: missing and npm not found (the node MariaDB client tests will be skipped)"
else
  say "node mysql2: missing -> npm install --prefix $node_dir mysql2"
  mkdir -p "$node_dir"
  if [ ! -f "$node_dir/package.json" ]; then
    printf '{"private": true, "dependencies": {"mysql2": "^3"}}\n' >"$node_dir/package.json"
  fi
  # With no argument npm installs what package.json lists (mysql2 ^3) and leaves the file
  # as it is.
  npm install --prefix "$node_dir" --no-audit --no-fund --loglevel=error
  [ -f "$node_dir/node_modules/mysql2/package.json" ] || { say "npm install ran but $node_dir/node_modules/mysql2 is missing"; exit 1; }
  say "installed: mysql2 $(node -p "require('./$node_dir/node_modules/mysql2/package.json').version" 2>/dev/null || echo '?') in $node_dir/node_modules"
fi

say "ready"
