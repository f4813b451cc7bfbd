"""compare: the A/B test of two registered (or logged) models on the same face crops (`dfd compare A B`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from dfd.evaluation.compare import (
    compare_scores,
    format_comparison,
    load_crops,
    resolve_model_uri,
    sample_frames,
    score,
)
from dfd.evaluation.significance import identity_clusters, persons_of
from dfd.platform.config import Params
from dfd.platform.errors import DataError
from dfd.platform.tracking import Tracker


def compare(params: Params, tracker: Tracker, ref_a: str, ref_b: str, faces_index: Path, split: str | None = "test",
            max_crops: int | None = 2000, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Score models A and B on the same crops of a faces index; metrics with bootstrap intervals, AUC test (B - A).

    Args:
        params: For the registered model name (bare version numbers).
        tracker: Loads the models.
        ref_a: Model A: `models:/NAME/VERSION`, `models:/NAME@ALIAS`, `runs:/ID/PATH`, a run id or a version number.
        ref_b: Model B, the same forms.
        faces_index: A faces index parquet (`crop`, `label`, `sample_id`, `split`); crops relative to its folder.
        split: The split to score; None: every row.
        max_crops: Seeded sample size (None: all rows).
        n_boot: Bootstrap resamples.
        seed: Seeds the sample and the bootstrap.

    Returns:
        The comparison (see `dfd.evaluation.compare.compare_scores`) plus `a`, `b`, `dataset` and the printable `lines`.
    """
    if not faces_index.is_file():
        raise DataError(f"faces index not found: {faces_index}", "run `dfd stage faces`, or pass --dataset")
    index = pd.read_parquet(faces_index)
    missing = {"crop", "label", "sample_id", "split"} - set(index.columns)
    if missing:
        raise DataError(f"{faces_index} is not a faces index: no column(s) {sorted(missing)}")
    rows = sample_frames(index, split, max_crops, seed)
    crops = load_crops(rows["crop"], faces_index.parent)
    uris = [resolve_model_uri(r, params.registry.model_name) for r in (ref_a, ref_b)]
    scores = [score(tracker.load_pyfunc(uri), crops) for uri in uris]
    # Identity clusters over the persons each row shows (a fake with its people's reals; the frames of one sample
    # together): see dfd.evaluation.significance.
    clusters = identity_clusters(persons_of(rows), rows["sample_id"].tolist())
    result = compare_scores(rows["label"].to_numpy(), scores[0], scores[1], clusters, n_boot, seed)
    result.update(a=uris[0], b=uris[1], dataset=str(faces_index), split=split or "all")
    result["lines"] = [f"dataset: {faces_index} (split {split or 'all'})", *format_comparison(result, *uris)]
    return result
