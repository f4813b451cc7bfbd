"""An offline generator of a small real/fake face dataset in the `folder` layout.

Real samples are drawn faces (per-identity skin, hair, eye, nose and mouth geometry; per-image pose, light and noise)
that dlib's HOG detector finds. Fakes are made the way face-swap fakes are: the inner face of another identity is
resampled (down then up), colour-shifted, warped onto the target and alpha-blended through a blurred mask, leaving
the blending boundary, resampling blur and colour mismatch that real detectors learn. Same seed, same bytes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from dfd.platform.errors import DataError

DEMO_MARKER = ".dfd-demo-data"  # written by the generator: only a folder holding it may be written into again
SUPERSAMPLE = 4  # draw at 4x then downscale with INTER_AREA: anti-aliased edges, like a camera's


@dataclass(frozen=True)
class Identity:
    """What makes one drawn person recognisable across images (BGR colours, shapes relative to the face)."""

    name: str
    skin: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    lip: np.ndarray
    background: np.ndarray
    face_w: float
    face_h: float
    eye_dx: float
    eye_y: float
    eye_w: float
    nose_len: float
    mouth_w: float
    mouth_y: float


@dataclass(frozen=True)
class Pose:
    """Per-frame placement and lighting of a face (fractions of the image side)."""

    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    light: float = 0.0


def make_identity(rng: np.random.Generator, name: str) -> Identity:
    """Draw a random identity."""
    tone = rng.uniform(0, 1)  # one parameter for skin, so tones stay plausible from dark to light
    skin = np.array([60 + 120 * tone, 90 + 110 * tone, 140 + 100 * tone]) * rng.uniform(0.92, 1.05, 3)
    return Identity(
        name=name, skin=skin, hair=rng.uniform(10, 90, 3), iris=rng.uniform(20, 120, 3),
        lip=np.array([rng.uniform(60, 110), rng.uniform(60, 100), rng.uniform(150, 200)]),
        background=rng.uniform(40, 220, 3), face_w=rng.uniform(0.26, 0.32), face_h=rng.uniform(0.36, 0.42),
        eye_dx=rng.uniform(0.36, 0.44), eye_y=rng.uniform(-0.12, -0.05), eye_w=rng.uniform(0.15, 0.2),
        nose_len=rng.uniform(0.22, 0.3), mouth_w=rng.uniform(0.35, 0.5), mouth_y=rng.uniform(0.42, 0.5),
    )


def random_pose(rng: np.random.Generator) -> Pose:
    """A small random shift, scale and side light."""
    return Pose(rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04), rng.uniform(0.92, 1.06), rng.uniform(-0.3, 0.3))


def _geometry(idt: Identity, pose: Pose, side: int) -> tuple[float, float, float, float]:
    """Face centre and half-axes in pixels of a `side`-pixel canvas."""
    return (side * (0.5 + pose.dx), side * (0.52 + pose.dy), idt.face_w * side * pose.scale,
            idt.face_h * side * pose.scale)


def draw_face(idt: Identity, pose: Pose, size: int, noise_seed: int) -> np.ndarray:
    """Render one BGR uint8 face image of `size` x `size`."""
    s = size * SUPERSAMPLE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    img = np.empty((s, s, 3), np.float32)
    img[:] = idt.background * (0.75 + 0.4 * xx[..., None])
    cx, cy, fw, fh = _geometry(idt, pose, s)
    ic = lambda v: round(v)  # noqa: E731  (OpenCV wants ints)
    # Shoulders and hair behind the head.
    cv2.rectangle(img, (ic(cx - fw * 0.45), ic(cy + fh * 0.6)), (ic(cx + fw * 0.45), s), idt.skin * 0.8, -1)
    cv2.ellipse(img, (ic(cx), s), (ic(fw * 1.8), ic(fh * 0.5)), 0, 0, 360, idt.hair * 0.5 + 60, -1)
    cv2.ellipse(img, (ic(cx), ic(cy - fh * 0.15)), (ic(fw * 1.12), ic(fh)), 0, 180, 360, idt.hair, -1)
    # Face with radial shading and a side light.
    mask = np.zeros((s, s), np.float32)
    cv2.ellipse(mask, (ic(cx), ic(cy)), (ic(fw), ic(fh)), 0, 0, 360, 1.0, -1)
    rel_x = (xx * s - cx) / fw
    dist2 = rel_x**2 + ((yy * s - cy) / fh) ** 2
    shade = np.clip(1.1 - 0.45 * dist2, 0.5, 1.1) * (1 + pose.light * rel_x * 0.3)
    img = img * (1 - mask[..., None]) + idt.skin * shade[..., None] * mask[..., None]
    cv2.ellipse(img, (ic(cx), ic(cy - fh * 0.75)), (ic(fw), ic(fh * 0.35)), 0, 180, 360, idt.hair, -1)
    for sign in (-1, 1):
        ex, ey = cx + sign * idt.eye_dx * fw, cy + idt.eye_y * fh * 2
        ew = idt.eye_w * fw * 2
        eh = ew * 0.45
        cv2.ellipse(img, (ic(ex), ic(ey - eh * 1.4)), (ic(ew * 0.7), ic(eh * 0.7)), 0, 200, 340, idt.hair * 0.7,
                    ic(s * 0.012))
        cv2.ellipse(img, (ic(ex), ic(ey)), (ic(ew * 0.75), ic(eh * 1.1)), 0, 0, 360, idt.skin * 0.7, -1)
        cv2.ellipse(img, (ic(ex), ic(ey)), (ic(ew * 0.55), ic(eh * 0.6)), 0, 0, 360, (235, 235, 235), -1)
        cv2.circle(img, (ic(ex), ic(ey)), ic(eh * 0.55), idt.iris, -1)
        cv2.circle(img, (ic(ex), ic(ey)), ic(eh * 0.25), (10, 10, 10), -1)
        cv2.ellipse(img, (ic(ex), ic(ey)), (ic(ew * 0.55), ic(eh * 0.6)), 0, 180, 360, (30, 30, 40), ic(s * 0.006))
    ny = cy + idt.nose_len * fh * 1.1
    nose = np.array([[cx - fw * 0.04, cy - fh * 0.1], [cx - fw * 0.12, ny], [cx + fw * 0.12, ny]], np.int32)
    cv2.polylines(img, [nose], False, idt.skin * 0.6, ic(s * 0.008))
    for sign in (-1, 1):
        cv2.ellipse(img, (ic(cx + sign * fw * 0.09), ic(ny)), (ic(fw * 0.05), ic(fh * 0.025)), 0, 0, 360,
                    idt.skin * 0.45, -1)
    my, mw = cy + idt.mouth_y * fh, idt.mouth_w * fw
    cv2.ellipse(img, (ic(cx), ic(my)), (ic(mw), ic(fh * 0.07)), 0, 0, 360, idt.lip, -1)
    cv2.line(img, (ic(cx - mw), ic(my)), (ic(cx + mw), ic(my)), idt.lip * 0.4, ic(s * 0.006))
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    img = cv2.GaussianBlur(img, (3, 3), 0.8)
    img += np.random.default_rng(noise_seed).normal(0, 3, img.shape)  # sensor noise
    return np.clip(img, 0, 255).astype(np.uint8)


def blend_fake(target: Identity, source: Identity, pose: Pose, size: int, rng: np.random.Generator,
               noise_seed: int) -> np.ndarray:
    """A face-swap style fake: `source`'s inner face blended onto `target` at `pose`."""
    return blend_fake_with_mask(target, source, pose, size, rng, noise_seed)[0]


