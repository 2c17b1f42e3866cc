#!/usr/bin/env bash
# Install (once) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
bash setup_venv.sh
VENV="${VENV:-.venv}"
exec "$VENV/bin/pytest" -q -p no:cacheprovider "$@"
