"""Further evaluation datasets (`evaluate.datasets`): ingested and face-extracted with the training set's stage code.

Each goes to its own folder, `<data.workdir>/eval/<name>/` (manifest, ingest report, crops, faces index), so that
reruns are incremental exactly as for the training set: the faces stage skips samples already extracted.
"""

from __future__ import annotations

from pathlib import Path

from dfd.platform.config import DataParams, EvalDatasetParams, Params
from dfd.platform.errors import ConfigError
from dfd.platform.layout import Layout
from dfd.platform.stage_cache import project_hasher
from tasks.faces import extract_faces, verify_crops
from tasks.ingest import ingest


def eval_layout(layout: Layout, ds: EvalDatasetParams) -> Layout:
    """The training layout's paths, moved under `<workdir>/eval/<name>/` for dataset `ds`."""
    return Layout(layout.root, layout.workdir / "eval" / ds.name, layout.artifacts, ds.name)


def data_params(params: Params, ds: EvalDatasetParams, layout: Layout) -> DataParams:
    """The `data:` section this dataset would have if it were the training set."""
    return DataParams(name=ds.name, adapter=ds.adapter, root=ds.root, workdir=str(eval_layout(layout, ds).workdir),
                      compression=ds.compression, methods=ds.methods, splits_dir=ds.splits_dir)


def prepare(params: Params, layout: Layout, ds: EvalDatasetParams) -> Path:
    """Ingest and extract faces of one evaluation dataset; returns its faces index."""
    el = eval_layout(layout, ds)
    root = layout.resolve(ds.root)
    ingest(data_params(params, ds, layout), params.ingest, root, el.manifest, el.ingest_report, params.train.seed,
           project_hasher(layout.artifacts))
    # The share gate is off for evaluation sets unless set there: a hard test set may have few faces on purpose.
    extract_faces(params.faces, el.manifest, root, el.faces_dir, el.faces_index, el.faces_report, el.faces_samples,
                  min_face_share=ds.min_face_share or 0.0, share_key=f"evaluate.datasets[{ds.name}].min_face_share",
                  runner=params.runner, verify_crops=verify_crops(), track_max_gap=params.serve.track_max_gap)
    return el.faces_index


def prepare_all(params: Params, layout: Layout) -> dict[str, Path]:
    """Every dataset of `evaluate.datasets`, by name, to its faces index."""
    for ds in params.evaluate.datasets:
        if ds.name == params.data.name:
            raise ConfigError(f"evaluate.datasets: '{ds.name}' is the training dataset's name (data.name)",
                              "give the evaluation dataset another name")
    (layout.workdir / "eval").mkdir(parents=True, exist_ok=True)  # a DVC output of the stage, even when empty
    return {ds.name: prepare(params, layout, ds) for ds in params.evaluate.datasets}
