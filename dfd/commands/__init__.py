"""The `dfd` subcommands, grouped by what they act on; `dfd/cli.py` parses arguments and dispatches here.

Like the CLI, these modules are entry points: they may import tasks and flows (lazily, so `dfd stage` starts fast).
"""

from __future__ import annotations

import argparse

from dfd.platform.config import Params, load_params

# recipes: each model's training inputs as files, for DVC (tasks/recipes.py)
STAGES = ("ingest", "faces", "recipes", "train", "ensemble", "evaluate", "register")


DEMO_OVERRIDE = "configs/demo.yaml"


def params_from_args(args: argparse.Namespace) -> Params:
    """Load the params and check every name and device in them, before any work (one line, exit 2, on a problem)."""
    from tasks.preflight import check_params

    params = load_params(args.params, args.override)
    check_params(params)
    return params
