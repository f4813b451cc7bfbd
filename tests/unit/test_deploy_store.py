"""The deployment layout's rules on tiny folders (no model): what counts as ours, and deleting only that."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dfd.platform.config import StorageParams
from dfd.serving.deploy_store import (
    MANIFEST,
    POINTER,
    DeployError,
    FolderStore,
    new_pointer,
    open_store,
    read_pointer,
    version_files,
    version_id,
)


def test_version_ids_follow_the_file_list_only() -> None:
    a = {"MLmodel": "1" * 64, "x/best.pt": "2" * 64}
    assert version_id(a) == version_id(dict(reversed(a.items()))) and len(version_id(a)) == 16
    assert version_id(a) != version_id({**a, "x/best.pt": "3" * 64})


def test_a_bucket_root_is_refused_before_any_request() -> None:
    with pytest.raises(DeployError, match="root of bucket b"):
        open_store("s3://b/", StorageParams(endpoint_url="http://127.0.0.1:9"))


def test_what_a_folder_holds_decides_whether_it_is_ours(tmp_path: Path) -> None:
    store = FolderStore(str(tmp_path / "t"))
    assert store.kind() == "empty"
    (tmp_path / "t" / "versions").mkdir(parents=True)
    assert store.kind() == "empty"  # an interrupted first deploy of ours
    (tmp_path / "t" / MANIFEST).write_text("{}")
    assert store.kind() == "legacy"
    (tmp_path / "t" / MANIFEST).unlink()
    (tmp_path / "t" / "notes.txt").write_text("theirs")
    with pytest.raises(DeployError, match=r"notes\.txt, which dfd did not write"):
        store.kind()
    (tmp_path / "t" / "notes.txt").unlink()
    (tmp_path / "t" / POINTER).write_text(json.dumps({"format": "other"}))
    assert store.kind() == "deployment"
    with pytest.raises(DeployError, match="not a dfd deployment pointer"):
        read_pointer(store)


def test_pruning_deletes_only_manifest_files_inside_the_target(tmp_path: Path) -> None:
    """A tampered manifest naming `/abs/path` or `../x` deletes nothing outside; a file it does not list stays."""
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    version = tmp_path / "t" / "versions" / "v1"
    version.mkdir(parents=True)
    (version / "MLmodel").write_text("m")
    (version / "README.md").write_text("the user's note")
    files = {"MLmodel": "x", str(outside): "y", "../../outside.txt": "z"}
    (version / MANIFEST).write_text(json.dumps({"files": files}))
    store = FolderStore(str(tmp_path / "t"))
    store.write_pointer(new_pointer("v1", ["v1"], {}))
    assert (tmp_path / "t" / "current" / "MLmodel").read_text() == "m"
    store.delete(version_files(store, "v1"))
    assert outside.read_text() == "not ours"
    assert sorted(p.name for p in version.iterdir()) == ["README.md"]
