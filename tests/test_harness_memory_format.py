"""``memory_format = "channels_last"``: conv weights in torch's NHWC layout, the same training up to float
rounding (plain, LAWN on every layer with row norms, A-FAN, nested runs); the default keeps earlier keys."""

from __future__ import annotations

import pytest
import torch

from lawn.harness.config import RunConfig
from lawn.harness.nested_runs import nested_data, train_nested
from lawn.harness.train import build, train

torch.set_num_threads(1)

# width 8: at width 4 the ResNet's first shortcut is a 4-channel 1x1 stride-2 conv, whose channels_last weight
# gradient corrupts the heap in torch 2.13's oneDNN on some AVX2 CPUs (docs/harness.md, memory_format)
TINY = {"dataset": "digits", "model": "resnet", "train_limit": 300, "test_limit": 100, "width": 8, "epochs": 3}
CASES = [
    {"method": "plain", "optimizer": "sgd", "lr": 0.05, "fused_base": True},
    # every conv weight constrained, one norm per output channel: the LAWN step must respect the layout
    {"method": "lawn_all", "optimizer": "adam", "lr": 1e-3, "granularity": "row"},
    {"method": "afan", "optimizer": "sgd", "lr": 0.05, "afan_steps": 2, "afan_step_size": 0.05},
]


def test_the_built_model_holds_its_conv_weights_channels_last() -> None:
    run = build(RunConfig.from_dict({**TINY, "memory_format": "channels_last"}))
    convs = [p for p in run.model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not all(p.is_contiguous() for p in convs)  # a real layout change, not a no-op
    default = build(RunConfig.from_dict(TINY))
    assert all(p.is_contiguous() for p in default.model.parameters())


@pytest.mark.parametrize("case", CASES, ids=[c["method"] for c in CASES])
def test_training_is_the_same_up_to_float_rounding(case: dict) -> None:
    a = train(RunConfig.from_dict({**TINY, **case}))
    b = train(RunConfig.from_dict({**TINY, **case, "memory_format": "channels_last"}))
    for ha, hb in zip(a["history"][1:], b["history"][1:]):
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-4)
        assert hb["weight_norm"] == pytest.approx(ha["weight_norm"], rel=1e-5)
        assert hb["test_loss"] == pytest.approx(ha["test_loss"], rel=1e-3)


def test_a_nested_run_honours_it_too(monkeypatch: pytest.MonkeyPatch) -> None:
    import lawn.harness.nested_runs as runs

    sliced: list[torch.nn.Module] = []
    real_slice = runs.slice_model
    monkeypatch.setattr(runs, "slice_model", lambda *a, **k: sliced.append(real_slice(*a, **k)) or sliced[-1])
    fields = {"dataset": "digits", "width": 4, "epochs": 2, "batch_size": 64, "lr": 0.003, "nested_arm": "dropout"}
    splits = nested_data(RunConfig.from_dict(fields))
    a = train_nested(RunConfig.from_dict(fields), splits)
    sliced.clear()
    b = train_nested(RunConfig.from_dict({**fields, "memory_format": "channels_last"}), splits)
    assert [r["config"]["memory_format"] for r in b] == ["channels_last"] * len(b)
    assert set(b[-1]["speed"]["0.5"]) == {"sliced_ms", "masked_ms"}
    # the speed comparison's sliced copies share the run's layout: only their widths differ from the masked model
    convs = [p for m in sliced for p in m.parameters() if p.dim() == 4]
    assert sliced and convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    for ra, rb in zip(a, b):
        assert rb["test_metric"] == pytest.approx(ra["test_metric"], abs=0.02)
    assert b[-1]["history"][-1]["train_loss"] == pytest.approx(a[-1]["history"][-1]["train_loss"], rel=1e-4)


def test_memory_format_is_checked_and_its_default_keeps_old_keys() -> None:
    with pytest.raises(ValueError, match="memory_format: expected one of"):
        RunConfig(memory_format="nhwc")
    base = RunConfig.from_dict(TINY)
    assert RunConfig.from_dict({**TINY, "memory_format": "contiguous"}).key() == base.key()
    assert RunConfig.from_dict({**TINY, "memory_format": "channels_last"}).key() != base.key()
