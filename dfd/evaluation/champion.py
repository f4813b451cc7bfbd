"""Champion/challenger statistics: the candidate against `@production` at the level the gate reports.

Pure functions of scored rows; the register stage loads and scores the champion (tasks/register.py) and the gate
judges the result (`dfd.evaluation.gate.champion_check`). The comparison is at the **video** level (frames
aggregated by `ensemble.aggregation`, the served rule) when the data holds videos, at the frame level otherwise
(then a frame is its image); both the cluster bootstrap and DeLong run on those units, clustered by the persons
they show (`dfd.evaluation.significance.identity_clusters`). Fewer than `champion.min_clusters_per_class` clusters
of either class is "too few to decide", with the number of videos that would be needed (docs/concepts/
champion-test.md).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from dfd.evaluation.aggregate import video_scores
from dfd.evaluation.delong import delong_test
from dfd.evaluation.significance import identity_clusters, paired_auc_test, persons_of
from dfd.platform.config import AggregationParams, ChampionParams

METHOD = ("paired identity-cluster bootstrap (unstratified, resamples lacking a class redrawn), percentile; "
          "DeLong (Sun & Xu, clustered, t on G-1 dof) second")


def sample_videos(frames: pd.DataFrame, max_videos: int | None, seed: int) -> pd.DataFrame:
    """Whole samples (all their frames), seeded, classes interleaved, at most `max_videos` of them.

    Whole samples, not frames: a video's score aggregates its frames, so a video cut short is another video.
    """
    sizes = frames.groupby("sample_id", sort=True).agg(label=("label", "first")).reset_index()
    rng = np.random.default_rng(seed)
    sizes = sizes.iloc[rng.permutation(len(sizes))].reset_index(drop=True)
    sizes["turn"] = sizes.groupby("label").cumcount()  # alternate the classes so a small budget holds both
    sizes = sizes.sort_values("turn", kind="stable")
    if max_videos is not None:
        sizes = sizes.head(max_videos)
    chosen = set(sizes["sample_id"])
    return frames[frames["sample_id"].isin(chosen)].sort_values(["sample_id", "frame"]).reset_index(drop=True)


def comparison_level(frames: pd.DataFrame) -> str:
    """"video" when any sample is a video or holds several frames, else "frame"."""
    if "media" in frames and (frames["media"] == "video").any():
        return "video"
    return "video" if frames.groupby("sample_id").size().max() > 1 else "frame"


def _units(frames: pd.DataFrame, level: str, aggregation: AggregationParams) -> pd.DataFrame:
    """Rows to compare on: one per video (both scores aggregated by the served rule) or the frames as they are."""
    first = frames.drop_duplicates("sample_id").set_index("sample_id")
    persons = pd.Series(persons_of(first), index=first.index, dtype=object)
    if level == "frame":
        units = frames[["sample_id", "label", "prob", "champion"]].copy()
    else:
        units = video_scores(frames, aggregation, "prob").merge(
            video_scores(frames, aggregation, "champion")[["sample_id", "champion"]], on="sample_id")
    units["persons"] = units["sample_id"].map(persons)
    return units


def videos_needed(n_videos: int, have: float, want: float) -> int:
    """Videos for `want` where `n_videos` gave `have` (clusters of a class, or 1/half-width^2: both grow with the
    sample), assuming new data brings clusters of the same size and class mix."""
    return max(n_videos + 1, math.ceil(n_videos * want / have)) if have > 0 else 0


def champion_comparison(frames: pd.DataFrame, cfg: ChampionParams, aggregation: AggregationParams,
                        ) -> dict[str, Any]:
    """Candidate (`prob`) minus champion (`champion`) AUC with its cluster bootstrap lower bound and DeLong p-value.

    Args:
        frames: Scored test frames: `sample_id`, `label`, `prob`, `champion`, and `persons`/`media` when known.
        cfg: alpha, margin, resamples, seed, the clusters per class needed to decide.
        aggregation: Frames to videos, as the served model does it.

    Returns:
        `level`, `method`, `margin`, `alpha`, counts (`n` frames, `n_videos`, `n_clusters`), `test` (the bootstrap,
        see `PairedTest`), `delong`; `too_few` with the reason (and `videos_needed`) when a class has fewer than
        `cfg.min_clusters_per_class` clusters.
    """
    level = comparison_level(frames)
    units = _units(frames, level, aggregation)
    clusters = identity_clusters(units["persons"].tolist(), units["sample_id"].tolist())
    labels = units["label"].to_numpy(dtype=int)
    per_class = {c: len(np.unique(clusters[labels == c])) for c in (0, 1)}
    out: dict[str, Any] = {"level": level, "method": METHOD, "margin": cfg.margin, "alpha": cfg.alpha,
                           "n": len(frames), "n_videos": int(frames["sample_id"].nunique()),
                           "n_clusters": len(np.unique(clusters)),
                           "n_clusters_per_class": {"real": per_class[0], "fake": per_class[1]}}
    fewest = min(per_class.values())
    need = max(cfg.min_clusters_per_class, 2)  # a variance needs 2 at the very least
    if fewest == 0:
        out["too_few"] = f"no {'real' if per_class[0] == 0 else 'fake'} {level} in the comparison sample"
        return out
    if fewest < need:
        out["videos_needed"] = videos_needed(len(units), fewest, need)
        out["too_few"] = (f"{per_class[0]} real and {per_class[1]} fake identity cluster(s); the test needs at least "
                          f"{need} of each (champion.min_clusters_per_class): about {out['videos_needed']} "
                          f"{level}s would be needed")
        return out
    champ, cand = units["champion"].to_numpy(dtype=float), units["prob"].to_numpy(dtype=float)
    test = paired_auc_test(labels, champ, cand, cfg.bootstrap, cfg.seed, 1 - cfg.alpha, clusters)
    delong = delong_test(labels, champ, cand, clusters)
    out["test"] = test.to_dict()
    out["delong"] = {**delong.to_dict(), "lower": delong.lower(cfg.alpha)}
    return out
