"""A portrait phone video stored sideways with a rotation tag is read upright, so its faces are found."""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg  # a dev dependency (its ffmpeg binary): a broken install must fail, not skip
import numpy as np

from dfd.data.demo_data import Pose, draw_face, make_identity, write_video
from dfd.data.face_detect import create_detector, detect_downscaled
from dfd.data.media import sample_video_frames


def test_rotation_tag_is_applied_before_detection(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ident = make_identity(rng, "portrait")
    # Upright portrait frames (224 high, 160 wide), stored rotated a quarter turn clockwise as a phone does.
    upright = [np.pad(draw_face(ident, Pose(dx=0.005 * i), 160, i), ((32, 32), (0, 0), (0, 0)), mode="edge")
               for i in range(6)]
    sideways = tmp_path / "sideways.mp4"
    write_video(sideways, [np.ascontiguousarray(np.rot90(f, k=-1)) for f in upright])
    tagged = tmp_path / "portrait.mp4"
    # The tag says "display rotated 90 degrees counter-clockwise": stream copy, so only metadata differs.
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-display_rotation", "90",
                    "-i", str(sideways), "-c", "copy", str(tagged)], check=True)

    frames, note = sample_video_frames(tagged, 4)
    assert note is None and len(frames) == 4
    assert all(f.shape == (224, 160, 3) for _, f in frames)  # portrait, as the tag says
    # Upright content: far closer to the drawn frame than the same frame turned the other way (codec noise aside).
    first = frames[0][1].astype(float)
    assert np.abs(first - upright[0]).mean() < 0.6 * np.abs(first - np.rot90(upright[0], k=2)).mean()

    detector = create_detector("dlib_hog")
    found = sum(bool(detect_downscaled(detector, f, 640)) for _, f in frames)
    sideways_found = sum(bool(detect_downscaled(detector, f, 640)) for _, f in sample_video_frames(sideways, 4)[0])
    assert found >= 3
    assert sideways_found < found  # HOG is not rotation invariant: without the tag applied, faces are lost