def blend_fake_with_mask(target: Identity, source: Identity, pose: Pose, size: int, rng: np.random.Generator,
                         noise_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`blend_fake`, and its blending mask (float32 (size, size) in [0, 1]: the share of each pixel that is pasted):
    the known manipulated region that heatmaps are measured against (`benchmarks/heatmaps.py`)."""
    dst = draw_face(target, pose, size, noise_seed)
    src = draw_face(source, pose, size, noise_seed + 1)
    # Resampling: the swapped face went through a lower resolution, as a generator's output does.
    factor = rng.uniform(0.2, 0.35)
    small = cv2.resize(src, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
    src = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    # Colour mismatch between the pasted face and its new surroundings.
    src *= rng.uniform(0.85, 1.15, 3)
    # Align the source's face box onto the target's (scale and translate).
    scx, scy, sfw, sfh = _geometry(source, pose, size)
    tcx, tcy, tfw, tfh = _geometry(target, pose, size)
    warp = np.array([[tfw / sfw, 0, tcx - scx * tfw / sfw], [0, tfh / sfh, tcy - scy * tfh / sfh]], np.float32)
    src = cv2.warpAffine(src, warp, (size, size), borderMode=cv2.BORDER_REFLECT)
    # Blurred elliptic mask over the inner face: the blending boundary.
    mask = np.zeros((size, size), np.float32)
    cv2.ellipse(mask, (round(tcx), round(tcy + tfh * 0.1)), (round(tfw * 0.78), round(tfh * 0.72)), 0, 0, 360, 1.0, -1)
    sigma = rng.uniform(2.0, 5.0) * size / 256
    mask = cv2.GaussianBlur(mask, (0, 0), sigma)[..., None]
    out = dst.astype(np.float32) * (1 - mask) + src * mask
    return np.clip(out, 0, 255).astype(np.uint8), mask[..., 0]


def side_by_side(images: list[np.ndarray], gap: int = 8) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Several drawn faces in one frame, left to right, vertically centred on the first one's background colour:
    a crowd, an interview, a video call. Returns the frame and each image's (x, y) offset in it."""
    h = max(im.shape[0] for im in images)
    w = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    w += w % 2  # even sides: the mp4v encoder wants them
    h += h % 2
    frame = np.empty((h, w, 3), np.uint8)
    frame[:] = images[0][0, 0]
    offsets, x = [], 0
    for im in images:
        y = (h - im.shape[0]) // 2
        frame[y:y + im.shape[0], x:x + im.shape[1]] = im
        offsets.append((x, y))
        x += im.shape[1] + gap
    return frame, offsets


def two_face_clip(path: Path, seed: int, frames: int = 6, size: int = 160, fake_scale: float = 0.8,
                  ) -> list[np.ndarray]:
    """A clip of a real face beside a smaller blended fake one (the fake is not the largest face), written as .mp4.

    Returns:
        Per frame, the fake's paste mask in frame pixels (float32 (H, W) in [0, 1]).
    """
    rng = np.random.default_rng(seed)
    real, target, source = (make_identity(rng, n) for n in ("real", "target", "source"))
    small = round(size * fake_scale)
    images, masks = [], []
    for i in range(frames):
        pose = Pose(dx=0.004 * i)
        fake, mask = blend_fake_with_mask(target, source, pose, small, rng, 2 * i + 1)
        frame, (_, (fx, fy)) = side_by_side([draw_face(real, pose, size, 2 * i), fake])
        full = np.zeros(frame.shape[:2], np.float32)
        full[fy:fy + small, fx:fx + small] = mask
        images.append(frame)
        masks.append(full)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, images)
    return masks


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}: no mp4v encoder in this build")
    for frame in frames:
        writer.write(frame)
    writer.release()


