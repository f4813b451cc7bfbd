"""`dfd dataset get` with stand-ins for the publishers' tools (test doubles: the real ones need the publishers'
consent and servers): FF++'s download script (its "servers" built in, as the real one's are, here a local folder) and
a fake `kaggle` on PATH. Run as the user runs it: the CLI in a subprocess, the terms-of-use keypress on its stdin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dfd.data.publishers import GB, ffpp_estimate
from tests.data.test_dataset_add import ENV, clone  # noqa: F401  (the fixture: the same clone as `dataset add`'s)
from tests.helpers import write_clip

FFPP_STANDIN = '''"""Stand-in for download-FaceForensics.py: the same interface, prompt and file handling (skip
what exists; each file written to a mkstemp file and renamed when whole)."""
import argparse, json, os, shutil, sys, tempfile
SERVERS = {"EU": %(server)r, "EU2": %(server)r, "CA": %(server)r}
p = argparse.ArgumentParser()
p.add_argument("output_path")
p.add_argument("-d", "--dataset", default="all")
p.add_argument("-c", "--compression", default="raw")
p.add_argument("-t", "--type", default="videos")
p.add_argument("-n", "--num_videos", type=int, default=None)
p.add_argument("--server", default="EU", choices=list(SERVERS))
a = p.parse_args()
print("By pressing any key to continue you confirm that you have agreed to the FaceForensics terms of use")
input("")
server, done = SERVERS[a.server], 0
stop_after = int(os.environ.get("STANDIN_STOP_AFTER", "0"))
for rel in json.load(open(os.path.join(server, "files.json"))):
    if "/%%s/" %% a.compression not in rel:
        continue
    out = os.path.join(a.output_path, rel)
    if os.path.isfile(out):
        print("WARNING: skipping download of existing file " + out)
        continue
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fh, tmp = tempfile.mkstemp(dir=os.path.dirname(out))
    os.close(fh)
    if stop_after and done == stop_after:
        open(tmp, "wb").write(b"half a video")
        sys.exit("connection reset by peer")
    shutil.copyfile(os.path.join(server, rel), tmp)
    os.rename(tmp, out)
    done += 1
    print("downloaded " + rel)
'''

KAGGLE_STANDIN = '''#!%(python)s
"""Stand-in for the Kaggle CLI: logs its arguments; `competitions download -c C -p DIR` writes DIR/C.zip (cut short
when STANDIN_TRUNCATE is set, as an interrupted download leaves it)."""
import os, shutil, sys
with open(%(log)r, "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
if args[:2] != ["competitions", "download"]:
    sys.exit("unexpected: " + " ".join(args))
comp, dest = args[args.index("-c") + 1], args[args.index("-p") + 1]
os.makedirs(dest, exist_ok=True)
data = open(%(zip)r, "rb").read()
if os.environ.get("STANDIN_TRUNCATE"):
    data = data[: len(data) // 2]
open(os.path.join(dest, comp + ".zip"), "wb").write(data)
print("Downloading " + comp + ".zip to " + dest)
'''


def _dfd(cwd: Path, *args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    # The console script, as users run it (`python -m` would import a `dfd/` in the working folder: a clone's).
    return subprocess.run([str(Path(sys.executable).parent / "dfd"), *args], cwd=cwd, input=stdin, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


def _lines(out: str, start: str) -> int:
    return sum(line.startswith(start) for line in out.splitlines())


@pytest.fixture(scope="module")
def ffpp_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the stand-in script "downloads": 4 originals and their 4 Deepfakes at c23, in FF++'s layout."""
    server = tmp_path_factory.mktemp("ffpp-server")
    files = []
    for a, b in [("000", "001"), ("002", "003")]:
        for vid in (a, b):
            files.append(f"original_sequences/youtube/c23/videos/{vid}.mp4")
            write_clip(server / files[-1], seed=int(vid), frames=3, size=64)
        for t, s in ((a, b), (b, a)):
            files.append(f"manipulated_sequences/Deepfakes/c23/videos/{t}_{s}.mp4")
            write_clip(server / files[-1], seed=100 + int(t), fake=True, frames=3, size=64)
    (server / "files.json").write_text(json.dumps(files))
    return server


