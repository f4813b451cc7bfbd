"""What each public deepfake dataset's publisher asks of a user, and what the download weighs (`dfd dataset get`).

FaceForensics++, Celeb-DF and DFDC are behind their publishers' forms and terms: nothing here fetches them. This
module only holds the publishers' own steps (form, script, CLI), the layout each adapter reads, and the sizes the
publishers document, so that the command can print the steps and check free disk space before a download starts.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

GB = 1000 ** 3

# FaceForensics++ sizes, from the publisher's dataset/README.md ("Space requirement", github.com/ondyari/
# FaceForensics): the FF++ videos (originals and four methods, 1000 videos each) weigh ~500 GB raw, ~10 GB at c23 and
# ~2 GB at c40, so one 1000-video folder ~1/5 of that (FaceShifter, added later, is assumed the same); the
# DeepFakeDetection originals (363 videos) ~200 GB / 3 GB / 0.4 GB and its 3068 fakes ~1.6 TB / 22 GB / 3 GB.
FFPP_FOLDER_GB = {"raw": 100.0, "c23": 2.0, "c40": 0.4}
FFPP_DFD_ORIGINAL_GB = {"raw": 200.0, "c23": 3.0, "c40": 0.4}
FFPP_DFD_FAKE_GB = {"raw": 1600.0, "c23": 22.0, "c40": 3.0}
FFPP_YOUTUBE_GB = 38.5  # `-d original_youtube_videos`: the source videos as downloaded from YouTube (one zip)
# What the script's `-d all` fetches, and how many videos each holds (`-n` takes the first N of each).
FFPP_FOLDERS = {"original": 1000, "DeepFakeDetection_original": 363, "Deepfakes": 1000, "DeepFakeDetection": 3068,
                "Face2Face": 1000, "FaceShifter": 1000, "FaceSwap": 1000, "NeuralTextures": 1000}
# DFDC: `kaggle competitions download` fetches the competition's files (train_sample_videos: 400 labelled videos;
# test_videos: 400 unlabelled; sample_submission.csv); the page states no size: 10 GB covers the zip and its
# unpacked copy with room. The full training set is "just over 470 GB" in 50 parts of ~10 GB (the page's words).
DFDC_KAGGLE_GB = 10.0


@dataclass(frozen=True)
class Publisher:
    """One dataset as its publisher distributes it."""

    name: str  # `dfd dataset get NAME`, and the default `dataset add --name`
    title: str
    adapter: str  # `data.adapter` that reads its layout
    layout: str  # what the adapter expects under the root, one line
    steps: tuple[str, ...]  # the publisher's steps, printed in order ({to} is the target folder)
    resume: str  # how an interrupted download resumes


FFPP = Publisher(
    name="ffpp", title="FaceForensics++ (Rössler et al., ICCV 2019)", adapter="ffpp",
    layout="original_sequences/youtube/<c23|c40|raw>/videos/*.mp4 and manipulated_sequences/<method>/<c>/videos/"
           "<target>_<source>.mp4",
    steps=(
        "Read the FaceForensics Terms of Use and request access with the publisher's Google form: "
        "https://docs.google.com/forms/d/e/1FAIpQLSdRRR3L5zAv6tQ_CKxmK4W96tAab_pfBu2EKAgQbeDVhmXagg/viewform "
        "(linked from https://github.com/ondyari/FaceForensics/tree/master/dataset).",
        "Once the form is accepted the authors email you the link to their download script, "
        "download-FaceForensics.py; save it (its download servers, EU, EU2 and CA, are built into it).",
        "Let dfd run it (free disk space is checked first, the layout after; the script asks you to confirm the "
        "terms of use, press Enter): dfd dataset get ffpp --to {to} --script download-FaceForensics.py -- "
        "-d all -c c23 -t videos --server EU2",
        "or run it yourself: python download-FaceForensics.py {to} -d all -c c23 -t videos --server EU2, then "
        "check the result: dfd dataset get ffpp --to {to}",
        "For the official identity splits, copy train.json, val.json and test.json from "
        "https://github.com/ondyari/FaceForensics/tree/master/dataset/splits into {to}/splits/ "
        "(without them, ingest splits by identity itself).",
    ),
    resume="run the same command again: the script skips every video already downloaded and fetches the rest; "
           "the video it was writing when interrupted is left as a file named tmp* (no extension) in its videos/ "
           "folder, which the adapter ignores and you may delete",
)

CELEBDF = Publisher(
    name="celebdf", title="Celeb-DF v2 (Li et al., CVPR 2020)", adapter="celebdf",
    layout="Celeb-real/, YouTube-real/, Celeb-synthesis/ and List_of_testing_videos.txt",
    steps=(
        "Read the Terms to Use Celeb-DF and fill in the publisher's form: "
        "https://drive.google.com/open?id=1zQSTM1Vjc5iJyI1_0pncOzuTOCwLSWld, then email it to "
        "deepfakeforensics@gmail.com (from https://github.com/yuezunli/celeb-deepfakeforensics).",
        "Once the form is accepted the authors email you a download link; download the archive (Celeb-DF-v2.zip) "
        "with your browser.",
        "Unpack it and check it: dfd dataset get celebdf --to {to} --archive Celeb-DF-v2.zip "
        "(or unpack it into {to} yourself and run: dfd dataset get celebdf --to {to})",
    ),
    resume="the download is your browser's (browsers resume an interrupted download); unpacking resumes: files "
           "already unpacked with their full size are skipped",
)

DFDC = Publisher(
    name="dfdc", title="DeepFake Detection Challenge (Dolhansky et al., 2020)", adapter="dfdc",
    layout="dfdc_train_part_<N>/metadata.json with its videos (train_sample_videos/ for the competition's sample)",
    steps=(
        "Sign in to Kaggle and accept the competition rules at "
        "https://www.kaggle.com/c/deepfake-detection-challenge/rules (downloads are refused until you do).",
        "Install the Kaggle CLI (pip install kaggle) and create an API token in your Kaggle account settings, as "
        "its documentation says (https://github.com/Kaggle/kaggle-api).",
        "Let dfd run it (free disk space is checked first; the zip is unpacked and checked after): "
        "dfd dataset get dfdc --to {to} --kaggle",
        "or run it yourself: kaggle competitions download -c deepfake-detection-challenge -p {to}, then "
        "dfd dataset get dfdc --to {to}",
        "That is the competition's sample (400 labelled training videos). The full training set (just over 470 GB, "
        "50 parts of ~10 GB) is linked from https://www.kaggle.com/c/deepfake-detection-challenge/data once the "
        "rules are accepted: save dfdc_train_part_<N>.zip files into {to} and run dfd dataset get dfdc --to {to} "
        "to unpack and check them.",
    ),
    resume="run the same command again: the Kaggle CLI (1.5.14 and later) continues a partial file where it "
           "stopped; unpacking skips files already unpacked with their full size",
)

PUBLISHERS = {p.name: p for p in (FFPP, CELEBDF, DFDC)}


def ffpp_options(script_args: list[str]) -> argparse.Namespace:
    """The options of FF++'s script that decide what it fetches, with the script's own defaults."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-d", "--dataset", default="all")
    parser.add_argument("-c", "--compression", default=None)  # None: the script's default, raw (the biggest)
    parser.add_argument("-t", "--type", default="videos")
    parser.add_argument("-n", "--num_videos", type=int, default=None)
    return parser.parse_known_args(script_args)[0]


