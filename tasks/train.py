"""train@M: train one registered detector on the face crops; checkpoint every epoch, resume, predict val and test.

Multi-GPU: launch the same stage under torchrun (`torchrun --nproc_per_node N -m dfd.cli stage train --model M`);
each rank trains on its shard, rank 0 evaluates and writes. On CPU the gloo backend does the same.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from dfd.evaluation.metrics import binary_metrics, frame_and_video_metrics
from dfd.platform.config import ModelParams, Params, TrainParams, recipe
from dfd.platform.errors import StageError
from dfd.platform.files import write_json, write_parquet
from dfd.platform.layout import Layout
from dfd.platform.threads import torch_threads
from dfd.training.augment import build_transform
from dfd.training.batch_augment import check_names
from dfd.training.datasets import FACE_OPS, FaceCrops, epoch_order
from dfd.training.engine import Stepper, train_epoch
from dfd.training.optim import LrSchedule, build_optimizer
from dfd.training.real_only import eval_split, real_training_rows, selection_split
from models import ModelConfig, create_model, model_config
from models.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainResult:
    """What train@M wrote."""

    model: str
    out_dir: Path
    best: Path
    last: Path
    metrics: Path
    predictions: Path
    summary: dict[str, Any]


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' is CUDA (this rank's GPU) when present, else CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic: a kill mid-save never leaves a torn checkpoint
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # no stray last.tmp, whatever went wrong
        if isinstance(exc, RuntimeError):  # torch reports a full disk as "unexpected pos ..." / "file write failed"
            raise OSError(errno.ENOSPC if shutil.disk_usage(path.parent).free < 1 << 26 else errno.EIO,
                          f"could not write checkpoint ({str(exc).splitlines()[0][:120]})", str(path)) from exc
        raise


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device) -> np.ndarray:
    """Probabilities of 'fake' for every item of `loader`, in order; NaN for an item whose label is NaN (an
    unreadable crop that `FaceCrops` did not substitute: it gets no score rather than a neighbour's)."""
    model.eval()
    out = []
    for x, y in loader:
        p = torch.sigmoid(model(x.to(device)).float().squeeze(1)).cpu()
        out.append(torch.where(torch.isnan(y.float()), torch.full_like(p, float("nan")), p))
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def _fingerprint(name: str, spec: ModelParams, cfg: TrainParams, index_path: Path, world: int) -> str:
    """What a checkpoint must share with this run to be resumed: params, world size and the faces index."""
    h = hashlib.sha256(json.dumps([name, spec.model_dump(mode="json"), cfg.model_dump(mode="json"), world],
                                  sort_keys=True).encode())
    h.update(index_path.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class _Data:
    """The training set, the evaluation loaders and the loader settings of one run."""

    splits: dict[str, pd.DataFrame]
    train_ds: FaceCrops
    eval_loaders: dict[str, DataLoader]
    loader_kw: dict[str, Any]
    batch: int
    fakes: dict[str, str] = field(default_factory=dict)  # per evaluation split: `real`, or `sbi(seed=N)`
    train_on: str = "all"
    # What the epoch is chosen on: the validation split itself, or (real-only) SBI fakes from its reals.
    select_loader: DataLoader | None = None
    select_labels: np.ndarray | None = None
    selected_on: str = "val"


@dataclass
class _Progress:
    """What changes from epoch to epoch and is saved in `last.pt`, so that a resumed run continues exactly."""

    fingerprint: str
    start_epoch: int = 0
    best_auc: float = -1.0
    stale: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0


def _load_data(name: str, cfg: TrainParams, spec: ModelParams, mcfg: ModelConfig, index_path: Path,
               device: torch.device) -> _Data:
    """Read the faces index, split it, and build the training dataset and the val/test loaders."""
    index = pd.read_parquet(index_path)
    splits = {s: index[index["split"] == s] for s in ("train", "val", "test")}
    for s in ("train", "val"):
        if splits[s].empty:
            raise StageError(f"the faces index has no '{s}' crops", "add identities or change ingest split shares")
    root = index_path.parent
    real_only = spec.train_on == "real_only"
    train_rows = real_training_rows(splits["train"], index, name) if real_only else splits["train"]
    face_ops = [a for a in cfg.augment if a in FACE_OPS]
    train_ds = FaceCrops(train_rows, root, build_transform([a for a in cfg.augment if a not in FACE_OPS],
                                                                train=True, **mcfg.preprocessing()),
                         face_ops, cfg.sbi_prob, cfg.cutout_prob, cfg.seed)
    eval_tf = build_transform([], train=False, **mcfg.preprocessing())
    batch = spec.batch_size or cfg.batch_size
    loader_kw: dict[str, Any] = {"batch_size": batch, "num_workers": cfg.num_workers,
                                 "pin_memory": device.type == "cuda"}
    # Validation and test only: the ensemble is fitted on validation and judged on test. No substitution of an
    # unreadable crop here: it would score a neighbour under the bad row's name (it is excluded in _export).
    # A real-only model's split without real fakes gets SBI fakes made with a fixed seed (dfd/training/real_only.py).
    eval_loaders, fakes = {}, {}
    for s in ("val", "test"):
        if not splits[s].empty:
            ds, splits[s], fakes[s] = eval_split(splits[s], root, eval_tf, cfg.seed, real_only)
            eval_loaders[s] = DataLoader(ds, shuffle=False, **loader_kw)
    data = _Data(splits, train_ds, eval_loaders, loader_kw, batch, fakes, spec.train_on,
                 eval_loaders["val"], splits["val"]["label"].to_numpy())
    if real_only and fakes["val"] == "real":
        # Best epoch, early stop and plateau never follow a labelled fake (dfd/training/real_only.py).
        ds, rows, data.selected_on = selection_split(splits["val"], root, eval_tf, cfg.seed)
        data.select_loader, data.select_labels = DataLoader(ds, shuffle=False, **loader_kw), rows["label"].to_numpy()
    elif real_only:
        data.selected_on = fakes["val"]  # the split has no fake: its SBI fakes from its reals are the same images
    return data


def _build_model(name: str, arch: str, spec: ModelParams, cfg: TrainParams, mcfg: ModelConfig,
                 device: torch.device) -> tuple[nn.Module, dict[str, Any], dict[str, Any] | None]:
    """The seeded model with its opt-in pretrained weights, the arguments that rebuild it from a checkpoint, and the
    weights' lineage (name, file, sha256, share of parameters loaded; None from scratch)."""
    torch.manual_seed(cfg.seed)
    model_kwargs = {"input_size": mcfg.input_size, **spec.kwargs}
    model = create_model(arch, **model_kwargs).to(device)
    weights = None
    if spec.pretrained:
        from models.weights import load_pretrained

        weights = load_pretrained(model, spec.pretrained)
    else:
        log.info("%s: no pretrained weights (models.%s.pretrained): training from scratch", name, name)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, model_kwargs, weights


def _resume(name: str, last_path: Path, progress: _Progress, model: nn.Module, optimizer: torch.optim.Optimizer,
            schedule: LrSchedule) -> None:
    """Load `last.pt` into the model, optimiser, schedule and `progress` when it was made by the same run."""
    if not last_path.is_file():
        return
    try:
        ckpt = load_checkpoint(last_path)
    except Exception as exc:  # truncated or corrupt: a cache, so named, discarded and rebuilt, not a traceback
        log.warning("%s: %s is corrupt (%s); discarding it and starting over", name, last_path, type(exc).__name__)
        last_path.unlink(missing_ok=True)
        return
    if ckpt.get("fingerprint") != progress.fingerprint:
        log.info("%s: %s was made with other params or data; starting over", name, last_path)
        return
    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    schedule.load_state_dict(ckpt["schedule"])
    progress.start_epoch, progress.best_auc, progress.history = ckpt["epoch"] + 1, ckpt["best_auc"], ckpt["history"]
    progress.stale, progress.step = ckpt["stale_epochs"], ckpt["step"]
    log.info("%s: resuming after epoch %d from %s", name, ckpt["epoch"] + 1, last_path)


def _export(name: str, arch: str, mcfg: ModelConfig, model: nn.Module, data: _Data, progress: _Progress,
            cfg: TrainParams, world: int, device: torch.device, out_dir: Path,
            weights: dict[str, Any] | None = None) -> TrainResult:
    """Reload the best weights, write val/test predictions and the metrics summary."""
    best_path = out_dir / "best.pt"
    best = load_checkpoint(best_path)
    model.load_state_dict(best["state_dict"])
    frames, bad_crops = [], []
    for s, dl in data.eval_loaders.items():
        # `track`: with faces.all_faces a frame has several crops; the track tells them apart (and evaluation's
        # worst_track rule groups by it). An index written before tracks were recorded has none.
        keep = [c for c in ("sample_id", "frame", "track", "split", "label", "crop") if c in data.splits[s]]
        df = data.splits[s][keep].copy()
        df["prob"] = predict(model, dl, device)
        bad = df["prob"].isna()
        for r in df[bad].itertuples():
            bad_crops.append({"path": str(data.train_ds.root / r.crop), "sample_id": r.sample_id, "frame": int(r.frame),
                              "split": s, "reason": "unreadable face crop: excluded, not scored"})
            log.warning("%s: unreadable face crop %s excluded from the %s predictions", name,
                        data.train_ds.root / r.crop, s)
        frames.append(df[~bad].drop(columns="crop"))
    preds = pd.concat(frames, ignore_index=True)
    preds["model"] = name
    pred_path = out_dir / "predictions.parquet"
    write_parquet(preds, pred_path)
    history = progress.history
    summary = {"model": name, "arch": arch, "model_config": mcfg.to_dict(), "best_epoch": best["epoch"],
               "best_val_auc": best["best_auc"], "epochs_run": len(history), "epochs": cfg.epochs,
               "stopped_early": len(history) < cfg.epochs, "history": history, "world_size": world,
               "torch_threads": torch.get_num_threads(),
               "parameters": sum(p.numel() for p in model.parameters()), "bad_crops": bad_crops,
               "train_on": data.train_on, "train_samples": int(data.train_ds.index["sample_id"].nunique()),
               "train_fake_samples": int((data.train_ds.labels == 1).sum()), "eval_fakes": data.fakes,
               "recipe": cfg.model_dump(mode="json"), "pretrained": weights,
               "val": frame_and_video_metrics(preds[preds["split"] == "val"], 0.5), "selected_on": data.selected_on}
    if data.train_on == "real_only" and data.fakes.get("val") == "real":
        # Reported beside the selection AUC, never used to choose: the best epoch's AUC on the split's real fakes.
        summary["val_auc_real_fakes"] = summary["val"]["auc"]
    if (preds["split"] == "test").any():
        summary["test"] = frame_and_video_metrics(preds[preds["split"] == "test"], 0.5)
    metrics_path = write_json(out_dir / "metrics.json", summary)
    return TrainResult(name, out_dir, best_path, out_dir / "last.pt", metrics_path, pred_path, summary)


def train_model(name: str, spec: ModelParams, cfg: TrainParams, index_path: Path, out_dir: Path,
                on_epoch: EpochCallback | None = None, progress: bool = True) -> TrainResult:
    """Train one detector; resume from `out_dir/last.pt` when it was made by the same params and data.

    Args:
        name: The model's key under `models:` in params (also its output folder).
        spec: Its params (architecture, input size, learning rate, ...).
        cfg: Shared training params.
        index_path: The faces index; crops are relative to its folder.
        out_dir: Where best.pt, last.pt, metrics.json and predictions.parquet go.
        on_epoch: Called after every epoch with (epoch, metrics), e.g. to log to MLflow (rank 0 only).
        progress: Show a per-step progress bar (off when several models train at once: one log line per epoch).

    Raises:
        TrainingError: On a NaN or infinite loss, naming the step.
        StageError: When the faces index is missing or a split is empty.
    """
    if not index_path.is_file():
        raise StageError(f"faces index not found: {index_path}", "run the faces stage first (`dfd stage faces`)")
    cfg = recipe(cfg, spec)  # the model's own recipe over `train:`
    check_names(cfg.batch_augment)
    rank, world, local_rank = _distributed()
    arch = spec.arch or name
    mcfg = model_config(arch, spec.input_size)
    device = pick_device(cfg.device, local_rank)
    threads = torch_threads(cfg.torch_threads)  # auto: this process's share, from the parent that started it
    if threads:
        torch.set_num_threads(threads)
    data = _load_data(name, cfg, spec, mcfg, index_path, device)
    model, model_kwargs, weights = _build_model(name, arch, spec, cfg, mcfg, device)

    lr = spec.lr or cfg.lr
    optimizer = build_optimizer(cfg, model.parameters(), lr)
    micro_per_epoch = -(-len(data.train_ds) // (data.batch * world))
    steps_per_epoch = max(micro_per_epoch // cfg.grad_accum_steps, 1)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    schedule = LrSchedule(cfg, steps_per_epoch)

    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    state = _Progress(_fingerprint(name, spec, cfg, index_path, world))
    _resume(name, last_path, state, model, optimizer, schedule)
    net: nn.Module = torch.compile(model) if cfg.compile else model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[local_rank] if device.type == "cuda" else None)
    stepper = Stepper(net, optimizer, schedule, cfg, device, [lr] * len(optimizer.param_groups), state.step)

    def checkpoint(epoch: int) -> dict[str, Any]:
        return {"arch": arch, "model_kwargs": model_kwargs, "model_config": mcfg.to_dict(),
                "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "epoch": epoch, "best_auc": state.best_auc,
                "stale_epochs": state.stale, "history": state.history, "step": stepper.step,
                "fingerprint": state.fingerprint}

    for epoch in range(state.start_epoch, cfg.epochs):
        if cfg.early_stop_patience is not None and state.stale >= cfg.early_stop_patience:
            break
        # Seeding per epoch makes order, augmentation, mixing and dropout the same with or without a resume.
        torch.manual_seed(cfg.seed + epoch)
        gen = torch.Generator().manual_seed(cfg.seed + epoch)
        data.train_ds.set_epoch(epoch)
        order = epoch_order(data.train_ds.labels, cfg.seed, epoch, cfg.balanced_sampling, rank, world,
                            min(data.batch, len(data.train_ds) // world) or 1)
        loader = DataLoader(data.train_ds, sampler=order, **data.loader_kw)
        metrics = train_epoch(stepper, loader, steps_per_epoch, gen, f"{name} epoch {epoch + 1}/{cfg.epochs}",
                              progress and rank == 0)
        val_auc = float("nan")
        if rank == 0:
            probs = predict(model, data.select_loader, device)
            ok = ~np.isnan(probs)  # unreadable crops are excluded, not scored
            val = binary_metrics(data.select_labels[ok], probs[ok])
            val_auc = val["auc"]
            metrics.update(val_auc=val["auc"], val_log_loss=val["log_loss"])
        if world > 1:
            shared = [val_auc]
            dist.broadcast_object_list(shared, src=0)  # every rank takes the same plateau and stopping decisions
            val_auc = shared[0]
        schedule.epoch_end(val_auc)
        improved = np.isfinite(val_auc) and val_auc > state.best_auc
        state.best_auc, state.stale = (val_auc, 0) if improved else (state.best_auc, state.stale + 1)
        state.history.append({"epoch": epoch, **metrics})
        if rank == 0:
            _save(last_path, checkpoint(epoch))
            if improved or not best_path.is_file():
                # The best weights need no optimizer state (2x the weights under Adam): a third of the disk.
                _save(best_path, {k: v for k, v in checkpoint(epoch).items() if k not in ("optimizer", "schedule")})
            log.info("%s epoch %d/%d: loss %.4f, val AUC %.4f, %.1f img/s", name, epoch + 1, cfg.epochs,
                     metrics["train_loss"], val_auc, metrics["images_per_s"])
            if on_epoch:
                on_epoch(epoch, metrics)
        if world > 1:
            dist.barrier()

    if rank != 0:
        return TrainResult(name, out_dir, best_path, last_path, out_dir / "metrics.json",
                           out_dir / "predictions.parquet", {})
    return _export(name, arch, mcfg, model, data, state, cfg, world, device, out_dir, weights)


def model_spec(params: Params, name: str) -> ModelParams:
    """The params of model `name`, or a clear error naming the models there are."""
    if name not in params.models:
        raise StageError(f"model '{name}' is not under `models:` in params", f"choose one of {sorted(params.models)}")
    return params.models[name]


def run(params: Params, layout: Layout, name: str, on_epoch: EpochCallback | None = None,
        progress: bool = True) -> TrainResult:
    """The stage as `dfd stage train --model NAME` calls it."""
    return train_model(name, model_spec(params, name), params.train, layout.faces_index, layout.model_dir(name),
                       on_epoch, progress)
