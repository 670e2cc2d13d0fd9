#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests, unless it is already there.
# Playwright drives it through executable_path; it never downloads a browser of its own.
set -euo pipefail
# TOKSTEP_CHROMIUM names another Chromium-family browser (e.g. google-chrome on GitHub's runners).
if [ -x "${TOKSTEP_CHROMIUM:-/usr/bin/chromium}" ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version
