#!/usr/bin/env bash
# One command: set up the environment (if needed) and run the offline demo. Extra args go to `rd2t demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/rd2t demo "$@"
