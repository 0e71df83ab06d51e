"""kNN, ANN, WANN and a linear probe on cached features: the `predict` hooks of the registry's knn, ann, wann,
wann_lnr and linear_probe (stage2/registry.py) and their input checks. After Di Salvo et al., "An Embedding is
Worth a Thousand Noisy Labels", TMLR 2025 (reference code github.com/francescodisalvo05/wann-noisy-labels; the
maths in lnr_dist/neighbours/).

A hook reads the features of the three splits (the stage-1 features, or the `neighbours.embeddings` file) and the
labels the method trains on (its label policy's: wann_lnr's are LNR's flips at the tuned threshold, so its
reliability k* and its votes both use the flipped labels), builds the space (z-scores from the training rows,
neighbours.projection, unit rows for the cosine metric; neighbours/embed.py), and

- knn / ann / wann: searches the training rows for the nearest neighbours of every validation and test row (and,
  for k*, of every training row, itself left out by index), exactly, on neighbours.backend, in this process or
  sharded over neighbours.workers Ray workers (runtime/sharded_search.py), and votes (neighbours/vote.py). Their
  scores are the vote shares s (N, C); the logits handed to the product's metrics are log(s + 1e-6), whose softmax
  is s up to that floor (neighbours/vote.py says how accuracy, ECE, NLL and temperature scaling then read them);
- linear_probe: trains a fresh linear layer on the same rows with the method's head recipe (cross-entropy,
  instance sampling, no LWS, the stage-2 optimizer and schedule, the epoch picked on validation), through the
  `fit_head` the features backend passes in.

Bad input is one line naming the key or file, raised by the checks before any work (reproduce and run_on_features
call them before any job or Ray start): kmin / kmax (NeighboursConfig), k or kmax above the training split's size,
an embedding file that is missing, not a .npz, or whose row counts differ from the split files.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from ..core.errors import UserError
from ..data.splits import load_split
from ..experiment import ExperimentConfig
from ..neighbours import (
    Neighbours,
    exclude_self,
    fit_projection,
    nearest,
    reliability,
    reliability_neighbours,
    unit_rows,
    vote,
    vote_logits,
    zscore,
)

SPLITS = ("train", "val", "test")
EMBEDDINGS_KEY = "neighbours.embeddings"
# (queries (n, D) float32, index (N, D) float32, k) -> the exact k nearest index rows of each query
Search = Callable[[np.ndarray, np.ndarray, int], Neighbours]
# (train (N, D) float32, val, test) -> (val logits, test logits (n, C) float32, what results.json records): a
# method's head trained from a fresh linear layer on those rows (its loss, sampler and LWS, the stage-2 recipe),
# the epoch picked on validation; the features backend builds it (features/heads.py fresh_head_fitter) and hands
# it to a predict hook (stage2/registry.py Predict)
FitHead = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, dict[str, Any]]]


# ------------------------------------------------------------------------------------------------ input checks
def _npz_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """The shape of each array in a .npz file, read from the headers only. UserError naming the file and the key
    when it is missing or not a .npz."""
    try:
        with zipfile.ZipFile(path) as archive:
            shapes = {}
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as handle:
                    version = np.lib.format.read_magic(handle)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shapes[member[: -len(".npy")]] = read(handle)[0]
            return shapes
    except FileNotFoundError:
        raise UserError(f"{EMBEDDINGS_KEY}: {path} does not exist") from None
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise UserError(f"{path} is not a .npz of numpy arrays ({exc}); {EMBEDDINGS_KEY} needs one with arrays "
                        "train, val and test, each (N_split, D)") from None  # fmt: skip


def _split_sizes(cfg: ExperimentConfig) -> dict[str, tuple[str, int]]:
    data = cfg.data
    files = {"train": data.train_split, "val": data.val_split, "test": data.test_split}
    return {
        name: (file, len(load_split(file, data.root, data.num_classes, name))) for name, file in files.items()
    }


def check_embeddings(cfg: ExperimentConfig, sizes: Mapping[str, tuple[str, int]]) -> None:
    """neighbours.embeddings, when set: a .npz with 2-D arrays train, val and test of one width whose row counts
    are the split files' sample counts. UserError naming the file otherwise."""
    path = cfg.neighbours.embeddings
    if path is None:
        return
    shapes = _npz_shapes(path)
    for name in SPLITS:
        split_file, size = sizes[name]
        if name not in shapes:
            raise UserError(f"{path}: no array '{name}' ({EMBEDDINGS_KEY} needs arrays train, val and test; it "
                            f"has {', '.join(sorted(shapes)) or 'none'})")  # fmt: skip
        shape = shapes[name]
        if len(shape) != 2 or shape[1] < 1:
            raise UserError(f"{path}: array '{name}' has shape {shape}; {EMBEDDINGS_KEY} needs (N_split, D)")
        if shape[0] != size:
            raise UserError(f"{path}: array '{name}' has {shape[0]} rows but the {name} split {split_file} has "
                            f"{size} samples ({EMBEDDINGS_KEY}: row i = line i of the split file)")  # fmt: skip
    widths = {shapes[name][1] for name in SPLITS}
    if len(widths) > 1:
        raise UserError(f"{path}: arrays train, val and test have different widths {sorted(widths)}")


