#!/usr/bin/env bash
# The default (untiled) mode before the tiling commit and now: same data, seed, epochs and thread count,
# then the trained weights and the printed metrics compared (docs/high-resolution.md).
#   git worktree add /tmp/pretile deac954 && bash benchmarks/default_mode_check.sh /tmp/pretile
set -euo pipefail
cd "$(dirname "$0")/.."
before=${1:?usage: default_mode_check.sh PATH_OF_A_WORKTREE_AT_THE_OLD_COMMIT}
export OMP_NUM_THREADS=1
for who in before now; do
  if [ $who = before ]; then export PYTHONPATH=$before/src; else unset PYTHONPATH; fi
  o=/tmp/defcheck/$who
  .venv/bin/python -m rd2t train ../shared/data/hazelnut_toy --out $o/haz --epochs 10 --seed 0 --device cpu
  .venv/bin/python -m rd2t evaluate --checkpoint $o/haz/model.pt --data ../shared/data/hazelnut_toy \
      --out $o/haz_eval --no-report --backend torch
  .venv/bin/python -m rd2t demo --out $o/demo --categories washer,woven_fabric --epochs 10 --seed 0 --device cpu
done 2>/dev/null | grep "^|" > /tmp/defcheck/tables.txt
unset PYTHONPATH
.venv/bin/python - <<'PY'
import torch
for name in ["haz", "demo/runs/washer", "demo/runs/woven_fabric"]:
    a, b = (torch.load(f"/tmp/defcheck/{w}/{name}/model.pt", map_location="cpu", weights_only=False)["model"]
            for w in ("before", "now"))
    print(name, "weights bit-identical:", set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a))
lines = open("/tmp/defcheck/tables.txt").read().splitlines()
half = len(lines) // 2
print("metric tables identical:", lines[:half] == lines[half:])
PY