def claim_demo_folder(out: Path, settings: dict[str, int]) -> None:
    """Make `out` ready for a fresh demo dataset, refusing any folder that holds something else.

    Only an empty (or missing) folder, or one holding a previous demo dataset (it has the marker file this writes
    first), is used; a previous demo dataset is cleared so that no file of another seed or size is left behind.

    Raises:
        DataError: `out` holds anything but a previous demo dataset (a user's data must never be overwritten).
    """
    marker = out / DEMO_MARKER
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file, not a folder", "pass another --out for the demo dataset")
    if out.is_dir() and any(out.iterdir()):
        if not marker.is_file():
            raise DataError(f"refusing to write the demo dataset into {out}: it holds other data (no {DEMO_MARKER})",
                            "pass an empty or new folder with --out, or set data.root to one")
        for name in ("real", "fake"):
            shutil.rmtree(out / name, ignore_errors=True)
        (out / "metadata.json").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    # Written first: an interrupted generation still marks the folder as ours, so the next one may clear it.
    marker.write_text(json.dumps({"generator": "dfd demo-data", **settings}, sort_keys=True) + "\n")


def generate(out: Path, seed: int = 0, identities: int = 24, images_per_identity: int = 4, videos: int = 6,
             frames_per_video: int = 12, image_size: int = 256) -> dict[str, int]:
    """Write the demo dataset: `real/`, `fake/` and `metadata.json` under `out`.

    Args:
        out: Dataset root: created, or empty, or a previous demo dataset (cleared); anything else is refused.
        seed: Everything random derives from it: same seed, same bytes.
        identities: Number of drawn people.
        images_per_identity: Real images per person; as many fakes per person, each with the inner face of the
            person's own donor, as an FF++ pair shares one source. A donor is a drawn person with one real image
            of its own (`real/src<i>_0.png`): the faces pasted into fakes are also seen as reals, so a detector
            cannot tell a fake by whose face it carries, only by the blend (with donors seen only inside fakes, an
            interrupted demo run had xception at val AUC 0.44 after 2 epochs, below chance). A person, its donor and
            their fakes are one identity cluster (dfd/data/identity.py); donors shared among people would chain
            everyone into one cluster, and the split would have nothing to split.
        videos: Short .mp4 clips (alternately real and fake).
        frames_per_video: Frames per clip.
        image_size: Side of images and video frames.

    Returns:
        Counts of written real and fake files.
    """
    if identities < 2:
        raise ValueError("the demo dataset needs at least 2 identities (fakes take another person's face)")
    claim_demo_folder(out, {"seed": seed, "identities": identities, "images_per_identity": images_per_identity,
                            "videos": videos, "frames_per_video": frames_per_video, "image_size": image_size})
    rng = np.random.default_rng(seed)
    people = [make_identity(rng, f"id{i:03d}") for i in range(identities)]
    donors = [make_identity(rng, f"src{i:03d}") for i in range(identities)]  # drawn after the people: same people
    (out / "real").mkdir(parents=True, exist_ok=True)
    (out / "fake").mkdir(parents=True, exist_ok=True)
    meta: dict[str, dict[str, object]] = {}
    counts = {"real": 0, "fake": 0}
    total = identities * (images_per_identity + 1) + videos
    with tqdm(total=total, desc="demo data", unit="sample", leave=False) as bar:
        for i, person in enumerate(people):
            for k in range(images_per_identity):
                item_rng = np.random.default_rng([seed, i, k])
                real_rel = f"real/{person.name}_{k}.png"
                cv2.imwrite(str(out / real_rel), draw_face(person, random_pose(item_rng), image_size,
                                                           int(item_rng.integers(1 << 31))))
                meta[real_rel] = {"label": 0, "identity": person.name, "method": "real"}
                source = donors[i]
                fake_rel = f"fake/{person.name}_{source.name}_{k}.png"
                fake = blend_fake(person, source, random_pose(item_rng), image_size, item_rng,
                                  int(item_rng.integers(1 << 31)))
                cv2.imwrite(str(out / fake_rel), fake)
                meta[fake_rel] = {"label": 1, "identity": person.name, "source": source.name, "method": "blend"}
                counts["real"] += 1
                counts["fake"] += 1
                bar.update(1)
            donor, donor_rng = donors[i], np.random.default_rng([seed, 20_000 + i])
            donor_rel = f"real/{donor.name}_0.png"
            cv2.imwrite(str(out / donor_rel), draw_face(donor, random_pose(donor_rng), image_size,
                                                        int(donor_rng.integers(1 << 31))))
            meta[donor_rel] = {"label": 0, "identity": donor.name, "method": "real"}
            counts["real"] += 1
            bar.update(1)
        for v in range(videos):
            vid_rng = np.random.default_rng([seed, 10_000 + v])
            person = people[v % identities]
            fake = v % 2 == 1
            # A fake clip pastes another person of the dataset: it joins two people's clusters, as datasets do.
            source = people[(v + 1 + int(vid_rng.integers(identities - 1))) % identities]
            start, end = random_pose(vid_rng), random_pose(vid_rng)
            frames = []
            for f in range(frames_per_video):
                t = f / max(frames_per_video - 1, 1)  # the head drifts smoothly from one pose to another
                pose = Pose(*(a + (b - a) * t for a, b in zip(
                    (start.dx, start.dy, start.scale, start.light), (end.dx, end.dy, end.scale, end.light),
                    strict=True)))
                noise = int(vid_rng.integers(1 << 31))
                frames.append(blend_fake(person, source, pose, image_size, vid_rng, noise) if fake
                              else draw_face(person, pose, image_size, noise))
            rel = f"fake/clip{v:02d}_{person.name}_{source.name}.mp4" if fake else f"real/clip{v:02d}_{person.name}.mp4"
            write_video(out / rel, frames)
            meta[rel] = {"label": int(fake), "identity": person.name, "method": "blend" if fake else "real"}
            if fake:
                meta[rel]["source"] = source.name
            counts["fake" if fake else "real"] += 1
            bar.update(1)
    (out / "metadata.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return counts