def check_neighbour_inputs(cfg: ExperimentConfig, fixed_k: bool, adaptive: bool) -> None:
    """The neighbour methods' inputs, before any work: the embedding file, and enough training samples for
    neighbours.k (fixed_k: kNN) and for neighbours.kmax (adaptive: ANN / WANN, or the flda projection, which needs
    k*). Raises UserError naming the key or file."""
    nb = cfg.neighbours
    sizes = _split_sizes(cfg)
    check_embeddings(cfg, sizes)
    train_file, n_train = sizes["train"]
    if fixed_k and nb.k > n_train:
        raise UserError(f"neighbours.k ({nb.k}) is larger than the training split ({n_train} samples in "
                        f"{train_file}): lower it")  # fmt: skip
    if (adaptive or nb.projection == "flda") and nb.kmax > n_train:
        raise UserError(f"neighbours.kmax ({nb.kmax}) is larger than the training split ({n_train} samples in "
                        f"{train_file}): a query may vote with kmax neighbours; lower it (odd)")  # fmt: skip


check_knn = partial(check_neighbour_inputs, fixed_k=True, adaptive=False)
check_adaptive = partial(check_neighbour_inputs, fixed_k=False, adaptive=True)
check_probe = partial(check_neighbour_inputs, fixed_k=False, adaptive=False)


# ----------------------------------------------------------------------------------------------- the space
@dataclass(frozen=True)
class Space:
    """The rows the methods work on: train, val, test (N_split, D') float32, row i = dataset index i, and what
    made them (for results.json)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    report: dict[str, Any]


def searcher(cfg: ExperimentConfig) -> Search:
    """The exact search neighbours.backend / neighbours.workers / neighbours.metric ask for: in this process
    (workers 0) or sharded over Ray workers."""
    nb = cfg.neighbours
    if nb.workers == 0:
        return partial(nearest, backend=nb.backend, metric=nb.metric)
    from ..runtime.sharded_search import sharded_nearest

    return partial(sharded_nearest, workers=nb.workers, ray_cfg=cfg.ray, backend=nb.backend, metric=nb.metric)


def _source(cfg: ExperimentConfig, features: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    path = cfg.neighbours.embeddings
    if path is None:
        return {name: features[name] for name in SPLITS}, "stage-1 features (features/)"
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: np.asarray(archive[name], dtype=np.float32) for name in SPLITS}
    for name, array in arrays.items():
        if not np.isfinite(array).all():
            raise UserError(f"{path}: array '{name}' holds NaN or infinite values ({EMBEDDINGS_KEY})")
    return arrays, path


def train_reliability(
    train: np.ndarray, labels: np.ndarray, kmin: int, kmax: int, search: Search
) -> np.ndarray:
    """k* of every training row (neighbours/vote.py reliability): its reliability_neighbours(kmin, kmax)
    nearest training rows, itself left out by index. train (N, D) float32, labels (N,) int64 -> (N,) int64."""
    need = reliability_neighbours(kmin, kmax)
    if need == 0:
        return np.full(labels.shape[0], kmax, dtype=np.int64)
    found = search(train, train, need + 1)
    others = exclude_self(found.indices, np.arange(labels.shape[0]))
    return reliability(labels[others], labels, kmin, kmax)


def neighbour_space(
    cfg: ExperimentConfig,
    features: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    search: Search,
) -> Space:
    """The methods' rows (module docstring): the source features z-scored with the training rows' statistics,
    projected (flda: LDA fitted on the training rows with k* < kmax, k* on the z-scored rows), unit rows for the
    cosine metric. UserError naming neighbours.dim when the projection cannot give that many dims."""
    nb = cfg.neighbours
    source, origin = _source(cfg, features)
    train, val, test = zscore(source["train"], source["val"], source["test"])
    keep = None
    if nb.projection == "flda":
        keep = train_reliability(train, labels["train"], nb.kmin, nb.kmax, search) < nb.kmax
    try:
        transform, fitted = fit_projection(nb.projection, train, labels["train"], nb.dim, keep)
    except ValueError as exc:
        raise UserError(f"neighbours.projection {nb.projection}, neighbours.dim: {exc}") from None
    rows = [transform(x) for x in (train, val, test)]
    if nb.metric == "cosine":
        rows = [unit_rows(x) for x in rows]
    report = {"features": origin, "input_dim": int(source["train"].shape[1]), **fitted, "metric": nb.metric,
              "zscore": "mean and std (ddof 0) of the training rows"}  # fmt: skip
    return Space(*rows, report=report)


# ------------------------------------------------------------------------------------------------- the hooks
def majority_note(k: int, train_labels: np.ndarray, num_classes: int) -> str:
    """The report's sentence on what a vote of at least k neighbours leaves to small classes."""
    need = k // 2 + 1
    small = int((np.bincount(train_labels, minlength=num_classes) < need).sum())
    return (f"With k >= {k} neighbours a class with fewer than {need} training images cannot win a majority "
            f"({need} of {k}) of a vote: it wins only a plurality, when the other neighbours split among several "
            f"classes (a tie goes to the smallest class); {small} of {num_classes} classes have fewer than {need} "
            "training images (in the labels the method votes with)")  # fmt: skip


