"""PyTorch Lightning: a LightningModule returning LAWN (with an LR scheduler) from ``configure_optimizers``
trains with gradient clipping exactly like the plain loop, checkpoints, and resumes bit for bit."""

import pytest
import torch

lightning = pytest.importorskip("lightning")

import lawn  # noqa: E402
from distributed_workers import TinyNet  # noqa: E402

EPOCHS, BATCH, SAMPLES, CLIP = 2, 8, 48, 0.5  # 6 steps per epoch


def dataset() -> torch.utils.data.TensorDataset:
    gen = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(
        torch.randn(SAMPLES, 6, generator=gen), torch.randint(0, 5, (SAMPLES,), generator=gen)
    )


class LitTiny(lightning.LightningModule):
    def __init__(self, free_steps: int) -> None:
        super().__init__()
        self.free_steps = free_steps
        torch.manual_seed(0)
        self.net = TinyNet()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        base = torch.optim.Adam(self.parameters(), lr=0.05)
        opt = lawn.LAWN(base, self.net.tail(), free_steps=self.free_steps)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def train_dataloader(self):
        return torch.utils.data.DataLoader(dataset(), batch_size=BATCH, shuffle=False)


def trainer(root, epochs: int) -> "lightning.Trainer":
    return lightning.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        gradient_clip_val=CLIP,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def plain_loop(free_steps: int) -> TinyNet:
    """What Lightning should do: forward, backward, clip, LAWN step, scheduler step."""
    module = LitTiny(free_steps)
    opt = module.configure_optimizers()
    lawn_opt, scheduler = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    for _ in range(EPOCHS):
        for x, y in module.train_dataloader():
            lawn_opt.zero_grad()
            torch.nn.functional.cross_entropy(module.net(x), y).backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), CLIP)
            lawn_opt.step()
            scheduler.step()
    return module.net


def lawn_of(trainer_: "lightning.Trainer") -> lawn.LAWN:
    opt = trainer_.optimizers[0]
    assert isinstance(opt, lawn.LAWN)
    return opt


@pytest.mark.parametrize("free_steps", [4, 9], ids=["resume_after_switch", "resume_before_switch"])
def test_lightning_trains_checkpoints_and_resumes_like_the_plain_loop(tmp_path, free_steps):
    module = LitTiny(free_steps)
    x, y = next(iter(module.train_dataloader()))
    module.training_step((x, y), 0).backward()
    assert torch.nn.utils.get_total_norm([p.grad for p in module.parameters()]) > CLIP, "clipping would be idle"

    straight = LitTiny(free_steps)
    trainer(tmp_path / "straight", EPOCHS).fit(straight)
    reference = plain_loop(free_steps)
    for (name, p), q in zip(straight.net.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)

    first = LitTiny(free_steps)
    first_trainer = trainer(tmp_path / "first", 1)
    first_trainer.fit(first)
    assert lawn_of(first_trainer).phase == ("constrained" if free_steps <= 6 else "free")
    checkpoint = tmp_path / "epoch1.ckpt"
    first_trainer.save_checkpoint(checkpoint)

    resumed = LitTiny(free_steps)
    torch.manual_seed(123)
    resumed.net = TinyNet()  # different weights: the checkpoint must bring them back
    resumed_trainer = trainer(tmp_path / "resumed", EPOCHS)
    resumed_trainer.fit(resumed, ckpt_path=checkpoint)
    opt = lawn_of(resumed_trainer)
    assert (opt.steps, opt.phase) == (EPOCHS * SAMPLES // BATCH, "constrained")
    for (name, p), q in zip(resumed.net.named_parameters(), straight.net.parameters()):
        assert torch.equal(p, q), name
    for name, p in resumed.net.tail():
        torch.testing.assert_close(p.detach().norm(), opt.target_norms[name], rtol=1e-5, atol=0)
