"""Reproductions: each paper's headline claim, re-measured over seeds (scripts/reproduce.py).

One module per paper; :mod:`reproductions.common` says what an entry defines. ``ENTRIES`` lists
them in the order RESULTS.md shows them.
"""

from __future__ import annotations

import importlib

NAMES = ("dsfl", "fd", "feddf", "fccl", "motley", "incfl", "shaping")


def entry(name: str):
    """The entry module ``reproductions.NAME``."""
    return importlib.import_module(f"reproductions.{name}")
