"""``accelerate``: ``Accelerator.prepare`` takes LAWN and its scheduler; ``save_state`` / ``load_state`` resume the
run bit for bit, before or after the switch."""

import pytest
import torch

accelerate = pytest.importorskip("accelerate")

import lawn  # noqa: E402
from distributed_workers import TinyNet  # noqa: E402

EPOCHS, BATCH, SAMPLES, CLIP = 2, 8, 48, 0.5  # 6 steps per epoch


def prepared(seed: int, free_steps: int):
    """A fresh Accelerator with a model, LAWN, a scheduler and a loader prepared by it."""
    accelerator = accelerate.Accelerator(cpu=True)
    torch.manual_seed(seed)
    model = TinyNet()
    opt = lawn.LAWN(torch.optim.Adam(model.parameters(), lr=0.05), model.tail(), free_steps=free_steps)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(SAMPLES, 6, generator=gen), torch.randint(0, 5, (SAMPLES,), generator=gen)
    )
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH)
    return accelerator, *accelerator.prepare(model, opt, scheduler, loader)


def train_epoch(accelerator, model, opt, scheduler, loader) -> None:
    for x, y in loader:
        opt.zero_grad()
        accelerator.backward(torch.nn.functional.cross_entropy(model(x), y))
        accelerator.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        scheduler.step()


@pytest.mark.parametrize("free_steps", [4, 9], ids=["resume_after_switch", "resume_before_switch"])
def test_accelerate_prepare_save_state_and_load_state_resume_exactly(tmp_path, free_steps):
    accelerator, model, opt, scheduler, loader = prepared(0, free_steps)
    assert isinstance(opt.optimizer, lawn.LAWN)
    train_epoch(accelerator, model, opt, scheduler, loader)
    accelerator.save_state(tmp_path / "epoch1")
    train_epoch(accelerator, model, opt, scheduler, loader)
    assert (opt.optimizer.steps, opt.optimizer.phase) == (EPOCHS * SAMPLES // BATCH, "constrained")

    accelerator2, model2, opt2, scheduler2, loader2 = prepared(123, free_steps)
    accelerator2.load_state(tmp_path / "epoch1")
    assert opt2.optimizer.steps == SAMPLES // BATCH
    assert opt2.optimizer.phase == ("constrained" if free_steps <= SAMPLES // BATCH else "free")
    train_epoch(accelerator2, model2, opt2, scheduler2, loader2)
    assert (opt2.optimizer.steps, opt2.optimizer.phase) == (opt.optimizer.steps, opt.optimizer.phase)
    for (name, p), q in zip(model2.named_parameters(), model.parameters()):
        assert torch.equal(p, q), name
    for name, target in opt.optimizer.target_norms.items():
        assert torch.equal(opt2.optimizer.target_norms[name], target)
