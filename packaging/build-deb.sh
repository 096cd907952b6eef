#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (`cargo install cargo-deb`): a release build,
# then the generated assets (the unit pointing at /usr/bin/aggd, /etc/aggd/aggd.toml with
# the journal in the service's StateDirectory, the man page and the shell completions,
# made by the binary itself), then `cargo deb --no-build`. Prints the .deb's path last.
#   packaging/build-deb.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked >&2
bin=target/release/aggd
a=target/deb-assets
rm -rf "$a"
mkdir -p "$a"
sed -e 's|/usr/local/bin/aggd|/usr/bin/aggd|g' \
    -e 's|/usr/local/share/doc/aggd|/usr/share/doc/aggd|g' \
    -e 's|`systemd/install.sh` puts the binary in /usr/local/bin, this|The aggd package puts the binary in /usr/bin, this|' \
    -e 's|unit and aggd.socket in /etc/systemd/system,|unit and aggd.socket in /lib/systemd/system,|' \
    systemd/aggd.service > "$a/aggd.service"
cp systemd/aggd.socket "$a/aggd.socket"
# The service keeps its journal in its StateDirectory.
sed 's|^dir = "journal"|dir = "/var/lib/aggd/journal"|' config/aggd.toml > "$a/aggd.toml"
grep -q '^dir = "/var/lib/aggd/journal"' "$a/aggd.toml"
"$bin" man | gzip -9n > "$a/aggd.1.gz"
"$bin" completions bash > "$a/aggd.bash"
"$bin" completions zsh > "$a/_aggd"
"$bin" completions fish > "$a/aggd.fish"
cargo deb --no-build --no-strip >&2
ls -t target/debian/aggd_*.deb | head -1
