"""Where each stage's outputs live on disk, derived from params (the stage contracts of DESIGN.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dfd.platform.config import Params


@dataclass(frozen=True)
class Layout:
    """Paths of every stage output, relative to the project root unless given absolute in params."""

    root: Path
    workdir: Path
    artifacts: Path
    dataset: str

    @classmethod
    def from_params(cls, params: Params, root: Path | None = None) -> Layout:
        base = (root or Path.cwd()).resolve()
        return cls(base, base / params.data.workdir, base / params.artifacts, params.data.name)

    def resolve(self, path: str | Path) -> Path:
        """A params path made absolute against the project root."""
        p = Path(path)
        return p if p.is_absolute() else self.root / p

    @property
    def manifest(self) -> Path:
        return self.workdir / "manifests" / f"{self.dataset}.parquet"

    @property
    def ingest_report(self) -> Path:
        return self.workdir / "manifests" / "ingest_report.json"

    @property
    def faces_dir(self) -> Path:
        return self.workdir / "faces" / self.dataset

    @property
    def faces_index(self) -> Path:
        return self.workdir / "faces" / "index.parquet"

    @property
    def faces_report(self) -> Path:
        return self.workdir / "faces" / "faces_report.json"

    @property
    def faces_samples(self) -> Path:
        return self.workdir / "faces" / "faces_samples.parquet"

    def model_dir(self, name: str) -> Path:
        return self.artifacts / "models" / name

    @property
    def ensemble_dir(self) -> Path:
        return self.artifacts / "ensemble"

    @property
    def reports_dir(self) -> Path:
        return self.artifacts / "reports"

    @property
    def registry_record(self) -> Path:
        return self.artifacts / "registry.json"
