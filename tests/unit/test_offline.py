"""The suite never tries the network: every library that would phone home has its telemetry off (tests/conftest.py)."""

from __future__ import annotations

import os

from tests.conftest import TELEMETRY_OFF


def test_telemetry_is_off_in_every_library_that_has_it() -> None:
    assert {k: os.environ.get(k) for k in TELEMETRY_OFF} == TELEMETRY_OFF  # children inherit these
    from dvc.analytics import is_enabled
    from evidently.telemetry import event_logger
    from mlflow.telemetry.utils import is_telemetry_disabled
    from prefect.settings import get_current_settings

    assert is_telemetry_disabled()  # MLflow reads its switches when imported: conftest set them first
    assert not is_enabled()  # DVC's analytics
    assert not get_current_settings().server.analytics_enabled  # Prefect's server, ephemeral or started by tests
    assert not event_logger.enabled()  # evidently's usage events
