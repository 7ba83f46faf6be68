#!/usr/bin/env bash
# Installs the gateway as a systemd service (on a Jetson or any Debian/Ubuntu box), from this source tree:
#   the `colposcopy` system user (in the `video` group: the GPU on a Jetson), a venv under /opt/colposcopy-gateway,
#   the model manifest and ONNX files under /opt/colposcopy-gateway/engines, the config under /etc/colposcopy-gateway
#   (an existing one is kept), an empty broker-password credential file if there is none, the unit, then
#   `systemctl enable`. Safe to run again (an upgrade).
#
#   sudo ./scripts/install.sh [--extras jetson,onnx] [--start] [--no-start] [--root DIR] [--dry-run]
#
# Starting: when this run created the config (a first install: the defaults, an anonymous broker on
# 127.0.0.1:1883), the service is enabled but not started, and the next steps are printed; --start starts it
# anyway. With a config that was already there it is started, or restarted if it was running (an upgrade).
#
# --extras   pip extras to install (default: onnx; on a Jetson: jetson,onnx, with JetPack's TensorRT)
# --start    start the service even though this run created its config
# --no-start neither enable, start nor restart the service
# --root DIR write every file under DIR instead of / (a staging root; the tests); the paths inside the files stay
#            the real ones, and the user, package and systemctl commands still act on this machine
# --dry-run  print the commands instead of running them (needs no root)
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=/opt/colposcopy-gateway
ETC=/etc/colposcopy-gateway
UNIT=/etc/systemd/system/colposcopy-gateway.service
SERVICE=colposcopy-gateway
USER_NAME=colposcopy
EXTRAS=onnx
START=auto
DRY=0
ROOT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --extras) EXTRAS="$2"; shift 2 ;;
    --start) START=yes; shift ;;
    --no-start) START=no; shift ;;
    --root) ROOT="${2%/}"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
FINAL_PREFIX=$PREFIX
PREFIX=$ROOT$PREFIX
ETC=$ROOT$ETC
UNIT=$ROOT$UNIT

run() {
  if [ "$DRY" = 1 ]; then echo "+ $*"; else "$@"; fi
}

if [ "$DRY" = 0 ] && [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
  echo "run as root (sudo $0), or with --dry-run to see the steps" >&2
  exit 1
fi

# 1. the service user; on a Jetson the GPU device nodes belong to the video group
if ! id -u "$USER_NAME" >/dev/null 2>&1; then
  run useradd --system --home-dir /var/lib/colposcopy-gateway --no-create-home --shell /usr/sbin/nologin "$USER_NAME"
fi
if getent group video >/dev/null; then
  run usermod -a -G video "$USER_NAME"
fi

# 2. jemalloc, which the unit preloads (glibc's malloc fragments under the gateway's multi-megabyte buffers)
if ! { ldconfig -p || /sbin/ldconfig -p; } 2>/dev/null | grep -q libjemalloc.so.2; then
  if command -v apt-get >/dev/null; then
    run apt-get install -y -q libjemalloc2
  else
    echo "warning: install jemalloc (libjemalloc.so.2); without it the gateway runs on glibc malloc" >&2
  fi
fi

# 2b. libturbojpeg, the JPEG decoder (through PyTurboJPEG): without it the gateway refuses to start
if ! ldconfig -p 2>/dev/null | grep -q libturbojpeg.so.0; then
  if command -v apt-get >/dev/null; then
    run apt-get install -y -q libturbojpeg0
  else
    echo "error: install libjpeg-turbo's TurboJPEG library (libturbojpeg.so.0); the gateway needs it" >&2
    exit 1
  fi
fi

# 3. the venv; --system-site-packages lets JetPack's TensorRT (a system package) be imported
run install -d -m 0755 "$PREFIX" "$PREFIX/engines"
if [ ! -x "$PREFIX/venv/bin/python" ]; then
  run python3 -m venv --system-site-packages "$PREFIX/venv"
fi
if [ -d /usr/local/cuda/bin ]; then
  export PATH="/usr/local/cuda/bin:$PATH"  # nvcc and CUDA headers for pycuda's build
fi
run "$PREFIX/venv/bin/pip" install --quiet --upgrade pip
run "$PREFIX/venv/bin/pip" install --quiet "$PWD[$EXTRAS]"
run cp -r engines/. "$PREFIX/engines/"
run install -m 0644 README.md "$PREFIX/README.md"

# 4. config (kept when present) and the broker-password credential (LoadCredential= needs the file to exist)
run install -d -m 0755 "$ETC"
CREATED=0
if [ ! -e "$ETC/gateway.yaml" ]; then
  CREATED=1
  if [ "$DRY" = 1 ]; then
    echo "+ install config/gateway.yaml -> $ETC/gateway.yaml (models.manifest: $FINAL_PREFIX/engines/manifest.yaml)"
  else
    sed "s#^  manifest: null#  manifest: $FINAL_PREFIX/engines/manifest.yaml#" config/gateway.yaml >"$ETC/gateway.yaml"
    chmod 0644 "$ETC/gateway.yaml"
  fi
fi
if [ ! -e "$ETC/mqtt-password" ]; then
  run install -m 0600 /dev/null "$ETC/mqtt-password"
fi
run "$PREFIX/venv/bin/colpo-gateway" config validate "$ETC/gateway.yaml"

# 5. the unit: enabled; started once configured (see the top), restarted if it was running (an upgrade)
run install -d -m 0755 "$(dirname "$UNIT")"
run install -m 0644 systemd/colposcopy-gateway.service "$UNIT"
run systemctl daemon-reload
ACTIVE=0
if systemctl is-active --quiet "$SERVICE" 2>/dev/null; then
  ACTIVE=1
fi
STARTED=""
if [ "$START" != no ]; then
  run systemctl enable "$SERVICE"
  if [ "$ACTIVE" = 1 ]; then
    run systemctl restart "$SERVICE"
    STARTED=restarted
  elif [ "$START" = yes ] || [ "$CREATED" = 0 ]; then
    run systemctl start "$SERVICE"
    STARTED=started
  fi
fi

if [ -n "$STARTED" ]; then
  echo "Installed and $STARTED. Check it:"
  echo "  systemctl status $SERVICE"
elif [ "$START" = no ]; then
  echo "Installed; the service is neither enabled nor started (--no-start). Next:"
  echo "  edit $ETC/gateway.yaml, then: sudo systemctl enable $SERVICE && sudo systemctl start $SERVICE"
else
  cat <<EOF
Installed and enabled, NOT started: this run created $ETC/gateway.yaml with the defaults (an anonymous broker
on 127.0.0.1:1883). Next:
  1. edit $ETC/gateway.yaml: broker.url, gateway_id, broker.username (the shipped ACL's gateway account is
     colposcopy-gateway) and broker.ca_file for mqtts://; check it: colpo-gateway config validate $ETC/gateway.yaml
  2. put the broker password in $ETC/mqtt-password (the unit reads it as the credential mqtt-password)
  3. sudo systemctl start $SERVICE && systemctl status $SERVICE
EOF
fi
cat <<EOF
  check it as the service sees things:
    sudo systemd-run --pipe --wait -p User=$USER_NAME -p CacheDirectory=colposcopy-gateway \\
      -p StateDirectory=colposcopy-gateway -p LoadCredential=mqtt-password:$ETC/mqtt-password \\
      $FINAL_PREFIX/venv/bin/colpo-gateway doctor --config $ETC/gateway.yaml
EOF
