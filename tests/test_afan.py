"""lawn.AFAN: the perturbation ascends the loss, hooks never outlive a call, BatchNorm statistics stay clean
under bn="freeze", the special cases are exactly the plain loss, the released recipe is reproduced, errors."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lawn import AFAN
from lawn.afan import moment_swap


class Net(nn.Module):
    """A small BN CNN, not a Sequential; ``aux`` computes something the output never uses."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.aux = nn.Conv2d(6, 2, 1)
        self.unused = nn.Linear(3, 3)
        self.head = nn.Linear(8, 4)
        self.aux_out: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        self.aux_out = self.aux(h)  # not on the path to the output
        return self.head(self.block(h).mean(dim=(2, 3)))

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def suffix(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(h).mean(dim=(2, 3)))


def make(seed: int = 0) -> tuple[Net, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return Net(), torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,))


def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_perturbation_increases_the_loss_at_the_split() -> None:
    model, x, y = make()
    afan = AFAN(model, "stem", steps=4, step_size=0.05)
    loss, pieces = afan.loss(x, y, F.cross_entropy)
    ascent = pieces.attack_losses
    assert ascent is not None and len(ascent) == 4
    assert torch.all(ascent[1:] > ascent[:-1]), ascent  # every sign step went up
    assert float(ascent[0]) == pytest.approx(float(pieces.clean_loss.detach()), rel=1e-5)  # δ₀ = 0: the clean loss
    assert float(pieces.adversarial_loss.detach()) > float(ascent[-1])  # and the last step too
    assert float(pieces.perturbation) == pytest.approx(4 * 0.05, rel=0.3)
    # the random-sign control of the same size raises the loss much less
    torch.manual_seed(1)
    _, rand = AFAN(model, "stem", steps=4, step_size=0.05, direction="random").loss(x, y, F.cross_entropy)
    assert float(rand.perturbation) == pytest.approx(0.2)
    assert float(rand.adversarial_loss.detach()) - float(rand.clean_loss.detach()) < 0.5 * (
        float(pieces.adversarial_loss.detach()) - float(pieces.clean_loss.detach())
    )
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith(("stem", "block", "head")))


def test_released_recipe_matches_an_explicit_split() -> None:
    """normalize=None, one strength, w = 0.5 is (ℓ(f(x)) + ℓ(g(h + δ))) / 2 with δ by sign ascent on g."""
    model, x, y = make()
    reference = copy.deepcopy(model)
    loss, _ = AFAN(model, "stem", steps=3, step_size=0.02, bn="update").loss(x, y, F.cross_entropy)
    h = reference.prefix(x)
    clean = F.cross_entropy(reference.suffix(h), y)
    h0 = h.detach()
    delta = torch.zeros_like(h0)
    for _ in range(3):
        delta.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(reference.suffix(h0 + delta), y), delta)
        delta = delta.detach() + 0.02 * g.sign()
    expected = 0.5 * clean + 0.5 * F.cross_entropy(reference.suffix(h0 + delta), y)
    torch.testing.assert_close(loss, expected)
    # gradients: clean term through everything, adversarial term only after the split
    loss.backward()
    expected.backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        if p.grad is not None or q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, msg=name)


@pytest.mark.parametrize("options", [{"steps": 0}, {"adv_weight": 0.0}, {"steps": 0, "normalize": "batch"}])
def test_special_cases_are_exactly_the_plain_loss(options: dict) -> None:
    model, x, y = make()
    plain = copy.deepcopy(model)
    loss, pieces = AFAN(model, "block", step_size=0.1, **options).loss(x, y, F.cross_entropy)
    expected = F.cross_entropy(plain(x), y)
    assert torch.equal(loss, expected) and pieces.adversarial_loss is None
    loss.backward()
    expected.backward()
    for p, q in zip(model.parameters(), plain.parameters()):
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad)
    assert same(buffers(model), buffers(plain))


