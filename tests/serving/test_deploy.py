"""`dfd deploy-model`: to a folder and to a real S3-compatible server (moto), checked, tamper-evident, versioned under
a pointer written last, and never deleting what it did not write."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

import dfd.serving.deploy as deploy
from dfd.cli import main
from dfd.platform.audit import AuditLog
from dfd.platform.config import StorageParams
from dfd.platform.errors import StorageError
from dfd.serving.deploy import MANIFEST, DeployError, check_deployment, deploy_model, migrate, sha256, write_manifest
from dfd.serving.deploy_store import POINTER, version_id
from dfd.serving.deploy_trust import KEY_ENV, sign

KEY = "deploy-key-for-tests-0123456789abcdef"


@pytest.fixture(autouse=True)
def deploy_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """Deployments are signed: the key every deploy and every check in these tests holds."""
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


@pytest.fixture
def distinct(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each deploy gets one extra small file in the model folder (MLflow ignores it), so each is a new version."""
    real, count = deploy._download_model, [0]

    def download(uri: str, tracking_uri: str, dest: Path) -> dict[str, Any]:
        source = real(uri, tracking_uri, dest)
        count[0] += 1
        (dest / "notes").mkdir(exist_ok=True)
        (dest / "notes" / "build.txt").write_text(f"build {count[0]}\n")
        return source

    monkeypatch.setattr(deploy, "_download_model", download)
    return count


def _pointer(target: Path) -> dict[str, Any]:
    return json.loads((target / POINTER).read_text())


def test_deploy_to_folder_and_tamper(registered, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(registered.root)
    target = tmp_path / "deployed" / "model"
    assert main(["--params", str(registered.root / "extra.yaml"), "deploy-model", "--to", str(target)]) == 0
    assert "health check passed" in capsys.readouterr().out
    vid = _pointer(target)["current"]
    version = target / "versions" / vid
    assert (target / "current").resolve() == version.resolve() and (target / "current" / "MLmodel").is_file()
    audit = AuditLog(registered.root / "artifacts" / "audit.jsonl").read()[-1]  # who deployed what where
    assert audit["action"] == "deploy" and audit["version_id"] == vid and audit["target"] == str(target)
    assert audit["model"]["version"] == registered.version and "@" in audit["by"]
    manifest = json.loads((version / MANIFEST).read_text())
    assert manifest["source"]["version"] == registered.version and manifest["source"]["tags"]
    assert "MLmodel" in manifest["files"] and any(f.endswith("best.pt") for f in manifest["files"])
    assert version_id(manifest["files"]) == vid
    assert sorted(p.name for p in target.iterdir()) == ["current", POINTER, "versions"]  # no staging left
    assert check_deployment(str(target), StorageParams())["health_check"]["scores"]
    # One flipped byte in a checkpoint fails the check, by name.
    ckpt = next(version.rglob("best.pt"))
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    with pytest.raises(DeployError, match="checksum mismatch"):
        check_deployment(str(target), StorageParams())
    assert main(["deploy-model", "--to", str(target), "--verify"]) == 2


def test_failed_check_leaves_the_pointer_and_removes_only_what_it_wrote(registered, tmp_path: Path, monkeypatch,
                                                                        distinct: list[int]) -> None:
    target = tmp_path / "model"
    deploy_model(registered.uri, registered.tracking_uri, str(target), StorageParams())
    before = (target / POINTER).read_text()
    (target / "versions" / "README.txt").write_text("ours, not dfd's\n")

    def broken(folder: Path) -> list[float]:
        raise DeployError(f"the model copied to {folder} does not load")

    monkeypatch.setattr(deploy, "health_check", broken)
    with pytest.raises(DeployError):
        deploy_model(registered.uri, registered.tracking_uri, str(target), StorageParams())
    assert (target / POINTER).read_text() == before and distinct[0] == 2
    assert {p.name for p in (target / "versions").iterdir()} == {"README.txt", json.loads(before)["current"]}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_folder_targets_refuse_foreign_content_and_migrate_the_old_layout(registered, tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    monkeypatch.chdir(tmp_path)  # the CLI's project (its audit log) is here, not the repository
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DeployError, match=r"notes\.txt, which dfd did not write"):
        deploy_model(registered.uri, registered.tracking_uri, str(foreign), StorageParams())
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    # Today's layout: the model files and the manifest straight in the folder (plus a file of the user's).
    legacy = tmp_path / "legacy"
    deploy._download_model(registered.uri, registered.tracking_uri, legacy)
    files = write_manifest(legacy, {"uri": registered.uri, "name": "m", "version": "1", "alias": None})["files"]
    (legacy / "notes.txt").write_text("keep me")
    with pytest.raises(DeployError, match="--migrate"):
        deploy_model(registered.uri, registered.tracking_uri, str(legacy), StorageParams())
    assert main(["deploy-model", "--to", str(legacy), "--migrate"]) == 0
    assert "migrated" in capsys.readouterr().out
    assert sorted(p.name for p in legacy.iterdir()) == ["current", POINTER, "notes.txt", "versions"]
    assert _pointer(legacy)["current"] == version_id(files)
    assert check_deployment(str(legacy), StorageParams())["health_check"]["scores"]


def _s3(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def _version_keys(client: Any, bucket: str, prefix: str, vid: str) -> set[str]:
    base = f"{prefix}/versions/{vid}/"
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base)
    return {o["Key"][len(base):] for page in pages for o in page.get("Contents", [])}


def test_deploy_to_s3_keeps_unrelated_objects_and_refuses_foreign_prefixes(registered, s3_server: str,
                                                                           distinct: list[int]) -> None:
    client = _s3(s3_server)
    client.create_bucket(Bucket="team")
    client.put_object(Bucket="team", Key="notes.txt", Body=b"beside the target")
    client.put_object(Bucket="team", Key="models/other/x.bin", Body=b"another team's model")
    client.put_object(Bucket="team", Key="data/keep.csv", Body=b"a,b")
    cfg = StorageParams(endpoint_url=s3_server, max_attempts=2)
    with pytest.raises(DeployError, match="root of bucket team"):
        deploy_model(registered.uri, registered.tracking_uri, "s3://team", cfg)
    with pytest.raises(DeployError, match=r"keep\.csv, which dfd did not write"):
        deploy_model(registered.uri, registered.tracking_uri, "s3://team/data", cfg)
    first = deploy_model(registered.uri, registered.tracking_uri, "s3://team/models/prod", cfg)
    assert first["health_check"]["scores"] and first["source"]["version"] == registered.version
    vid = first["version_id"]
    pointer = json.loads(client.get_object(Bucket="team", Key=f"models/prod/{POINTER}")["Body"].read())
    assert pointer["current"] == vid and pointer["history"] == [vid]
    assert _version_keys(client, "team", "models/prod", vid) == {*first["files"], MANIFEST}
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="team")["Contents"]}
    assert {"notes.txt", "models/other/x.bin", "data/keep.csv"} <= keys
    assert not [k for k in keys if ".staging-" in k or ".dfd-probe-" in k]
    assert check_deployment("s3://team/models/prod", cfg)["version_id"] == vid
    key = f"models/prod/versions/{vid}/MLmodel"
    client.put_object(Bucket="team", Key=key, Body=b"tampered")
    with pytest.raises(DeployError, match="checksum mismatch"):
        check_deployment("s3://team/models/prod", cfg)


