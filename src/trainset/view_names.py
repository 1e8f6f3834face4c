"""The views of a picture that are hashed, by name: what the near-duplicate rule indexes.

Apart from :mod:`trainset.views` (which computes them, with numba) so that the rule can be
read from params.yaml, as the Snakefile does when it is parsed, without compiled code."""

from __future__ import annotations

BOXES = {
    "c90": (0.05, 0.05, 0.95, 0.95), "c80": (0.1, 0.1, 0.9, 0.9),
    "tl": (0.0, 0.0, 0.9, 0.9), "tr": (0.1, 0.0, 1.0, 0.9), "bl": (0.0, 0.1, 0.9, 1.0), "br": (0.1, 0.1, 1.0, 1.0),
    "l": (0.1, 0.0, 1.0, 1.0), "r": (0.0, 0.0, 0.9, 1.0), "t": (0.0, 0.1, 1.0, 1.0), "b": (0.0, 0.0, 1.0, 0.9),
    "lr": (0.08, 0.0, 0.92, 1.0), "tb": (0.0, 0.08, 1.0, 0.92),
}
"""Sub-boxes (left, top, right, bottom as fractions) of the whole and of the trimmed picture."""

QUERY_VIEWS = ("plain", "trim")
SEARCH_VIEWS = QUERY_VIEWS + tuple(BOXES) + tuple(f"trim_{name}" for name in BOXES)
MIRROR_VIEWS = tuple(f"{v}_mirror" for v in QUERY_VIEWS)
VIEW_NAMES = SEARCH_VIEWS + MIRROR_VIEWS
