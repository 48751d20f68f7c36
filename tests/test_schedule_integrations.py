"""lawn.LAWNSchedule where frameworks take a scheduler: the HF Trainer (``optimizers=(opt, scheduler)``) trains
with it exactly like the plain loop, re-warm-up at LAWN's switch included."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lawn  # noqa: E402
import test_integrations_hf as hf  # noqa: E402


def model_and_optimizers(seed: int = 0):
    torch.manual_seed(seed)
    model = hf.TinyClassifier()
    opt = lawn.LAWN(torch.optim.Adam(model.parameters(), lr=0.05), model.net.tail(), free_steps=hf.FREE_STEPS)
    total = hf.EPOCHS * hf.SAMPLES // hf.BATCH
    return model, (opt, lawn.LAWNSchedule(opt, total, warmup_steps=2, rewarmup_steps=3))


def test_hf_trainer_runs_the_three_phases_like_the_plain_loop(tmp_path, monkeypatch):
    monkeypatch.setattr(hf, "model_and_optimizers", model_and_optimizers)
    trainer = hf.make_trainer(tmp_path)
    trainer.train()
    opt = trainer.optimizer.optimizer
    assert opt.switch_step == hf.FREE_STEPS
    reference = hf.plain_loop()
    for (name, p), q in zip(trainer.model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)
