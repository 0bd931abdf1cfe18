"""Multi-process training (torchrun, gloo on CPU) and parallel benchmark jobs.

A 2-process run must be a single-process run on the same global batch. In float64 one step's gradients
and BatchNorm statistics agree to ~1e-14. In float32 they agree only to float32 rounding, which this model
amplifies (BatchNorm over a handful of values, e.g. the pooled 1x1 attention maps): a float32 gradient
differs from the float64 one by a few % whether it comes from 1 process, 1 process with another thread
count, or 2 processes. Adam (betas 0.5) then turns rounding in gradients that are zero in exact
arithmetic (e.g. a conv bias just before BatchNorm) into steps of ±lr. So the float32 runs are compared
tightly after one step (loss, BatchNorm statistics), loosely after more, and exactly (bitwise) against
another 2-process run.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from rd2t.config import preset
from rd2t.data import list_images
from rd2t.errors import RD2TError
from rd2t.model.checkpoint import Checkpoint
from rd2t.model.network import RD2T
from rd2t.runners.benchmark import Job, table
from rd2t.training import distributed as ddp
from rd2t.training.loop import train

SIZE, BATCH, VAL = 64, 8, 0.34  # 12 images -> 8 training (one global batch of 8 = 2 x 4), 4 validation
LR = preset("offline").lr


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Reference runs here use one thread, like each torchrun worker (and fast on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _texture(rng, size=SIZE):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    base = 0.5 + 0.25 * np.sin(2 * np.pi * xx / 8 + phase) * np.cos(2 * np.pi * yy / 16)
    img = base[..., None] * np.array([0.9, 0.8, 0.7], np.float32) + rng.normal(0, 0.02, (size, size, 1))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(_texture(rng)).save(folder / f"{i:03d}.png")
    return folder


def _cfg(**kw):
    return preset("offline", image_size=SIZE, batch_size=BATCH, val_fraction=VAL, device="cpu", **kw)


def _torchrun(data, out, *args, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["--tee=3", "-m", "rd2t", "train", str(data), "--out", str(out), "--device", "cpu"]
    cmd += ["--image-size", str(SIZE), "--batch-size", str(BATCH), "--val-fraction", str(VAL), *args]
    env = {"OMP_NUM_THREADS": "1", "RD2T_DIST_TIMEOUT": "60"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, **env})


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _one_step(rank: int, world: int, port: int, queue=None):
    """Gradients and BatchNorm statistics of one float64 training step on this rank's share of 4 images."""
    torch.set_num_threads(1)  # 2 processes on 2 cores: more threads than cores stall OpenMP
    if world > 1:
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
        )
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = RD2T(preset("offline", pretrained=False, image_size=SIZE, widths=(16, 32, 64)), pretrained=False)
    model = model.double()
    x = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    feats = [[f[rank::world] for f in tf] for tf in model.teacher_features(x)]
    reconstruct = model.reconstruct
    if world > 1:
        ddp.sync_batchnorm(model, torch.device("cpu"))
        reconstruct = ddp.data_parallel(model, torch.device("cpu"))
    model.train()
    model.loss(feats, reconstruct(feats)).backward()
    out = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
    out.update({n: b.numpy().copy() for n, b in model.named_buffers() if "running_" in n})
    if world > 1:
        if rank == 0:
            queue.put(out)
        dist.barrier()
        dist.destroy_process_group()
    return out


