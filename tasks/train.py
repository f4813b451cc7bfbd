"""train@M: train one registered detector on the face crops; checkpoint every epoch, resume, predict val and test."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dfd.augment import build_transform
from dfd.config import ModelParams, Params, TrainParams
from dfd.datasets import FaceCrops
from dfd.errors import StageError, TrainingError
from dfd.layout import Layout
from dfd.metrics import binary_metrics, frame_and_video_metrics
from dfd.reporting import write_json
from models import create_model, model_config
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


def pick_device(name: str) -> torch.device:
    """'auto' is CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _optimizer(cfg: TrainParams, params: Any, lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-save never leaves a torn checkpoint


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device) -> np.ndarray:
    """Probabilities of 'fake' for every item of `loader`, in order."""
    model.eval()
    out = [torch.sigmoid(model(x.to(device)).float().squeeze(1)).cpu() for x, _ in loader]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def _fingerprint(name: str, spec: ModelParams, cfg: TrainParams, index_path: Path) -> str:
    """What a checkpoint must share with this run to be resumed: params and the faces index content."""
    h = hashlib.sha256(json.dumps([name, spec.model_dump(mode="json"), cfg.model_dump(mode="json")],
                                  sort_keys=True).encode())
    h.update(index_path.read_bytes())
    return h.hexdigest()[:16]


