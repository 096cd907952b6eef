#!/usr/bin/env bash
# CI: builds the Debian package, installs it with dpkg -i, verifies the installed units
# with systemd-analyze, runs `aggd check` on the installed config, then removes the
# package and shows that the edited conffile is kept (and that a purge removes it).
# Needs root (or sudo) and cargo-deb (tests/install-deps.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
deb=$(packaging/build-deb.sh | tail -1)
echo "package: $deb"
dpkg-deb --info "$deb" | grep -E 'Package|Version|Depends' || true
$sudo dpkg -i "$deb"
trap '$sudo dpkg -P aggd >/dev/null 2>&1 || true' EXIT
for f in /usr/bin/aggd /lib/systemd/system/aggd.service /lib/systemd/system/aggd.socket \
         /etc/aggd/aggd.toml /etc/aggd/aggregation-rules.conf /etc/aggd/rewrite-rules.conf \
         /usr/share/man/man1/aggd.1.gz /usr/share/bash-completion/completions/aggd \
         /usr/share/zsh/vendor-completions/_aggd /usr/share/fish/vendor_completions.d/aggd.fish \
         /usr/share/doc/aggd/copyright /usr/share/doc/aggd/monitoring/aggd-alerts.yml; do
  test -e "$f" || { echo "missing after install: $f" >&2; exit 1; }
done
dpkg-query -W -f='${Conffiles}\n' aggd | grep -q /etc/aggd/aggd.toml \
  || { echo "/etc/aggd/aggd.toml is not a conffile" >&2; exit 1; }
systemd-analyze verify /lib/systemd/system/aggd.service /lib/systemd/system/aggd.socket
/usr/bin/aggd check -c /etc/aggd/aggd.toml
zcat /usr/share/man/man1/aggd.1.gz | grep -q '^.TH aggd 1'
# An operator's edit survives removal; a purge removes it.
echo "# edited by the operator" | $sudo tee -a /etc/aggd/aggd.toml >/dev/null
$sudo dpkg -r aggd
test ! -e /usr/bin/aggd
grep -q "# edited by the operator" /etc/aggd/aggd.toml \
  || { echo "the edited conffile was not kept on remove" >&2; exit 1; }
$sudo dpkg -P aggd
test ! -e /etc/aggd/aggd.toml || { echo "purge left /etc/aggd/aggd.toml" >&2; exit 1; }
trap - EXIT
echo "deb install test: ok"
