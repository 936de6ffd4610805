"""Where rsscgeo keeps what it can rebuild: ONNX exports, decoded image caches."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """``$RSSCGEO_CACHE_DIR/<kind>``, or ``<kind>`` in the user's cache folder."""
    configured = os.environ.get("RSSCGEO_CACHE_DIR")
    if configured:
        return Path(configured) / kind
    import platformdirs

    return Path(platformdirs.user_cache_dir("rsscgeo")) / kind
