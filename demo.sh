#!/usr/bin/env bash
# Install, build the bundled synthetic SpyEye-infected image, run the suite on it.
set -euo pipefail
cd "$(dirname "$0")"
bash setup_venv.sh
VENV="${VENV:-.venv}"
IMAGE=images/spyeye-win7.raw
"$VENV/bin/python" -m fixtures build --scenario spyeye-win7 --out images   # ~2 s, deterministic
for plugin in spyeye.info windows.pslist "spyeye.timeline --correlate" \
    "spyeye.vadsearch --keyword __CLEANSWEEP__ hooked_func cleansweep.exe --compare-physical" \
    "spyeye.injected --name explorer.exe" "spyeye.hooks --name iexplore.exe" \
    "spyeye.apiscore --min-score 70" spyeye.config; do
  echo "### vol -p spyeye_plugins -f $IMAGE $plugin"
  # shellcheck disable=SC2086
  "$VENV/bin/vol" -q -p spyeye_plugins -f "$IMAGE" $plugin
done
