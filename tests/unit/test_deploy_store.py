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
    safe_rel,
    version_files,
    version_id,
)
from dfd.serving.deploy_trust import KEY_ENV, check_manifest, deploy_key, sign, verify

VID = "0123456789abcdef"


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
    version = tmp_path / "t" / "versions" / VID
    version.mkdir(parents=True)
    (version / "MLmodel").write_text("m")
    (version / "README.md").write_text("the user's note")
    store = FolderStore(str(tmp_path / "t"))
    store.write_pointer(new_pointer(VID, [VID], {}))
    assert (tmp_path / "t" / "current" / "MLmodel").read_text() == "m"
    for bad in (str(outside), "../../outside.txt"):  # a tampered manifest: none of its version is deleted
        (version / MANIFEST).write_text(json.dumps({"files": {"MLmodel": "x", bad: "y"}}))
        assert version_files(store, VID) == []
        store.delete([*version_files(store, VID), f"versions/{VID}/{bad}"])
        assert outside.read_text() == "not ours" and (version / "MLmodel").is_file()
    store.delete([f"versions/{VID}/../../outside.txt", str(outside)])  # named straight to delete: refused too
    assert outside.read_text() == "not ours"
    (version / MANIFEST).write_text(json.dumps({"files": {"MLmodel": "x"}}))
    store.delete(version_files(store, VID))
    assert sorted(p.name for p in version.iterdir()) == ["README.md"]


@pytest.mark.parametrize("rel", ["../x", "a/../b", "lnk/x/../../..", "/etc/passwd", "a\\b", "", "a//b", "a/",
                                 "./a", "C:x", "a/\0b", 7])
def test_safe_rel_refuses_every_path_that_could_leave_the_version(rel: object) -> None:
    with pytest.raises(DeployError, match="unsafe path"):
        safe_rel(rel)


def test_safe_rel_refuses_symbolic_links_on_the_way(tmp_path: Path) -> None:
    root = tmp_path / "v"
    (root / "model").mkdir(parents=True)
    (root / "model" / "MLmodel").write_text("m")
    assert safe_rel("model/MLmodel", root) == "model/MLmodel"
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("s")
    (root / "lnk").symlink_to(tmp_path / "outside")
    (root / "file-link").symlink_to(tmp_path / "outside" / "secret")
    for rel in ("lnk/secret", "file-link"):
        with pytest.raises(DeployError, match="symbolic link"):
            safe_rel(rel, root)


@pytest.mark.parametrize("current", ["..", "", "../../etc", "a/b", "0123456789abcdeF", "0123456789abcdef0"])
def test_a_pointer_naming_anything_but_a_version_id_is_refused(tmp_path: Path, current: str) -> None:
    store = FolderStore(str(tmp_path))
    (tmp_path / POINTER).write_text(json.dumps({**new_pointer(VID, [VID], {}), "current": current}))
    with pytest.raises(DeployError, match="not a dfd version id"):
        read_pointer(store)
    (tmp_path / POINTER).write_text(json.dumps({**new_pointer(VID, [VID, current], {})}))
    with pytest.raises(DeployError, match="not a dfd version id"):
        read_pointer(store)


def test_signatures_hold_only_for_the_key_and_the_bytes_signed(monkeypatch: pytest.MonkeyPatch) -> None:
    key, manifest = b"k" * 32, b'{"files": {}}'
    pointer = sign(new_pointer(VID, [VID], {"uri": "models:/m@production"}), manifest, key)
    verify(pointer, key, "T")
    check_manifest(pointer, manifest, "T")
    with pytest.raises(DeployError, match="not the one that was signed"):
        check_manifest(pointer, manifest + b" ", "T")
    for altered in ({**pointer, "current": "f" * 16}, {**pointer, "history": []},
                    {**pointer, "manifest_sha256": "0" * 64}, {**pointer, "signature": pointer["signature"][:-1]}):
        with pytest.raises(DeployError, match="signature does not match"):
            verify(altered, key, "T")
    with pytest.raises(DeployError, match="signature does not match"):
        verify(pointer, b"j" * 32, "T")
    unsigned = {k: v for k, v in pointer.items() if k != "signature"}
    with pytest.raises(DeployError, match=r"not signed.*--migrate"):
        verify(unsigned, key, "T")
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(DeployError, match=f"{KEY_ENV} is not set"):
        deploy_key()
    assert deploy_key(required=False) is None
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(DeployError, match="at least 32"):
        deploy_key()
