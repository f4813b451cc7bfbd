"""Request payloads checked before anything is scored: MLflow scoring JSON (crops) and JSON path lists."""

from __future__ import annotations

from typing import Any

import numpy as np

from dfd.serving.limits import BodyError


def parse_crops(payload: Any, max_crops: int = 64, max_side: int = 1024) -> np.ndarray:
    """MLflow scoring JSON to RGB uint8 crops (N, H, W, 3), at most `max_crops` of at most `max_side` pixels a side.

    Raises:
        BodyError: 400 for a wrong shape or type (floats must be whole numbers), 413 for too many or too large
            crops, 422 for values outside 0..255.
    """
    rows = payload.get("inputs", payload.get("instances")) if isinstance(payload, dict) else None
    expected = 'expected {"inputs": RGB uint8 crops (N, H, W, 3)}'
    if rows is None:
        raise BodyError(400, "body is not MLflow scoring JSON with crops", "bad_request", expected)
    if isinstance(rows, list) and len(rows) > max_crops:  # counted before an array is built: 1x1 crops are cheap
        raise BodyError(413, "too many crops", "too_large", f"{len(rows)}; limit serve.max_crops={max_crops}")
    try:
        arr = np.asarray(rows)
    except (ValueError, TypeError, OverflowError) as exc:  # ragged nesting, mixed types
        raise BodyError(400, "crops are not a regular array", "bad_request", str(exc)[:200]) from None
    if arr.ndim != 4 or arr.shape[-1] != 3 or 0 in arr.shape:
        raise BodyError(400, expected, "bad_request", f"got shape {list(arr.shape)}")
    if max(arr.shape[1:3]) > max_side:
        raise BodyError(413, "crops too large", "too_large",
                        f"{arr.shape[2]}x{arr.shape[1]}; limit serve.max_crop_side={max_side}")
    whole = arr.dtype.kind == "f" and bool(np.isfinite(arr).all() and (arr == np.round(arr)).all())
    if arr.dtype.kind not in "iu" and not whole:
        raise BodyError(400, "pixel values must be whole numbers 0..255", "bad_request", f"got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() > 255:
        raise BodyError(422, "pixel values outside 0..255", "out_of_range",
                        f"min {arr.min():g}, max {arr.max():g}")
    return arr.astype(np.uint8)


def parse_paths(payload: Any, max_paths: int) -> tuple[list[str], Any]:
    """`{"paths": [...], "aggregate": ...}` checked: (paths, aggregate).

    Raises:
        BodyError: 400 for a wrong shape, an empty, overlong or NUL-carrying path; 413 past `max_paths`.
    """
    paths = payload.get("paths") if isinstance(payload, dict) else None
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        raise BodyError(400, 'expected JSON {"paths": ["/path/to/file", ...]}', "bad_request",
                        "`paths` must be a non-empty list of non-empty strings")
    if len(paths) > max_paths:
        raise BodyError(413, "too many paths", "too_large", f"{len(paths)}; limit serve.max_paths={max_paths}")
    if any("\0" in p or len(p) > 4096 for p in paths):
        raise BodyError(400, "a path holds a NUL byte or is over 4096 characters", "bad_request")
    return paths, payload.get("aggregate")
