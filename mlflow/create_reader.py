"""Set up the registry's rights at stack start-up: the read-only user the model server logs in as, and the
registered model it reads, owned by the admin.

The tracking server runs with `--app-name basic-auth`, `default_permission = READ` and `dfd_mlflow_auth:authenticate`
(docker/mlflow/basic_auth.ini): a user who is not an admin can read every experiment and registered model, can
neither log to nor move an alias of what exists, and cannot create an experiment, a registered model or a version.
This script logs in as the admin and makes sure that
1. the reader exists with the given password and is not an admin;
2. the registered model `MLFLOW_MODEL_NAME` exists, created by the admin (so the pipeline's first registration adds
   a version to it rather than creating it), and the reader's only right on it is READ (a MANAGE left from before,
   when MLflow gave it to whoever created the model, is taken away).

Environment:
    MLFLOW_TRACKING_URI: The server, e.g. http://mlflow:5000.
    MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD: The admin's login.
    MLFLOW_READER_USERNAME, MLFLOW_READER_PASSWORD: The read-only user to create.
    MLFLOW_MODEL_NAME: The registered model (params.yaml `registry.model_name`; default deepfake-ensemble).

Exit codes: 0 done, 2 a missing setting, 1 the server refused or never answered.
"""

from __future__ import annotations

import os
import sys
from typing import Any

MODEL_NAME = "deepfake-ensemble"  # params.yaml `registry.model_name`'s default


def main() -> int:
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the loop below does the waiting, visibly
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.server import get_app_client
    from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

    def unreachable(exc: BaseException) -> bool:
        return isinstance(exc, OSError | MlflowException) and not isinstance(exc, RestException)

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_READER_USERNAME",
             "MLFLOW_READER_PASSWORD")
    if missing := [n for n in names if not os.environ.get(n)]:
        print(f"create_reader: set {', '.join(missing)}", file=sys.stderr)
        return 2
    url, user, password = (os.environ[n] for n in ("MLFLOW_TRACKING_URI", "MLFLOW_READER_USERNAME",
                                                   "MLFLOW_READER_PASSWORD"))
    client = get_app_client("basic-auth", tracking_uri=url)
    # The server may still be starting (compose starts this beside it): retry connection errors for a while only.
    try:
        for attempt in Retrying(stop=stop_after_delay(float(os.environ.get("MLFLOW_READER_WAIT_S", "120"))),
                                wait=wait_fixed(2), retry=retry_if_exception(unreachable), reraise=True):
            with attempt:
                try:
                    client.create_user(user, password)
                    action = "created"
                except RestException as exc:
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    client.update_user_password(user, password)
                    action = "password reset"
        client.update_user_admin(user, False)
        model_action = _model_read_only(url, os.environ.get("MLFLOW_MODEL_NAME") or MODEL_NAME, client, user)
    except RestException as exc:
        print(f"create_reader: the server refused: {exc.error_code}", file=sys.stderr)
        return 1
    except (OSError, MlflowException) as exc:
        print(f"create_reader: no answer from {url.split('@')[-1]}: {type(exc).__name__}", file=sys.stderr)
        return 1
    print(f"create_reader: read-only user {user!r} {action} at {url.split('@')[-1]}; {model_action}")
    return 0


def _model_read_only(url: str, name: str, auth_client: Any, user: str) -> str:
    """Create the registered model as the admin (unless it exists) and leave the reader READ on it; what was done."""
    from mlflow.exceptions import RestException

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    try:
        client.create_registered_model(name, description="Created by the stack's init service (admin); the "
                                                          "pipeline registers its versions.")
        made = f"registered model {name!r} created by the admin"
    except RestException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        made = f"registered model {name!r} existed"
    try:  # whatever grant the reader held (MANAGE, if it created the model itself) goes first
        auth_client.revoke_user_permission(user, "registered_model", name)
    except RestException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
    auth_client.grant_user_permission(user, "registered_model", name, "READ")
    return f"{made}, {user!r} may only READ it"


if __name__ == "__main__":
    sys.exit(main())
