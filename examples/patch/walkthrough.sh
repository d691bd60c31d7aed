#!/usr/bin/env bash
# A bad patch of a real PostgreSQL, rolled back in four phases while pgbench runs through
# Bellwether's proxy, with no failed transaction. See docs/patch.md, "Walkthrough".
#
# Needs: the Debian packages postgresql and postgresql-contrib (initdb, pg_ctl, pgbench), and
# a built bellwether (cargo build --release). Run from the repository as root (the clusters
# then run as the postgres user) or as a user that may run initdb itself:
#
#     examples/patch/walkthrough.sh
#
# Environment: BELLWETHER (the binary; default target/release/bellwether, else the one on
# PATH), PATCH=good for a harmless patch that is promoted instead, CLIENTS (pgbench clients,
# default 8), SECONDS_OF_LOAD (default 25), KEEP=1 to keep the work directory, MODE=server to
# run the patch in a Bellwether server (a durable task) that drives a long-running
# `bellwether proxy` and an agent on this host, instead of in the command (MODE=local).
set -euo pipefail

bw=${BELLWETHER:-}
if [ -z "$bw" ]; then
  if [ -x target/release/bellwether ]; then bw=$PWD/target/release/bellwether
  else bw=$(command -v bellwether || true); fi
fi
[ -n "$bw" ] && [ -x "$bw" ] || { echo "no bellwether binary: run cargo build --release, or set BELLWETHER" >&2; exit 2; }
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -x "$pgbin/initdb" ] || { echo "no initdb: install the Debian package postgresql" >&2; exit 2; }
command -v pgbench >/dev/null || { echo "no pgbench: install the Debian package postgresql-contrib" >&2; exit 2; }

