"""The pipeline's Prefect deployments, from one spec: `dfd deploy` registers it, `--write-prefect-yaml` writes it.

`deployment_specs()` is the single source: the weekly deployment (cron and timezone from `schedule:` in params) and
an on-demand one, both on a process work pool, both running `flows/pipeline.py:pipeline` in the project folder. The
committed prefect.yaml is generated from it (a test fails when they differ), so `prefect deploy --all` and
`dfd deploy` register the same thing.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import yaml

from dfd.platform.config import Params
from dfd.platform.errors import ConfigError

FLOW_NAME = "deepfake-pipeline"
ENTRYPOINT = "flows/pipeline.py:pipeline"
#: prefect.yaml is committed, so the project folder there is the worker's environment variable, not a local path.
PROJECT_DIR_TEMPLATE = "{{ $DFD_PROJECT_DIR }}"
HEADER = """\
# Prefect deployments of the pipeline flow: GENERATED from params.yaml (`schedule:`) by
#   dfd deploy --write-prefect-yaml
# Do not edit by hand (tests/operations/test_deploy.py fails when this file and params.yaml disagree).
# `dfd deploy` registers the same deployments; `prefect deploy --all` from the project root does too, with
# DFD_PROJECT_DIR set to the project folder the worker runs in.
"""


def deployment_specs(params: Params, project_dir: str) -> list[dict[str, Any]]:
    """The weekly and on-demand deployments, in prefect.yaml's shape.

    Args:
        params: Resolved params (the `schedule:` section).
        project_dir: The project folder the worker runs the flow in (a checkout holding flows/ and params).
    """
    s = params.schedule
    parameters: dict[str, Any] = {"path": s.params_path}
    if s.overrides:
        parameters["overrides"] = list(s.overrides)

    def common() -> dict[str, Any]:  # fresh dicts per deployment: shared ones become YAML anchors
        return {"entrypoint": ENTRYPOINT, "parameters": dict(parameters), "work_pool": {"name": s.work_pool},
                "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": project_dir}}]}
    weekly = {"name": "weekly",
              "description": f"Judge the week's served traffic, then retrain, evaluate and (on a passing gate) "
                             f"promote the ensemble: cron '{s.cron}' in {s.timezone}.",
              **common(), "schedules": [{"cron": s.cron, "timezone": s.timezone}]}
    weekly["parameters"]["monitor"] = True  # the week's served traffic is judged first (`dfd monitor`)
    on_demand = {"name": "on-demand", "description": f"The same flow without a schedule: `prefect deployment run "
                                                    f"{FLOW_NAME}/on-demand`.", **common()}
    return [weekly, on_demand]


def prefect_yaml(params: Params) -> str:
    """The text of prefect.yaml for these params."""
    import prefect

    doc = {"name": "dfd", "prefect-version": prefect.__version__.split("+")[0],
           "deployments": deployment_specs(params, params.schedule.project_dir or PROJECT_DIR_TEMPLATE)}
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=120)


def _check_schedule(params: Params) -> None:
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    s = params.schedule
    try:
        CronSchedule(cron=s.cron, timezone=s.timezone)  # Prefect's own validation of both
    except ValidationError as exc:
        field = exc.errors()[0]["loc"][0]
        what = "a valid cron expression" if field == "cron" else "an IANA time zone"
        raise ConfigError(f"schedule.{field} is not {what}: {getattr(s, str(field))!r}",
                          "e.g. cron '0 3 * * 1', timezone UTC or Europe/Berlin") from None


def deploy(params: Params, project_dir: Path) -> dict[str, str]:
    """Register both deployments with the Prefect server in PREFECT_API_URL (creating the work pool if missing).

    Returns:
        Deployment name -> id.

    Raises:
        ConfigError: A bad cron or time zone, or no server configured or reachable.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate, WorkPoolCreate
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.settings import PREFECT_API_URL
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import pipeline

    _check_schedule(params)
    if not PREFECT_API_URL.value():
        raise ConfigError("PREFECT_API_URL is not set: schedules need a real Prefect server",
                          "start one with `prefect server start` and export PREFECT_API_URL=http://HOST:4200/api")
    directory = str(Path(params.schedule.project_dir or project_dir).resolve())
    ids: dict[str, str] = {}
    try:
        with get_client(sync_client=True) as client:
            with contextlib.suppress(ObjectAlreadyExists):  # the pool may be there already (`prefect work-pool create`)
                client.create_work_pool(WorkPoolCreate(name=params.schedule.work_pool, type="process"))
            flow_id = client.create_flow_from_name(FLOW_NAME)
            schema = parameter_schema(pipeline).model_dump_for_openapi()
            for spec in deployment_specs(params, directory):
                schedules = [DeploymentScheduleCreate(schedule=CronSchedule(cron=s["cron"], timezone=s["timezone"]))
                             for s in spec.get("schedules", [])]
                ids[spec["name"]] = str(client.create_deployment(
                    flow_id, spec["name"], description=spec["description"], entrypoint=spec["entrypoint"],
                    path=directory, parameters=spec["parameters"], work_pool_name=spec["work_pool"]["name"],
                    schedules=schedules, pull_steps=spec["pull"], parameter_openapi_schema=schema))
    except ConfigError:
        raise
    except Exception as exc:  # httpx/Prefect raise many types for an unreachable or refusing server
        raise ConfigError(f"Prefect server at {PREFECT_API_URL.value()} refused the deployments: "
                          f"{type(exc).__name__}: {exc}", "is `prefect server start` running there?") from None
    return ids
