#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust: Debian's graphite-carbon (carbon-cache,
# the real downstream), python3-whisper (to read its whisper files) and python3 (CPython's
# own pickle module as a sender) and systemd's tools (systemd-analyze verify, socket
# activation). Idempotent; installs only what is missing.
set -euo pipefail
need=()
[ -x /usr/bin/carbon-cache ] || need+=(graphite-carbon)
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import whisper' 2>/dev/null || need+=(python3-whisper)
command -v python3 >/dev/null || need+=(python3)
command -v kill >/dev/null || need+=(procps)
[ -x /usr/bin/systemd-analyze ] && [ -x /usr/bin/systemd-socket-activate ] || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
