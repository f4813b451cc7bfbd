"""`dfd predict --report DIR`: one self-contained HTML file per input (images inline as base64) and an index.

A report is what a reviewer keeps to defend a decision: the file's SHA-256, size and media facts, the model version
with its gate verdict and where its card is, the verdict (or why there is none), every face track, the timeline of
P(fake) per sampled frame and track, heatmap overlays of the frames that drove the verdict (each member's, and the
ensemble's fused logit's), the members' agreement when the model records it, and the synthetic-data warning when it
applies. Face images appear only with `report.embed_faces`; file names only with `serve.log_names`.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfd.serving.media_scoring import MediaResult

HEATMAP_NOTE = ("A heatmap shows where in the face crop the evidence that raised a detector's P(fake) came from "
                "(Grad-CAM at its last convolution). It is not a localisation of the manipulation: a detector can be "
                "right for the wrong reason, and a cool region is not proven untouched.")


@dataclass(frozen=True)
class ModelFacts:
    """What a report says about the model that scored."""

    label: str  # URI and version
    version: str | None
    gate: str  # "passed", "failed (checks)" or "not recorded"
    card: str  # where the model card is
    threshold: float
    warning: str | None  # the synthetic-data warning


def model_facts(model: Any, label: str, threshold: float) -> ModelFacts:
    """The facts of a `LoadedModel`: its gate verdict from the version's tags, its card in the registering run."""
    tags = model.tags or {}
    passed = tags.get("gate_passed")
    gate = ("not recorded (a model folder, or registered without a gate)" if passed is None else "passed"
            if passed == "true" else f"failed ({tags.get('gate_failed_checks', 'checks not recorded')})")
    run_id = getattr(getattr(model.pyfunc, "metadata", None), "run_id", None)
    card = f"runs:/{run_id}/model_card.md (the registering run's artifacts)" if run_id else "not recorded"
    return ModelFacts(label, model.version, gate, card, threshold, model.warning)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def png_b64(rgb: np.ndarray) -> str:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError("cannot encode an image as PNG")
    return base64.b64encode(buf.tobytes()).decode()


def timeline_png(res: MediaResult, threshold: float) -> bytes | None:
    """P(fake) per sampled frame and track against time (seconds, or frame index without a frame rate), as PNG."""
    if not res.track_list:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.8), dpi=90)
    for t in res.track_list:
        xs = [f["t"] if f["t"] is not None else f["frame"] for f in t["frames"]]
        ax.plot(xs, [f["p_fake"] for f in t["frames"]], marker="o", label=f"track {t['track']}")
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label="threshold")
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)" if res.fps else "frame")
    ax.set_ylabel("P(fake)")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def driving_faces(res: MediaResult, k: int = 3) -> list[dict[str, Any]]:
    """The faces that drove the verdict: the `k` highest P(fake) among those it aggregated (the lowest when real)."""
    fake = res.label == "fake"
    return sorted(res.crops, key=lambda f: -f["p_fake"] if fake else f["p_fake"])[:k]


def heatmaps(faces: list[dict[str, Any]], explainer: Any, embed: bool, toward: str = "fake",
             check: Callable[[], None] | None = None) -> dict[str, Any]:
    """The heatmap part of a report: each driving face with its overlays as base64 PNG (the face, the ensemble's,
    each member's), each member's share of the ensemble map's heat, or why there are none (`omitted`).

    `check` is called before the ensemble's and the members' backward passes (a server's cancel check).
    """
    from dfd.serving.heatmaps import overlay

    out: dict[str, Any] = {"note": HEATMAP_NOTE, "toward": toward, "omitted": None, "member_shares": {}, "frames": []}
    if not embed:
        out["omitted"] = ("they are drawn over the face, and face images are off (report.embed_faces; in dfd serve's "
                          "answers also serve.explain_faces)")
    elif explainer is None or not faces:
        out["omitted"] = "none asked for (report.heatmap_frames is 0), or no face scored"
    if out["omitted"]:
        return out
    crops = np.stack([f["crop"] for f in faces]).astype(np.uint8)
    if check is not None:
        check()
    fused, out["member_shares"] = explainer.ensemble_map(crops, toward)
    if check is not None:
        check()
    members = explainer.member_maps(crops, toward)
    out["frames"] = [{"frame": f["frame"], "track": f.get("track"), "p_fake": f["p_fake"],
                      "face_png": png_b64(crops[i]), "ensemble_png": png_b64(overlay(crops[i], fused[i])),
                      "members_png": {m: png_b64(overlay(crops[i], maps[i])) for m, maps in members.items()}}
                     for i, f in enumerate(faces)]
    return out


