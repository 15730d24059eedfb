"""segssl: semi-supervised semantic segmentation with segmentation_models_pytorch."""
import os as _os

_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would check PyPI at import

__version__ = "0.1.0"