def test_ddp_with_global_batchnorm_computes_the_single_process_gradient():
    # float64, so that what is left is the maths: one step of 2 processes x 2 images == 1 process x 4.
    one = _one_step(0, 1, 0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_one_step, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    two = queue.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
    assert set(one) == set(two)
    grads = [k for k in one if "running_" not in k]
    err = np.sqrt(
        sum(((one[k] - two[k]) ** 2).sum() for k in grads) / sum((one[k] ** 2).sum() for k in grads)
    )
    assert err < 1e-10
    for k in (k for k in one if "running_" in k):
        np.testing.assert_allclose(two[k], one[k], rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.fixture(scope="module")
def two_proc_one_epoch(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp1")
    _ok(_torchrun(images, out, "--epochs", "1"))
    return out


def test_two_processes_take_the_same_step_as_one_process(images, two_proc_one_epoch, tmp_path):
    one = train(_cfg(epochs=1), list_images(images), tmp_path, progress=False)
    two = Checkpoint.load(two_proc_one_epoch / "model.pt")
    assert two.complete and two.epoch == 1
    assert two.train_files == Checkpoint.load(one.checkpoint).train_files
    names = sorted(p.name for p in two_proc_one_epoch.iterdir())
    assert names == ["config.json", "last.pt", "model.pt", "teachers.pt"]  # no temp files
    # The loss of the first (only) step: same global batch, same BatchNorm statistics.
    assert two.history[0] == pytest.approx(one.history[0], rel=1e-5)
    a, b = one.model.state_dict(), two.weights
    trainable = [k for k in a if not k.startswith("teachers.") and a[k].is_floating_point()]
    for k in (k for k in trainable if "running_" in k):  # global-batch statistics (SyncBN): ~1e-5
        assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5), k
    # Weights: equal to 1e-5, but for elements whose gradient is rounding noise (zero in exact arithmetic),
    # where Adam's first step is ±lr whatever the gradient's size.
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in trainable if "running_" not in k])
    assert (diff > 1e-5).float().mean() < 0.03 and diff.max() <= 2 * LR + 1e-6
    assert two.calibration.threshold == pytest.approx(one.calibration.threshold, rel=1e-2)
    np.testing.assert_allclose(two.calibration.scores, one.calibration.scores, rtol=1e-2)