def test_hooks_removed_after_each_call_and_on_error() -> None:
    model, x, y = make()
    before = hooks(model)
    afan = AFAN(model, "stem", steps=2, step_size=0.1, normalize="position")
    for _ in range(2):
        afan.loss(x, y, F.cross_entropy)
        assert hooks(model) == before

    calls = {"n": 0}

    def failing(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:  # inside the attack, while the swap hook is on
            raise RuntimeError("boom")
        return F.cross_entropy(out, target)

    with pytest.raises(RuntimeError, match="boom"):
        afan.loss(x, y, failing)
    assert hooks(model) == before
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("direction", ["adversarial", "random"])
def test_bn_freeze_leaves_running_stats_as_plain_training(direction: str) -> None:
    model, x, y = make()
    plain = copy.deepcopy(model)
    AFAN(model, "stem", steps=3, step_size=0.1, strengths=(0.5, 1.0), direction=direction).loss(x, y, F.cross_entropy)
    plain(x)  # one clean training-mode pass
    assert same(buffers(model), buffers(plain))


def test_bn_update_reproduces_the_released_extra_updates() -> None:
    model, x, y = make()
    plain = copy.deepcopy(model)
    AFAN(model, "stem", steps=3, step_size=0.1, strengths=(0.5, 1.0), bn="update").loss(x, y, F.cross_entropy)
    plain(x)
    assert int(model.block[1].num_batches_tracked) == 1 + 3 + 2  # clean + attack + one per strength
    assert not torch.equal(model.block[1].running_var, plain.block[1].running_var)


def test_eval_mode_uses_running_stats_in_every_pass() -> None:
    model, x, y = make()
    model.eval()
    before = buffers(model)
    loss, pieces = AFAN(model, "stem", steps=2, step_size=0.1).loss(x, y, F.cross_entropy)
    assert same(before, buffers(model))
    torch.testing.assert_close(pieces.clean_loss, F.cross_entropy(model(x), y))


def test_normalizations_swap_the_moments() -> None:
    torch.manual_seed(0)
    clean, adv = torch.randn(4, 5, 3, 3), 2.0 * torch.randn(4, 5, 3, 3) + 1.0
    out = moment_swap(clean, adv, (1,))
    torch.testing.assert_close(out.mean(dim=1), adv.mean(dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.var(dim=1), adv.var(dim=1), atol=1e-3, rtol=1e-3)
    out = moment_swap(clean, adv, (0, 2, 3))
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), adv.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-5)
    model, x, y = make()
    for mode in ("position", "batch"):
        loss, pieces = AFAN(model, "stem", steps=2, step_size=0.1, normalize=mode).loss(x, y, F.cross_entropy)
        assert torch.isfinite(loss) and pieces.adversarial_loss is not None


def test_eps_bound_and_random_start() -> None:
    model, x, y = make()
    torch.manual_seed(3)
    _, pieces = AFAN(model, "stem", steps=5, step_size=0.1, eps=0.15, random_start=True).loss(x, y, F.cross_entropy)
    assert float(pieces.perturbation) <= 0.15 + 1e-6
    assert float(pieces.attack_losses[0]) != pytest.approx(float(pieces.clean_loss.detach()), rel=1e-7)


def test_autocast_cpu_bfloat16() -> None:
    model, x, y = make()
    before = hooks(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, pieces = AFAN(model, "stem", steps=2, step_size=0.1, normalize="position").loss(x, y, F.cross_entropy)
    loss.backward()
    assert torch.isfinite(loss) and hooks(model) == before
    assert pieces.attack_losses[1] > pieces.attack_losses[0]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.head.parameters())


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="no gloo")
def test_ddp_single_process_gloo(tmp_path) -> None:
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    torch.manual_seed(0)
    model = nn.Sequential(  # every parameter used: DDP's default find_unused_parameters=False holds
        nn.Conv2d(1, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,))
    reference = copy.deepcopy(model)
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        for _ in range(2):  # two steps: the reducer must be ready again after the first
            loss, _ = AFAN(ddp, "2", steps=2, step_size=0.05).loss(x, y, F.cross_entropy)  # = "module.2"
            ref, _ = AFAN(reference, "2", steps=2, step_size=0.05).loss(x, y, F.cross_entropy)
            ddp.zero_grad()
            reference.zero_grad()
            loss.backward()
            ref.backward()
            torch.testing.assert_close(loss, ref)
            for p, q in zip(model.parameters(), reference.parameters()):
                if q.grad is not None:
                    torch.testing.assert_close(p.grad, q.grad)
        # DDP's reducer holds the process group: release it first, so that the group's gloo threads are joined
        # while the group is alive (freed after destroy_process_group, the join hung a test run once)
        del ddp, loss, ref
        gc.collect()
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------- errors
def test_unknown_layer_lists_the_names() -> None:
    model, _, _ = make()
    with pytest.raises(ValueError, match=r"unknown module 'stemm'.*'stem', 'stem\.0'"):
        AFAN(model, "stemm")
    with pytest.raises(ValueError, match="whole model"):
        AFAN(model, "")
    with pytest.raises(TypeError, match="layer"):
        AFAN(model, model.stem)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "culprit"),
    [
        ({"steps": -1}, "steps"),
        ({"steps": 1.5}, "steps"),
        ({"step_size": 0.0}, "step_size"),
        ({"step_size": -0.1}, "step_size"),
        ({"step_size": float("nan")}, "step_size"),
        ({"eps": 0.0}, "eps"),
        ({"strengths": ()}, "strengths"),
        ({"strengths": (0.5, 1.5)}, "strengths"),
        ({"strengths": (0.0,)}, "strengths"),
        ({"normalize": "layer"}, "normalize"),
        ({"adv_weight": 1.5}, "adv_weight"),
        ({"bn": "keep"}, "bn"),
        ({"direction": "gaussian"}, "direction"),
    ],
)
def test_bad_options_name_the_culprit(options: dict, culprit: str) -> None:
    model, _, _ = make()
    with pytest.raises(ValueError, match=culprit):
        AFAN(model, "stem", **options)