def test_a_reader_of_the_pointer_sees_the_old_or_the_new_set_never_a_mix(registered, s3_server: str,
                                                                          distinct: list[int]) -> None:
    """The deploy pauses after files it writes (every 40th, and the manifest, written last before the pointer); at
    each pause a reader resolves the pointer and finds every file that version's manifest lists (the old version
    until the pointer moves). Then `keep=1` prunes the old version, except a file dfd did not write."""
    client = _s3(s3_server)
    client.create_bucket(Bucket="atomic")
    cfg = StorageParams(endpoint_url=s3_server, max_attempts=2)
    old = deploy_model(registered.uri, registered.tracking_uri, "s3://atomic/m", cfg)["version_id"]
    client.put_object(Bucket="atomic", Key=f"m/versions/{old}/README.md", Body=b"the user's note")
    paused, resume = threading.Event(), threading.Event()
    seen: list[str] = []

    written = [0]

    def hook(rel: str) -> None:
        written[0] += 1
        if written[0] % 40 and not rel.endswith(MANIFEST):
            return
        paused.set()
        assert resume.wait(30)
        resume.clear()

    def read_complete_set() -> str:
        pointer = json.loads(client.get_object(Bucket="atomic", Key=f"m/{POINTER}")["Body"].read())
        vid = pointer["current"]
        manifest = json.loads(client.get_object(Bucket="atomic", Key=f"m/versions/{vid}/{MANIFEST}")["Body"].read())
        assert set(manifest["files"]) | {MANIFEST} <= _version_keys(client, "atomic", "m", vid)
        return vid

    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(
        deploy_model(registered.uri, registered.tracking_uri, "s3://atomic/m", cfg, keep=1, on_file=hook)))
    worker.start()
    while worker.is_alive() or paused.is_set():
        if paused.wait(0.2):
            paused.clear()
            seen.append(read_complete_set())
            resume.set()
    worker.join()
    new = result["version_id"]
    assert new != old and len(seen) >= 3 and set(seen) == {old}  # written while the old set was named
    assert read_complete_set() == new and result["removed"] == [old]
    assert _version_keys(client, "atomic", "m", old) == {"README.md"}  # only manifest-listed files were pruned