def train_model(name: str, spec: ModelParams, cfg: TrainParams, index_path: Path, out_dir: Path,
                on_epoch: EpochCallback | None = None, progress: bool = True) -> TrainResult:
    """Train one detector; resume from `out_dir/last.pt` when it was made by the same params and data.

    Args:
        name: The model's key under `models:` in params (also its output folder).
        spec: Its params (architecture, input size, learning rate, ...).
        cfg: Shared training params.
        index_path: The faces index; crops are relative to its folder.
        out_dir: Where best.pt, last.pt, metrics.json and predictions.parquet go.
        on_epoch: Called after every epoch with (epoch, metrics), e.g. to log to MLflow.
        progress: Show a per-step progress bar (off when several models train at once: one log line per epoch).

    Raises:
        TrainingError: On a NaN or infinite loss, naming the epoch and step.
        StageError: When the faces index is missing or a split is empty.
    """
    if not index_path.is_file():
        raise StageError(f"faces index not found: {index_path}", "run the faces stage first (`dfd stage faces`)")
    arch = spec.arch or name
    mcfg = model_config(arch, spec.input_size)
    device = pick_device(cfg.device)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    index = pd.read_parquet(index_path)
    splits = {s: index[index["split"] == s] for s in ("train", "val", "test")}
    for s in ("train", "val"):
        if splits[s].empty:
            raise StageError(f"the faces index has no '{s}' crops", "add identities or change ingest split shares")
    root = index_path.parent
    train_ds = FaceCrops(splits["train"], root, build_transform(cfg.augment, mcfg, train=True))
    eval_tf = build_transform([], mcfg, train=False)
    batch = spec.batch_size or cfg.batch_size
    loader_kw: dict[str, Any] = {"batch_size": batch, "num_workers": cfg.num_workers,
                                 "pin_memory": device.type == "cuda", "persistent_workers": cfg.num_workers > 0}
    # Validation and test only: the ensemble is fitted on validation and judged on test.
    eval_loaders = {s: DataLoader(FaceCrops(splits[s], root, eval_tf), shuffle=False, **loader_kw)
                    for s in ("val", "test") if not splits[s].empty}

    torch.manual_seed(cfg.seed)
    model_kwargs = {"input_size": mcfg.input_size, **spec.kwargs}
    model = create_model(arch, **model_kwargs).to(device)
    if spec.pretrained:
        from models.weights import load_pretrained

        load_pretrained(model, Path(spec.pretrained))
    lr = spec.lr or cfg.lr
    optimizer = _optimizer(cfg, model.parameters(), lr)
    steps_per_epoch = len(train_ds) // batch + (len(train_ds) % batch > 0)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs * steps_per_epoch, 1))
    loss_fn = nn.BCEWithLogitsLoss()

    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    fingerprint = _fingerprint(name, spec, cfg, index_path)
    start_epoch, best_auc, history = 0, -1.0, []
    if last_path.is_file():
        ckpt = load_checkpoint(last_path)
        if ckpt.get("fingerprint") == fingerprint:
            model.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            start_epoch, best_auc, history = ckpt["epoch"] + 1, ckpt["best_auc"], ckpt["history"]
            log.info("%s: resuming after epoch %d from %s", name, ckpt["epoch"], last_path)
        else:
            log.info("%s: %s was made with other params or data; starting over", name, last_path)

    def state(epoch: int) -> dict[str, Any]:
        return {"arch": arch, "model_kwargs": model_kwargs, "model_config": mcfg.to_dict(),
                "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "best_auc": best_auc, "history": history,
                "fingerprint": fingerprint}

    for epoch in range(start_epoch, cfg.epochs):
        # Seeding per epoch makes shuffling and dropout the same whether or not the run was resumed.
        gen = torch.Generator().manual_seed(cfg.seed + epoch)
        torch.manual_seed(cfg.seed + epoch)
        train_ds.transform.set_random_seed(cfg.seed + epoch)  # albumentations keeps its own generator
        loader = DataLoader(train_ds, shuffle=True, generator=gen, drop_last=len(train_ds) > batch, **loader_kw)
        model.train()
        t0, seen, total_loss = time.perf_counter(), 0, 0.0
        bar = tqdm(loader, desc=f"{name} epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch, leave=False,
                   disable=not progress)
        for step, (x, y) in enumerate(bar):
            if step >= steps_per_epoch:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = loss_fn(model(x).squeeze(1), y)
            if not torch.isfinite(loss):
                raise TrainingError(f"{name}: loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}",
                                    "lower the learning rate or check the inputs; last.pt holds the previous epoch")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(x)
            total_loss += loss.item() * len(x)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        elapsed = time.perf_counter() - t0
        val_prob = predict(model, eval_loaders["val"], device)
        val = binary_metrics(splits["val"]["label"].to_numpy(), val_prob)
        val_auc = val["auc"] if np.isfinite(val["auc"]) else 0.0
        metrics = {"train_loss": total_loss / max(seen, 1), "val_auc": val["auc"], "val_log_loss": val["log_loss"],
                   "lr": optimizer.param_groups[0]["lr"], "images_per_s": seen / max(elapsed, 1e-9)}
        history.append({"epoch": epoch, **metrics})
        improved = val_auc > best_auc
        if improved:
            best_auc = val_auc
        _save(last_path, state(epoch))
        if improved:
            _save(best_path, state(epoch))
        log.info("%s epoch %d/%d: loss %.4f, val AUC %.4f, %.1f img/s", name, epoch + 1, cfg.epochs,
                 metrics["train_loss"], val["auc"], metrics["images_per_s"])
        if on_epoch:
            on_epoch(epoch, metrics)

    best = load_checkpoint(best_path)
    model.load_state_dict(best["state_dict"])
    frames = []
    for s, dl in eval_loaders.items():
        df = splits[s][["sample_id", "frame", "split", "label"]].copy()
        df["prob"] = predict(model, dl, device)
        frames.append(df)
    preds = pd.concat(frames, ignore_index=True)
    preds["model"] = name
    pred_path = out_dir / "predictions.parquet"
    preds.to_parquet(pred_path, index=False)
    summary = {"model": name, "arch": arch, "model_config": mcfg.to_dict(), "best_epoch": best["epoch"],
               "best_val_auc": best["best_auc"], "epochs": cfg.epochs, "history": history,
               "parameters": sum(p.numel() for p in model.parameters()),
               "val": frame_and_video_metrics(preds[preds["split"] == "val"], 0.5)}
    if (preds["split"] == "test").any():
        summary["test"] = frame_and_video_metrics(preds[preds["split"] == "test"], 0.5)
    metrics_path = write_json(out_dir / "metrics.json", summary)
    return TrainResult(name, out_dir, best_path, last_path, metrics_path, pred_path, summary)


def run(params: Params, layout: Layout, name: str, on_epoch: EpochCallback | None = None,
        progress: bool = True) -> TrainResult:
    """The stage as `dfd stage train --model NAME` and the flow call it."""
    if name not in params.models:
        raise StageError(f"model '{name}' is not under `models:` in params", f"choose one of {sorted(params.models)}")
    return train_model(name, params.models[name], params.train, layout.faces_index, layout.model_dir(name), on_epoch,
                       progress)