def test_resume_and_disk_cache_across_processes(images, two_proc_one_epoch, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(two_proc_one_epoch, resumed)
    _ok(_torchrun(images, resumed, "--epochs", "2", "--resume"))
    _ok(_torchrun(images, tmp_path / "disk", "--epochs", "2", "--cache", "disk"))
    a, b = Checkpoint.load(resumed / "model.pt"), Checkpoint.load(tmp_path / "disk/model.pt")
    # 1 + 1 epochs (memory cache, sharded and gathered) == 2 epochs (disk cache, each rank writing its rows)
    assert a.epoch == 2 and a.history == b.history
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert a.calibration.threshold == b.calibration.threshold
    assert any((tmp_path / "disk/cache").glob("*.done"))
    # Against one process after two Adam steps: close, not equal (see the module docstring).
    single = tmp_path / "single"
    train(_cfg(epochs=1), list_images(images), single, progress=False)
    one = train(_cfg(epochs=2), list_images(images), single, progress=False, resume=True)
    assert a.history == pytest.approx(one.history, rel=1e-2)
    assert a.calibration.threshold == pytest.approx(one.calibration.threshold, rel=5e-2)


def test_more_processes_than_the_data_allows_fails_on_every_rank(images, tmp_path):
    few = tmp_path / "few"
    few.mkdir()
    for p in list_images(images)[:3]:
        shutil.copy(p, few)
    out = tmp_path / "run"
    proc = _torchrun(few, out, "--epochs", "1", "--val-fraction", "0")
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    ranks = re.findall(
        r"\[\w*?(\d)\]:error: 3 training images for 2 processes: each process needs at least 2", text
    )
    assert sorted(ranks) == ["0", "1"], text[-3000:]
    assert not (out / "last.pt").exists() and not (out / "model.pt").exists()
    assert "Traceback" not in "".join(line for line in text.splitlines(True) if line.startswith("[default"))


HANG = """
import os, signal, sys, time
import rd2t.training.distributed as d
real = d.mean_over_ranks
def stuck(value, device):  # rank 1 stops answering in the first epoch's loss all-reduce
    if os.environ["RANK"] == "1":
        # Training defers SIGTERM to the end of the step, which a stuck rank never reaches, so torchrun
        # would wait its fixed 30 s before SIGKILL; that wait is torchrun's, not what is tested here.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        time.sleep(3600)
    return real(value, device)
d.mean_over_ranks = stuck
from rd2t.cli import main
sys.exit(main())
"""


def test_a_rank_that_stops_answering_ends_the_run_after_the_timeout(images, tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(HANG)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--tee=3"]
    cmd += [str(script), "train", str(images), "--out", str(tmp_path / "run"), "--device", "cpu"]
    cmd += ["--image-size", str(SIZE), "--batch-size", str(BATCH), "--epochs", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RD2T_DIST_TIMEOUT": "8"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode != 0
    assert re.search(r"\[\w*?0\]:error: .*[Tt]imed out", proc.stdout + proc.stderr), proc.stderr[-3000:]
    assert not (tmp_path / "run/last.pt").exists()


@pytest.mark.parametrize(
    ("n", "batch", "world", "expected"),
    [
        (16, 16, 2, 8),
        (16, 16, 4, 4),
        (7, 16, 4, "7 training images for 4 processes"),
        (16, 6, 4, "does not split evenly over 4 processes"),
        (9, 9, 2, r"global batch 9 \(the number of training images\) does not split"),
        (16, 4, 4, "BatchNorm needs at least 2: use --batch-size 8"),
    ],
)
def test_global_batch_split(monkeypatch, n, batch, world, expected):
    monkeypatch.setattr(ddp, "rank_and_world", lambda: (0, world))
    monkeypatch.setattr(ddp, "barrier", lambda: None)
    if isinstance(expected, int):
        assert ddp.local_batch_size(n, batch) == expected
    else:
        with pytest.raises(RD2TError, match=expected):
            ddp.local_batch_size(n, batch)


def test_backend_and_gpu_per_process(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ddp._backend("auto") == ddp._backend("cpu") == ("gloo", None)
    with pytest.raises(RD2TError, match="CUDA is not available"):
        ddp._backend("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert ddp._backend("auto") == ddp._backend("cuda") == ("nccl", 1)
    assert ddp._backend("cpu") == ("gloo", None)
    with pytest.raises(RD2TError, match="every process on one GPU"):
        ddp._backend("cuda:0")
    with pytest.raises(RD2TError, match="runs on cpu or cuda"):
        ddp._backend("mps")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(RD2TError, match="--nproc-per-node 2 or fewer"):
        ddp._backend("auto")


def test_timeout_from_the_environment(monkeypatch):
    monkeypatch.delenv("RD2T_DIST_TIMEOUT", raising=False)
    assert ddp.timeout().total_seconds() == ddp.DEFAULT_TIMEOUT_S
    monkeypatch.setenv("RD2T_DIST_TIMEOUT", "30")
    assert ddp.timeout().total_seconds() == 30
    monkeypatch.setenv("RD2T_DIST_TIMEOUT", "soon")
    with pytest.raises(RD2TError, match="RD2T_DIST_TIMEOUT"):
        ddp.timeout()


def test_parallel_jobs_on_two_workers_resume_and_merge(tmp_path, monkeypatch):
    from rd2t.runners import parallel
    from rd2t.runners.synth import make_dataset

    data = make_dataset(
        tmp_path / "data", categories=("wood",), size=SIZE, n_train=8, n_test_good=2, n_test_per_defect=1
    )
    out = tmp_path / "bench"
    jobs = [Job("folder", str(data), "wood", seed, str(out)) for seed in (0, 1)]
    cfg = preset("offline", image_size=SIZE, batch_size=4, epochs=1, device="cpu")
    records = parallel.run_parallel(jobs, cfg, workers=2, progress=False)
    assert [(r["category"], r["seed"]) for r in records] == [("wood", 0), ("wood", 1)]
    assert all((out / "wood" / f"seed{s}" / "metrics.json").exists() for s in (0, 1))
    assert "| wood | 2 |" in table(records, "folder")

    def no_pool(*a, **k):
        raise AssertionError("finished jobs must not start workers")

    monkeypatch.setattr(parallel, "ProcessPoolExecutor", no_pool)
    again = parallel.run_parallel(jobs, cfg, workers=2, progress=False)
    assert json.dumps(again, default=float) == json.dumps(records, default=float)