def test_serve_from_loads_a_checked_private_copy(registered, tmp_path: Path, monkeypatch, capsys) -> None:
    """`dfd serve --from DIR`: the server is handed a private folder whose files match the manifest; a tampered
    deployment never reaches it."""
    import dfd.serving.server as server

    target = tmp_path / "dep"
    vid = deploy_model(registered.uri, registered.tracking_uri, str(target), StorageParams())["version_id"]
    got: list[tuple[str, list[str]]] = []

    def fake_serve(uri: str, tracking_uri: str, cfg: Any, host: str, port: int, *rest: Any) -> None:
        copy = Path(uri)
        got.append((uri, sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file())))

    monkeypatch.setattr(server, "serve", fake_serve)
    assert main(["serve", "--from", str(target)]) == 0
    ((uri, files),) = got
    assert not Path(uri).resolve().is_relative_to(target.resolve()) and not os.path.exists(uri)  # gone at exit
    expected = json.loads((target / "versions" / vid / MANIFEST).read_text())["files"]
    assert files == sorted([*expected, MANIFEST])
    assert f"version {vid}" in capsys.readouterr().out
    ckpt = next((target / "versions" / vid).rglob("best.pt"))
    ckpt.write_bytes(ckpt.read_bytes() + b"\0")
    assert main(["serve", "--from", str(target)]) == 2
    assert "checksum mismatch" in capsys.readouterr().err and len(got) == 1


def test_unreachable_s3_fails_clearly(registered) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once released: nothing listens there
    cfg = StorageParams(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=2, connect_timeout_s=1.0)
    with pytest.raises(StorageError, match=f"127.0.0.1:{port}"):
        deploy_model(registered.uri, registered.tracking_uri, "s3://models/x", cfg)


def test_the_tracker_stores_tags_and_params_without_credentials(registered) -> None:
    """Through the real MLflow service object (the registered project's store): what a run records names hosts,
    never keys."""
    from dfd.platform.tracking import Tracker

    tracker = Tracker(registered.tracking_uri, "uris", registered.root / "mlruns")
    run = tracker.start_run("r", tags={"source": "http://bob:hunter2@mlflow:5000/x"})
    tracker.set_tags(run, {"remote": "s3://k:hunter2@minio:9000/b"})
    tracker.log_params(run, {"mlflow": {"tracking_uri": "postgresql://dfd:hunter2@db/mlflow"}})
    data = tracker.client.get_run(run).data
    recorded = [*data.tags.values(), *data.params.values()]
    assert "http://mlflow:5000/x" in recorded and "postgresql://db/mlflow" in recorded
    assert not [v for v in recorded if "hunter2" in v or "bob" in v]


def test_an_old_layout_s3_deployment_is_refused_then_migrated(registered, s3_server: str, tmp_path: Path) -> None:
    from dfd.platform.storage import upload_dir
    from dfd.serving.deploy import migrate

    client = _s3(s3_server)
    client.create_bucket(Bucket="legacy")
    cfg = StorageParams(endpoint_url=s3_server, max_attempts=2)
    local = tmp_path / "m"
    deploy._download_model(registered.uri, registered.tracking_uri, local)
    files = write_manifest(local, {"uri": registered.uri, "name": "m", "version": "1", "alias": None})["files"]
    upload_dir(local, "s3://legacy/prod", cfg)  # today's layout: files and manifest straight under the prefix
    client.put_object(Bucket="legacy", Key="prod/notes.txt", Body=b"the user's")
    with pytest.raises(DeployError, match="--migrate"):
        deploy_model(registered.uri, registered.tracking_uri, "s3://legacy/prod", cfg)
    assert migrate("s3://legacy/prod", cfg)["version_id"] == version_id(files)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="legacy", Prefix="prod/")
    top = {o["Key"].split("/")[1] for page in pages for o in page.get("Contents", [])}
    assert top == {"notes.txt", POINTER, "versions"}  # the old files moved; the user's stayed
    assert check_deployment("s3://legacy/prod", cfg)["version_id"] == version_id(files)


