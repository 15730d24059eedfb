"""The method contract: a method is its loss math.

``training_step(labeled, unlabeled, ctx)`` returns a dict of named values: ``loss`` (the total
the trainer back-propagates), each loss term under ``loss/<term>``, and any diagnostics a
researcher looks at first (``mask_ratio``, ``pl_acc``, ...). The trainer owns optimizers,
AMP, gradient averaging across processes, clipping, checkpoints and logging.

A method that needs several optimizers (a GAN discriminator) sets ``manual_optimization`` and
calls ``ctx.backward(loss)`` / ``ctx.optimizer_step(name)`` itself, as Lightning's manual optimization
does; it never grows its own loop.

Batches are dicts of tensors: ``image`` (the weak view: geometry only), ``mask``, ``valid``,
``has_mask``, ``id`` and one entry per extra view the method declares in ``unlabeled_views``
(e.g. ``strong``). On unlabeled batches ``valid`` marks padding only, and ``mask`` /
``mask_valid`` hold ground truth only where the data has it (benchmark mode, ``has_mask``):
methods may use them for diagnostics (``hidden_ground_truth``), never in a loss.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Optional

import torch
from torch import nn

from ..registry import Registry

Batch = dict[str, Any]
StepOutput = dict[str, Any]

METHODS: Registry[type["Method"]] = Registry("method")


@dataclass
class OptimizerSpec:
    """Parameters of one optimizer; ``None`` fields take the values of ``train.optim``."""

    params: Iterable[nn.Parameter]
    name: Optional[str] = None  # adamw | sgd | adam
    lr: Optional[float] = None
    betas: Optional[tuple[float, float]] = None
    weight_decay: Optional[float] = None
    schedule: bool = True  # follow the main learning-rate schedule


@dataclass
class StepContext:
    """What a method may know and do during one training step."""

    step: int  # optimizer steps completed before this one
    max_steps: int
    device: torch.device
    num_classes: int
    autocast: Callable[[], AbstractContextManager]
    backward: Callable[[torch.Tensor], None]  # manual optimization only
    optimizer_step: Callable[[str], None]  # manual optimization only: clip, sync, step, zero_grad
    run_dir: Optional[Path] = None  # where a method may save artefacts (e.g. pseudo-label masks)
    is_main: bool = True  # rank 0: the process that writes files
    #: one pass over this rank's shard of the unlabeled pool, un-augmented (resized, normalised;
    #: batches padded to the network stride with valid=False), for offline pseudo-labelling
    unlabeled_pool: Optional[Callable[[], Iterator[Batch]]] = None
    extras: dict[str, Any] = field(default_factory=dict)


def hidden_ground_truth(batch: Batch) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(mask, mask validity) of an unlabeled batch where ground truth is known, for diagnostics
    such as pseudo-label accuracy; (None, None) when no item has a mask."""
    has = batch.get("has_mask")
    if has is None or not bool(torch.as_tensor(has).any()):
        return None, None
    valid = batch.get("mask_valid", batch["valid"])
    return batch["mask"], valid & torch.as_tensor(has, device=valid.device).bool().view(-1, 1, 1)


@dataclass
class NoParams:
    """Methods without hyper-parameters."""


class Method(nn.Module):
    """Base class. Subclasses set ``Params`` (a dataclass validated from ``method.params``)."""

    Params: ClassVar[type] = NoParams
    #: extra views of unlabeled images; empty means the method uses no unlabeled data
    unlabeled_views: ClassVar[tuple[str, ...]] = ()
    uses_unlabeled: ClassVar[bool] = False
    manual_optimization: ClassVar[bool] = False

    def __init__(self, build_model: Callable[[], nn.Module], num_classes: int, params: Any) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.params = params
        self.model = build_model()

    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        """Named optimizers; the first is the main one (its loss is ``loss`` in automatic mode)."""
        return {"main": OptimizerSpec(self.model.parameters())}

    def training_step(self, labeled: Batch, unlabeled: Optional[Batch], ctx: StepContext) -> StepOutput:
        raise NotImplementedError

    def on_after_step(self, ctx: StepContext) -> None:
        """Called after the optimizer step (EMA teachers update here)."""

    def eval_model(self) -> nn.Module:
        """The network evaluated, selected as ``best`` and used for inference."""
        return self.model

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - not used
        raise RuntimeError("call training_step(); a Method is not a network")
