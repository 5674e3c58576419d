"""Leaf: which weights format a file holds, from its bytes and structure, never its name.

A renamed download or a ``.bin`` checkpoint is still read correctly, and a file whose suffix
lies is not misread.
"""

from __future__ import annotations

import os
import struct
import zipfile
from typing import Literal

Format = Literal["hdf5", "safetensors", "torch", "keras3", "zip"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: What a Keras 3 ``model.save("x.keras")`` zip holds (``saving_lib``'s file names).
KERAS3_CONFIG = "config.json"
KERAS3_WEIGHTS = "model.weights.h5"


def is_hdf5(path: str | os.PathLike[str]) -> bool:
    """True when the file starts with the HDF5 signature (at 0 or a power-of-two userblock)."""
    try:
        with open(path, "rb") as f:
            offset = 0
            while True:
                f.seek(offset)
                head = f.read(8)
                if head == HDF5_SIGNATURE:
                    return True
                if len(head) < 8 or offset >= 1 << 20:
                    return False
                offset = 512 if offset == 0 else offset * 2
    except OSError:
        return False


def _zip_kind(path: str | os.PathLike[str]) -> Format:
    """``keras3`` or ``torch`` for a readable zip of that kind, else ``zip`` (unknown/damaged)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return "zip"
    if {KERAS3_CONFIG, KERAS3_WEIGHTS} <= names:
        return "keras3"
    if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return "torch"
    return "zip"


def sniff_format(path: str | os.PathLike[str]) -> Format | None:
    """The file's weights format, or None when it is none of those this tool reads."""
    if is_hdf5(path):
        return "hdf5"
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return None
    if head[:4] == b"PK\x03\x04":
        return _zip_kind(path)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # legacy torch.save pickle
        return "torch"
    if len(head) == 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    return None
