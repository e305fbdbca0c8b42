"""DynamicDet: a unified dynamic architecture for object detection (CVPR 2023), replicated.

Importing the package configures ultralytics for offline use (see :mod:`dynamicdet.offline`).
"""

from dynamicdet import offline as _offline

_offline.configure()

__version__ = "0.1.0"

# the main classes, importable from the top (after the offline configuration above)
from dynamicdet.config import Config, load_config  # noqa: E402
from dynamicdet.deploy.predictor import DynamicDetPredictor  # noqa: E402
from dynamicdet.modeling.two_stage import DynamicTwoStage  # noqa: E402
from dynamicdet.modeling.yolo import DynamicDetector  # noqa: E402

__all__ = ["Config", "DynamicDetPredictor", "DynamicDetector", "DynamicTwoStage", "load_config"]