def _recording_serve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Any]:
    """`dfd serve` replaced by a recorder of what it was handed: the folder, loaded as the server loads it."""
    import dfd.serving.server as server
    from dfd.serving.registry_model import load

    got: list[Any] = []
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the CLI runs on defaults, not on the repository's
    monkeypatch.setattr(server, "serve", lambda uri, tracking_uri, *rest: got.append(load(uri, tracking_uri)))
    return got


def _forge(target: Path, vid: str, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """What someone with write access to the target and no key can do: a copy of the current version plus a file
    of theirs, a manifest that matches it, the id it hashes to, and a pointer naming it."""
    evil = tmp_path / "evil"
    shutil.copytree(target / "versions" / vid, evil)
    (evil / "payload.py").write_text("import os\nos.system('id')\n")
    manifest = json.loads((evil / MANIFEST).read_text())
    manifest["files"]["payload.py"] = sha256(evil / "payload.py")
    (evil / MANIFEST).write_text(json.dumps(manifest))
    evil_vid = version_id(manifest["files"])
    evil.rename(target / "versions" / evil_vid)
    pointer = {**_pointer(target), "current": evil_vid, "path": f"versions/{evil_vid}", "history": [evil_vid, vid]}
    return evil_vid, pointer


def test_a_version_written_by_hand_into_the_target_is_refused(registered, tmp_path: Path, monkeypatch,
                                                              capsys) -> None:
    target = tmp_path / "dep"
    vid = deploy_model(registered.uri, registered.tracking_uri, str(target), StorageParams())["version_id"]
    got = _recording_serve(monkeypatch, tmp_path)
    evil_vid, pointer = _forge(target, vid, tmp_path)
    raw = (target / "versions" / evil_vid / MANIFEST).read_bytes()
    forgeries = {
        "the old signature kept": pointer,
        "signed with a key of their own": sign({k: v for k, v in pointer.items() if k != "signature"}, raw,
                                               b"attacker-key-0123456789abcdef0123"),
        "the signature dropped": {k: v for k, v in pointer.items() if k not in ("signature", "manifest_sha256")},
    }
    for what, forged in forgeries.items():
        (target / POINTER).write_text(json.dumps(forged))
        assert main(["serve", "--from", str(target)]) == 2, what
        err = capsys.readouterr().err
        assert "not signed" in err or "signature does not match" in err, (what, err)
        with pytest.raises(DeployError, match=r"not signed|signature does not match"):
            check_deployment(str(target), StorageParams())
    assert got == []
    # The history is signed too; the pointer as signed, naming the real version, is served (never the forged one).
    original = {**pointer, "current": vid, "path": f"versions/{vid}", "history": [vid]}
    (target / POINTER).write_text(json.dumps({**original, "history": [vid, evil_vid]}))
    assert main(["serve", "--from", str(target)]) == 2 and "signature does not match" in capsys.readouterr().err
    (target / POINTER).write_text(json.dumps(original))
    assert main(["serve", "--from", str(target)]) == 0
    assert f"version {vid}: " in capsys.readouterr().out and len(got) == 1


def test_an_unsigned_deployment_is_refused_until_migrate_signs_it(registered, tmp_path: Path, monkeypatch,
                                                                   capsys) -> None:
    """A deployment from before dfd signed them: `serve --from` refuses it unless --allow-unsigned; `--migrate`
    signs it after checking a private copy. The served copy keeps the registered tags (the synthetic-data warning
    that becomes X-Model-Warning)."""
    from dfd.serving.registry_model import load

    target = tmp_path / "dep"
    vid = deploy_model(registered.uri, registered.tracking_uri, str(target), StorageParams())["version_id"]
    got = _recording_serve(monkeypatch, tmp_path)
    old = {k: v for k, v in _pointer(target).items() if k not in ("signature", "manifest_sha256")}
    (target / POINTER).write_text(json.dumps(old))
    assert main(["serve", "--from", str(target)]) == 2
    assert "not signed" in capsys.readouterr().err and got == []
    assert main(["deploy-model", "--to", str(target), "--verify"]) == 2
    assert main(["deploy-model", "--to", str(target), "--verify", "--allow-unsigned"]) == 0
    assert "UNSIGNED" in capsys.readouterr().out
    assert main(["serve", "--from", str(target), "--allow-unsigned"]) == 0
    assert "UNSIGNED" in capsys.readouterr().out and len(got) == 1
    monkeypatch.delenv(KEY_ENV)
    assert main(["deploy-model", "--to", str(target), "--migrate"]) == 2
    assert f"{KEY_ENV} is not set" in capsys.readouterr().err
    monkeypatch.setenv(KEY_ENV, KEY)
    assert main(["deploy-model", "--to", str(target), "--migrate"]) == 0
    assert "signed and current" in capsys.readouterr().out
    (audit,) = AuditLog(tmp_path / "artifacts" / "audit.jsonl").read()  # the cwd's project: defaults
    assert audit["action"] == "migrate" and audit["version_id"] == vid and audit["target"] == str(target)
    assert _pointer(target)["current"] == vid and _pointer(target)["signature"].startswith("hmac-sha256:")
    assert main(["serve", "--from", str(target)]) == 0
    assert ", signed" in capsys.readouterr().out and len(got) == 2
    served, registry = got[-1], load(registered.uri, registered.tracking_uri)
    assert served.tags == registry.tags and served.warning == registry.warning is not None  # X-Model-Warning
    assert served.version == registered.version and served.alias is None  # a fixed folder: never polled


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_pruning_keeps_prefix_siblings(registered, s3_server: str, tmp_path: Path, distinct: list[int],
                                       where: str) -> None:
    """`--keep 1` removes the old version's files and nothing that only shares a prefix with it."""
    cfg = StorageParams(endpoint_url=s3_server, max_attempts=2)
    if where == "s3":
        client = _s3(s3_server)
        client.create_bucket(Bucket="prune")
        to = "s3://prune/models/prod"

        def put(rel: str) -> None:
            client.put_object(Bucket="prune", Key=rel, Body=b"not dfd's")

        def keys() -> set[str]:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket="prune")
            return {o["Key"] for page in pages for o in page.get("Contents", [])}
    else:
        root = tmp_path / "bucket"
        to = str(root / "models" / "prod")

        def put(rel: str) -> None:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"not dfd's")

        def keys() -> set[str]:
            return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}
    old = deploy_model(registered.uri, registered.tracking_uri, to, cfg)["version_id"]
    siblings = ["models/prod-old/x", "models/prod/versions-archive/x", f"models/prod/versions/{old}-copy/x",
                f"models/prod/versions/{old[:-1]}/x"]
    for rel in siblings:
        put(rel)
    before = {k for k in keys() if k.startswith(f"models/prod/versions/{old}/")}
    new = deploy_model(registered.uri, registered.tracking_uri, to, cfg, keep=1)
    assert new["removed"] == [old] and new["version_id"] != old
    after = keys()
    assert set(siblings) <= after and not before & after


