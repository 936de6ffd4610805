#!/usr/bin/env bash
# Create .venv once and install rsscgeo with its offline ImageNet weights and dev tools.
# Idempotent: a stamp holding the hash of the install inputs skips pip when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
python=${PYTHON:-python3}
stamp=$venv/.rsscgeo-installed
inputs_hash=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

# Real QGIS (Debian's PyQGIS, run by the system Python) for the test that opens our
# outputs in QGIS, and headless Chromium for the test that renders the HTML report.
# Installed when we are root on a Debian-like machine; otherwise those tests are skipped
# outside CI.
apt_packages=()
/usr/bin/python3 -c "import qgis.core" 2>/dev/null || apt_packages+=(python3-qgis qgis-providers)
command -v chromium >/dev/null || apt_packages+=(chromium)
if [ ${#apt_packages[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "rsscgeo setup: installing ${apt_packages[*]} for the QGIS and browser tests"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
    else
        echo "rsscgeo setup: ${apt_packages[*]} not installed; the QGIS/browser tests will be skipped" >&2
    fi
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "rsscgeo setup: creating $venv"
    "$python" -m venv "$venv"
fi
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs_hash" ]; then
    exit 0
fi
echo "rsscgeo setup: installing dependencies into $venv (first run takes a few minutes)"
# This exact pair is the one that imports together here and that pip finds on local disk;
# other machines may use any torch/torchvision pair that pyproject.toml allows.
"$venv/bin/pip" install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
"$venv/bin/pip" install --quiet --disable-pip-version-check -e '.[offline,dev]'
echo "$inputs_hash" > "$stamp"
