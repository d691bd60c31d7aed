#!/usr/bin/env bash
# Why a PostgreSQL mirror is copied with `pg_basebackup --no-slot` (docs/mirror-drivers.md):
# under `synchronous_standby_names = '*'` the WAL stream of a base backup that uses a
# replication slot (pg_basebackup's default) reports a flush position and is a candidate
# synchronous standby. When it is chosen, every commit waits for it, that is for the end of
# the copy (its flush position moves only when a WAL segment is closed).
#
# A primary with one streaming standby S; S stops; a throttled base backup (-r 8M) starts; S
# comes back (so the copy's stream is the earlier candidate); one commit is timed. Run once
# as is and once with NOSLOT=--no-slot. Needs PostgreSQL's binaries (BINDIR, default
# /usr/lib/postgresql/15/bin) and runs them as the `postgres` user when started as root.
#
#   bash crates/bellwether-mirror/examples/pg_basebackup_sync.sh
#   NOSLOT=--no-slot bash crates/bellwether-mirror/examples/pg_basebackup_sync.sh
set -euo pipefail
if [ "$(id -u)" = 0 ]; then
    exec su postgres -c "NOSLOT='${NOSLOT:-}' BINDIR='${BINDIR:-}' PORT='${PORT:-}' bash $(readlink -f "$0")"
fi
B=${BINDIR:-/usr/lib/postgresql/15/bin}
P=${PORT:-25432}
D=$(mktemp -d)
cleanup() {
    "$B/pg_ctl" -D "$D/s1" stop -m immediate >/dev/null 2>&1 || true
    "$B/pg_ctl" -D "$D/p" stop -m immediate >/dev/null 2>&1 || true
    rm -rf "$D"
}
trap cleanup EXIT
cd "$D"
"$B/initdb" -D p -U postgres -A trust >/dev/null
cat >>p/postgresql.conf <<C
port=$P
listen_addresses='127.0.0.1'
unix_socket_directories='$D'
wal_level=replica
C
"$B/pg_ctl" -D p -l p.log start -w >/dev/null
q() { psql -h 127.0.0.1 -p "$P" -U postgres -Atc "$1"; }
q "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 2000000)" >/dev/null
q "ALTER SYSTEM SET synchronous_standby_names = '*'" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null
"$B/pg_basebackup" -d "host=127.0.0.1 port=$P user=postgres" -D s1 -R -X stream -c fast --no-sync
printf "port=%s\nunix_socket_directories='%s'\n" $((P + 1)) "$D" >>s1/postgresql.auto.conf
"$B/pg_ctl" -D s1 -l s1.log start -w >/dev/null
"$B/pg_ctl" -D s1 stop -w -m fast >/dev/null
"$B/pg_basebackup" -d "host=127.0.0.1 port=$P user=postgres application_name=copy" \
    -D s2 -R -X stream -c fast --no-sync -r 8M ${NOSLOT:-} &
copy=$!
sleep 1
"$B/pg_ctl" -D s1 -l s1.log start -w >/dev/null
sleep 1
echo "pg_basebackup ${NOSLOT:-(with its temporary slot)}; pg_stat_replication during the copy:"
q "SELECT application_name, state, sync_state FROM pg_stat_replication ORDER BY 1, 2"
s=$(date +%s.%N)
q "INSERT INTO t VALUES (1)" >/dev/null
e=$(date +%s.%N)
wait $copy
c=$(date +%s.%N)
echo "commit acknowledged after $(echo "$e - $s" | bc) s; the copy ended $(echo "$c - $e" | bc) s after the commit"