def test_ffpp_script_runs_after_the_steps_and_resumes_after_an_interruption(tmp_path: Path, ffpp_server: Path) -> None:
    script = tmp_path / "download-FaceForensics.py"
    script.write_text(FFPP_STANDIN % {"server": str(ffpp_server)})
    get = ["dataset", "get", "ffpp", "--to", "data/raw/ffpp", "--script", str(script), "--", "-d", "all", "-c",
           "c23", "-t", "videos", "--server", "EU2"]
    cut = _dfd(tmp_path, *get, stdin="\n", env={"STANDIN_STOP_AFTER": "3"})
    assert cut.returncode == 2 and "Traceback" not in cut.stderr, cut.stderr
    assert cut.stderr.strip().splitlines()[-1].startswith("dfd: error: FF++'s download script exited with status 1")
    assert "rerun the same command" in cut.stderr
    assert "docs.google.com/forms" in cut.stdout and "free disk space:" in cut.stdout  # steps, then the space check
    assert _lines(cut.stdout, "downloaded ") == 3
    again = _dfd(tmp_path, *get, stdin="\n")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr
    assert _lines(again.stdout, "WARNING: skipping download") == 3 and _lines(again.stdout, "downloaded ") == 5
    assert "is a partial download" in again.stdout  # the interrupted file's tmp* leftover, named
    assert "usable            8 of 8: 4 real, 4 fake" in again.stdout
    assert "next: track it with DVC and make it the pipeline's dataset: dfd dataset add data/raw/ffpp --name ffpp " \
           "--adapter ffpp" in again.stdout
    assert "note: no official splits" in again.stdout
    # Layout checked against the adapter: c40 asked, c23 there.
    wrong = _dfd(tmp_path, "--params", "none.yaml", "dataset", "get", "ffpp", "--to", "data/raw/ffpp",
                 "--script", str(script), "--", "-c", "c40", stdin="\n")
    assert wrong.returncode == 2 and "are at c23, not c40" in wrong.stderr


def test_too_little_disk_space_stops_before_the_tool_runs(tmp_path: Path) -> None:
    script = tmp_path / "download-FaceForensics.py"
    script.write_text("raise SystemExit('must not run')\n")
    res = _dfd(tmp_path, "dataset", "get", "ffpp", "--to", "data/raw/ffpp", "--script", str(script),
               "--min-free-gb", "1e9", "--", "-c", "c23")
    assert res.returncode == 2 and "not enough free disk space" in res.stderr and "must not run" not in res.stderr
    assert not (tmp_path / "data" / "raw" / "ffpp").exists()
    missing = _dfd(tmp_path, "dataset", "get", "ffpp", "--script", str(tmp_path / "nope.py"))
    assert missing.returncode == 2 and "FF++ download script not found" in missing.stderr


def test_ffpp_sizes_follow_the_publishers_table() -> None:
    c23, what = ffpp_estimate(["-d", "all", "-c", "c23"])
    # FF++ folders: 6 x 2 GB; DeepFakeDetection: 3 GB of originals and 22 GB of fakes.
    assert c23 == pytest.approx(37 * GB) and "default compression" not in what
    raw, what = ffpp_estimate(["-d", "Deepfakes"])
    assert raw == pytest.approx(100 * GB) and "default compression is raw" in what
    assert ffpp_estimate(["-d", "Face2Face", "-c", "c40", "-n", "100"])[0] == pytest.approx(0.04 * GB)
    assert ffpp_estimate(["-t", "masks"])[0] is None


def _dfdc_zip(path: Path) -> Path:
    """The competition's zip as the Kaggle CLI saves it: the labelled sample, the test videos, a CSV."""
    src = path.parent / "src"
    meta = {"real_a.mp4": {"label": "REAL", "split": "train"}, "real_b.mp4": {"label": "REAL", "split": "train"},
            "fake_a.mp4": {"label": "FAKE", "split": "train", "original": "real_a.mp4"},
            "fake_b.mp4": {"label": "FAKE", "split": "train", "original": "real_b.mp4"}}
    with zipfile.ZipFile(path, "w") as zf:
        for i, (name, info) in enumerate(meta.items()):
            clip = write_clip(src / name, seed=200 + i, fake=info["label"] == "FAKE", frames=3, size=64)
            zf.write(clip, f"train_sample_videos/{name}")
        zf.writestr("train_sample_videos/metadata.json", json.dumps(meta))
        zf.write(write_clip(src / "t.mp4", seed=300, frames=3, size=64), "test_videos/aaa.mp4")
        zf.writestr("sample_submission.csv", "filename,label\naaa.mp4,0.5\n")
    return path


