#!/usr/bin/env bash
# install_browser.sh
# Makes sure headless Chromium and its WebDriver are installed for the browser tests
# (tests/browser/): Debian's `chromium` and `chromium-driver`, from apt-get. Quiet and
# instant when /usr/bin/chromium and /usr/bin/chromedriver are already there. Installs as
# root, or through sudo when not root; otherwise says what to run and exits 1.
set -euo pipefail

have() { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }
have && exit 0

fail() {
  echo "install_browser.sh: $*" >&2
  echo "  install them by hand: apt-get install chromium chromium-driver" >&2
  exit 1
}

command -v apt-get >/dev/null || fail "no apt-get on this machine to install Chromium"
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null; then
  as_root=(sudo)
else
  fail "not root and no sudo: cannot install Chromium"
fi

echo "installing chromium and chromium-driver (apt-get; first run only) ..." >&2
apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300)
"${apt[@]}" update >/dev/null
# fonts-liberation is only a recommendation of chromium's, but screenshots need a font
"${apt[@]}" install -y --no-install-recommends chromium chromium-driver fonts-liberation \
  >/dev/null
have || fail "apt-get finished but /usr/bin/chromium or /usr/bin/chromedriver is missing"
