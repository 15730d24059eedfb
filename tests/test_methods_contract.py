"""One contract for every registered method (as timm parametrizes over list_models()):
one CPU step on synthetic data with finite losses, gradients reaching every trainable
network, and a checkpoint round trip that restores the method's whole state."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from segssl.config import load_config
from segssl.engine.trainer import Trainer
from segssl.methods import METHODS

from .helpers import tiny_config


def _trainer(tmp_path: Path, name: str, resume: bool = False) -> Trainer:
    cfg = load_config(tiny_config(tmp_path, **{"method.name": name, "train.max_steps": 2}))
    return Trainer(cfg, tmp_path / "run", resume=resume)


def _batches(trainer: Trainer) -> tuple[dict, dict | None]:
    d = trainer.cfg.data
    labeled = trainer._to_device(next(trainer._stream(trainer.splits.labeled, (), d.batch_size, 0)))
    unlabeled = None
    if trainer.method.uses_unlabeled:
        stream = trainer._stream(trainer.splits.unlabeled, trainer.method.unlabeled_views, d.batch_size, 1)
        unlabeled = trainer._to_device(next(stream))
    return labeled, unlabeled


@pytest.mark.parametrize("name", METHODS.names())
def test_method_contract(name: str, tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, name)
    method = trainer.method
    networks = {n: m for n, m in method.named_children() if any(p.requires_grad for p in m.parameters())}
    assert networks, "a method must own at least one trainable network"
    before = {n: p.detach().clone() for n, p in method.named_parameters() if p.requires_grad}
    labeled, unlabeled = _batches(trainer)
    out = trainer.train_step(labeled, unlabeled)

    losses = {k: v for k, v in out.items() if k == "loss" or k.startswith("loss/")}
    assert "loss" in losses
    assert all(math.isfinite(float(v)) for v in losses.values()), losses
    for net_name, net in networks.items():
        params = [(n, p) for n, p in method.named_parameters() if n.startswith(net_name + ".") and p.requires_grad]
        moved = sum(not torch.equal(before[n], p.detach()) for n, p in params)
        assert moved >= 0.5 * len(params), f"{name}: only {moved}/{len(params)} parameters of '{net_name}' were updated"

    trainer.save("last")
    restored = _trainer(tmp_path, name, resume=True)
    assert restored.step == 1
    for key, value in method.state_dict().items():
        other = restored.method.state_dict()[key]
        assert torch.equal(value.cpu(), other.cpu()) if torch.is_tensor(value) else value == other, key
    for opt_name, optimizer in trainer.optimizers.items():
        saved = optimizer.state_dict()["state"]
        loaded = restored.optimizers[opt_name].state_dict()["state"]
        assert saved.keys() == loaded.keys()
    # the evaluated network is a plain segmentation model that inference can rebuild
    x = torch.zeros(1, 3, 32, 32)
    assert restored.method.eval_model().eval()(x).shape == (1, 4, 32, 32)


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_reaches_every_network_and_matches_nchw(channels_last: bool, tmp_path: Path) -> None:
    """``train.channels_last`` converts every 4-D weight (model, teacher, discriminator) and
    changes only the layout: the same step from the same seed gives the same loss."""
    def first_loss(flag: bool, folder: str) -> tuple[Trainer, float]:
        (tmp_path / folder).mkdir()
        cfg = load_config(tiny_config(tmp_path / folder, **{"method.name": "adversarial", "train.channels_last": flag}))
        trainer = Trainer(cfg, tmp_path / folder / "run")
        return trainer, float(trainer.train_step(*_batches(trainer))["loss"])

    trainer, loss = first_loss(channels_last, "a")
    weights = {n: p for n, p in trainer.method.named_parameters() if p.dim() == 4 and p.shape[-1] > 1 and p.shape[1] > 1}
    assert any(n.startswith("discriminator.") for n in weights) and any(n.startswith("model.") for n in weights)
    for name, weight in weights.items():
        assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last, name
    _, reference = first_loss(not channels_last, "b")
    assert loss == pytest.approx(reference, rel=1e-4)
