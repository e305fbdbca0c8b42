"""DynamicDet: a unified dynamic architecture for object detection (CVPR 2023), replicated.

Importing the package configures ultralytics for offline use (see :mod:`dynamicdet.offline`).
"""

from . import offline as _offline

_offline.configure()

__version__ = "0.1.0"
