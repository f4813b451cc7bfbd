"""Every name and device in params checked against the registries, before any work starts.

The schema (`dfd/platform/config.py`) checks keys and types; the names it holds (architectures, augmentations,
detectors, perturbations, fusion rules) are only known to the registries that build them, so they are checked here,
at load time, instead of failing after ingest, faces and three other models have trained.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from dfd.platform.config import Params
from dfd.platform.errors import ConfigError


def _names(value: Any) -> list[str]:
    """The names a list-or-mapping setting holds (`[a, b]`, or `{a: levels, b: levels}`)."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [str(k) for k in value]
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        return [str(getattr(v, "name", v)) for v in value]
    return [str(value)]


def _unknown(where: str, names: Iterable[str], known: Iterable[str], what: str) -> list[str]:
    known = sorted(known)
    return [f"{where}: unknown {what} '{n}' (choose from {', '.join(known)})" for n in names if n not in known]


def _model_problems(params: Params) -> list[str]:
    from dfd.training.augment import AUGMENTATIONS
    from dfd.training.batch_augment import BATCH_AUGMENTATIONS
    from dfd.training.datasets import FACE_OPS
    from models import list_models
    from models.registry import model_factory

    problems = []
    for key, spec in params.models.items():
        arch = spec.arch or key
        if arch not in list_models():
            problems += _unknown(f"models.{key}.arch", [arch], list_models(), "architecture")
            continue
        if spec.augment is not None:  # the model's own recipe names augmentations too
            problems += _unknown(f"models.{key}.augment", spec.augment, [*AUGMENTATIONS, *FACE_OPS], "augmentation")
        if spec.batch_augment is not None:
            problems += _unknown(f"models.{key}.batch_augment", spec.batch_augment, BATCH_AUGMENTATIONS,
                                 "batch augmentation")
        sig = inspect.signature(model_factory(arch))
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
        allowed = [n for n, p in sig.parameters.items() if n != "input_size"
                   and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
        if not takes_any:
            problems += [f"models.{key}.kwargs: '{arch}' takes no argument '{k}' (it takes: "
                         f"{', '.join(allowed) or 'none'})" for k in spec.kwargs if k not in allowed]
    return problems


def hub_weights(params: Params, models: list[str] | None = None) -> dict[str, list[str]]:
    """The timm weights each `pretrained: hub` model needs ({model key: [timm name, ...]}), read from the models
    built on the meta device (no memory, no download)."""
    import torch

    from models import create_model, list_models
    from models.hub_cache import hub_names

    needs = {}
    for key, spec in params.models.items():
        arch = spec.arch or key
        if spec.pretrained == "hub" and arch in list_models() and (models is None or key in models):
            with torch.device("meta"):
                needs[key] = hub_names(create_model(arch, input_size=spec.input_size or 64, **spec.kwargs))
    return needs


def weights_problem(params: Params, models: list[str] | None = None) -> str | None:
    """One line naming the ImageNet weights that `pretrained: hub` needs and no local cache holds, when the hub
    cannot be reached either (offline): checked before any stage runs, not after hours of the others' training."""
    from models.hub_cache import cache_dir, hub_reachable, missing

    needs = hub_weights(params, models)
    absent = {key: missing(names) for key, names in needs.items()}
    absent = {key: names for key, names in absent.items() if names}
    if not absent or hub_reachable():
        return None
    names = sorted({n for ns in absent.values() for n in ns})
    return (f"models {sorted(absent)} start from ImageNet (pretrained: hub) but weights {names} are not in the local "
            f"cache {cache_dir()} and the hub is unreachable: run `dfd weights fetch` on a machine with network and "
            f"copy that folder here (or point $DFD_WEIGHTS_DIR at it), or set models.<key>.pretrained to a local file "
            f"or null")


def check_device(name: str) -> str | None:
    """Why `train.device` cannot be used on this machine, or None when it can."""
    import torch

    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return f"train.device: '{name}' is not a device (use auto, cpu, cuda or cuda:N)"
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return f"train.device: '{name}' asks for CUDA; this machine has no usable CUDA device (use auto or cpu)"
        if device.index is not None and device.index >= count:
            return f"train.device: '{name}' does not exist; {count} CUDA device(s) here (cuda:0..{count - 1})"
        return None
    if device.type == "mps":
        return None if torch.backends.mps.is_available() else f"train.device: '{name}' is not available here"
    return f"train.device: '{name}' is not supported (use auto, cpu, cuda or cuda:N)"


def _registry(module: str, attr: str) -> list[str] | None:
    """Names in a registry dict/tuple another module owns; None when it does not exist (yet)."""
    import importlib

    try:
        value = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None
    return list(value)


def _literal_or_registry(where: str, value: Any, module: str, attr: str, what: str) -> list[str]:
    known = _registry(module, attr)
    if known is None or value is None:
        return []
    name = value if isinstance(value, str) else getattr(value, "method", None)
    if name is None:
        return []
    return _unknown(where, [name], known, what)


def params_problems(params: Params) -> list[str]:
    """Every name and device in `params` that the code cannot build, one readable line each (empty when fine)."""
    from dfd.data.adapters import ADAPTERS
    from dfd.data.face_detect import DETECTORS
    from dfd.evaluation.robustness import PERTURBATIONS
    from dfd.training.augment import AUGMENTATIONS
    from dfd.training.batch_augment import BATCH_AUGMENTATIONS

    problems = _unknown("data.adapter", [params.data.adapter], ADAPTERS, "dataset adapter")
    problems += _unknown("faces.detector", [params.faces.detector], DETECTORS, "face detector")
    problems += _unknown("faces.fallback", params.faces.fallback, DETECTORS, "face detector")
    from dfd.training.datasets import FACE_OPS

    # sbi and landmark_cutout are landmark-based augmentations (FACE_OPS), applied before the albumentations ones.
    problems += _unknown("train.augment", _names(params.train.augment), [*AUGMENTATIONS, *FACE_OPS], "augmentation")
    problems += _unknown("train.batch_augment", _names(params.train.batch_augment), BATCH_AUGMENTATIONS,
                         "batch augmentation")
    problems += _unknown("evaluate.robustness", _names(params.evaluate.robustness), PERTURBATIONS, "perturbation")
    if isinstance(params.evaluate.robustness, dict):  # {perturbation: levels}: each level in its valid range
        for name, levels in params.evaluate.robustness.items():
            bad = [lv for lv in levels if name in PERTURBATIONS and not PERTURBATIONS[name].valid(lv)]
            if bad:
                problems.append(f"evaluate.robustness.{name}: levels {bad} are invalid "
                                f"(give each {PERTURBATIONS[name].valid_text})")
    for i, ds in enumerate(params.evaluate.datasets):  # cross-dataset sets are read by adapters too
        problems += _unknown(f"evaluate.datasets[{i}].adapter", [ds.adapter], ADAPTERS, "dataset adapter")
    if params.evaluate.drift_member is not None and params.evaluate.drift_member not in params.models:
        problems.append(f"evaluate.drift_member: '{params.evaluate.drift_member}' is not under `models:` "
                        f"(one of {', '.join(sorted(params.models))})")
    problems += _model_problems(params)
    # Fusion rules: the registry in dfd/evaluation/fusion.py is the source of truth (the params type is a Literal
    # too, so this only bites when the two drift apart).
    problems += _literal_or_registry("ensemble.method", getattr(params.ensemble, "method", None),
                                     "dfd.evaluation.fusion", "FUSIONS", "fusion method")
    device_problem = check_device(params.train.device)
    if device_problem:
        problems.append(device_problem)
    return problems


def check_params(params: Params) -> None:
    """Raise one ConfigError listing every name or device in `params` that cannot be built on this machine."""
    problems = params_problems(params)
    if problems:
        raise ConfigError("; ".join(problems), "fix params.yaml (or the override), then rerun")


def check_weights(params: Params, models: list[str] | None = None) -> None:
    """Before training (`dfd run`, the flow, `dfd stage train`): raise one ConfigError when `pretrained: hub` weights
    are missing offline. Not part of `check_params`: scoring and registry commands need no ImageNet weights."""
    problem = weights_problem(params, models)
    if problem:
        raise ConfigError(problem)


def export_problem(params: Params) -> str | None:
    """Why `ensemble.export` cannot run here (its packages, named, with the one-line fix), or None when it can.

    Not part of `check_params`: scoring needs none of them (a model asked to run on onnxruntime where it is missing
    runs on torch and says so); only registering with the export on does.
    """
    cfg = params.ensemble.export
    if not (cfg.onnx or cfg.int8):
        return None
    from dfd.serving.onnx_engine import INSTALL_HINT
    from dfd.serving.onnx_export import missing_packages

    missing = missing_packages()
    if not missing:
        return None
    what = "ensemble.export.int8" if cfg.int8 else "ensemble.export.onnx"
    return f"{what} needs the packages {', '.join(missing)}, not installed here: {INSTALL_HINT}, or set it to false"


def check_export(params: Params) -> None:
    """Before a run that registers (`dfd run`, the flow, `dfd stage register`): one ConfigError naming the missing
    export packages, not a traceback after hours of training."""
    problem = export_problem(params)
    if problem:
        raise ConfigError(problem)