def test_kaggle_download_is_unpacked_checked_and_added(clone: Path, tmp_path: Path) -> None:  # noqa: F811
    """In a clone of the project (its .dvc/ and params.yaml): a cut-short zip says to resume; the rerun is added."""
    project = clone
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "kaggle.log"
    kaggle = bin_dir / "kaggle"
    kaggle.write_text(KAGGLE_STANDIN % {"python": sys.executable, "log": str(log),
                                        "zip": str(_dfdc_zip(tmp_path / "competition.zip"))})
    kaggle.chmod(0o755)
    env = {**ENV, "PATH": f"{bin_dir}:{ENV['PATH']}", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    cut = _dfd(project, "dataset", "get", "dfdc", "--kaggle", env={**env, "STANDIN_TRUNCATE": "1"})
    assert cut.returncode == 2 and "is not a complete zip archive" in cut.stderr and "resume" in cut.stderr
    assert log.read_text().splitlines() == [
        f"competitions download -c deepfake-detection-challenge -p {Path('data/raw/dfdc')}"]
    res = _dfd(project, "dataset", "get", "dfdc", "--kaggle", "--add", env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    assert (project / "data/raw/dfdc/train_sample_videos/metadata.json").is_file()
    assert "usable            4 of 4: 2 real, 2 fake" in res.stdout
    assert (project / "data/raw/dfdc.dvc").is_file() and "adapter: dfdc" in (project / "params.yaml").read_text()
    gone = _dfd(project, "dataset", "get", "dfdc", "--kaggle", env={**env, "PATH": "/usr/bin:/bin"})
    assert gone.returncode == 2 and "`kaggle` is not on PATH" in gone.stderr


def test_a_celebdf_archive_missing_listed_files_is_incomplete(tmp_path: Path) -> None:
    archive = tmp_path / "Celeb-DF-v2.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, rel in enumerate(["Celeb-real/id0_0000.mp4", "YouTube-real/00000.mp4",
                                 "Celeb-synthesis/id0_id1_0000.mp4"]):
            zf.write(write_clip(tmp_path / "src" / f"{i}.mp4", seed=400 + i, fake="synthesis" in rel, frames=3,
                                size=64), f"Celeb-DF-v2/{rel}")
        zf.writestr("Celeb-DF-v2/List_of_testing_videos.txt", "1 YouTube-real/00000.mp4\n"
                    "0 Celeb-synthesis/id0_id1_0000.mp4\n0 Celeb-synthesis/id2_id1_0003.mp4\n")
    res = _dfd(tmp_path, "dataset", "get", "celebdf", "--to", "data/raw/celebdf", "--archive", str(archive))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "download incomplete: 1 file(s) the dataset lists are missing" in res.stderr
    assert "Celeb-synthesis/id2_id1_0003.mp4" in res.stderr
    assert (tmp_path / "data/raw/celebdf/Celeb-real/id0_0000.mp4").is_file()  # the archive's top folder left out
    again = _dfd(tmp_path, "dataset", "get", "celebdf", "--to", "data/raw/celebdf", "--archive", str(archive))
    assert "unpacked Celeb-DF-v2.zip: 0 file(s) written" in again.stdout  # unpacking resumes: nothing to redo


def test_hostile_archives_and_wrong_layouts_are_one_line_errors(tmp_path: Path) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("Celeb-real/ok.mp4", b"x")
        zf.writestr("../../outside.mp4", b"x")
    res = _dfd(tmp_path, "dataset", "get", "celebdf", "--to", "d", "--archive", str(evil))
    assert res.returncode == 2 and "would land outside the dataset folder" in res.stderr
    assert not (tmp_path / "outside.mp4").exists() and not list(tmp_path.rglob("outside.mp4"))
    (tmp_path / "notdfdc" / "videos").mkdir(parents=True)
    (tmp_path / "notdfdc" / "videos" / "a.mp4").write_bytes(b"x")
    wrong = _dfd(tmp_path, "dataset", "get", "dfdc", "--to", "notdfdc")
    assert wrong.returncode == 2 and "does not look like DFDC" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    flag = _dfd(tmp_path, "dataset", "get", "celebdf", "--kaggle")
    assert flag.returncode == 2 and "--kaggle is for dfdc" in flag.stderr
