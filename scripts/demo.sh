#!/usr/bin/env bash
# The demo: a private Mosquitto on a free port, the gateway, and simulated devices sending generated
# colposcope-like photos; verdicts print as they arrive. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PATH:/usr/sbin"

work=$(mktemp -d)
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/mosquitto.conf" <<CONF
user $(id -un)
listener $port 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
CONF
mosquitto -c "$work/mosquitto.conf" 2>"$work/mosquitto.log" &
broker=$!
gateway=""
cleanup() {
  [ -n "$gateway" ] && kill -TERM "$gateway" 2>/dev/null && wait "$gateway" 2>/dev/null
  kill "$broker" 2>/dev/null; wait "$broker" 2>/dev/null; rm -rf "$work"
}
trap cleanup EXIT
sleep 0.3

echo "== broker on mqtt://127.0.0.1:$port; gateway log in $work/gateway.log"
.venv/bin/colpo-gateway run --config config/gateway.yaml --broker "mqtt://127.0.0.1:$port" 2>"$work/gateway.log" &
gateway=$!
sleep 1
echo "== 3 simulated devices send generated photos (sharp, blurred, dark, bright, no cervix)"
.venv/bin/colpo-gateway simulate --broker "mqtt://127.0.0.1:$port" --devices 3 --rate 2 "$@"
