"""The model a server serves, swapped without a restart when its registry alias moves."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dfd.serving.registry_model import LoadedModel, load, resolve_version

log = logging.getLogger(__name__)


class ModelHolder:
    """The model being served, and a poller that swaps in the version the alias points at.

    A request takes `holder.current` once and scores with it to the end, so a swap (one reference assignment, atomic
    under the GIL) never changes the model under a running request; the old model is freed when the last such
    request returns.

    Args:
        uri: What to serve (`models:/name@alias` is polled; a version or a folder is fixed).
        tracking_uri: The registry.
        loader: Loads a URI (injectable for tests of the swap logic; the server uses `registry_model.load`).
    """

    def __init__(self, uri: str, tracking_uri: str, loader: Callable[[str, str], LoadedModel] = load) -> None:
        self.uri, self.tracking_uri, self.loader = uri, tracking_uri, loader
        self.current = loader(uri, tracking_uri)
        self.swaps = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_once(self) -> bool:
        """Load and swap in the alias's version when it moved; True when a swap happened."""
        if self.current.alias is None:
            return False
        try:
            _, version, _, _ = resolve_version(self.uri, self.tracking_uri)
            if version == self.current.version:
                return False
            fresh = self.loader(self.uri, self.tracking_uri)  # loaded beside the old one, which keeps serving
        except Exception as exc:  # keep serving the old model; say why on /health
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("model refresh failed, still serving version %s: %s", self.current.version, self.last_error)
            return False
        log.info("alias moved: swapping version %s for %s", self.current.version, fresh.version)
        self.current, self.last_error = fresh, None
        self.swaps += 1
        return True

    def start(self, interval_s: float) -> None:
        if interval_s <= 0 or self.current.alias is None:
            return

        def poll() -> None:
            while not self._stop.wait(interval_s):
                self.check_once()

        self._thread = threading.Thread(target=poll, name="model-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
