"""Champion/challenger statistics: the candidate against `@production` at the level the gate reports.

Pure functions of scored rows; the register stage loads and scores the champion (tasks/register.py) and the gate
judges the result (`dfd.evaluation.gate.champion_check`). The comparison is at the **video** level (frames
aggregated by `ensemble.aggregation`, the served rule) when the data holds videos, at the frame level otherwise
(then a frame is its image); both the cluster bootstrap and DeLong run on those units, clustered by identity.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dfd.evaluation.aggregate import video_scores
from dfd.evaluation.delong import delong_test
from dfd.evaluation.significance import identity_clusters, paired_auc_test
from dfd.platform.config import AggregationParams, ChampionParams

METHOD = "paired identity-cluster bootstrap, percentile, strata by cluster composition; DeLong (Sun & Xu) second"


def sample_videos(frames: pd.DataFrame, max_crops: int | None, seed: int) -> pd.DataFrame:
    """Whole samples (all their frames), seeded, classes interleaved, until `max_crops` frames (at least one sample).

    Whole samples, not frames: a video's score aggregates its frames, so a video cut short is another video.
    """
    sizes = frames.groupby("sample_id", sort=True).agg(label=("label", "first"), n=("label", "size")).reset_index()
    rng = np.random.default_rng(seed)
    sizes = sizes.iloc[rng.permutation(len(sizes))].reset_index(drop=True)
    sizes["turn"] = sizes.groupby("label").cumcount()  # alternate the classes so a small budget holds both
    sizes = sizes.sort_values("turn", kind="stable")
    if max_crops is not None:
        keep = sizes["n"].cumsum() <= max_crops
        keep.iloc[0] = True
        sizes = sizes[keep]
    chosen = set(sizes["sample_id"])
    return frames[frames["sample_id"].isin(chosen)].sort_values(["sample_id", "frame"]).reset_index(drop=True)


def comparison_level(frames: pd.DataFrame) -> str:
    """"video" when any sample is a video or holds several frames, else "frame"."""
    if "media" in frames and (frames["media"] == "video").any():
        return "video"
    return "video" if frames.groupby("sample_id").size().max() > 1 else "frame"


def _units(frames: pd.DataFrame, level: str, aggregation: AggregationParams) -> pd.DataFrame:
    """Rows to compare on: one per video (both scores aggregated by the served rule) or the frames as they are."""
    ident = frames.groupby("sample_id")["identity"].first() if "identity" in frames else None
    if level == "frame":
        units = frames[["sample_id", "label", "prob", "champion"]].copy()
    else:
        units = video_scores(frames, aggregation, "prob").merge(
            video_scores(frames, aggregation, "champion")[["sample_id", "champion"]], on="sample_id")
    units["identity"] = units["sample_id"].map(ident) if ident is not None else None
    return units


def champion_comparison(frames: pd.DataFrame, cfg: ChampionParams, aggregation: AggregationParams,
                        ) -> dict[str, Any]:
    """Candidate (`prob`) minus champion (`champion`) AUC with its cluster bootstrap lower bound and DeLong p-value.

    Args:
        frames: Scored test frames: `sample_id`, `label`, `prob`, `champion`, and `identity`/`media` when known.
        cfg: alpha, margin, resamples, seed.
        aggregation: Frames to videos, as the served model does it.

    Returns:
        `level`, `method`, `margin`, `alpha`, counts (`n` frames, `n_videos`, `n_clusters`), `test` (the bootstrap,
        see `PairedTest`), `delong`; `too_few` with the reason when a class has fewer than 2 clusters.
    """
    level = comparison_level(frames)
    units = _units(frames, level, aggregation)
    clusters = identity_clusters(units["sample_id"].to_numpy(), units["identity"].to_numpy())
    labels = units["label"].to_numpy(dtype=int)
    per_class = {c: len(np.unique(clusters[labels == c])) for c in (0, 1)}
    out: dict[str, Any] = {"level": level, "method": METHOD, "margin": cfg.margin, "alpha": cfg.alpha,
                           "n": len(frames), "n_videos": int(frames["sample_id"].nunique()),
                           "n_clusters": len(np.unique(clusters)),
                           "n_clusters_per_class": {"real": per_class[0], "fake": per_class[1]}}
    if min(per_class.values()) < 2:
        out["too_few"] = (f"{per_class[0]} real and {per_class[1]} fake cluster(s); a paired test needs at least 2 "
                          "of each")
        return out
    champ, cand = units["champion"].to_numpy(dtype=float), units["prob"].to_numpy(dtype=float)
    test = paired_auc_test(labels, champ, cand, cfg.bootstrap, cfg.seed, 1 - cfg.alpha, clusters)
    delong = delong_test(labels, champ, cand, clusters)
    out["test"] = test.to_dict()
    out["delong"] = {**delong.to_dict(), "lower": delong.lower(cfg.alpha)}
    return out
