#!/usr/bin/env bash
# Install, build the bundled synthetic SpyEye-infected image if needed, run the suite on it.
set -euo pipefail
cd "$(dirname "$0")"
bash setup_venv.sh
VENV="${VENV:-.venv}"
IMAGE=images/spyeye-win7.raw
[ -f "$IMAGE" ] || "$VENV/bin/python" -m fixtures build --scenario spyeye-win7 --out images
for plugin in spyeye.info windows.pslist windows.malware.malfind "spyeye.vadsearch --keyword __CLEANSWEEP__ hooked_func cleansweep.exe --compare-physical"; do
  echo "### vol -p spyeye_plugins -f $IMAGE $plugin"
  # shellcheck disable=SC2086
  "$VENV/bin/vol" -q -p spyeye_plugins -f "$IMAGE" $plugin
done
