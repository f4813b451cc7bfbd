"""The model card: what a reviewer reads in the MLflow UI before trusting a registered version.

Pure functions of the register stage's inputs (gate.json, metrics.json, robustness.json, the lineage tags, the ingest
report): `model_card` returns the full Markdown (logged as `model_card.md` beside the plots and reports) and the
version's description, which MLflow stores in a 5,000-character column (PostgreSQL refuses more): the sections are
added in order of importance while they fit, and the rest are named with a link to the full card.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from dfd.evaluation.gate import robustness_levels

#: MLflow's model_versions.description column is VARCHAR(5000).
DESCRIPTION_LIMIT = 5000
#: The version tag that says what the model learnt from; "synthetic" makes predict and serve warn on every answer.
TRAINING_DATA_TAG = "training_data"
SYNTHETIC_WARNING = ("Trained on synthetic faces (the generated demo set): its scores on real media mean nothing. "
                     "Use it to try the pipeline, never to judge a real image or video.")
_METRICS = (("auc", "AUC (frames)"), ("video_auc", "AUC (videos)"), ("eer", "EER"), ("accuracy", "accuracy"),
            ("video_ece", "ECE per video, debiased L2 (10 equal-width bins)"),
            ("video_ece_equal_mass", "ECE per video, debiased L2 (10 equal-mass bins)"),
            ("log_loss", "log loss"), ("brier", "Brier score"))


@dataclass(frozen=True)
class CardInputs:
    """Everything the card shows; each part may be empty when a stage did not write it."""

    model_name: str
    version: str
    run_id: str
    gate: dict[str, Any]
    metrics: dict[str, Any]
    robustness: dict[str, Any] | None = None
    lineage: dict[str, str] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # ingest report: per_split, identities; methods
    members: list[str] = field(default_factory=list)
    fusion: str = ""
    synthetic: bool = False
    experiment_id: str = ""
    artifacts: list[str] = field(default_factory=list)  # paths inside the run's artifacts


def _num(v: Any, fmt: str = ".4f") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "-"
    return format(f, fmt) if math.isfinite(f) else "-"


def _cell(text: Any, limit: int | None = None) -> str:
    s = str(text).replace("|", "\\|").replace("\n", " ")
    return s if limit is None or len(s) <= limit else s[:limit - 1] + "…"


def _table(head: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _threshold(c: dict[str, Any]) -> str:
    thr = c.get("threshold")
    if isinstance(thr, dict):
        return ", ".join(f"{k}={v}" for k, v in thr.items())
    return f"{c.get('op', '')} {thr}".strip()


def verdict_section(inp: CardInputs, detail_limit: int | None = None) -> str:
    """The verdict and the gate table: every check with its value, threshold and detail."""
    gate = inp.gate
    failed = gate.get("failed") or []
    verdict = ("**Gate: PASSED**" if gate.get("passed") else f"**Gate: FAILED** ({', '.join(failed)})")
    rows = [(c["name"], _num(c.get("value")), _threshold(c), "PASS" if c.get("passed") else "FAIL",
             _cell(c.get("detail", ""), detail_limit)) for c in gate.get("checks", [])]
    return (f"## Verdict\n\n{verdict}: {len(gate.get('checks', []))} checks on the test split, decision threshold "
            f"{_num(gate.get('threshold'))}.\n\n" + _table(("check", "value", "threshold", "verdict", "detail"), rows))


def metrics_section(inp: CardInputs) -> str:
    """Test metrics with their identity-cluster bootstrap intervals where measured."""
    ens = inp.metrics.get("ensemble", {})
    rows = []
    for key, label in _METRICS:
        if key not in ens:
            continue
        lo, hi = ens.get(f"{key}_ci_low"), ens.get(f"{key}_ci_high")
        interval = f"[{_num(lo)}, {_num(hi)}]" if lo is not None and hi is not None else ""
        rows.append((label, _num(ens.get(key)), interval))
    clusters = ens.get("ci_clusters")
    note = (f"95% intervals: bootstrap over {int(clusters)} identity clusters (whole people drawn together)."
            if clusters else "")
    return (f"## Test metrics\n\n{int(ens.get('n', 0))} test frames, threshold {_num(inp.metrics.get('threshold'))}. "
            f"{note}\n\n" + _table(("metric", "value", "95% interval"), rows) + file_rule_lines(inp)
            + agreement_line(inp))


def file_rule_lines(inp: CardInputs) -> str:
    """Which file rule the model is served with and whether the gate judged it, and both rules' video metrics."""
    fr = inp.metrics.get("file_rules")
    if not fr:
        return "\n\nServed rule: largest_face, judged (the only rule this evaluation scored)."
    verdict = "judged" if fr.get("judged") else f"NOT judged ({fr.get('reason')})"
    rows = []
    for rule, m in (fr.get("rules") or {}).items():
        if "reason" in m:
            rows.append((rule, "-", "-", "-", "-", f"not scored: {m['reason']}"))
        else:
            rows.append((rule, _num(m.get("video_auc")), _num(m.get("video_eer")), _num(m.get("video_accuracy")),
                         f"{m.get('files', '-')} / {m.get('not_applicable', 0)}", ""))
    shown = fr.get("served") if fr.get("judged") else "largest_face"
    return (f"\n\nServed rule (`serve.file_rule`): {fr.get('served')}, {verdict}. The video metrics above are "
            f"{shown}'s, on the test files of {fr.get('dataset', 'the test split')}.\n\n"
            + _table(("file rule", "video AUC", "video EER", "video accuracy", "files / not applicable", "note"), rows))