def content(res: MediaResult, source: Path, facts: ModelFacts, explainer: Any, embed_faces: bool, show_name: bool,
            index: int, heatmap_frames: int = 3, check: Callable[[], None] | None = None) -> dict[str, Any]:
    """Everything one input's report says, JSON-ready (images as base64 PNG): what `render` draws as HTML and
    `dfd serve` answers to `POST /predict?explain=1`, so the two always carry the same facts.

    Args:
        res: The scored file (its crops are the faces the verdict aggregated).
        source: The bytes that were scored (SHA-256 and size).
        facts: The model's facts.
        explainer: A `dfd.serving.heatmaps.Explainer`, or None for no heatmaps.
        embed_faces: Face crops and overlays allowed (`report.embed_faces`).
        show_name: The file name allowed (`serve.log_names`); else the input is named by `index`.
        index: The input's position.
        heatmap_frames: Driving frames with heatmaps (`report.heatmap_frames`).
        check: Called between heatmap frames; raises to stop.
    """
    readable = source.is_file()
    plot = timeline_png(res, facts.threshold)
    faces = driving_faces(res, heatmap_frames) if res.p_fake is not None and heatmap_frames else []
    return {
        "input": {"index": index, "name": res.path if show_name else None,
                  "sha256": sha256(source) if readable else None,
                  "size_bytes": source.stat().st_size if readable else None, "kind": res.kind,
                  "frames_sampled": res.frames, "frames_with_face": res.faces, "fps": res.fps},
        "model": {"label": facts.label, "version": facts.version, "gate": facts.gate, "card": facts.card,
                  "threshold": facts.threshold},
        "warning": facts.warning,
        "verdict": {"status": res.status, "label": res.label, "p_fake": res.p_fake, "threshold": facts.threshold,
                    "file_rule": res.file_rule, "reason": res.reason, "detail": res.detail},
        "agreement": res.agreement,
        "tracks": res.track_list,
        "timeline": res.timeline,
        "timeline_png": base64.b64encode(plot).decode() if plot else None,
        "heatmaps": heatmaps(faces, explainer, embed_faces, res.label or "fake", check),
    }


STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}.warn{background:#fde2e2;padding:8px}"
         "figure{display:inline-block;margin:4px}img.heatmap{width:128px;height:128px}.fake{color:#b00}")


def _track_row(t: dict[str, Any]) -> str:
    score = "" if t["p_fake"] is None else f"{t['p_fake']:.3f}"
    members = html.escape(", ".join(f"{m} {v:.3f}" for m, v in t["members"].items()))
    return (f"<tr><td>{t['track']}</td><td>{t['n_frames']}</td><td>{t['mean_side_px']:.0f}</td><td>{score}</td>"
            f"<td>{t['reason'] or ''}</td><td>{members}</td></tr>")


