"""Training methods; importing this package registers the built-in ones."""
from . import adversarial, cps, self_training, supervised  # noqa: F401  (registration side effects)
from .base import METHODS, Batch, Method, OptimizerSpec, StepContext, StepOutput, hidden_ground_truth

__all__ = ["METHODS", "Batch", "Method", "OptimizerSpec", "StepContext", "StepOutput", "hidden_ground_truth"]
