"""What the engine benchmarks share: the CPU's model and flags, the ONNX export of the random full-size members, a
peak-memory sampler, the member crops/s table (torch fp32/bf16 against ONNX Runtime fp32/int8), and OpenVINO as a
comparison row where it is installed (`pip install 'dfd[bench]'`; not a serving engine of dfd).

    python benchmarks/predict.py --engines      # member crops/s, then `dfd predict` videos/s per engine
    python benchmarks/serving.py --engines      # `dfd serve` per engine and `mlflow models serve`, one client
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch

from dfd.serving.ensemble import CPU_BATCH, EnsemblePredictor, MemberModel
from dfd.serving.onnx_engine import ORT_BATCH, OnnxMember, session_threads
from dfd.serving.onnx_export import export_member, quantize_member
from dfd.training.augment import build_transform

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_line() -> str:
    """The CPU's model, the SIMD flags that matter to these kernels, cores, and the load average now."""
    model, flags = "unknown CPU", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and model == "unknown CPU":
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    have = [f for f in FLAGS if f in flags]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    versions = []
    for package in ("torch", "onnxruntime", "openvino"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{package} {importlib.metadata.version(package)}")
    return (f"CPU {model}; flags {' '.join(have) or 'none of ' + ' '.join(FLAGS)}; {os.cpu_count()} cores, "
            f"torch/ORT threads {session_threads()}; {', '.join(versions)}; load average {load}")


class PeakRSS:
    """The largest resident set size (MiB) this process reaches inside a `with` block, sampled every 20 ms."""

    def __enter__(self) -> PeakRSS:
        self.peak, self._stop = self._rss(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _rss() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())


def export_all(predictor: EnsemblePredictor, work: Path, calibration: np.ndarray,
               formats: tuple[str, ...] = ("QOperator", "QDQ")) -> dict[str, dict[str, Path]]:
    """Each member as fp32 ONNX and int8 in each quantisation format: {"fp32" | "int8-QDQ" | ...: {member: file}}."""
    files: dict[str, dict[str, Path]] = {"fp32": {}, **{f"int8-{f}": {} for f in formats}}
    for m, member in predictor.members.items():
        t0 = time.perf_counter()
        files["fp32"][m] = export_member(predictor.checkpoints[m], work / f"{m}.onnx", 18)
        x = torch.stack([member.transform(image=c)["image"] for c in calibration]).numpy()
        for f in formats:
            files[f"int8-{f}"][m] = quantize_member(files["fp32"][m], work / f"{m}.{f}.onnx", x, f)
        print(f"  exported {m}: fp32 + int8 {'/'.join(formats)} in {time.perf_counter() - t0:.0f} s")
    return files


def openvino_available() -> bool:
    """Whether OpenVINO imports here (the comparison rows are skipped, and say so, where it does not)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVinoMember(OnnxMember):
    """One member run by OpenVINO's CPU plugin from the same ONNX file: `OnnxMember`'s preprocessing and `__call__`.

    The file is read by OpenVINO's ONNX frontend (`Core.read_model`; not `convert_model`, the path that carries
    OpenVINO's telemetry). The inference precision is pinned to f32: on a CPU with AMX or AVX512-BF16 OpenVINO would
    otherwise run the float parts in bf16, another precision than the row's name says. The int8 file is the ONNX
    Runtime QDQ one, whose QuantizeLinear/DequantizeLinear pairs OpenVINO runs as int8 kernels (its own recipe).
    """

    engine = "openvino"

    def __init__(self, path: Path, config: dict, precision: str = "fp32", threads: int | None = None) -> None:
        import openvino as ov

        self.path, self.config, self.precision = Path(path), config, precision
        self.transform = build_transform([], train=False, input_size=config["input_size"],
                                         mean=tuple(config["mean"]), std=tuple(config["std"]))
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", {
            "INFERENCE_NUM_THREADS": threads or session_threads(), "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)

    def logits(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Raw logits (N,) of preprocessed inputs (N, 3, S, S)."""
        batch_size = batch_size or ORT_BATCH
        # The request reuses its output tensor: copy each batch's logits out before the next run.
        out = [np.array(self.request.infer({0: x[i:i + batch_size]})[self.output]).reshape(-1)
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, dtype=np.float32)


def set_openvino(predictor: EnsemblePredictor, files: dict[str, Path], precision: str) -> None:
    """Run `predictor`'s members on OpenVINO (a benchmark row; `set_engine("torch", ...)` rebuilds torch members)."""
    configs = {m: member.config for m, member in predictor.members.items()}
    predictor.members = {m: OpenVinoMember(files[m], configs[m], precision) for m in configs}
    predictor.engine = "openvino"


def crops_per_s(member, crops: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    """(crops/s, P(fake)) of one member over `crops`, after one warm-up batch."""
    member(crops[:batch], batch)
    t0 = time.perf_counter()
    p = member(crops, batch)
    return len(crops) / (time.perf_counter() - t0), p


def member_table(predictor: EnsemblePredictor, files: dict[str, dict[str, Path]], crops: np.ndarray) -> None:
    """Member crops/s per engine at the real input sizes, ratios to torch fp32, and max |dP| from torch fp32."""
    print(f"member crops/s on {len(crops)} face crops ({cpu_line()})")
    if not openvino_available():
        print("  (openvino is not installed: no OpenVINO rows; pip install 'dfd[bench]')")
    print(f"  {'member':<13}{'engine':<26}{'batch':>5}{'crops/s':>9}{'x torch fp32':>14}{'max |dP|':>11}")
    for m in predictor.members:
        ckpt = predictor.checkpoints[m]
        torch_fp32 = MemberModel(ckpt)
        config = torch_fp32.config
        rows = [("torch fp32", torch_fp32, CPU_BATCH)]
        with contextlib.suppress(ValueError):  # a CPU without bf16 support gets no bf16 row
            rows.append(("torch bf16", MemberModel(ckpt, precision="bf16"), CPU_BATCH))
        rows += [(f"onnxruntime fp32 b{b}", OnnxMember(files["fp32"][m], config), b) for b in (1, 4, 8)]
        rows += [(f"onnxruntime {k}", OnnxMember(f[m], config, "int8"), ORT_BATCH) for k, f in files.items()
                 if k.startswith("int8")]
        if openvino_available():
            rows += [("openvino fp32", OpenVinoMember(files["fp32"][m], config), ORT_BATCH)]
            rows += [(f"openvino {k}", OpenVinoMember(f[m], config, "int8"), ORT_BATCH) for k, f in files.items()
                     if k == "int8-QDQ"]
        base_rate, base_p = None, None
        for name, member, batch in rows:
            rate, p = crops_per_s(member, crops, batch)
            if base_rate is None:
                base_rate, base_p = rate, p
            print(f"  {m:<13}{name:<26}{batch:>5}{rate:>9.2f}{rate / base_rate:>13.2f}x"
                  f"{float(np.max(np.abs(p - base_p))):>11.1e}")
