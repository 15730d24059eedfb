"""Dataset adapters; importing this package registers the built-in ones."""
from . import demo, driving, folder, medical, remote_sensing  # noqa: F401  (registration side effects)
from .base import ADAPTERS, Adapter, Item, Sample, build_adapter, finalize_mask, palette_to_index

__all__ = ["ADAPTERS", "Adapter", "Item", "Sample", "build_adapter", "finalize_mask", "palette_to_index"]
