#!/usr/bin/env bash
# Installs aggd as a systemd service from this checkout: the release binary (built in
# target/ if it is not up to date there, never a second time), its man page and shell
# completions, the units, and the config and rules examples (existing files in /etc/aggd
# are kept). Run as root. On Debian, prefer the package: packaging/build-deb.sh.
#   PREFIX=/usr/local systemd/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${PREFIX:-/usr/local}
cargo build --release --locked
install -D -m 0755 target/release/aggd "$prefix/bin/aggd"
install -d "$prefix/share/man/man1"
"$prefix/bin/aggd" man | gzip -9n > "$prefix/share/man/man1/aggd.1.gz"
install -d "$prefix/share/bash-completion/completions"
"$prefix/bin/aggd" completions bash > "$prefix/share/bash-completion/completions/aggd"
install -d -m 0755 /etc/aggd
for f in aggregation-rules.conf rewrite-rules.conf; do
  [ -e "/etc/aggd/$f" ] || install -m 0644 "config/$f" "/etc/aggd/$f"
done
if [ ! -e /etc/aggd/aggd.toml ]; then
  # The service keeps its journal in its StateDirectory.
  sed 's|^dir = "journal"|dir = "/var/lib/aggd/journal"|' config/aggd.toml > /etc/aggd/aggd.toml
  chmod 0644 /etc/aggd/aggd.toml
fi
sed "s|/usr/local/bin/aggd|$prefix/bin/aggd|g" systemd/aggd.service > /etc/systemd/system/aggd.service
install -m 0644 systemd/aggd.socket /etc/systemd/system/aggd.socket
install -d "$prefix/share/doc/aggd"
install -m 0644 README.md "$prefix/share/doc/aggd/README.md"
cp -r docs "$prefix/share/doc/aggd/"
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
echo "installed; start with: systemctl enable --now aggd"
