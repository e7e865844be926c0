#!/usr/bin/env bash
# Starts the whole Tiny SNS on this machine: a coordinator, three clusters of
# master + slave servers and one synchronizer per cluster.
#
#   ./startup.sh              build (release) and start everything
#   ./startup.sh --tls        the same with TLS on every channel: makes a CA
#                             and a certificate under run/tls/ (once) and
#                             starts everything with SNS_TLS_CERT/KEY/CA set
#   ./startup.sh stop         stop everything it started (SIGTERM, by pid)
#   ./startup.sh status       which processes run, and the coordinator's
#                             routing table (snsctl status)
#   ./startup.sh kill NAME    SIGKILL one process (server_1_1, coordinator,
#                             synchronizer_2, ...): a crash
#   ./startup.sh stop NAME    SIGTERM one process: a clean stop
#   ./startup.sh start NAME   start one process again, with the flags and
#                             environment it was first started with
#
# Ports (gRPC / HTTP: /metrics, /healthz; the coordinator's HTTP port also
# serves the dashboard at / and the table at /api/table):
#
#   coordinator          9000 / 8000
#   server_C_S           90CS / 80CS   (server_1_1: 9011 / 8011)
#   synchronizer_C       910C / 810C   (synchronizer_1: 9101 / 8101)
#
# Logs go to run/logs/<name>.log, pids to run/pids/<name>.pid, each
# process's command to run/cmds/<name>.sh, data to $SNS_DATA_DIR (default
# ./cluster_data; a server's directory is cluster_C/server_S). The knobs
# SNS_HEARTBEAT_MS, SNS_SYNC_INTERVAL_MS and SNS_DATA_DIR are passed through.
set -euo pipefail
cd "$(dirname "$0")"

COORD_PORT=9000
COORD_HTTP=8000
CLUSTERS=3
RUN=run
BIN=target/release

stop() {
  local any=0
  for f in "$RUN"/pids/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    if kill "$pid" 2>/dev/null; then
      echo "stopped $(basename "$f" .pid) (pid $pid)"
      any=1
    fi
    rm -f "$f"
  done
  [ "$any" = 1 ] || echo "nothing was running"
}