@pytest.mark.parametrize("direction", ["adversarial", "random"])
@pytest.mark.parametrize(
    ("layer", "message"), [("unused", "did not run"), ("aux", "not on the path"), ("stem.1", None)]
)
def test_a_split_off_the_path_is_refused_and_the_model_untouched(
    layer: str, message: str | None, direction: str
) -> None:
    model, x, y = make()
    before, hooked = buffers(model), hooks(model)
    afan = AFAN(model, layer, steps=2, step_size=0.1, direction=direction)
    if message is None:  # a module on the path is accepted
        afan.loss(x, y, F.cross_entropy)
        return
    with pytest.raises(ValueError, match=message):
        afan.loss(x, y, F.cross_entropy)
    assert same(before, buffers(model)) and hooks(model) == hooked


def test_a_module_called_twice_is_refused() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 4)
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(self.bn(self.layer(x)))

    model = Twice()
    before = buffers(model)
    with pytest.raises(ValueError, match="ran 2 times"):
        AFAN(model, "layer", steps=1, step_size=0.1).loss(torch.randn(8, 4), torch.randint(0, 4, (8,)), F.cross_entropy)
    assert same(before, buffers(model))


# ---------------------------------------------------------------------- harness: method "afan"
TINY = {"dataset": "digits", "model": "resnet", "train_limit": 96, "test_limit": 48, "width": 4, "epochs": 1}


def test_harness_afan_runs_and_reports_its_cost() -> None:
    from lawn.harness.config import RunConfig
    from lawn.harness.train import train

    plain = train(RunConfig.from_dict({**TINY, "eval_noise_std": 0.5}))
    afan = train(RunConfig.from_dict({**TINY, "method": "afan", "afan_steps": 2, "afan_step_size": 0.05}))
    assert plain["cost"] == {"passes_per_step": 1} and afan["cost"] == {"passes_per_step": 4}  # T + 2
    assert afan["timing"]["step_seconds"] > 0 and "noisy_test_metric" not in afan
    assert 0.0 <= plain["noisy_test_metric"] <= 1.0
    assert afan["history"][-1]["test_loss"] != plain["history"][-1]["test_loss"]
    off = train(RunConfig.from_dict({**TINY, "method": "afan", "afan_steps": 0}))  # A-FAN off: plain training
    assert off["history"] == plain["history"] and off["cost"] == {"passes_per_step": 1}


