#!/usr/bin/env bash
# System libraries the Python packages load at run time, installed only where missing:
#   libopus0     — the Opus baseline of the latency benchmark and its tests (opuslib loads it).
#   libspeexdsp1 — the microphone front end's linear echo canceller for double talk and its noise suppressor without AEC (call/speex_dsp.py loads it).
#   nats-server  — the message bus of a relay cluster (server.py --cluster); its tests start one.
#   openssl      — tests/test_server.py makes the certificate of its wss:// relay with it.
#   chromium, npm — the browser peer (web/): its tests drive Debian's Chromium with Playwright, and npm
#                   installs onnxruntime-web from web/package-lock.json (the tests and scripts/serve_web.py run npm ci).
# Microphone and speaker additionally need PortAudio: apt-get install libportaudio2.
set -euo pipefail
missing=()
ldconfig -p | grep -q 'libopus\.so\.0' || missing+=(libopus0)
ldconfig -p | grep -q 'libspeexdsp\.so\.1' || missing+=(libspeexdsp1)
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
command -v openssl >/dev/null || missing+=(openssl)
command -v chromium >/dev/null || missing+=(chromium)
command -v npm >/dev/null || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "Please install: ${missing[*]} (Debian/Ubuntu: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; }
