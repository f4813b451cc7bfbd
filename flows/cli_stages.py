"""What `dfd stage NAME` runs where the flow's stage cache applies: the stage unless its inputs are unchanged.

Without Prefect (importing it costs seconds that a no-op rerun must not pay); the check and the record are the
flow's own (`dfd.platform.stage_cache.run_cached`), so `dfd run` and `dfd stage` agree on what is up to date.
"""

from __future__ import annotations

from dfd.platform.config import Params
from dfd.platform.layout import Layout
from dfd.platform.stage_cache import StageCache, describe, run_cached
from flows import stage_inputs
from tasks import ingest


def ingest_cached(params: Params, layout: Layout, force: bool = False) -> ingest.IngestResult:
    """`dfd stage ingest`: the stage unless its inputs are unchanged since it last ran (here or in a flow).

    Unchanged means the dataset's files have the stamps they had (one walk, a stat per file), the same params and
    the same code: a rerun over an unchanged tree of 100,000 files then costs that walk, not their md5s and media
    checks, nor the manifest and report written again.
    """
    return run_cached(StageCache(layout.artifacts, layout.root), stage_inputs.ingest(params, layout),
                      ingest.IngestResult, lambda: ingest.run(params, layout), lambda c: print(describe(c)),
                      force=force)[0]
