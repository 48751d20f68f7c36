"""LAWN on PyTorch's own distributed engine: 2 CPU processes on gloo (127.0.0.1), DDP, FSDP2 and DCP.

Every run is compared with a single-process run on the same global batches, computed here.
"""

import pytest
import torch
import torch.distributed as dist

if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("this torch build has no torch.distributed / gloo", allow_module_level=True)

from distributed_workers import (  # noqa: E402
    DCP_CASES,
    FREE_STEPS,
    STEPS,
    WORLD,
    launch,
    reference,
    run_dcp_suite,
    run_ddp,
    run_fsdp2_suite,
)

TOL = {"rtol": 0, "atol": 1e-5}


def results(out, name):
    return [torch.load(out / f"{name}_rank{rank}.pt", weights_only=True) for rank in range(WORLD)]


@pytest.fixture(scope="module")
def references():
    return {granularity: reference(granularity) for granularity in ("tensor", "row")}


@pytest.fixture(scope="module")
def fsdp2_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2")
    launch(run_fsdp2_suite, out)
    return out


@pytest.fixture(scope="module")
def dcp_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("dcp")
    launch(run_dcp_suite, out)
    return out


def assert_matches(run, ref):
    assert run["steps"] == ref["steps"] == STEPS and run["phase"] == ref["phase"] == "constrained"
    assert run["params"].keys() == ref["params"].keys()
    for name in ref["params"]:
        torch.testing.assert_close(run["params"][name], ref["params"][name], **TOL, msg=name)
    assert run["targets"].keys() == ref["targets"].keys() == {"hidden.weight", "head.weight"}
    for name in ref["targets"]:
        torch.testing.assert_close(run["targets"][name], ref["targets"][name], **TOL, msg=name)


def assert_ranks_identical(runs):
    for name, p in runs[0]["params"].items():
        for other in runs[1:]:
            assert torch.equal(p, other["params"][name]), name


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
def test_ddp_matches_the_single_process_run_and_ranks_stay_identical(tmp_path, references, fused):
    launch(run_ddp, tmp_path, fused)
    runs = results(tmp_path, "ddp_fused" if fused else "ddp")
    if fused:  # (a forked worker may inherit the kernel from this process: only the fused run is checked)
        assert all(run["kernel_loaded"] for run in runs), "the fused run must have the kernel"
    for run in runs:
        assert_matches(run, references["tensor"])
    assert_ranks_identical(runs)


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_fsdp2_matches_the_single_process_run_across_the_switch(fsdp2_out, references, granularity):
    """Norms, dot products and targets are the global ones (a shard's own norm would be far off)."""
    runs = results(fsdp2_out, f"fsdp2_{granularity}")
    for run in runs:
        assert_matches(run, references[granularity])
    assert_ranks_identical(runs)


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_lawn_norms_of_a_sharded_weight_are_global_on_every_rank(fsdp2_out, granularity):
    """Per tensor the rank's local value is the whole norm; per row each rank holds its rows' whole norms."""
    for run in results(fsdp2_out, f"fsdp2_{granularity}"):
        for name, expected in run["norms_of_gathered"].items():
            torch.testing.assert_close(run["norms"][name], expected, rtol=1e-6, atol=0, msg=name)


@pytest.mark.parametrize(("granularity", "placement"), [("tensor", "Replicate()"), ("row", "Shard(dim=0)")])
def test_fsdp2_targets_are_replicated_per_tensor_and_sharded_like_the_rows(fsdp2_out, granularity, placement):
    for run in results(fsdp2_out, f"fsdp2_{granularity}"):
        assert run["target_placements"] == {name: f"({placement},)" for name in ("hidden.weight", "head.weight")}


def test_fsdp2_a_zero_row_held_by_one_rank_is_refused_on_every_rank(fsdp2_out):
    for run in results(fsdp2_out, "zero_row"):
        assert run["phase"] == "free"
        assert run["message"] is not None and "'head.weight' (row 4) has norm 0.0" in run["message"]


@pytest.mark.parametrize(("granularity", "checkpoint_at", "free_steps"), DCP_CASES)
def test_dcp_resume_under_fsdp2_matches_the_uninterrupted_run(
    dcp_out, references, granularity, checkpoint_at, free_steps
):
    runs = results(dcp_out, f"checkpoint_{granularity}_{checkpoint_at}_{free_steps}")
    for run in runs:
        phase = "constrained" if checkpoint_at >= free_steps else "free"
        # a fresh LAWN in its free phase counts DCP's template step; the checkpoint's counters replace it
        template_steps = 1 if free_steps > 0 else 0
        assert run["loaded"] == {"steps": checkpoint_at, "phase": phase, "template_steps": template_steps}
        resumed, uninterrupted = run["resumed"], run["uninterrupted"]
        for name, p in uninterrupted["params"].items():
            assert torch.equal(resumed["params"][name], p), name
        assert uninterrupted["targets"].keys() == {"hidden.weight", "head.weight"}
        for name, t in uninterrupted["targets"].items():
            assert torch.equal(resumed["targets"][name], t), name
        assert resumed["target_placements"] == uninterrupted["target_placements"]
        if free_steps == FREE_STEPS:
            assert_matches(resumed, references[granularity])