def agreement_line(inp: CardInputs) -> str:
    """How often the members disagree with the ensemble on a test file (served as `uncertain`), and whether the
    ensemble is right less often there."""
    a = inp.metrics.get("agreement") or {}
    if a.get("uncertain_share") is None:
        return ""
    acc = (f" Accuracy on the files the members agree on {_num(a.get('accuracy_agreed'), '.3f')}, on the uncertain "
           f"ones {_num(a.get('accuracy_uncertain'), '.3f')}." if a.get("uncertain") else "")
    return (f"\n\nMember agreement: {a['uncertain']} of {a['files']} test files ({_num(a['uncertain_share'], '.1%')})"
            f" have fewer than {a['threshold']} of the {len(a.get('members', []))} counted members agreeing with the "
            f"ensemble's label: they are served as `uncertain`.{acc}")


def champion_section(inp: CardInputs) -> str:
    """The candidate against the production version it would replace."""
    champ = inp.gate.get("champion")
    check = next((c for c in inp.gate.get("checks", []) if c.get("name") == "champion"), {})
    if not champ:
        return f"## Champion comparison\n\n{check.get('detail', 'no production version to compare with')}."
    test, delong = champ.get("test") or {}, champ.get("delong") or {}
    rows = [("champion", f"v{champ.get('version')}"), ("policy / margin", f"{champ.get('policy')} / "
                                                                         f"{champ.get('margin', '-')}"),
            ("level", champ.get("level", "-")),
            ("videos / clusters", f"{champ.get('n_videos', '-')} / {champ.get('n_clusters', '-')}"),
            ("AUC candidate / champion", f"{_num(test.get('auc_b'))} / {_num(test.get('auc_a'))}"),
            ("difference, one-sided lower bound", f"{_num(test.get('diff'))}, {_num(test.get('lower'))}"),
            ("p (bootstrap / DeLong)", f"{_num(test.get('p_value'))} / {_num(delong.get('p_value'))}")]
    return (f"## Champion comparison\n\n{check.get('detail', '')}\n\n" + _table(("", ""), rows))


def lineage_section(inp: CardInputs) -> str:
    """Commit, data hashes, params hash, the runs that made it."""
    keys = ["git_commit", "dvc_data_hash", "params_hash", "prefect_flow_run_id", "mlflow_run_id", "dataset"]
    keys += sorted(k for k in inp.lineage if k.startswith("dvc_data_hash.") and k not in keys)
    rows = [(k, inp.lineage[k]) for k in keys if inp.lineage.get(k)]
    return "## Lineage\n\n" + _table(("what", "value"), rows)


def training_section(inp: CardInputs) -> str:
    """Samples and identity clusters per split and class, manipulation methods, the split scheme."""
    t = inp.training
    per, clusters = t.get("per_split") or {}, t.get("clusters") or {}
    rows = [(s, per.get(s, {}).get("real", 0), per.get(s, {}).get("fake", 0),
             *((clusters[s].get("real", 0), clusters[s].get("fake", 0), clusters[s].get("all", 0)) if s in clusters
               else ("-", "-", (t.get("identities") or {}).get(s, "-")))) for s in ("train", "val", "test")]
    methods = ", ".join(f"{m} ({n})" for m, n in sorted((t.get("methods") or {}).items())) or "-"
    kind = "synthetic (generated demo faces)" if inp.synthetic else "as ingested"
    scheme = f" Split by `{t['split_scheme']}` (identity clusters over the persons each sample shows)." \
        if t.get("split_scheme") else ""
    return (f"## Training data\n\nDataset `{inp.lineage.get('dataset', '-')}`, {kind}; members "
            f"{', '.join(inp.members) or '-'}, fused by {inp.fusion or '-'}; fake methods: {methods}.{scheme}\n\n"
            + _table(("split", "real samples", "fake samples", "real clusters", "fake clusters", "clusters"), rows))


