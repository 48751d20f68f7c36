"""LAWN on several processes with torchrun: DDP or FSDP2, checkpointed and resumed with DCP.

    torchrun --nproc-per-node=2 examples/ddp_fsdp2_torchrun.py --mode fsdp2 --steps 40 --checkpoint-dir /tmp/lawn_run
    torchrun --nproc-per-node=2 examples/ddp_fsdp2_torchrun.py --mode fsdp2 --steps 80 --checkpoint-dir /tmp/lawn_run

The second command resumes at step 40 from the checkpoint the first one saved (``/tmp/lawn_run/step_40``).
``--mode ddp`` replicates the model instead of sharding it. On CPU the processes talk over gloo; with one CUDA GPU
per process, over NCCL. Every rank trains on its slice of the same global batch, so the weights are the ones a
single process would get on the global batch (``tests/test_example_torchrun.py`` checks the launch, the resume and
that both modes agree).
"""

from __future__ import annotations

import argparse
import gc
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

import lawn

GLOBAL_BATCH, FEATURES, CLASSES = 64, 20, 10


class Classifier(nn.Module):
    """Linear → LayerNorm → ReLU → [Linear → ReLU → Linear]: the bracket is LAWN's final homogeneous tail."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(FEATURES, 64)
        self.norm = nn.LayerNorm(64)
        self.hidden = nn.Linear(64, 64)
        self.head = nn.Linear(64, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(torch.relu(self.norm(self.stem(x))))))


def global_batch(step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step`` (the same on every rank and after a resume): a learnable linear rule."""
    rule = torch.randn(FEATURES, CLASSES, generator=torch.Generator().manual_seed(0))
    x = torch.randn(GLOBAL_BATCH, FEATURES, generator=torch.Generator().manual_seed(1000 + step))
    return x.to(device), (x @ rule).argmax(dim=1).to(device)


def build(mode: str, device: torch.device, free_steps: int) -> tuple[nn.Module, lawn.LAWN]:
    """The model wrapped for ``mode`` ("ddp" or "fsdp2") and LAWN around AdamW."""
    torch.manual_seed(0)
    model = Classifier().to(device)
    if mode == "fsdp2":  # each Linear, then the root: parameters become DTensors sharded on dim 0
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        for layer in (model.stem, model.hidden, model.head):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        wrapped = model
    else:
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    base = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    tail = [("hidden.weight", model.hidden.weight), ("head.weight", model.head.weight)]
    return wrapped, lawn.LAWN(base, tail, free_steps=free_steps)


def save(model: nn.Module, opt: lawn.LAWN, path: Path) -> None:
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=path)


def load(model: nn.Module, opt: lawn.LAWN, path: Path) -> None:
    """DCP's recipe: the fresh model's and optimizer's own state dicts are the templates ``dcp.load`` fills."""
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])


def latest_checkpoint(checkpoint_dir: Path | None) -> Path | None:
    saved = [] if checkpoint_dir is None else list(checkpoint_dir.glob("step_*/.metadata"))
    return max((m.parent for m in saved), key=lambda d: int(d.name.removeprefix("step_")), default=None)


def train(mode: str, steps: int, free_steps: int, checkpoint_dir: Path | None = None, log_every: int = 0) -> dict:
    """Train up to ``steps`` optimizer steps, resuming from the latest ``checkpoint_dir/step_<n>`` and saving
    ``checkpoint_dir/step_<steps>`` at the end; needs an initialised process group. Returns LAWN's counters, the
    last global loss and the full weights."""
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if dist.get_backend() == "nccl" else None
    device = device or torch.device("cpu")
    model, opt = build(mode, device, free_steps)
    if (resume_from := latest_checkpoint(checkpoint_dir)) is not None:
        load(model, opt, resume_from)
        if rank == 0:
            print(f"resumed from {resume_from} at step {opt.steps} ({opt.phase})", flush=True)
    share = GLOBAL_BATCH // world
    loss = torch.zeros((), device=device)
    while opt.steps < steps:
        x, y = global_batch(opt.steps, device)
        x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if log_every and opt.steps % log_every == 0:
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            if rank == 0:
                print(f"step {opt.steps}: loss {mean.item() / world:.4f}, phase {opt.phase}", flush=True)
    if checkpoint_dir is not None:
        save(model, opt, checkpoint_dir / f"step_{opt.steps}")
        if rank == 0:
            print(f"saved {checkpoint_dir / f'step_{opt.steps}'}", flush=True)
    loss = loss.detach().clone()
    dist.all_reduce(loss)
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {"steps": opt.steps, "phase": opt.phase, "loss": loss.item() / world, "weights": weights}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["ddp", "fsdp2"], default="fsdp2")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--free-steps", type=int, default=20)
    parser.add_argument("--checkpoint-dir", type=Path, default=None)
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")  # rank, world size and address come from torchrun
    try:
        train(args.mode, args.steps, args.free_steps, args.checkpoint_dir, log_every=10)
    finally:
        # FSDP2's hooks keep the finished model in reference cycles, and its DTensors hold the process group: free
        # them now, not during interpreter shutdown after the group is destroyed, where gloo aborted the process
        # ("terminate called without an active exception") in about 6 of 100 launches on a loaded CPU (0 of 60 so)
        gc.collect()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
