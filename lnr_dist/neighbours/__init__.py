"""Nearest-neighbour classification on embeddings, pure (no I/O, no Ray, nothing of the project): exact search
with one tie rule whatever the library (search.py), the space it runs in (embed.py: z-scores, PCA / LDA /
filtered LDA, unit rows) and the kNN / ANN / WANN votes with WANN's reliability k* (vote.py)."""

from .embed import PROJECTIONS, fit_projection, projection_dim, unit_rows, zscore
from .search import BACKENDS, Neighbours, nearest, resolve_backend
from .vote import (
    SHARE_FLOOR,
    Vote,
    check_k_range,
    exclude_self,
    reliability,
    reliability_neighbours,
    vote,
    vote_logits,
)

__all__ = [
    "BACKENDS",
    "PROJECTIONS",
    "SHARE_FLOOR",
    "Neighbours",
    "Vote",
    "check_k_range",
    "exclude_self",
    "fit_projection",
    "nearest",
    "projection_dim",
    "reliability",
    "reliability_neighbours",
    "resolve_backend",
    "unit_rows",
    "vote",
    "vote_logits",
    "zscore",
]
