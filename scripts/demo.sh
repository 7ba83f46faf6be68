#!/usr/bin/env bash
# The demo: a private Mosquitto on a free port, the gateway, and simulated devices sending generated
# colposcope-like photos; verdicts print as they arrive. Ctrl-C stops everything.
#
# The demo has its own state folder (its verdict store and the gateway's log, which is kept), never the installed
# gateway's; each run sends fresh image ids, so it is judged again rather than answered from the verdict store.
# COLPO_DEMO_NO_BOOTSTRAP=1 skips the bootstrap (the tests set it).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${COLPO_DEMO_NO_BOOTSTRAP:-}" ] || bash scripts/bootstrap.sh
export PATH="$PATH:/usr/sbin"

state="${XDG_STATE_HOME:-$HOME/.local/state}/colposcopy-gateway-demo"
mkdir -p "$state"
log="$state/gateway.log"
work=$(mktemp -d)
broker=""
gateway=""
cleanup() {
  trap '' INT TERM  # a second Ctrl-C must not cut the cleanup short
  trap - EXIT
  set +e
  [ -n "$gateway" ] && kill -TERM "$gateway" 2>/dev/null && wait "$gateway" 2>/dev/null
  [ -n "$broker" ] && kill "$broker" 2>/dev/null && wait "$broker" 2>/dev/null
  rm -rf "$work"
  echo "== gateway log kept in $log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/mosquitto.conf" <<CONF
user $(id -un)
listener $port 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
CONF
# the shipped defaults, but the demo's own verdict store and any free metrics port (an installed gateway may hold 9464)
cat > "$work/gateway.yaml" <<CONF
store:
  path: $state/verdicts.sqlite3
metrics:
  port: 0
CONF
# setsid: Ctrl-C reaches only the devices; cleanup stops the gateway (it answers what it holds), then the broker
setsid mosquitto -c "$work/mosquitto.conf" 2>"$work/mosquitto.log" &
broker=$!
sleep 0.3

echo "== broker on mqtt://127.0.0.1:$port; gateway log in $log"
setsid .venv/bin/python -m gateway run --config "$work/gateway.yaml" --broker "mqtt://127.0.0.1:$port" 2>"$log" &
gateway=$!
# wait for its retained status "online" (it is subscribed by then): photos sent earlier would reach nobody
.venv/bin/python - "$port" <<'PY'
import sys, threading
import paho.mqtt.client as mqtt
online = threading.Event()
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
client.on_message = lambda _c, _u, m: b'"online"' in m.payload and online.set()
client.connect("127.0.0.1", int(sys.argv[1]))
client.subscribe("colposcopy/gateways/+/status")
client.loop_start()
sys.exit(0 if online.wait(120) else "the gateway did not come online within 120 s: see its log")
PY
echo "== 3 simulated devices send generated photos (sharp, blurred, dark, bright, no cervix)"
.venv/bin/python -m gateway simulate --broker "mqtt://127.0.0.1:$port" --devices 3 --rate 2 "$@"
