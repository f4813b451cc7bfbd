"""Create (or reset) the read-only MLflow user that the model server logs in as; run once at stack start-up.

The tracking server runs with `--app-name basic-auth` and `default_permission = READ` (docker/mlflow/basic_auth.ini):
a user who is not an admin and holds no explicit grant can read every experiment and registered model, and can
neither log to nor move an alias of what exists. This script logs in as the admin and makes sure such a user exists
with the given password, and is not an admin.

Environment:
    MLFLOW_TRACKING_URI: The server, e.g. http://mlflow:5000.
    MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD: The admin's login.
    MLFLOW_READER_USERNAME, MLFLOW_READER_PASSWORD: The read-only user to create.

Exit codes: 0 done, 2 a missing setting, 1 the server refused or never answered.
"""

from __future__ import annotations

import os
import sys


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
    except RestException as exc:
        print(f"create_reader: the server refused: {exc.error_code}", file=sys.stderr)
        return 1
    except (OSError, MlflowException) as exc:
        print(f"create_reader: no answer from {url.split('@')[-1]}: {type(exc).__name__}", file=sys.stderr)
        return 1
    print(f"create_reader: read-only user {user!r} {action} at {url.split('@')[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
