"""lawn.unification.export/load (bit-identical, compact, safe, corrupt files refused) and compression_report."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from lawn.unification import BlockSpec, compression_report, export, harden, hardened_layers, load
from lawn.unification.export import pack_bits, unpack_bits
from unification_helpers import small_convnet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest.py)


_model = small_convnet


def _hardened(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    model = _model(seed)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    model(x)  # BN running stats move away from their init
    harden(model, BlockSpec(4), unify=0.5, prune=0.25)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return model.eval(), x


def test_pack_bits_round_trip() -> None:
    values = torch.randint(0, 4, (37,))
    assert torch.equal(unpack_bits(pack_bits(values, 2), 2, 37), values)
    bits = torch.rand(21) < 0.5
    assert pack_bits(bits, 1).numel() == 3 and torch.equal(unpack_bits(pack_bits(bits, 1), 1, 21), bits.long())


@pytest.mark.parametrize("target", ["fresh", "hardened_differently"])
def test_export_load_is_bit_identical(tmp_path: Path, target: str) -> None:
    model, x = _hardened()
    out = model(x)
    path = tmp_path / "model.lawnu"
    export(model, path)
    other = _model(seed=1)
    if target == "hardened_differently":
        harden(other, BlockSpec(4), unify=0.25, prune=0.5)
    load(path, other)
    other.eval()
    assert torch.equal(other(x), out)
    assert [n for n, _, _ in hardened_layers(other)] == [n for n, _, _ in hardened_layers(model)]
    # a loaded model can be retrained, re-exported and reloaded the same way
    export(other, tmp_path / "again.lawnu")
    assert torch.equal(load(tmp_path / "again.lawnu", _model(2)).eval()(x), out)


def test_file_is_plain_tensors_and_compact(tmp_path: Path) -> None:
    model, _ = _hardened()
    path = tmp_path / "model.lawnu"
    export(model, path)
    blob = torch.load(path, weights_only=True)  # no arbitrary objects
    layer = blob["layers"]["3"]
    param = model[3].parametrizations.weight[0]
    n_dense, n_unified = int((param.kinds == 0).sum()), int((param.kinds == 1).sum())
    assert layer["dense"].numel() == n_dense * 4 and layer["magnitudes"].numel() == n_unified
    assert layer["signs"].numel() == -(-n_unified * 4 // 8) and layer["signs"].dtype == torch.uint8
    assert layer["kinds"].numel() == -(-param.kinds.numel() // 4)
    assert "3.weight" not in blob["state"] and "0.weight" in blob["state"]


def test_an_export_that_fails_midway_leaves_the_earlier_file_and_no_partial_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x = _hardened()
    path = tmp_path / "model.lawnu"
    export(model, path)
    good = path.read_bytes()

    def full_disk(obj, zip_file, *args, **kwargs):  # writes part of the archive, then fails as a full disk does
        zip_file.write_record("archive/data.pkl", b"x" * 64, 64)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.serialization, "_save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        export(model, path)
    monkeypatch.undo()
    assert path.read_bytes() == good and [f.name for f in tmp_path.iterdir()] == ["model.lawnu"]
    assert torch.equal(load(path, _model(seed=1)).eval()(x), model(x))


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _corrupt_variants(good: bytes) -> dict[str, bytes]:
    blob = torch.load(io.BytesIO(good), weights_only=True)

    def saved(obj: object) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    short_signs = {
        **blob,
        "layers": {**blob["layers"], "3": {**blob["layers"]["3"], "signs": blob["layers"]["3"]["signs"][:-1]}},
    }
    all_ones = torch.full_like(blob["layers"]["6"]["kinds"], 255)
    bad_kind = {**blob, "layers": {**blob["layers"], "6": {**blob["layers"]["6"], "kinds": all_ones}}}
    return {
        "random bytes": bytes(range(256)) * 4,
        "truncated": good[: len(good) // 2],
        "no header": saved({"layers": {}, "state": {}}),
        "other version": saved({**blob, "version": 99}),
        "short sign bits": saved(short_signs),
        "unknown kind": saved(bad_kind),
        "missing state": saved({**blob, "state": {k: v for k, v in blob["state"].items() if k != "8.bias"}}),
    }


def test_corrupt_files_are_refused_and_nothing_changes(tmp_path: Path) -> None:
    model, _ = _hardened()
    path = tmp_path / "model.lawnu"
    export(model, path)
    target = _model(seed=3)
    before = _snapshot(target)
    for what, data in _corrupt_variants(path.read_bytes()).items():
        bad = tmp_path / f"{what.replace(' ', '_')}.lawnu"
        bad.write_bytes(data)
        with pytest.raises(ValueError, match=str(bad)):
            load(bad, target)
        assert not list(hardened_layers(target)), what
        assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items()), what


def test_a_pickled_object_is_not_executed(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.lawnu"
    torch.save({"format": "lawn.unification", "payload": Evil()}, path)
    with pytest.raises(ValueError, match="not a valid lawn.unification export"):
        load(path, _model())
    assert zipfile.is_zipfile(path)


def test_wrong_architecture_and_nothing_to_export(tmp_path: Path) -> None:
    model, _ = _hardened()
    export(model, tmp_path / "m.lawnu")
    wide = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3))
    with pytest.raises(ValueError, match="layer '3' has shape"):
        load(tmp_path / "m.lawnu", wide)
    with pytest.raises(ValueError, match="nothing hardened to export"):
        export(_model(), tmp_path / "plain.lawnu")
    assert not (tmp_path / "plain.lawnu").exists()


def test_compression_report_counts_by_hand() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    harden(model, BlockSpec(4), unify=0.5, prune=0.25, params=["0.weight"])  # 8 blocks: 2 pruned, 4 unified, 2 dense
    report = compression_report(model, torch.randn(3, 8))
    (layer,) = report.layers
    assert (layer.blocks, layer.dense, layer.unified, layer.pruned) == (8, 2, 4, 2)
    assert layer.bits == 2 * 4 * 32 + 4 * (32 + 4) + 2 * 8
    assert layer.dense_fp32_bits == 32 * 32
    assert (layer.multiplies, layer.dense_multiplies) == (2 * 4 + 4, 32)
    assert report.other_bits == 32 * (4 + 8 + 2)  # bias of layer 0, weight and bias of layer 2
    assert report.other_multiplies == 8 and report.multiplies == 12 + 8 and report.dense_multiplies == 40
    assert "not wall-clock" in str(report)
    with pytest.raises(ValueError, match="no hardened weights"):
        compression_report(_model())


def test_report_counts_conv_positions() -> None:
    model = nn.Sequential(nn.Conv1d(4, 2, 3), nn.Flatten(), nn.Linear(2 * 8, 2))
    harden(model, BlockSpec(4), unify=1.0, prune=0.0, params=["0.weight"])
    report = compression_report(model, torch.randn(5, 4, 10))
    assert report.per_sample and report.layers[0].multiplies == 6 * 8  # 6 unified blocks × 8 output positions
    assert report.layers[0].dense_multiplies == 24 * 8