mode=${MODE:-local}
case "$mode" in local|server) ;; *) echo "MODE is local or server, not $mode" >&2; exit 2;; esac
clients=${CLIENTS:-8}
seconds=${SECONDS_OF_LOAD:-25}
W=$(mktemp -d /tmp/bw-walkthrough.XXXXXX)
chmod 755 "$W"
# Free loopback ports for the two instances, the proxy and its admin API.
read -r p_orig p_patched p_proxy p_admin p_server < <(python3 -c '
import socket
s=[socket.socket() for _ in range(5)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')

as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); chown postgres:postgres "$W"; fi

patch_pid=
service_pids=()
cleanup() {
  set +e
  if [ -n "$patch_pid" ]; then kill "$patch_pid" 2>/dev/null; wait "$patch_pid" 2>/dev/null; fi
  for p in "${service_pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for n in original patched; do
    if [ -f "$W/$n/postmaster.pid" ]; then
      "${as_pg[@]}" "$pgbin/pg_ctl" -D "$W/$n" -m fast -w stop >/dev/null 2>&1
    fi
  done
  if [ "${KEEP:-}" = 1 ]; then echo "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }

say "1. Two clusters: the original on $p_orig, the patched one on $p_patched"
for n in original:$p_orig patched:$p_patched; do
  name=${n%%:*}; port=${n##*:}
  "${as_pg[@]}" "$pgbin/initdb" -D "$W/$name" -A trust -U postgres --no-sync >/dev/null
  printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n" "$port" "$W" >> "$W/$name/postgresql.conf"
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$W/$name" -l "$W/$name.log" -w start >/dev/null
  pgbench -i -q -s 1 -h 127.0.0.1 -p "$port" -U postgres postgres 2>&1 | tail -n1
done
if [ "${PATCH:-bad}" = bad ]; then
  echo "The bad patch: the patched instance's configuration forbids index scans."
  printf "enable_indexscan = off\nenable_bitmapscan = off\nenable_indexonlyscan = off\n" >> "$W/patched/postgresql.conf"
  bake=2m
else
  echo "A harmless patch: the patched instance is configured like the original."
  bake=15s
fi
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$W/patched" -w stop >/dev/null

say "2. The plan ($W/patch.yaml)"
pg_ctl_argv="${as_pg[*]:+$(printf '%s, ' "${as_pg[@]}")}$pgbin/pg_ctl, -D, $W/patched"
cat > "$W/patch.yaml" <<YAML
name: pg-config-patch
proxy:
  listen: 127.0.0.1:$p_proxy
  admin: 127.0.0.1:$p_admin
original:
  address: 127.0.0.1:$p_orig
  pidfile: $W/original/postmaster.pid
patched:
  address: 127.0.0.1:$p_patched
  start: [$pg_ctl_argv, -l, $W/patched.log, -w, start]
  stop: [$pg_ctl_argv, -m, fast, -w, stop]
  pidfile: $W/patched/postmaster.pid
health:
  check: postgres
  interval: 250ms
  rise: 2
metrics:
  - { metric: latency_p50, threshold_pct: 100, duration: 2s, weight: 2 }
  - { metric: latency_p99, threshold_pct: 200, duration: 2s, weight: 1 }
  - { metric: error_rate, threshold_pct: 100, duration: 1s, weight: 1, critical: true }
  - { metric: cpu, threshold_pct: 300, duration: 5s, weight: 1 }
  - { metric: rss, threshold_pct: 100, duration: 5s, weight: 0.5 }
sample_interval: 500ms
baseline_window: 5s
bake_time: $bake
drain_timeout: 10s
severity_threshold: 0.3
YAML
cat "$W/patch.yaml"

wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
if [ "$mode" = local ]; then
say "3. bellwether patch start --wait, and $clients pgbench clients through the proxy for ${seconds}s"
# The proxy's admin API needs a bearer token: generated into this file (mode 0600).
"$bw" patch --state-dir "$W/state" start "$W/patch.yaml" --wait --id walkthrough \
  --admin-token-file "$W/admin.token" &
patch_pid=$!
wait_port "$p_proxy"
else
say "3. A proxy, a server and an agent; bellwether patch start --server --wait, and $clients pgbench clients through the proxy for ${seconds}s"
# The long-running proxy with both instances; the patched one takes no connection yet. It
# generates its admin token into $W/admin.token (mode 0600).
cat > "$W/proxy.yaml" <<YAML
listeners: [{ address: "127.0.0.1:$p_proxy", protocol: postgres }]
backends:
  - { name: original, address: "127.0.0.1:$p_orig" }
  - { name: patched, address: "127.0.0.1:$p_patched", weight: 0 }
admin: "127.0.0.1:$p_admin"
admin_token_file: "$W/admin.token"
health: { check: postgres, interval: 250ms, rise: 2, user: postgres, database: postgres }
YAML
"$bw" proxy --config "$W/proxy.yaml" > "$W/proxy.log" 2>&1 &
service_pids+=($!)
wait_port "$p_proxy"; wait_port "$p_admin"
# The server reads that token file by name (main); the token is never sent or stored.
"$bw" server --listen "127.0.0.1:$p_server" --data-dir "$W/server" \
  --proxy-token-file "main=$W/admin.token" > "$W/server.log" 2>&1 &
service_pids+=($!)
wait_port "$p_server"
server=http://127.0.0.1:$p_server
# The agent of this host (db1) starts, stops and samples the instances for the server.
"$bw" agent --server "$server" --token "$(cat "$W/server/enrol.token")" --name db1 \
  --state-dir "$W/agent" --interval 5s --allow-action start_process \
  --allow-action stop_process --allow-action sample_processes > "$W/agent.log" 2>&1 &
service_pids+=($!)
export BELLWETHER_TOKEN=$(cat "$W/server/operator.token")
for _ in $(seq 100); do
  curl -sf -H "Authorization: Bearer $BELLWETHER_TOKEN" "$server/api/v1/hosts/db1" >/dev/null && break
  sleep 0.1
done
echo "server $server (log $W/server.log), proxy admin http://127.0.0.1:$p_admin, agent db1"
"$bw" patch start "$W/patch.yaml" --server "$server" --host db1 --proxy-token main \
  --wait --id walkthrough &
patch_pid=$!
fi
echo "(watch the sessions move meanwhile: curl -s -H \"Authorization: Bearer \$(cat $W/admin.token)\" 127.0.0.1:$p_admin/connections)"
pgbench -n -c "$clients" -j 2 -T "$seconds" -P 5 -M simple -h 127.0.0.1 -p "$p_proxy" -U postgres postgres > "$W/pgbench.out" 2> >(grep -v '^pgbench (' >&2)

say "4. What the clients saw"
grep -E "^(number of (transactions actually processed|failed transactions)|tps)" "$W/pgbench.out"
if grep -q "number of failed transactions: 0 " "$W/pgbench.out"; then
  echo "No client transaction failed."
else
  echo "Some client transactions failed." >&2
  status=1
fi

if command -v curl >/dev/null; then
  echo "The proxy's backends now (admin API, with the token):"
  curl -sS -H "Authorization: Bearer $(cat "$W/admin.token")" "127.0.0.1:$p_admin/backends" |
    python3 -c 'import json,sys; [print(" ", b["name"], b["admin"], "weight", b["weight"]) for b in json.load(sys.stdin)]'
fi

say "5. The report"
if [ "$mode" = local ]; then
  "$bw" patch --state-dir "$W/state" status
  "$bw" patch --state-dir "$W/state" report walkthrough --output json > "$W/report.json"
else
  # `patch start --wait` exits once the patch is settled; its events are in the server's log.
  wait "$patch_pid" || true; patch_pid=
  "$bw" patch status --server "$server"
  "$bw" patch report walkthrough --server "$server" --output json > "$W/report.json"
  echo "The patch in the server's event log:"
  curl -s -H "Authorization: Bearer $BELLWETHER_TOKEN" "$server/api/v1/events?limit=1000" |
    python3 -c 'import json,sys; [print(" ", e["kind"], "-", e["reason"]) for e in reversed(json.load(sys.stdin)) if e["figures"].get("patch") == "walkthrough"]'
fi
python3 - "$W/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("stage:", r["stage"])
if r.get("trigger"):
    t = r["trigger"]
    # Six significant digits, as `patch status` prints them (the JSON keeps every digit).
    print(f'trigger: {t["metric"]} against the {t["against"]}: value {t["value"]:.6g}, baseline {t["baseline"]:.6g}')
for p in r.get("phases", []):
    print(f'{p["kind"]} phase {p["phase"]}: {p["name"]}: {p["took_ms"]} ms')
PY
echo "(the whole report: bellwether patch report walkthrough --output json, kept in $W/report.json while KEEP=1)"
exit "${status:-0}"
