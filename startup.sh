#!/usr/bin/env bash
# Starts the whole Tiny SNS on this machine: a coordinator on port 9000, three
# clusters of master + slave servers and one synchronizer per cluster.
#
#   ./startup.sh          build (release) and start everything
#   ./startup.sh --tls    the same with TLS on every channel: makes a CA and
#                         a certificate under run/tls/ (once) and starts
#                         everything with SNS_TLS_CERT/KEY/CA set
#   ./startup.sh stop     stop everything it started (by pid)
#   ./startup.sh status   show which processes are running
#
# Logs go to run/logs/<name>.log, pids to run/pids/<name>.pid, data to
# $SNS_DATA_DIR (default ./cluster_data). The knobs SNS_HEARTBEAT_MS,
# SNS_SYNC_INTERVAL_MS and SNS_DATA_DIR are passed through.
set -euo pipefail
cd "$(dirname "$0")"

COORD_PORT=9000
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
  for f in "$RUN"/pids/*.pid; do
    [ -e "$f" ] || { echo "nothing started"; return; }
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then state=running; else state=dead; fi
    printf '%-16s pid %-8s %s\n' "$(basename "$f" .pid)" "$pid" "$state"
  done
}

start() { # name, command...
  local name=$1; shift
  "$@" >"$RUN/logs/$name.log" 2>&1 &
  echo $! >"$RUN/pids/$name.pid"
  echo "started $name (pid $!): $*"
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
for arg in "$@"; do
  case "$arg" in
    --tls) TLS=1 ;;
    start|stop|status) ACTION=$arg ;;
    *) echo "usage: $0 [start|stop|status] [--tls]" >&2; exit 2 ;;
  esac
done
case "$ACTION" in
  stop) stop; exit 0 ;;
  status) status; exit 0 ;;
esac

if ls "$RUN"/pids/*.pid >/dev/null 2>&1; then
  echo "already started; run '$0 stop' first" >&2
  exit 1
fi

echo "building release binaries..."
cargo build --release -p tiny-sns --bins
mkdir -p "$RUN/logs" "$RUN/pids"

CLIENT_TLS=""
if [ "$TLS" = 1 ]; then
  TLS_DIR="$RUN/tls"
  [ -e "$TLS_DIR/ca.pem" ] || "$BIN/snsctl" tls init "$TLS_DIR"
  export SNS_TLS_CERT="$TLS_DIR/node.pem" SNS_TLS_KEY="$TLS_DIR/node.key" SNS_TLS_CA="$TLS_DIR/ca.pem"
  CLIENT_TLS=" --tls-ca $TLS_DIR/ca.pem"
fi

start coordinator "$BIN/coordinator" -p "$COORD_PORT" --clusters "$CLUSTERS"
for c in $(seq 1 "$CLUSTERS"); do
  # The first server of a cluster to register is its master: start it first.
  # On a restart the coordinator's table decides (the last stop may have
  # promoted server 2 when server 1 went first): it is slave then.
  start "server_${c}_1" "$BIN/server" -c "$c" -s 1 -h localhost -k "$COORD_PORT" -p "90${c}1"
  wait_for_log "$RUN/logs/server_${c}_1.log" "is now \(master\|slave\)"
  start "server_${c}_2" "$BIN/server" -c "$c" -s 2 -h localhost -k "$COORD_PORT" -p "90${c}2"
done
for c in $(seq 1 "$CLUSTERS"); do
  start "synchronizer_$c" "$BIN/synchronizer" -h localhost -k "$COORD_PORT" -p "910${c}" -i "$c"
done

cat <<MSG

Tiny SNS is up: coordinator on localhost:$COORD_PORT, $CLUSTERS clusters.
Start a client:   $BIN/client -h localhost -k $COORD_PORT -u 1$CLIENT_TLS
Logs:             $RUN/logs/    Data: ${SNS_DATA_DIR:-./cluster_data}/
Cluster key:      ${SNS_CLUSTER_KEY_FILE:-${SNS_DATA_DIR:-./cluster_data}/cluster.key} (copy it to add machines)
Stop everything:  $0 stop
MSG
