"""The check contract (after cleanlab Datalab): each check returns, per item, a score in [0, 1]
(1 = clean) and a flag, plus a dataset-level summary, the parameters it used and, for duplicate
checks, groups.

A check is a function ``(ds, ctx, **params) -> CheckResult`` registered with its documented default
parameters; ``run_checks`` fills in defaults, validates overrides and shares expensive work
(features, hashes) between checks through the `CheckContext`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from ..dataset import Dataset
from ..errors import UserError
from ..registry import Registry

if TYPE_CHECKING:
    from ..neighbors import NeighborGraph


@dataclass(frozen=True, eq=False)
class CheckResult:
    """What one check found.

    Attributes:
        name: the check's registered name.
        scores: float64 (N,) in [0, 1]; 1 = clean, lower = worse.
        flags: bool (N,); True = this item has the issue.
        summary: dataset-level facts: at least ``n_flagged``, ``score`` (dataset-level, in [0, 1])
            and ``threshold``; checks add their own (e.g. the near-duplicate operating point).
        params: the parameters used (defaults merged with overrides).
        details: optional (N,) strings explaining each flag (e.g. ``suggested label: 7``).
        groups: optional int64 (N,) group ids for duplicate checks (-1 = in no group).
    """

    name: str
    scores: np.ndarray
    flags: np.ndarray
    summary: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    details: Sequence[str] | None = None
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.flags.shape != (n,) or self.flags.dtype != bool:
            raise ValueError(f"{self.name}: flags must be bool ({n},)")
        if n and (np.nanmin(self.scores) < 0 or np.nanmax(self.scores) > 1):
            raise ValueError(f"{self.name}: scores must lie in [0, 1]")
        if self.details is not None and len(self.details) != n:
            raise ValueError(f"{self.name}: details must have {n} entries")
        if self.groups is not None and self.groups.shape != (n,):
            raise ValueError(f"{self.name}: groups must have shape ({n},)")
        self.summary.setdefault("n_flagged", int(self.flags.sum()))

    @property
    def n_flagged(self) -> int:
        return int(self.flags.sum())


class CheckContext:
    """Shared, lazily computed inputs for the checks of one run (features, hashes, ...).

    ``ctx.cache(key, fn)`` computes ``fn()`` once per key; checks use it for anything another check
    may also need.
    """

    def __init__(self, ds: Dataset, *, features: str = "random", seed: int = 0, neighbors: str = "auto",
                 exact_max_items: int | None = None) -> None:
        from ..neighbors import EXACT_MAX_ITEMS, resolve_method

        resolve_method(neighbors, 0)  # a bad value fails before any work
        self.ds = ds
        self.features_name = features
        self.seed = seed
        self.neighbors = neighbors
        self.exact_max_items = EXACT_MAX_ITEMS if exact_max_items is None else int(exact_max_items)
        self.graphs: dict[str, Any] = {}  # feature space -> NeighborGraph: what this run built
        self.feature_store: Any = None  # a streamed audit's store folder: features kept there (datacheck.store)
        self._cache: dict[str, Any] = {}

    def cache(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def thumb_digests(self) -> np.ndarray:
        """S16 (N,) blake2b digests of each image's pixels (`datacheck.hashing.exact_keys`), computed
        once per run: a streamed audit's store keys features and near-duplicate hashes by them."""
        from ..hashing import exact_keys

        return self.cache("thumb_digests", lambda: exact_keys(self.ds.images))

    def features(self, name: str | None = None) -> np.ndarray:
        """float32 (N, D) features of the dataset's images from the named extractor."""
        from ..features import get_extractor

        name = name or self.features_name

        def compute() -> np.ndarray:
            if self.feature_store is not None:  # a streamed audit: reuse the features of unchanged thumbnails
                from ..feature_store import stored_features

                return stored_features(self.feature_store, name, self.ds.images, keys=self.thumb_digests())
            return get_extractor(name)(self.ds.images)

        return self.cache(f"features:{name}", compute)

    def neighbor_space(self, name: str, standardize: bool) -> np.ndarray:
        """float32 (N, D) the space of `neighbor_graph` (name, standardize): features ``name``,
        standardized per dimension when ``standardize`` (the outlier check does this for
        learned/CNN features, whose scales are arbitrary), PCA-reduced for large sets
        (`datacheck.graph_store.SpaceMap`)."""
        key = f"space:{name}:{int(standardize)}"
        if key not in self._cache:
            self.neighbor_graph(name, standardize)  # the space is fitted (or read from a store) with its graph
        return self._cache[key]

    def neighbor_graph(self, name: str, standardize: bool, k: int = 0) -> "NeighborGraph":
        """The kNN graph (`datacheck.neighbors`) over `neighbor_space` (name, standardize), built
        once per run and shared by every check working in that space (outlier, label_issue,
        near_duplicate: on pixel features, the default for tiny images, all three share one);
        rebuilt only when a check needs more than its ``k`` neighbours. In a streamed audit with a
        store, the space and graph are kept there and a re-audit patches them
        (`datacheck.graph_store`)."""
        from dataclasses import replace

        from ..graph_store import fit_space, stored_graph
        from ..neighbors import GRAPH_K, build_graph

        key = f"{name}" + (" (standardized)" if standardize else "")
        g = self.graphs.get(key)
        if g is None or g.k < min(k, len(self.ds) - 1):
            kk = max(GRAPH_K, k)

            def build(space: np.ndarray, kk: int) -> "NeighborGraph":
                # with a store, an approximate build keeps its index: a re-audit patches through it
                return build_graph(space, kk, self.neighbors, threshold=self.exact_max_items, seed=self.seed,
                                   keep_index=self.feature_store is not None)

            if self.feature_store is not None:
                meta = {"features": self.feature_identity(name), "neighbors": self.neighbors,
                        "exact_max_items": self.exact_max_items, "k": kk}
                g, smap, space, how = stored_graph(self.feature_store, name, standardize,
                                                   features=lambda: self.features(name), ids=self.ds.ids,
                                                   digests=self.thumb_digests(), meta=meta, k=kk, build=build,
                                                   seed=self.seed)
            else:
                smap = fit_space(self.features(name), standardize, seed=self.seed)
                space = smap.apply(self.features(name))
                g, how = build(space, kk), {"mode": "built"}
            self._cache[f"space:{name}:{int(standardize)}"] = space
            g = replace(g, space=smap.summary(), update=how, index=None)  # the store has the index; free it
            self.graphs[key] = g
        return g

    def feature_identity(self, name: str) -> str:
        """A short digest of extractor ``name``'s identity (its settings and weights)."""
        from ..feature_store import identity_digest
        from ..features import get_extractor

        return identity_digest(get_extractor(name).identity if name != "pixels" else {"name": "pixels"})