status() {
  local any=0
  for f in "$RUN"/pids/*.pid; do
    [ -e "$f" ] || continue
    any=1
    pid=$(cat "$f")
    if alive "$pid"; then state=running; else state=dead; fi
    printf '%-16s pid %-8s %s\n' "$(basename "$f" .pid)" "$pid" "$state"
  done
  [ "$any" = 1 ] || { echo "nothing started"; return; }
  echo
  local tls=()
  [ -e "$RUN/tls_on" ] && tls=(--tls-ca "$RUN/tls/ca.pem")
  "$BIN/snsctl" status -h localhost -k "$COORD_PORT" "${tls[@]}" || true
}

start() { # name, command...: records the command, then runs it
  local name=$1; shift
  {
    echo "# $name, as ./startup.sh first started it"
    env | grep '^SNS_' | sort | while IFS= read -r kv; do
      printf 'export %q\n' "$kv"
    done
    printf 'exec'; printf ' %q' "$@"; echo
  } >"$RUN/cmds/$name.sh"
  launch "$name"
}

launch() { # name: runs its recorded command in the background
  local name=$1
  bash "$RUN/cmds/$name.sh" >>"$RUN/logs/$name.log" 2>&1 &
  echo $! >"$RUN/pids/$name.pid"
  echo "started $name (pid $!): $(tail -n 1 "$RUN/cmds/$name.sh" | cut -c6-)"
}

alive() { # pid: true while it runs (a zombie that nobody reaped yet is dead)
  kill -0 "$1" 2>/dev/null && ! ps -o stat= -p "$1" 2>/dev/null | grep -q '^Z'
}

running() { # name: true when its recorded pid is alive
  local f="$RUN/pids/$1.pid"
  [ -e "$f" ] && alive "$(cat "$f")"
}

one() { # action, name
  local action=$1 name=$2
  if [ ! -e "$RUN/cmds/$name.sh" ]; then
    echo "no process named '$name'; known: $(ls "$RUN/cmds" 2>/dev/null | sed 's/\.sh$//' | tr '\n' ' ')" >&2
    exit 2
  fi
  case "$action" in
    start)
      if running "$name"; then
        echo "$name is running (pid $(cat "$RUN/pids/$name.pid"))" >&2; exit 1
      fi
      echo "--- started again by ./startup.sh at $(date -u +%FT%TZ)" >>"$RUN/logs/$name.log"
      launch "$name" ;;
    kill|stop)
      if ! running "$name"; then echo "$name is not running" >&2; exit 1; fi
      local pid sig=TERM
      pid=$(cat "$RUN/pids/$name.pid")
      [ "$action" = kill ] && sig=KILL
      kill -s "$sig" "$pid"
      # Gone before we say so, so that a `start` right after finds it gone.
      for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
      echo "sent SIG$sig to $name (pid $pid)" ;;
  esac
}

wait_for_log() { # file, text: polls up to 30 s
  for _ in $(seq 1 300); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1" >&2
  return 1
}

TLS=0
ACTION=start
NAME=""
usage() {
  echo "usage: $0 [start|stop|status] [--tls] | $0 start|stop|kill NAME" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --tls) TLS=1 ;;
    start|stop|status|kill) ACTION=$1
      if [ $# -gt 1 ] && [ "${2#-}" = "$2" ]; then NAME=$2; shift; fi ;;
    *) usage ;;
  esac
  shift
done
if [ -n "$NAME" ]; then
  [ "$ACTION" = status ] && usage
  one "$ACTION" "$NAME"
  exit 0
fi
case "$ACTION" in
  stop) stop; exit 0 ;;
  status) status; exit 0 ;;
  kill) usage ;;
esac

if ls "$RUN"/pids/*.pid >/dev/null 2>&1; then
  echo "already started; run '$0 stop' first" >&2
  exit 1
fi

echo "building release binaries..."
cargo build --release -p tiny-sns --bins
mkdir -p "$RUN/logs" "$RUN/pids" "$RUN/cmds"
rm -f "$RUN"/cmds/*.sh "$RUN/tls_on"

CLIENT_TLS=""
if [ "$TLS" = 1 ]; then
  TLS_DIR="$RUN/tls"
  [ -e "$TLS_DIR/ca.pem" ] || "$BIN/snsctl" tls init "$TLS_DIR"
  export SNS_TLS_CERT="$TLS_DIR/node.pem" SNS_TLS_KEY="$TLS_DIR/node.key" SNS_TLS_CA="$TLS_DIR/ca.pem"
  CLIENT_TLS=" --tls-ca $TLS_DIR/ca.pem"
  touch "$RUN/tls_on"
fi

start coordinator "$BIN/coordinator" -p "$COORD_PORT" --clusters "$CLUSTERS" --http-port "$COORD_HTTP"
for c in $(seq 1 "$CLUSTERS"); do
  # The first server of a cluster to register is its master: start it first.
  # On a restart the coordinator's table decides (the last stop may have
  # promoted server 2 when server 1 went first): it is slave then.
  start "server_${c}_1" "$BIN/server" -c "$c" -s 1 -h localhost -k "$COORD_PORT" -p "90${c}1" --http-port "80${c}1"
  wait_for_log "$RUN/logs/server_${c}_1.log" "is now \(master\|slave\)"
  start "server_${c}_2" "$BIN/server" -c "$c" -s 2 -h localhost -k "$COORD_PORT" -p "90${c}2" --http-port "80${c}2"
done
for c in $(seq 1 "$CLUSTERS"); do
  start "synchronizer_$c" "$BIN/synchronizer" -h localhost -k "$COORD_PORT" -p "910${c}" -i "$c" --http-port "810${c}"
done

cat <<MSG

Tiny SNS is up: coordinator on localhost:$COORD_PORT, $CLUSTERS clusters.
Dashboard:        http://localhost:$COORD_HTTP/   (the table as JSON: /api/table)
Start a client:   $BIN/client -h localhost -k $COORD_PORT -u 1$CLIENT_TLS
Routing table:    $0 status    (or $BIN/snsctl watch -h localhost -k $COORD_PORT${CLIENT_TLS})
Crash a master:   $0 kill server_1_1    then    $0 start server_1_1
Metrics:          http://localhost:8011/metrics (every process; ports in $0's header)
Logs:             $RUN/logs/    Data: ${SNS_DATA_DIR:-./cluster_data}/
Cluster key:      ${SNS_CLUSTER_KEY_FILE:-${SNS_DATA_DIR:-./cluster_data}/cluster.key} (copy it to add machines)
Stop everything:  $0 stop
MSG
