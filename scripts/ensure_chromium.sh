#!/usr/bin/env bash
# Make sure Debian's headless-capable Chromium is installed at /usr/bin/chromium.
# Why: the report renders charts to PNG/SVG through kaleido (which drives a Chrome/Chromium) and
# the report tests open the HTML in headless Chromium. Kaleido's own Chrome download reaches
# beyond the package registries, so we use Debian's package instead. Idempotent and quiet when
# Chromium is already there; needs root (CI machines are fresh Debian images run as root).
set -euo pipefail
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: $CHROMIUM is missing and apt-get is not available;" \
         "install Chromium yourself and set CHROMIUM=/path/to/chromium" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "ensure_chromium: installing Debian's chromium package"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# fonts-liberation: metric-compatible Arial/Helvetica so chart text renders with real glyphs.
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
"$CHROMIUM" --version