@dataclass(frozen=True)
class Check:
    """A registered check: its function, documented defaults, and what it needs."""

    name: str
    fn: Callable[..., CheckResult]
    defaults: Mapping[str, Any]
    description: str
    needs_labels: bool = False


CHECKS: Registry[Check] = Registry("check")


def register_check(name: str, *, defaults: Mapping[str, Any] | None = None, description: str = "",
                   needs_labels: bool = False) -> Callable[[Callable[..., CheckResult]], Callable[..., CheckResult]]:
    """Register ``fn(ds, ctx, **params) -> CheckResult`` under ``name`` with its default params."""

    def deco(fn: Callable[..., CheckResult]) -> Callable[..., CheckResult]:
        CHECKS.add(name, Check(name, fn, dict(defaults or {}), description or (fn.__doc__ or "").strip().split("\n")[0], needs_labels))
        return fn

    return deco


def check_params(name: str, over: Mapping[str, Any]) -> None:
    """A `UserError` naming the allowed parameters when ``over`` has one check ``name`` lacks."""
    allowed = CHECKS.get(name).defaults
    unknown = set(over) - set(allowed)
    if unknown:
        raise UserError(
            f"check {name!r} has no parameter {', '.join(sorted(unknown))}; expected: {', '.join(sorted(allowed)) or 'none'}"
        )


def run_checks(ds: Dataset, names: Sequence[str] | None = None,
               params: Mapping[str, Mapping[str, Any]] | None = None,
               ctx: CheckContext | None = None) -> dict[str, CheckResult]:
    """Run the named checks (all registered ones by default) and return their results by name.

    ``params`` maps a check name to overrides of its defaults; an unknown check or parameter name is
    a `UserError` naming the allowed ones. Label checks are skipped on unlabeled data.
    """
    params = dict(params or {})
    names = list(names) if names is not None else CHECKS.names()
    for n in list(names) + list(params):
        CHECKS.get(n)  # raises a UserError listing the allowed names
    from ..memory import release_pages

    ctx = ctx or CheckContext(ds)
    out: dict[str, CheckResult] = {}
    for n in names:
        check = CHECKS.get(n)
        over = dict(params.get(n, {}))
        check_params(n, over)
        if check.needs_labels and not ds.labeled:
            continue
        out[n] = check.fn(ds, ctx, **{**check.defaults, **over})
        release_pages(ds.images)  # a streamed audit's memory-mapped thumbnails: read again when needed
    return out
