"""People as data: the persons each sample shows, and the identity clusters they form.

An adapter says which persons a sample shows, as a list of names (a real: its person; a face swap: its target and
its source). Names are opaque: they are compared whole and never split on `_` or any other character (a name such
as `subject_01` is one person). An **identity cluster** is a connected component of the graph whose nodes are
samples and persons and whose edges join each sample to its persons: two samples that share a person, directly or
through a chain of fakes, are in one cluster. Clusters are what must never straddle splits and what the cluster
bootstrap draws whole (docs/concepts/identity-splits.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def as_persons(value: object) -> tuple[str, ...]:
    """One row's persons as a tuple of non-empty names (a parquet list comes back as a numpy array; None: none)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ()
    if isinstance(value, str):  # a bare name is one person, never a list of characters
        return (value,) if value else ()
    if isinstance(value, Iterable):
        return tuple(str(p) for p in value if p is not None and str(p))
    raise TypeError(f"persons must be a list of names, got {type(value).__name__}")


def person_components(persons: Sequence[object], keys: Sequence[object] | None = None) -> np.ndarray:
    """A cluster number (0..k-1) per row: rows that share a person, or a key, fall in one cluster.

    Args:
        persons: Per row, the names of the persons it shows (see `as_persons`); a row without any is linked only
            through its key.
        keys: Per row, a key that also links rows (the sample id: the frames of one video are one sample); None:
            rows are linked by persons alone, and a row without persons is a cluster of its own.
    """
    n = len(persons)
    if keys is not None and len(keys) != n:
        raise ValueError(f"{len(keys)} keys for {n} rows")
    nodes: dict[tuple[str, str], int] = {}
    src, dst = [], []
    for row, value in enumerate(persons):
        for p in as_persons(value):
            src.append(row)
            dst.append(n + nodes.setdefault(("person", p), len(nodes)))
        if keys is not None:
            src.append(row)
            dst.append(n + nodes.setdefault(("key", str(keys[row])), len(nodes)))
    size = n + len(nodes)
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(size, size))
    _, comp = connected_components(graph, directed=False)
    _, out = np.unique(comp[:n], return_inverse=True)
    return out.astype(np.int64)


def cluster_names(persons: Sequence[object], keys: Sequence[object]) -> list[str]:
    """Each row's identity cluster, named by the first (sorted) person name in it (the first key without any).

    The name is stable while the cluster keeps its members; when new data joins two clusters, the joined cluster
    takes the smaller of their names (the split follows that name: see `dfd.data.manifest.assign_splits`).
    """
    comp = person_components(persons, keys)
    best: dict[int, tuple[int, str]] = {}  # cluster -> (0 for a person name, 1 for a key; the name)
    for c, value, key in zip(comp, persons, keys, strict=True):
        names = as_persons(value)
        cand = (0, min(names)) if names else (1, str(key))
        if int(c) not in best or cand < best[int(c)]:
            best[int(c)] = cand
    return [best[int(c)][1] for c in comp]
