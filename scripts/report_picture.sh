#!/usr/bin/env bash
# Redraws examples/report.png (the README's picture of `classify --report`): the bundled
# scene classified with the bundled model, its report as headless Chromium renders it.
#   bash scripts/report_picture.sh            (after make setup; needs chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/rsscgeo classify examples/scenes/naip_2020_rgbn.tif --out "$work/naip_2020.gpkg" \
    --report "$work/report.html"
chromium --headless --no-sandbox --hide-scrollbars --window-size=960,1200 \
    --screenshot="$PWD/examples/report.png" "file://$work/report.html" 2>/dev/null
echo "wrote examples/report.png"
