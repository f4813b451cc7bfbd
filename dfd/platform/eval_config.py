"""The evaluate stage's params (`evaluate:`): the gate, the champion test, attacks, further datasets.

Split from `dfd/platform/config.py` (which re-exports every class here) to keep each schema module small.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dfd.platform.config_base import _Section


class ChampionParams(_Section):
    """Champion/challenger: the candidate against the current `production` version, on the same test samples."""

    # not_worse (non-inferiority): pass only when the one-sided (1 - alpha) lower bound of AUC(candidate) -
    # AUC(champion) is above -margin (a retrain on new data may legitimately tie, but "not shown worse" on a small
    # sample is no evidence); better (superiority): only when that bound is above 0; off: skip the comparison.
    policy: Literal["not_worse", "better", "off"] = "not_worse"
    alpha: float = Field(0.05, gt=0, lt=1)  # one-sided level of the cluster bootstrap's lower bound
    # Largest AUC loss accepted as "not worse": 0.01 is below what a team notices in production. At a test AUC of
    # 0.95 the one-sided 95% half-width is about 0.041 on 62 videos and shrinks as 1/sqrt(videos): a tie clears
    # -0.01 only from about 1,000 independent videos on (2,000 leave room for a real, small loss).
    margin: float = Field(0.01, ge=0, lt=1)
    bootstrap: int = Field(1000, ge=100)  # resamples: 1000 puts the p-value's own error near 0.01 at alpha 0.05
    seed: int = 1337
    # The champion is re-scored on the test videos: a seeded sample of whole videos, classes interleaved. 2,000
    # videos is what the margin above needs (see there); at 32 frames that is 64,000 crops per member, minutes on
    # a GPU, about an hour on a CPU: lower it (and raise the margin) where the champion is scored on a CPU.
    max_videos: int = Field(2000, ge=2)
    # Below this many identity clusters in either class the check answers "too few to decide" instead of a verdict:
    # at a true difference of 0 the one-sided 95% bound came out above 0 in 16% (bootstrap) / 11% (DeLong, normal)
    # of simulated runs with 2 clusters per class, 12% / 10% with 5, 6% / 6% with 30 (issue 24): from about 20 the
    # error stays near its nominal 5% (tests/unit/test_champion_stats.py checks it at 20 over 300 seeds).
    min_clusters_per_class: int = Field(20, ge=2)


class GateParams(_Section):
    """What a candidate must meet to be promoted (checked by the register stage); every check is off when None."""

    min_auc: float | None = 0.90
    min_video_auc: float | None = 0.90
    max_eer: float | None = 0.15
    min_accuracy: float | None = 0.80
    # The served P(fake) must mean what it says: Kumar et al.'s debiased L2-ECE per video on test (evaluation/ece.py).
    # 0.10 kept: a perfectly calibrated model reads above it in ~10% of runs at 80 videos, <5% at 200, never at 2,000
    # (simulated, tests/unit/test_ece_debiased.py); one off by 0.05 reads 0.046 on average at 2,000 videos.
    max_ece: float | None = 0.10
    # Largest AUC drop allowed under a perturbation, over every level of it: by name (adversarial fgsm/pgd too) ...
    max_auc_drop: dict[str, float] = Field(default_factory=dict)
    # ... and for every other non-adversarial perturbation measured (white-box attacks are built to break a model:
    # bound them by name when wanted).
    max_auc_drop_default: float | None = 0.15
    max_drift_share: float | None = 0.5  # share of drifted columns, training data vs test (Evidently)
    # Largest share of test files whose members disagree (agreement below ensemble.agreement_threshold: served as
    # `uncertain`). Off by default: how often members disagree depends on how many there are and how alike they
    # were trained, so a team sets it from its own history (the evaluate stage reports the share either way).
    max_uncertain_share: float | None = Field(None, ge=0, le=1)
    champion: ChampionParams = ChampionParams()


class AdversarialParams(_Section):
    """White-box attacks on the differentiable ensemble (dfd/evaluation/adversarial.py)."""

    attacks: list[Literal["fgsm", "pgd"]] = Field(default_factory=lambda: ["fgsm", "pgd"])  # [] turns them off
    # L-inf budgets in 8-bit pixel steps (x/255): 1-2 are invisible, 8 is the usual "strong" benchmark budget.
    epsilons: list[float] = Field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0])
    pgd_steps: int = Field(10, ge=1)  # Madry et al.'s 10 steps of eps/4 reach most of what 100 steps reach
    pgd_step_ratio: float = Field(0.25, gt=0)  # step size as a share of epsilon
    max_crops: int = Field(256, ge=1)  # a sample of the test crops: PGD costs pgd_steps forward+backward passes each
    # margin: the fused logit pushed towards the wrong class (its gradient never vanishes, even on a saturated
    # model); bce: cross-entropy with logits (in float64), the textbook FGSM loss.
    loss: Literal["margin", "bce"] = "margin"


class EvalDatasetParams(_Section):
    """A further dataset the ensemble is scored on (cross-dataset evaluation): ingested like the training set."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # names its folder: <data.workdir>/eval/<name>/
    adapter: str = "folder"  # dataset layout adapter, as `data.adapter`
    root: str  # dataset root
    compression: str = "c23"  # adapter options, as in `data:`
    methods: list[str] | None = None
    splits_dir: str | None = None
    splits: list[Literal["train", "val", "test"]] | None = None  # None: every sample (the model never saw them)
    min_face_share: float | None = None  # as faces.min_face_share; None: off (hard test sets may be low)


