"""The user's folders for napari-wbc: data (results, trained models) and cache (the sample slide).

``$NAPARI_WBC_HOME`` holds both when set; otherwise the XDG folders (``~/.local/share``
and ``~/.cache`` when unset), as for the user's trained models.
"""

from __future__ import annotations

import os
from pathlib import Path


def user_data_dir() -> Path:
    home = os.environ.get("NAPARI_WBC_HOME")
    if home:
        return Path(home)
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "napari-wbc"


def user_cache_dir() -> Path:
    home = os.environ.get("NAPARI_WBC_HOME")
    if home:
        return Path(home) / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "napari-wbc"
