"""Two CPU processes on gloo (127.0.0.1 only): DDP, FSDP2 and DCP runs of LAWN, and the single-process reference.

The tests spawn ``run_*`` below on 2 ranks; each rank writes what it ended with to ``out/<run>_rank<r>.pt``
(full tensors), and the test compares that with :func:`reference`, a single-process run on the same global
batches computed in the test itself.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

import lawn

WORLD = 2
STEPS = 6
FREE_STEPS = 3
GLOBAL_BATCH = 8


class TinyNet(nn.Module):
    """Linear → LayerNorm → ReLU → Linear → ReLU → Linear; the last two weights are LAWN's tail.

    LayerNorm (not BatchNorm) so that a sharded or data-parallel run sees exactly the global batch's math. The
    head has 5 rows: on 2 ranks its row shards are uneven (3 + 2).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 16)
        self.norm = nn.LayerNorm(16)
        self.hidden = nn.Linear(16, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(torch.relu(self.norm(self.stem(x))))))

    def tail(self) -> list[tuple[str, torch.Tensor]]:
        return [("hidden.weight", self.hidden.weight), ("head.weight", self.head.weight)]


def make_model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


def make_lawn(model: TinyNet, granularity: str = "tensor", free_steps: int = FREE_STEPS, **options) -> lawn.LAWN:
    base = torch.optim.Adam(model.parameters(), lr=0.05)
    return lawn.LAWN(base, model.tail(), free_steps=free_steps, granularity=granularity, **options)


def make_lawn_to_load_with_dcp(model: nn.Module, granularity: str, free_steps: int) -> lawn.LAWN:
    """A fresh LAWN whose state dict is a complete template for ``dcp.load``.

    DCP builds the template by one zero-lr step, but only while the optimizer's state is empty. With
    ``free_steps=0`` LAWN records its targets at construction, so let DCP initialise the base's state first.
    """
    base = torch.optim.Adam(model.parameters(), lr=0.05)
    if free_steps == 0:
        get_optimizer_state_dict(model, base)
    return lawn.LAWN(base, model.tail(), free_steps=free_steps, granularity=granularity)


def global_batches(steps: int = STEPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(GLOBAL_BATCH, 6, generator=gen), torch.randint(0, 5, (GLOBAL_BATCH,), generator=gen))
        for _ in range(steps)
    ]


def train(model: nn.Module, opt: torch.optim.Optimizer, batches, rank: int = 0, world: int = 1) -> None:
    """One step per global batch; each rank takes its equal slice (gradients are averaged across ranks)."""
    n = GLOBAL_BATCH // world
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x[rank * n : (rank + 1) * n]), y[rank * n : (rank + 1) * n]).backward()
        opt.step()


def reference(granularity: str = "tensor", steps: int = STEPS) -> dict:
    """The single-process run on the same global batches."""
    model = make_model()
    opt = make_lawn(model, granularity)
    train(model, opt, global_batches(steps))
    return summary(model, opt)


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def summary(model: nn.Module, opt: lawn.LAWN) -> dict:
    """Full (gathered) parameters and targets, with LAWN's counters: the same on every rank."""
    return {
        "params": {name: _full(p.detach()).clone() for name, p in model.named_parameters()},
        "targets": {name: _full(t).clone() for name, t in opt.target_norms.items()},
        "target_placements": {name: str(getattr(t, "placements", None)) for name, t in opt.target_norms.items()},
        "steps": opt.steps,
        "phase": opt.phase,
    }