def robustness_section(inp: CardInputs) -> str:
    """Worst AUC drop per perturbation and attack, and the cross-dataset rows."""
    rows = []
    for name, levels in sorted(robustness_levels(inp.robustness or {}).items()):
        drops = {lvl: m.get("auc_drop") for lvl, m in levels.items()}
        worst = max(drops, key=lambda k: float(drops[k]) if drops[k] is not None else -1.0)
        rows.append((name, worst, _num(drops[worst])))
    cross = inp.metrics.get("cross_dataset") or {}
    out = "## Robustness and other datasets\n\n" + (_table(("perturbation", "worst level", "AUC drop"), rows)
                                                    if rows else "No perturbation measured.")
    if cross:
        out += "\n\n" + _table(("dataset", "AUC", "EER", "video AUC"), [
            (n, _num(r.get("auc")), _num(r.get("eer")), _num(r.get("video_auc"))) for n, r in cross.items()])
    return out


def use_section(inp: CardInputs) -> str:
    """Intended use, known limits, how to load and serve."""
    uri = f"models:/{inp.model_name}/{inp.version}"
    limits = ["Scores face crops found by the pipeline's own detector; media without a detectable face get no score.",
              "Judged on held-out identities of the training dataset; other datasets and new manipulation methods "
              "score lower (see the cross-dataset rows).",
              "White-box attacks within a few 8-bit steps change its decision (see fgsm/pgd above)."]
    if inp.synthetic:
        limits.insert(0, SYNTHETIC_WARNING)
    return ("## Intended use and known limits\n\nA screening aid that ranks images and videos by P(fake) for human "
            "review; not proof that a given file is or is not manipulated.\n\n" + "\n".join(f"- {x}" for x in limits)
            + f"\n\n## Load and serve\n\n```\ndfd predict --model {uri} video.mp4\ndfd serve --model {uri}\n"
            f"python -c \"import mlflow; m = mlflow.pyfunc.load_model('{uri}')\"\n```")


def _links(inp: CardInputs) -> str:
    where = (f"[run {inp.run_id}](#/experiments/{inp.experiment_id}/runs/{inp.run_id})" if inp.experiment_id
             else f"run `{inp.run_id}`")
    files = ", ".join(f"`{a}`" for a in inp.artifacts) or "`model_card.md`"
    return f"Full card, plots and reports: artifacts of {where}: {files}."


def model_card(inp: CardInputs) -> tuple[str, str]:
    """(full Markdown card, version description of at most `DESCRIPTION_LIMIT` characters)."""
    title = f"# {inp.model_name} v{inp.version}"
    warning = f"> **WARNING: {SYNTHETIC_WARNING}**" if inp.synthetic else ""
    sections = [metrics_section(inp), champion_section(inp), lineage_section(inp), training_section(inp),
                robustness_section(inp), use_section(inp)]
    full = "\n\n".join(p for p in [title, warning, verdict_section(inp), *sections, "## Artifacts\n\n" + _links(inp)]
                       if p) + "\n"
    head = "\n\n".join(p for p in [title, warning] if p)
    tail = _links(inp)
    for limit in (None, 120, 60):  # shorten the gate's details before dropping the gate table itself
        verdict = verdict_section(inp, limit)
        if len(head) + len(verdict) + len(tail) + 200 < DESCRIPTION_LIMIT:
            break
    parts, left_out = [head, verdict], []
    for sec in sections:
        if sum(len(p) + 2 for p in parts) + len(sec) + len(tail) + 120 <= DESCRIPTION_LIMIT:
            parts.append(sec)
        else:
            left_out.append(sec.split("\n", 1)[0].lstrip("# "))
    if left_out:
        parts.append(f"*Not shown here (5,000-character limit): {', '.join(left_out)}; see model_card.md.*")
    description = "\n\n".join([*parts, tail])
    return full, description[:DESCRIPTION_LIMIT]