class EvaluateParams(_Section):
    """Evaluation of the ensemble on the test split, on further datasets, under perturbations and attacks."""

    gate: GateParams = GateParams()
    threshold: Literal["val_eer", "fixed"] = "val_eer"  # decision threshold: EER point on validation
    fixed_threshold: float = 0.5
    device: str = "auto"  # where robustness, attacks and embeddings run; "auto" picks CUDA when present
    batch_size: int = Field(64, ge=1)  # crops held in memory at once (plus one perturbed copy)
    # Perturbations of the test crops, each at several levels; [] turns one off (dfd/evaluation/robustness.py).
    robustness: dict[str, list[float]] = Field(default_factory=lambda: {
        "jpeg": [90, 70, 50, 30],  # JPEG quality
        "gauss_noise": [4, 8, 16],  # noise sigma in 8-bit steps
        "gauss_blur": [0.5, 1.0, 2.0],  # blur sigma in pixels of the crop
        "brightness": [20, 40, 60],  # added to every pixel (8-bit steps)
        "contrast": [0.8, 0.6, 0.4],  # scale of the deviations from the mean
        "downscale": [0.75, 0.5, 0.25],  # resized to this share of the side and back
        # Share of pixels set to black or white (impulse noise: dead/stuck pixels, bit errors in transmission):
        # 1% is visible speckle, 5% heavy; both survive no codec, so they probe the members' texture cues directly.
        "salt_pepper": [0.01, 0.05],
    })
    robustness_max_crops: int = Field(2000, ge=1)  # a sample of the test crops keeps the stage minutes long
    adversarial: AdversarialParams = AdversarialParams()
    # Evidently reports: training crops (reference) vs each evaluation set (current), and classification quality.
    drift_report: bool = True
    drift_max_crops: int = Field(2000, ge=1)  # per side; statistics and embeddings of a sample are enough to compare
    drift_member: str | None = None  # whose penultimate layer gives the embeddings; None: the heaviest member
    drift_embedding_dims: int = Field(8, ge=1)  # PCA components of the embeddings, fitted on the reference
    # Cross-dataset evaluation: further datasets, each ingested and face-extracted with the training set's code.
    datasets: list[EvalDatasetParams] = Field(default_factory=list)
    # Without real fakes (test split or evaluate.datasets) the gate would judge SBI pseudo-fakes only, which a
    # real-only model was trained on: refused unless asked for, and then the model card says so.
    allow_synthetic_test: bool = False

    @model_validator(mode="after")
    def _unique_dataset_names(self) -> EvaluateParams:
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"evaluate.datasets names must be unique (got {names})")
        return self
