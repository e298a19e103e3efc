"""Multi-process checks (slow): DDP with gloo on CPU against one process, SyncBN, and resume after kill -9."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mobilenets.models.registry import mobilenet_v1
from mobilenets.train.distributed import convert_sync_batchnorm
from mobilenets.weights import read_weights

from .conftest import shared_path
from .test_train import make_image_folders

pytestmark = pytest.mark.slow
# one thread everywhere: a float sum's order (and so the last bits) depends on the thread count
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def mobilenets(*args: str, nproc: int = 1) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else []
    proc = subprocess.run([sys.executable, *launcher, "-m", "mobilenets", *args], capture_output=True, text=True,
                          timeout=600, env=ENV, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def step_losses(run: Path) -> list[float]:
    with open(run / "steps.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """train/{ants,bees} with 16 images each (4 steps of batch 8 per epoch), val/ with 8 each."""
    return make_image_folders(tmp_path_factory.mktemp("ddp") / "data", per_class=16)


def test_ddp_two_processes_match_one_process(data, tmp_path):
    """2 x batch 4 == 1 x batch 8 for 20 steps: Google's 0.25_128 weights, whole network trained, BN frozen.

    Frozen BN (the fine-tune preset's mode) makes the comparison exact: a BN layer in train mode
    normalises each process's 4 images, not the 8 of the single process. With a random-init
    network instead of real weights the comparison does not hold: float rounding differences
    (the order of the gradient all-reduce) flip ReLU6 kinks and the chaotic first steps amplify
    them to 1e-1 within 5 steps (measured), whatever the DDP code does. fp32 (``--amp off``):
    where ``auto`` picks bf16 (CPUs with native bf16), its rounding depends on the batch split.
    """
    weights = shared_path("models", "mobilenet_v1_0.25_128_quant.tflite")
    common = ["finetune", "--data", str(data), "--weights", str(weights), "--no-freeze-backbone", "--epochs", "5",
              "--batch-size", "8", "--workers", "0", "--log-every", "1", "--set", "dropout=0", "--amp", "off",
              "--json"]  # fmt: skip
    mobilenets(*common, "--output", str(tmp_path / "one"))
    mobilenets(*common, "--output", str(tmp_path / "two"), nproc=2)
    one, two = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert len(one) == len(two) == 20
    assert sum(one[-4:]) < sum(one[:4]) - 0.2  # it learns (loss 0.41 -> 0.32 when measured)
    diff = max(abs(a - b) for a, b in zip(one, two))
    print(f"DDP 2x4 vs 1x8, 20 steps, frozen BN: max |loss diff| = {diff:.3g}")
    assert diff < 1e-4
    wa = read_weights(tmp_path / "one" / "last.safetensors").state_dict
    wb = read_weights(tmp_path / "two" / "last.safetensors").state_dict
    assert set(wa) == set(wb) and max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
    moved = read_weights(weights).state_dict
    key = "features.Conv2d_0.conv.weight"  # the backbone trained too (not only the head)
    assert float((wa[key] - moved[key]).abs().max()) > 1e-6


def _syncbn_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = convert_sync_batchnorm(mobilenet_v1(alpha=0.25, resolution=64, num_classes=3, dropout=0.0)).train()
    net = torch.nn.parallel.DistributedDataParallel(model)
    x, y = _batch()
    loss = torch.nn.functional.cross_entropy(net(x[rank::2]), y[rank::2])
    loss.backward()  # DDP averages the gradients
    total = loss.detach().clone()
    dist.all_reduce(total)
    if rank == 0:
        grads = {n: p.grad for n, p in model.named_parameters()}
        torch.save({"loss": total / 2, "grads": grads, "state": model.state_dict()}, out)
    dist.destroy_process_group()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 64, 64, generator=g), torch.randint(0, 3, (8,), generator=g)


def test_sync_batchnorm_matches_one_process(tmp_path):
    torch.manual_seed(0)
    ref = mobilenet_v1(alpha=0.25, resolution=64, num_classes=3, dropout=0.0).train()
    x, y = _batch()
    loss = torch.nn.functional.cross_entropy(ref(x), y)
    loss.backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "sync.pt"
    mp.spawn(_syncbn_worker, args=(port, str(out)), nprocs=2)
    got = torch.load(out, weights_only=True)
    assert abs(float(got["loss"]) - float(loss)) < 1e-5
    state = ref.state_dict()
    assert set(got["state"]) == set(state)  # same names: no num_batches_tracked, no wrapper prefix
    for key in state:  # running statistics over the whole batch, as one process computes them
        torch.testing.assert_close(got["state"][key], state[key], rtol=1e-5, atol=1e-6)
    for name, p in ref.named_parameters():
        scale = float(p.grad.abs().max())
        assert float((got["grads"][name] - p.grad).abs().max()) <= 1e-3 * scale + 1e-7, name


def test_sync_bn_cli_run(data, tmp_path):
    """torchrun + --sync-bn end to end: the first step's loss is the single process's, checkpoint loads."""
    common = ["train", "--data", str(data), "--model", "mobilenet_v1_0.25_64", "--epochs", "1", "--batch-size", "8",
              "--workers", "0", "--log-every", "1", "--set", "dropout=0", "--amp", "off"]  # fmt: skip
    mobilenets(*common, "--output", str(tmp_path / "one"))
    mobilenets(*common, "--sync-bn", "--output", str(tmp_path / "two"), nproc=2)
    one, two = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert len(one) == len(two) == 4 and abs(one[0] - two[0]) < 1e-4
    w = read_weights(tmp_path / "two" / "last.safetensors")
    assert w.labels == ["ants", "bees"] and not any(k.startswith("module.") for k in w.state_dict)


def test_kill_9_mid_epoch_then_resume_equals_uninterrupted(data, tmp_path):
    args = ["train", "--data", str(data), "--model", "mobilenet_v1_0.25_64", "--epochs", "3", "--batch-size", "4",
            "--workers", "2", "--checkpoint-every", "3", "--set", "dropout=0.1"]  # fmt: skip
    mobilenets(*args, "--output", str(tmp_path / "reference"))

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mobilenets", *args, "--output", str(killed)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (killed / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its DataLoader workers
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    state = torch.load(killed / "last.pt", weights_only=True)
    assert state["step"] < 24 and state["batch_in_epoch"] > 0  # killed after a mid-epoch checkpoint

    mobilenets("train", "--output", str(killed), "--resume")
    for name in ("last.safetensors", "best.safetensors"):
        a = read_weights(tmp_path / "reference" / name).state_dict
        b = read_weights(killed / name).state_dict
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert step_losses(tmp_path / "reference") == step_losses(killed)
