"""Sizes as run configurations spell them (``2GiB``, ``512MiB``, ``1.5GB``, ``1e9``).

The CLI reads them from options and config files, and the simulator from the
configuration a run's metadata records, so both parse them here.
"""

from __future__ import annotations

import math

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str) -> int:
    """Bytes of ``text``; ``ValueError`` (naming what is expected) unless a positive size."""
    spelled = text.strip().upper().replace(" ", "")
    number = spelled.rstrip("KMGTIB")
    unit = spelled[len(number) :]
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise ValueError(f"expected a size such as 2GiB, 512MiB or 1e9, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"expected a positive, finite size, got {text!r}")
    return int(value)
