"""Hugging Face ``transformers.Trainer`` with ``optimizers=(lawn_opt, scheduler)``: trains like the plain loop
(with its gradient clipping), saves checkpoints, and resumes from one bit for bit."""

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import lawn  # noqa: E402
from distributed_workers import TinyNet  # noqa: E402

EPOCHS, BATCH, SAMPLES, CLIP, FREE_STEPS = 2, 8, 48, 0.5, 4  # 6 steps per epoch, switch in epoch 1


class TinyClassifier(nn.Module):
    """What the Trainer expects of a model: keyword inputs, a dict with the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyNet()

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def examples() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(SAMPLES, 6, generator=gen), torch.randint(0, 5, (SAMPLES,), generator=gen)
    return [{"x": x[i], "labels": y[i]} for i in range(SAMPLES)]


def model_and_optimizers(seed: int = 0):
    torch.manual_seed(seed)
    model = TinyClassifier()
    opt = lawn.LAWN(torch.optim.Adam(model.parameters(), lr=0.05), model.net.tail(), free_steps=FREE_STEPS)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    return model, (opt, scheduler)


def make_trainer(output_dir, seed: int = 0) -> "transformers.Trainer":
    model, optimizers = model_and_optimizers(seed)
    args = transformers.TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=BATCH,
        num_train_epochs=EPOCHS,
        max_grad_norm=CLIP,
        train_sampling_strategy="sequential",
        save_strategy="steps",
        save_steps=SAMPLES // BATCH,  # one checkpoint per epoch
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    return transformers.Trainer(model=model, args=args, train_dataset=examples(), optimizers=optimizers)


def plain_loop() -> TinyClassifier:
    model, (opt, scheduler) = model_and_optimizers()
    loader = torch.utils.data.DataLoader(examples(), batch_size=BATCH)
    for _ in range(EPOCHS):
        for batch in loader:
            opt.zero_grad()
            model(**batch)["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            opt.step()
            scheduler.step()
    return model


def test_hf_trainer_trains_saves_and_resumes_like_the_plain_loop(tmp_path):
    straight = make_trainer(tmp_path)
    straight.train()
    opt = straight.optimizer.optimizer  # the Trainer wraps it in accelerate's AcceleratedOptimizer
    assert isinstance(opt, lawn.LAWN)
    assert (opt.steps, opt.phase) == (EPOCHS * SAMPLES // BATCH, "constrained")
    reference = plain_loop()
    for (name, p), q in zip(straight.model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)

    resumed = make_trainer(tmp_path / "resumed", seed=123)  # other weights: the checkpoint must restore them
    resumed.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{SAMPLES // BATCH}"))
    resumed_opt = resumed.optimizer.optimizer
    assert (resumed_opt.steps, resumed_opt.phase) == (opt.steps, opt.phase)
    for (name, p), q in zip(resumed.model.named_parameters(), straight.model.parameters()):
        assert torch.equal(p, q), name
    for name, target in opt.target_norms.items():
        assert torch.equal(resumed_opt.target_norms[name], target)
