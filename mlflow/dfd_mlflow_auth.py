"""The tracking server's `authorization_function`: MLflow basic auth, plus the one rule its permissions cannot state.

MLflow 3.17's `default_permission = READ` does not gate creation: with workspaces off, any logged-in user may create
an experiment, a registered model or a model version (`_can_create_in_workspace` allows it), and MLflow gives the
creator MANAGE on what it created. So the read-only login the model server uses could register
`registry.model_name` before the pipeline's first registration, set `@production` to its own code, and the model
server would load it. A DENY grant on every registered model stops the creation but also the reading (it wins over
the READ grant on the one model the server needs). So this function authenticates exactly as MLflow's own
`authenticate_request_basic_auth` does, then refuses (403) a non-admin's request that creates an experiment, a
registered model (prompts are registered models), a model version or an AI-gateway resource. Everything else is
MLflow's own validation, unchanged.

Wiring (`docker/mlflow/basic_auth.ini`): `authorization_function = dfd_mlflow_auth:authenticate`;
`mlflow/start_server.sh` puts this folder on `PYTHONPATH`. The folder holds no `__init__.py` and this module's name is
not `mlflow`, so nothing shadows the `mlflow` package.
"""

from __future__ import annotations

from flask import Response, request
from mlflow.server import auth
from werkzeug.datastructures import Authorization

# The validators MLflow routes creation requests to, by name: a missing one (a renamed function after an upgrade)
# stops the server at start-up rather than leaving that creation open.
_CREATORS = ("validate_can_create_experiment", "validate_can_create_registered_model",
             "validate_can_create_model_version", "validate_can_create_gateway_secret",
             "validate_can_create_gateway_model_definition", "validate_can_create_gateway_endpoint")
CREATE_VALIDATORS = frozenset(getattr(auth, name) for name in _CREATORS)


def creates() -> bool:
    """Whether the current request is routed to one of the creation validators."""
    return auth._find_validator(request) in CREATE_VALIDATORS


def authenticate() -> Authorization | Response:
    """Basic auth; then 403 for a non-admin's creation request (before MLflow's own validators run)."""
    result = auth.authenticate_request_basic_auth()
    if isinstance(result, Response) or not creates():
        return result
    if auth.store.get_user(result.username).is_admin:
        return result
    return auth.make_forbidden_response()
