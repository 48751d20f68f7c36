"""Run one shard of a sweep spec, so that shards run side by side: each shard is the spec with some top-level
entries replaced (JSON values), e.g. ``optimizers=["adam"]`` or ``methods=["lawn"]``; per-optimizer lists and
grids of optimizers left out are dropped. A shard's rows are those the whole spec would write (same keys).

    python benchmarks/sweep_shard.py SPEC RESULTS 'methods=["lawn"]' 'optimizers=["adam"]'
"""

import json
import sys

import torch

from lawn.harness.config import load_mapping
from lawn.harness.sweep import SweepSpec, run_sweep


def shard(data: dict, changes: list[str]) -> dict:
    for item in changes:
        key, value = item.split("=", 1)
        data[key] = json.loads(value)
    keep = set(data.get("optimizers", []))
    for key in ("lrs", "weight_decays"):
        if isinstance(data.get(key), dict):
            data[key] = {o: v for o, v in data[key].items() if o in keep}
    methods = set(data.get("methods", []))
    data["grids"] = {m: axes for m, axes in data.get("grids", {}).items() if m in methods}
    for axes in data["grids"].values():
        for name, values in axes.items():
            if isinstance(values, dict):
                axes[name] = {o: v for o, v in values.items() if o in keep}
    return data


if __name__ == "__main__":
    torch.set_num_threads(1)
    spec = SweepSpec.from_dict(shard(load_mapping(sys.argv[1]), sys.argv[3:]))
    print(run_sweep(spec, sys.argv[2]))