def _reliability_report(k_star: np.ndarray, kmax: int) -> dict[str, Any]:
    values, counts = np.unique(k_star, return_counts=True)
    return {"mean_k_star": float(k_star.mean()), "share_at_kmax": float((k_star == kmax).mean()),
            "counts": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}}  # fmt: skip


def _vote_on_features(
    cfg: ExperimentConfig,
    features: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    fit_head: FitHead,
    adaptive: bool,
    weighted: bool,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """kNN (fixed neighbours.k), ANN (adaptive) or WANN (adaptive, weighted) on the validation and test rows."""
    nb, num_classes, y = cfg.neighbours, cfg.data.num_classes, labels["train"]
    search = searcher(cfg)
    space = neighbour_space(cfg, features, labels, search)
    queries = np.concatenate([space.val, space.test])
    report: dict[str, Any] = {"space": space.report, "backend": nb.backend, "workers": nb.workers}
    if adaptive:
        k_star = train_reliability(space.train, y, nb.kmin, nb.kmax, search)
        found = search(queries, space.train, int(k_star.max()))
        k_query = k_star[found.indices[:, 0]]  # the reliability k* of the nearest training neighbour
        cast = vote(y[found.indices], k_query, num_classes, k_star[found.indices] if weighted else None)
        report |= {"kmin": nb.kmin, "kmax": nb.kmax, "reliability": _reliability_report(k_star, nb.kmax),
                   "rule": ("WANN: k* of the nearest training neighbour, votes weighted by each neighbour's 1 / k*"
                            if weighted else "ANN: k* of the nearest training neighbour, one vote each")}  # fmt: skip
        smallest_k = nb.kmin
    else:
        found = search(queries, space.train, nb.k)
        cast = vote(y[found.indices], nb.k, num_classes)
        report |= {"k": nb.k, "rule": f"kNN: the {nb.k} nearest training neighbours, one vote each"}
        smallest_k = nb.k
    report |= {"searched_with": found.backend,
               "scores": "vote shares s (N, C); logits log(s + 1e-6), softmax = s up to that floor"}  # fmt: skip
    logits = vote_logits(cast.shares, cast.winner)
    n_val = space.val.shape[0]
    return logits[:n_val], logits[n_val:], {"neighbours": report,
                                            "notes": [majority_note(smallest_k, y, num_classes)]}  # fmt: skip


knn = partial(_vote_on_features, adaptive=False, weighted=False)
ann = partial(_vote_on_features, adaptive=True, weighted=False)
wann = partial(_vote_on_features, adaptive=True, weighted=True)


def linear_probe(
    cfg: ExperimentConfig,
    features: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    fit_head: FitHead,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A fresh linear layer on the neighbour methods' rows (the same z-scores, projection and metric), trained by
    `fit_head` with the method's recipe (registry: cross-entropy, instance sampling, no LWS)."""
    space = neighbour_space(cfg, features, labels, searcher(cfg))
    val, test, fitted = fit_head(space.train, space.val, space.test)
    return val, test, {**fitted, "probe": {"space": space.report, "head": "a fresh linear layer (seeded)"}}