def ffpp_estimate(script_args: list[str]) -> tuple[float | None, str]:
    """Bytes FF++'s script will write for these arguments (None when the publisher documents no size), and what
    that estimate covers in words."""
    opts = ffpp_options(script_args)
    given = opts.compression is not None
    opts.compression = opts.compression or "raw"
    if opts.dataset == "original_youtube_videos":
        return FFPP_YOUTUBE_GB * GB, "the original YouTube videos (38.5 GB, one zip)"
    if opts.type != "videos":
        return None, f"-t {opts.type} (the publisher documents sizes for videos only)"
    if opts.compression not in FFPP_FOLDER_GB:
        return None, f"-c {opts.compression} (no documented size)"
    folders = list(FFPP_FOLDERS) if opts.dataset == "all" else [opts.dataset]
    total = 0.0
    for folder in folders:
        count = FFPP_FOLDERS.get(folder)
        if count is None:
            return None, f"-d {folder} (no documented size)"
        table = {"DeepFakeDetection_original": FFPP_DFD_ORIGINAL_GB,
                 "DeepFakeDetection": FFPP_DFD_FAKE_GB}.get(folder, FFPP_FOLDER_GB)
        share = min(1.0, opts.num_videos / count) if opts.num_videos else 1.0
        total += table[opts.compression] * share
    what = (f"-d {opts.dataset} -c {opts.compression} -t videos"
            + (f" -n {opts.num_videos}" if opts.num_videos else "")
            + ("" if given else " (the script's default compression is raw: pass -c c23 for ~2% of that)"))
    return total * GB, what
