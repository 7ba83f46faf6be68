#!/usr/bin/env bash
# Installs what the demo and the tests need on a fresh Debian/Ubuntu machine: Mosquitto, openssl and systemd's
# tools from the distribution, and the Python package with its test dependencies into ./.venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: the broker (and mosquitto_passwd), its clients (mosquitto_sub), openssl (throw-away
# TLS certificates), systemd-analyze (the unit's check), jemalloc (the unit preloads it; the test and the benchmark
# run the gateway on it), libturbojpeg0 (the JPEG decoder, through PyTurboJPEG), python3-venv. Only what is missing
# is installed.
packages=()
{ command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null 2>&1 || packages+=(mosquitto)
command -v mosquitto_passwd >/dev/null 2>&1 || packages+=(mosquitto)
[ -f /etc/mosquitto/mosquitto.conf ] || packages+=(mosquitto)  # the stock file clinic.conf is tested under
command -v mosquitto_sub >/dev/null 2>&1 || packages+=(mosquitto-clients)  # the README's status check, tested
command -v openssl >/dev/null 2>&1 || packages+=(openssl)
command -v systemd-analyze >/dev/null 2>&1 || packages+=(systemd)
{ ldconfig -p || /sbin/ldconfig -p; } 2>/dev/null | grep -q libjemalloc.so.2 || packages+=(libjemalloc2)  # /sbin: not on a user PATH
{ ldconfig -p || /sbin/ldconfig -p; } 2>/dev/null | grep -q libturbojpeg.so.0 || packages+=(libturbojpeg0)
python3 -c 'import ensurepip' 2>/dev/null || packages+=(python3-venv)
if [ ${#packages[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  # The distribution starts a system broker on port 1883; ours start on their own ports and do not need it.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${packages[@]}" | sort -u) >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[dev]"
# TensorRT's type stubs (patched) for mypy's check of the TensorRT code; never on sys.path at run time.
.venv/bin/python tools/typing/tensorrt_stubs.py >/dev/null