def _legacy_with(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MLmodel").write_text("flavors: {}\n")
    (folder / MANIFEST).write_text(json.dumps({"source": {}, "files": {"MLmodel": sha256(folder / "MLmodel"),
                                                                       **files}}))


def test_migrate_refuses_manifest_keys_that_leave_the_target(tmp_path: Path, s3_server: str) -> None:
    """An old-layout manifest naming `lnk/x/../../..`, an absolute path or a file behind a symbolic link: the
    migration stops before copying or deleting anything by those names (no model needed: it never gets that far)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("keep me")
    cases = {"dotdot": {"lnk/x/../../..": "0" * 64}, "absolute": {str(outside / "secret"): "0" * 64},
             "backslash": {"..\\outside\\secret": "0" * 64}, "symlink": {"lnk/secret": sha256(outside / "secret")}}
    for name, files in cases.items():
        legacy = tmp_path / name
        _legacy_with(legacy, files)
        (legacy / "lnk").symlink_to(outside)
        listing = sorted(p.relative_to(legacy).as_posix() for p in legacy.rglob("*"))
        with pytest.raises(DeployError, match=r"unsafe path|symbolic link"):
            migrate(str(legacy), StorageParams())
        assert sorted(p.relative_to(legacy).as_posix() for p in legacy.rglob("*")) == listing, name
        assert (outside / "secret").read_text() == "keep me"
    client = _s3(s3_server)
    client.create_bucket(Bucket="hostile")
    cfg = StorageParams(endpoint_url=s3_server, max_attempts=2)
    client.put_object(Bucket="hostile", Key="keep/me", Body=b"another prefix")
    client.put_object(Bucket="hostile", Key="prod/MLmodel", Body=b"m")
    client.put_object(Bucket="hostile", Key=f"prod/{MANIFEST}", Body=json.dumps(
        {"source": {}, "files": {"MLmodel": "0" * 64, "../keep/me": "0" * 64}}).encode())
    with pytest.raises(DeployError, match="unsafe path"):
        migrate("s3://hostile/prod", cfg)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="hostile")["Contents"]}
    assert keys == {"keep/me", "prod/MLmodel", f"prod/{MANIFEST}"}