def _figure(name: str, b64: str) -> str:
    return (f'<figure><img class="heatmap" alt="{html.escape(name)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{html.escape(name)}</figcaption></figure>")


def _heatmap_html(heat: dict[str, Any]) -> str:
    if heat["omitted"]:
        return f"<p>No heatmaps: {html.escape(heat['omitted'])}.</p>"
    rows = []
    for f in heat["frames"]:
        cells = [("face", f["face_png"]), ("ensemble", f["ensemble_png"]), *f["members_png"].items()]
        rows.append(f"<div class=\"row\"><p>frame {f['frame']}, track {f['track']}, P(fake) {f['p_fake']:.3f}</p>"
                    + "".join(_figure(n, b64) for n, b64 in cells) + "</div>")
    share = ", ".join(f"{m} {v:.0%}" for m, v in heat["member_shares"].items())
    return (f"<p>{html.escape(heat['note'])}</p><p>Evidence for <b>{heat['toward']}</b> (the verdict). Share of the "
            f"ensemble map's heat from each member: {html.escape(share)}.</p>" + "".join(rows))


def render(c: dict[str, Any]) -> str:
    """One input's report (`content`) as a self-contained HTML page."""
    inp, model, v = c["input"], c["model"], c["verdict"]
    name = html.escape(inp["name"] if inp["name"] is not None
                       else f"input {inp['index']} (file names are off: serve.log_names)")
    if v["p_fake"] is not None:
        verdict = (f'<p id="verdict" class="{v["label"]}"><b>{v["label"].upper()}</b>: P(fake) {v["p_fake"]:.3f} '
                   f"(threshold {v['threshold']:.3f}, rule {v['file_rule']})</p>")
    else:
        verdict = (f'<p id="verdict"><b>{v["status"].upper()}</b>: no P(fake). Reason <code>{v["reason"]}</code>'
                   f"{': ' + html.escape(v['detail']) if v['detail'] else ''}</p>")
    agreement = c["agreement"]
    track_rows = "".join(_track_row(t) for t in c["tracks"])
    warn = f'<p class="warn" id="warning">{html.escape(c["warning"])}</p>' if c["warning"] else ""
    size = inp["size_bytes"]
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>dfd report {inp['index']}</title>
<style>{STYLE}</style></head><body>
<h1>Deepfake detection report</h1>{warn}
<h2>Input</h2><table id="facts"><tr><th>name</th><td>{name}</td></tr>
<tr><th>SHA-256</th><td>{inp['sha256'] or 'not readable'}</td></tr>
<tr><th>size</th><td>{size if size is not None else 'unknown'} bytes</td></tr>
<tr><th>kind</th><td>{inp['kind']}</td></tr>
<tr><th>frames sampled</th><td>{inp['frames_sampled']}</td></tr>
<tr><th>frames with a face</th><td>{inp['frames_with_face']}</td></tr>
<tr><th>frame rate</th><td>{f"{inp['fps']:.2f} fps" if inp['fps'] else 'n/a'}</td></tr></table>
<h2>Model</h2><table id="model"><tr><th>model</th><td>{html.escape(model['label'])}</td></tr>
<tr><th>gate</th><td>{html.escape(model['gate'])}</td></tr>
<tr><th>model card</th><td>{html.escape(model['card'])}</td></tr>
</table>
<h2>Verdict</h2>{verdict}<p>Members' agreement: {'not recorded by this model' if agreement is None
                                                 else f'{agreement:.0%}'}</p>
<h2>Face tracks</h2><table id="tracks"><tr><th>track</th><th>frames</th><th>face side (px)</th><th>P(fake)</th>
<th>not judged</th><th>members</th></tr>{track_rows}</table>
<h2>Timeline</h2>{f'<img id="timeline" alt="timeline" src="data:image/png;base64,{c["timeline_png"]}">'
                  if c["timeline_png"] else '<p>No face was scored.</p>'}
<h2>Heatmaps</h2><div id="heatmaps">{_heatmap_html(c["heatmaps"])}</div>
</body></html>"""


class ReportWriter:
    """Writes `out/NNNNN.html` as each input is scored (its crops are not kept), and `out/index.html` at `close`."""

    def __init__(self, out: Path, facts: ModelFacts, explainer: Any, embed_faces: bool, show_names: bool,
                 heatmap_frames: int = 3) -> None:
        self.out, self.facts, self.explainer = out, facts, explainer
        self.embed_faces, self.show_names, self.heatmap_frames = embed_faces, show_names, heatmap_frames
        self.rows: list[str] = []
        out.mkdir(parents=True, exist_ok=True)

    def add(self, res: MediaResult, source: Path) -> Path:
        i = len(self.rows)
        page = self.out / f"{i:05d}.html"
        page.write_text(render(content(res, source, self.facts, self.explainer, self.embed_faces, self.show_names, i,
                                       self.heatmap_frames)), encoding="utf-8")
        label = html.escape(res.path if self.show_names else f"input {i}")
        score = "" if res.p_fake is None else f"{res.p_fake:.3f}"
        self.rows.append(f'<tr><td><a href="{page.name}">{label}</a></td><td>{res.status}</td>'
                         f"<td>{res.label or ''}</td><td>{score}</td><td>{res.reason or ''}</td>"
                         f"<td>{res.tracks}</td></tr>")
        return page

    def close(self) -> Path:
        """Write the index; returns its path."""
        facts = self.facts
        warn = f'<p class="warn">{html.escape(facts.warning)}</p>' if facts.warning else ""
        index = self.out / "index.html"
        index.write_text(f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>dfd reports</title>
<style>{STYLE}</style></head><body><h1>Deepfake detection reports</h1>{warn}<p>{html.escape(facts.label)}, gate:
{html.escape(facts.gate)}</p><table id="index"><tr><th>input</th><th>status</th><th>label</th><th>P(fake)</th>
<th>reason</th><th>tracks</th></tr>{''.join(self.rows)}</table></body></html>""", encoding="utf-8")
        return index
