"""Training methods; importing this package registers the built-in ones."""
from . import adversarial, cps, fixmatch, mean_teacher, pseudo_label, self_training, supervised, unimatch  # noqa: F401
from .base import METHODS, Batch, Method, OptimizerSpec, StepContext, StepOutput, hidden_ground_truth

__all__ = ["METHODS", "Batch", "Method", "OptimizerSpec", "StepContext", "StepOutput", "hidden_ground_truth"]
