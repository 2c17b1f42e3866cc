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
# One command for all of the above: a verdict per process, the evidence joined, indicators and a report
mkdir -p out/triage
echo "### vol -p spyeye_plugins -f $IMAGE -o out/triage spyeye.triage"
"$VENV/bin/vol" -q -p spyeye_plugins -f "$IMAGE" -o out/triage spyeye.triage
echo "Report: out/triage/triage.html (open it in a browser); indicators: out/triage/triage.stix.json (STIX 2.1)," \
  "out/triage/triage.iocs.csv; dumped injected images: out/triage/pid.*.dll"