def test_harness_afan_fields_keep_earlier_keys_and_are_checked() -> None:
    from lawn.harness.checked import run_config
    from lawn.harness.config import LATE_FIELDS, RunConfig

    assert run_config({"dataset": "digits", "lr": 0.01}).key() == "4d62fa55b0335e2504a3"  # the key before A-FAN
    assert {f for f in LATE_FIELDS if f.startswith("afan_")} >= {"afan_layer", "afan_steps", "afan_direction"}
    for fields, culprit in [
        ({"afan_normalize": "layer"}, "afan_normalize"),
        ({"afan_steps": -1}, "afan_steps"),
        ({"afan_step_size": 0.0}, "afan_step_size"),
        ({"afan_strengths": [0.5, 2.0]}, "afan_strengths"),
        ({"afan_bn": "keep"}, "afan_bn"),
        ({"eval_noise_std": -1.0}, "eval_noise_std"),
    ]:
        with pytest.raises(ValueError, match=culprit):
            run_config({**TINY, "method": "afan", **fields})
    from lawn.harness.train import train

    with pytest.raises(ValueError, match=r"unknown module 'stages\.9'.*stages\.0"):
        train(RunConfig.from_dict({**TINY, "method": "afan", "afan_layer": "stages.9"}))


# ---------------------------------------------------------------------- BatchNorm before the split, no_grad, tokens
def test_bn_update_updates_the_layers_before_the_split_once() -> None:
    model, x, y = make()
    plain = copy.deepcopy(model)
    AFAN(model, "stem", steps=3, step_size=0.1, strengths=(0.5, 1.0), bn="update").loss(x, y, F.cross_entropy)
    plain(x)  # one clean training-mode pass
    assert int(model.stem[1].num_batches_tracked) == 1  # h is computed once, as in the released code
    torch.testing.assert_close(model.stem[1].running_mean, plain.stem[1].running_mean, rtol=0, atol=0)
    torch.testing.assert_close(model.stem[1].running_var, plain.stem[1].running_var, rtol=0, atol=0)
    assert int(model.block[1].num_batches_tracked) == 1 + 3 + 2  # after the split: every pass


def test_loss_under_no_grad_attacks_and_comes_back_without_a_graph() -> None:
    model, x, y = make()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        loss, pieces = AFAN(model, "stem", steps=3, step_size=0.05).loss(x, y, F.cross_entropy)
    assert not loss.requires_grad
    assert torch.all(pieces.attack_losses[1:] > pieces.attack_losses[:-1])  # the attack still ascended
    expected, _ = AFAN(reference, "stem", steps=3, step_size=0.05).loss(x, y, F.cross_entropy)
    torch.testing.assert_close(loss, expected.detach())
    assert torch.is_grad_enabled()


class TokenNet(nn.Module):
    """Token features (B, T, H): embedding → linear (the split) → masked mean → head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.mix = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)
        self.masks_seen = 0

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.tanh(self.mix(self.embed(tokens)))
        if attention_mask is not None:
            self.masks_seen += 1
            h = h * attention_mask[..., None]
        return self.head(h.mean(dim=1))


def test_keyword_inputs_reach_the_model_in_every_pass() -> None:
    torch.manual_seed(0)
    model = TokenNet()
    tokens, y = torch.randint(0, 11, (4, 5)), torch.randint(0, 3, (4,))
    mask = torch.ones(4, 5)
    mask[:, 3:] = 0
    loss, _ = AFAN(model, "mix", steps=2, step_size=0.1, strengths=(0.5, 1.0)).loss(
        tokens, y, F.cross_entropy, attention_mask=mask
    )
    assert model.masks_seen == 1 + 2 + 2  # clean, attack steps, one per strength
    loss.backward()


def test_position_normalization_takes_the_hidden_dim_of_token_features() -> None:
    torch.manual_seed(0)
    model = TokenNet()
    tokens, y = torch.randint(0, 11, (4, 5)), torch.randint(0, 3, (4,))
    inferred = AFAN(model, "mix", steps=2, step_size=0.1, normalize="position")
    assert inferred.channel_dim == -1  # a Linear makes (B, T, H): channels last
    assert AFAN(make()[0], "stem", normalize="position").channel_dim == 1  # a conv block: (B, C, H, W)
    explicit_last = AFAN(model, "mix", steps=2, step_size=0.1, normalize="position", channel_dim=2)
    tokens_dim = AFAN(model, "mix", steps=2, step_size=0.1, normalize="position", channel_dim=1)
    a, _ = inferred.loss(tokens, y, F.cross_entropy)
    b, _ = explicit_last.loss(tokens, y, F.cross_entropy)
    c, _ = tokens_dim.loss(tokens, y, F.cross_entropy)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    with pytest.raises(ValueError, match="channel_dim"):
        AFAN(model, "mix", normalize="position", channel_dim=0)
