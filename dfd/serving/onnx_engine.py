"""ONNX Runtime as the engine that runs the ensemble's members (`serve.engine: onnxruntime`).

Only the members run here: each member's preprocessing (resize, normalisation) and the ensemble's member scaling,
fusion and calibration stay the numpy/torch code that evaluation ran (`dfd.serving.ensemble`). The ONNX files are
the registered version's artifacts (`onnx_fp32_<member>`, `onnx_int8_<member>`), written by
`dfd.serving.onnx_export` from the same checkpoints.

onnxruntime is an optional extra (`pip install 'dfd[onnx]'`): where it is missing, a model asked to run on it runs on
torch instead and says so once per process (`fallback_reason`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfd.training.augment import build_transform

log = logging.getLogger(__name__)

ENGINES = ("torch", "onnxruntime")
#: The precisions each engine runs; the same table as `serve.engine`/`serve.precision` (dfd.platform.ops_config).
ORT_PRECISIONS = ("fp32", "int8")
#: The one-line fix printed wherever onnxruntime is needed and missing.
INSTALL_HINT = "pip install 'dfd[onnx]' (or: pip install onnxruntime)"

# Crops per ONNX Runtime run. Measured with benchmarks/predict.py --engines (the real member sizes, 2 cores of a
# Xeon with AVX-512/VNNI/AMX, a shared machine at load 16-34): batch 1 was the fastest for every member (MesoNet 43.6
# crops/s against 31.8 at 4 and 18.1 at 8; Xception 2.90 / 2.43 / 2.34; EfficientNet-B4 6.84 / 6.09 / 5.05): ORT's
# convolutions fill both cores at batch 1 and larger batches only push activations out of the caches.
ORT_BATCH = 1

_warned: set[str] = set()


def onnxruntime_available() -> bool:
    """Whether onnxruntime imports here."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def warn_once(message: str) -> None:
    """Log `message` as a warning the first time this process sees it (a fallback is said once, not per request)."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def session_threads() -> int:
    """Intra-op threads of one session: the cores this process may use, as torch counts them.

    One session per member per worker process; the server's workers divide the cores between them by setting torch's
    thread count (`torch.set_num_threads`), and ONNX Runtime follows the same number, so N workers never run N x
    cores threads. Inter-op parallelism stays 1: members run one after another.
    """
    return max(1, torch.get_num_threads())


def make_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session over `path`, all graph optimisations on (constant folding, conv/BN fusion)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or session_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn a core between requests; a server that is idle most of the time wants them asleep.
    options.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("DFD_ORT_SPIN", "0"))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxMember:
    """One member run by ONNX Runtime: the same `__call__` as `dfd.serving.ensemble.MemberModel`.

    Args:
        path: The member's ONNX file (input `crops`: float32 (N, 3, S, S), output `logit`: (N, 1)).
        config: The member's registered preprocessing (`model_config` of its checkpoint: input size, mean, std).
        precision: What the file holds: fp32 or int8 (quantised convolutions; the rest float).
        threads: Intra-op threads; None: `session_threads()`.
    """

    engine = "onnxruntime"

    def __init__(self, path: Path, config: dict[str, Any], precision: str = "fp32", threads: int | None = None
                 ) -> None:
        if precision not in ORT_PRECISIONS:
            raise ValueError(f"onnxruntime runs {', '.join(ORT_PRECISIONS)}, not {precision}")
        self.path, self.config, self.precision = Path(path), config, precision
        self.transform = build_transform([], train=False, input_size=config["input_size"],
                                         mean=tuple(config["mean"]), std=tuple(config["std"]))
        self.session = make_session(self.path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def preprocess(self, crops: np.ndarray) -> np.ndarray:
        """RGB uint8 crops (N, H, W, 3) to the member's float32 input (N, 3, S, S): the torch path's transform."""
        return torch.stack([self.transform(image=c)["image"] for c in crops]).numpy()

    def logits(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Raw logits (N,) of preprocessed inputs (N, 3, S, S)."""
        batch_size = batch_size or ORT_BATCH
        out = [self.session.run(None, {self.input_name: x[i:i + batch_size]})[0].reshape(-1)
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, dtype=np.float32)

    def __call__(self, crops: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """P(fake) for RGB uint8 crops of shape (N, H, W, 3)."""
        batch_size = batch_size or ORT_BATCH
        out = [self.logits(self.preprocess(crops[i:i + batch_size]), batch_size)
               for i in range(0, len(crops), batch_size)]
        logits = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
        return torch.sigmoid(torch.from_numpy(logits)).numpy()  # the torch path's float32 sigmoid


def apply_engine(predictor: Any, engine: str, precision: str, artifacts: dict[str, str]) -> str | None:
    """Run `predictor`'s members on `engine` in `precision`, over the version's ONNX artifacts.

    Returns why it stayed on torch fp32 instead (onnxruntime not installed), said once per process; None when the
    engine runs as asked.

    Raises:
        ValueError: An unknown engine or precision, or a version without the ONNX files that precision needs.
    """
    if engine == "torch":
        if precision != "fp32":
            predictor.set_precision(precision)
        return None
    if engine != "onnxruntime":
        raise ValueError(f"unknown engine '{engine}': torch or onnxruntime")
    files = {m: Path(artifacts[f"onnx_{precision}_{m}"]) for m in predictor.members if f"onnx_{precision}_{m}" in
             artifacts}
    if len(files) < len(predictor.members):
        raise ValueError(f"this model version has no {precision} ONNX members (registered without "
                         f"ensemble.export.{'int8' if precision == 'int8' else 'onnx'}: true): serve it with "
                         "serve.engine: torch, or register it again with the export on")
    if not onnxruntime_available():
        reason = f"onnxruntime is not installed: scoring with torch fp32 instead of onnxruntime {precision} " \
                 f"({INSTALL_HINT})"
        warn_once(reason)
        return reason
    predictor.set_engine("onnxruntime", precision, files)
    return None
