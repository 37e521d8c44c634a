#!/usr/bin/env bash
# Regenerates docs/dashboard.png: the dashboard over thirty nodes and six services, as the browser
# test `a_fleet_of_thirty_fits_and_passes_an_accessibility_audit` shows it in headless Chromium at
# 1280 px (needs chromium and chromium-driver).
set -euo pipefail
cd "$(dirname "$0")/.."
MUSTER_UPDATE_SCREENSHOTS=1 cargo test -p muster-server --test it -- --exact ui::a_fleet_of_thirty_fits_and_passes_an_accessibility_audit
echo "wrote docs/dashboard.png"