# ----------------------------------------------------------------------------------------- the process group
def launch(run: Callable[..., None], out: Path, *args: object) -> None:
    """Run ``run(rank, out, *args)`` on 2 gloo ranks on this machine (127.0.0.1); raise if any rank fails."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start_method = "fork" if sys.platform == "linux" else "spawn"  # fork: no second import of torch
    mp.start_processes(_entry, args=(port, run, out, args), nprocs=WORLD, start_method=start_method)


def _entry(rank: int, port: int, run: Callable[..., None], out: Path, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    loopback = [name for _, name in socket.if_nameindex() if name in ("lo", "lo0")]
    if loopback:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback[0])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        run(rank, out, *args)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------- the runs
def _save(obj: object, out: Path, name: str, rank: int) -> None:
    torch.save(obj, out / f"{name}_rank{rank}.pt")


def run_ddp(rank: int, out: Path, fused: bool = False) -> None:
    """LAWN around the optimizer of a ``DistributedDataParallel`` model (``fused``: on lawn's C++ kernel)."""
    model = make_model()
    ddp_model = DistributedDataParallel(model)
    opt = make_lawn(model, fused=fused)  # fused=False: the foreach path, fused=True: the fused step
    train(ddp_model, opt, global_batches(), rank, WORLD)
    result = summary(model, opt)
    # fused=True with an Adam base: the fused step's kernel (lawn.constraint.fused_step) runs the constrained step
    result["kernel_loaded"] = lawn.constraint.fused_step._Kernel.module is not None
    _save(result, out, "ddp_fused" if fused else "ddp", rank)


def shard(model: TinyNet) -> TinyNet:
    """FSDP2: every Linear, then the root, sharded over the 2 ranks (dim 0 of each parameter)."""
    mesh = init_device_mesh("cpu", (WORLD,))
    for layer in (model.stem, model.hidden, model.head):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def run_fsdp2_suite(rank: int, out: Path) -> None:
    run_fsdp2(rank, out, "tensor")
    run_fsdp2(rank, out, "row")
    run_fsdp2_zero_row(rank, out)


# (granularity, checkpoint_at, free_steps): before, at and after the switch; constrained from the start
DCP_CASES = [
    ("tensor", 2, FREE_STEPS),
    ("tensor", 3, FREE_STEPS),
    ("tensor", 4, FREE_STEPS),
    ("row", 2, FREE_STEPS),
    ("row", 4, FREE_STEPS),
    ("row", 2, 0),
]


def run_dcp_suite(rank: int, out: Path) -> None:
    for granularity, checkpoint_at, free_steps in DCP_CASES:
        run_dcp(rank, out, granularity, checkpoint_at, free_steps)


def run_fsdp2(rank: int, out: Path, granularity: str) -> None:
    """LAWN on FSDP2-sharded weights, through the switch."""
    model = shard(make_model())
    opt = make_lawn(model, granularity)
    assert all(type(p).__name__ == "DTensor" for _, p in opt.constrained_parameters)
    train(model, opt, global_batches(), rank, WORLD)
    result = summary(model, opt)
    # lawn.norms of a sharded weight: the global value, also in this rank's local tensor (what .item() reads)
    dims = None if granularity == "tensor" else 1
    result["norms"] = {name: lawn.norms(p, granularity).to_local().clone() for name, p in opt.constrained_parameters}
    result["norms_of_gathered"] = {
        name: torch.linalg.vector_norm(p.full_tensor(), dim=dims).chunk(WORLD)[rank] if dims else p.full_tensor().norm()
        for name, p in opt.constrained_parameters
    }
    _save(result, out, f"fsdp2_{granularity}", rank)


def run_fsdp2_zero_row(rank: int, out: Path) -> None:
    """A zero row that only rank 1 holds: ``freeze()`` must refuse it on every rank (no rank may go on)."""
    model = shard(make_model())
    opt = make_lawn(model, "row")
    if rank == 1:  # rank 1 holds rows 3 and 4 of the 5-row head
        with torch.no_grad():
            model.head.weight.to_local()[1].zero_()
    try:
        opt.freeze()
        message = None
    except ValueError as error:
        message = str(error)
    _save({"message": message, "phase": opt.phase}, out, "zero_row", rank)


def run_dcp(rank: int, out: Path, granularity: str, checkpoint_at: int, free_steps: int) -> None:
    """Save with DCP after ``checkpoint_at`` steps, resume into a fresh model and LAWN, finish the run.

    Loading follows the DCP recipe: the fresh optimizer's own state dict is the template (DCP fills it by one
    zero-lr step, which LAWN counts; the loaded counters then replace it), ``dcp.load`` fills it in place.
    """
    batches = global_batches()
    path = out / f"checkpoint_{granularity}_{checkpoint_at}_{free_steps}"
    model = shard(make_model())
    opt = make_lawn(model, granularity, free_steps)
    train(model, opt, batches[:checkpoint_at], rank, WORLD)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.save(state, checkpoint_id=path)
    train(model, opt, batches[checkpoint_at:], rank, WORLD)
    uninterrupted = summary(model, opt)

    model = shard(make_model(seed=123))
    opt = make_lawn_to_load_with_dcp(model, granularity, free_steps)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    template_steps = opt.steps  # DCP's zero-lr initialisation step, counted by LAWN
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])
    loaded = {"steps": opt.steps, "phase": opt.phase, "template_steps": template_steps}
    train(model, opt, batches[checkpoint_at:], rank, WORLD)
    _save({"uninterrupted": uninterrupted, "resumed": summary(model, opt), "loaded": loaded}, out, path.name, rank)
