"""``examples/ddp_fsdp2_torchrun.py``: the documented torchrun launch works, its DCP checkpoint resumes exactly,
and its DDP and FSDP2 modes train the same weights."""

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("this torch build has no torch.distributed / gloo", allow_module_level=True)

import lawn  # noqa: E402
from distributed_workers import WORLD, launch  # noqa: E402

EXAMPLE = Path(__file__).parents[1] / "examples" / "ddp_fsdp2_torchrun.py"
spec = importlib.util.spec_from_file_location("ddp_fsdp2_torchrun", EXAMPLE)
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)

FREE_STEPS = 2


def run_example_modes(rank: int, out: Path, checkpoint_dir: Path) -> None:
    results = {
        "resumed": example.train("fsdp2", 6, FREE_STEPS, checkpoint_dir),  # from step_4, saved by torchrun
        "fsdp2": example.train("fsdp2", 6, FREE_STEPS),
        "ddp": example.train("ddp", 6, FREE_STEPS),
    }
    torch.save(results, out / f"example_rank{rank}.pt")


def test_torchrun_launch_then_resume_and_modes_agree(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    checkpoints = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={WORLD}", "--master-addr=127.0.0.1"]
    command += [f"--master-port={port}", str(EXAMPLE), "--mode=fsdp2", "--steps=4", f"--free-steps={FREE_STEPS}"]
    command += [f"--checkpoint-dir={checkpoints}"]
    src = str(Path(lawn.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"saved {checkpoints / 'step_4'}" in done.stdout
    assert (checkpoints / "step_4" / ".metadata").exists()

    launch(run_example_modes, tmp_path, checkpoints)
    for rank in range(WORLD):
        results = torch.load(tmp_path / f"example_rank{rank}.pt", weights_only=True)
        for run in results.values():
            assert (run["steps"], run["phase"]) == (6, "constrained")
        resumed, fsdp2, ddp = results["resumed"]["weights"], results["fsdp2"]["weights"], results["ddp"]["weights"]
        assert resumed.keys() == fsdp2.keys() == ddp.keys()
        for name in fsdp2:
            assert torch.equal(resumed[name], fsdp2[name]), name
            torch.testing.assert_close(ddp[name], fsdp2[name], rtol=0, atol=1e-5, msg=name)
    assert (checkpoints / "step_6" / ".metadata").exists()
