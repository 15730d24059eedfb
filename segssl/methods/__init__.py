"""Training methods; importing this package registers the built-in ones."""
from . import supervised  # noqa: F401  (registration side effects)
from .base import METHODS, Batch, Method, OptimizerSpec, StepContext, StepOutput

__all__ = ["METHODS", "Batch", "Method", "OptimizerSpec", "StepContext", "StepOutput"]
