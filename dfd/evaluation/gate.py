"""The promotion gate: every check a candidate must pass, each with its value, threshold, verdict and detail.

Pure functions of the evaluate stage's reports (`metrics.json`, `robustness.json`) and of the champion/challenger
comparison; the register stage calls `decide` and writes the result as `gate.json`.

A check whose threshold is set but whose metric was not measured FAILS with the detail "not measured": a bound the
team asked for cannot be waved through because a report lacks the number (set the threshold to null to turn the
check off instead).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from dfd.platform.config import GateParams

ADVERSARIAL = ("fgsm", "pgd")


@dataclass(frozen=True)
class Check:
    """One gate check, as gate.json lists it."""

    name: str
    value: float | None
    threshold: Any
    passed: bool
    detail: str
    op: str = ""  # ">=" or "<=" for a bound, "" for checks that are not one (champion)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "metric": self.name}  # `metric`: what alert formatters before format D read


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def bound_check(name: str, value: Any, threshold: float, op: str, what: str) -> Check:
    """`value op threshold`; a missing or NaN value fails as not measured."""
    v = _finite(value)
    if v is None:
        reason = "not measured" if value is None else f"not measurable ({value})"
        return Check(name, None, threshold, False, f"{what}: {reason}", op)
    ok = v >= threshold if op == ">=" else v <= threshold
    return Check(name, v, threshold, ok, f"{what} {v:.4f} {'meets' if ok else 'misses'} {op} {threshold}", op)


def robustness_levels(robustness: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """`{perturbation: {level: {auc, auc_drop, ...}}}` from robustness.json, perturbed and adversarial together.

    Also reads the older one-level layout (`perturbed: {name: {auc, auc_drop}}`) as a single level "default".
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for section in ("perturbed", "adversarial"):
        for name, body in (robustness.get(section) or {}).items():
            if isinstance(body, dict) and "auc_drop" in body:
                out[name] = {"default": body}
            elif isinstance(body, dict):
                out[name] = {str(level): m for level, m in body.items() if isinstance(m, dict)}
    return out


def _drop_bounds(named: dict[str, float], default: float | None, measured: dict[str, Any]) -> dict[str, float]:
    """Each perturbation's bound: named ones as given, `default` for every other measured non-adversarial one."""
    bounds = dict(named)
    if default is not None:
        for name in measured:
            if name not in bounds and not name.startswith(ADVERSARIAL):
                bounds[name] = default
    return bounds


def robustness_checks(named: dict[str, float], default: float | None, robustness: dict[str, Any]) -> list[Check]:
    """One check per bounded perturbation: its worst AUC drop over all levels against the bound.

    Args:
        named: Perturbation (adversarial ones included) -> largest AUC drop allowed.
        default: The bound of every other non-adversarial perturbation measured; None: only the named ones.
        robustness: robustness.json.
    """
    levels = robustness_levels(robustness)
    checks = []
    bounds = _drop_bounds(named, default, levels)
    if default is not None and not any(not name.startswith(ADVERSARIAL) for name in levels):
        checks.append(Check("max_auc_drop", None, default, False, "AUC drop under perturbation: not measured "
                            "(robustness.json lists no perturbation)", "<="))
    for name, bound in sorted(bounds.items()):
        if name not in levels or not levels[name]:
            checks.append(Check(f"max_auc_drop:{name}", None, bound, False,
                                f"AUC drop under {name}: not measured (not in robustness.json)", "<="))
            continue
        drops = {lvl: _finite(m.get("auc_drop")) for lvl, m in levels[name].items()}
        bad = [lvl for lvl, d in drops.items() if d is None]
        if bad:
            checks.append(Check(f"max_auc_drop:{name}", None, bound, False,
                                f"AUC drop under {name}: not measurable at level(s) {', '.join(bad)}", "<="))
            continue
        worst = max(drops, key=lambda lvl: drops[lvl])  # type: ignore[arg-type,return-value]
        value = float(drops[worst])  # type: ignore[arg-type]
        ok = value <= bound
        over = [lvl for lvl, d in drops.items() if d > bound]  # type: ignore[operator]
        detail = (f"worst AUC drop under {name} is {value:.4f} at level {worst} over {len(drops)} level(s)"
                  + (f"; above {bound} at {', '.join(over)}" if over else ""))
        checks.append(Check(f"max_auc_drop:{name}", value, bound, ok, detail, "<="))
    return checks


def _needed(n_videos: int, half: float, room: float) -> int:
    """Videos needed for an interval half-width of `room` (a width shrinks as 1/sqrt(n))."""
    return math.ceil(n_videos * (half / room) ** 2)


def _budget(champion: dict[str, Any]) -> str:
    """What the test split holds beside what was compared: more videos may already be there (`max_videos`)."""
    have, used = champion.get("n_videos_available"), champion.get("n_videos")
    if not have or not used or have <= used:
        return ""
    return f"; the test split holds {have} samples, champion.max_videos let {used} be compared"


def champion_check(champion: dict[str, Any] | None, policy: str, alpha: float, margin: float = 0.0) -> Check:
    """Non-inferiority (`not_worse`) or superiority (`better`) of the candidate, from `champion_summary`'s result.

    The value is the one-sided (1 - alpha) lower bound of AUC(candidate) - AUC(champion): `not_worse` passes when it
    is above -margin, `better` when it is above 0. `not_worse` fails as shown worse when the one-sided upper bound is
    below -margin too, however wide the interval. A sample too small to decide either way FAILS, with its counts and
    roughly how many videos would be needed; None (no production version yet) passes, and so does a comparison
    skipped because the champion was split by another scheme (`skipped`: said in the detail).
    """
    if policy == "off":
        return Check("champion", None, {"policy": policy}, True, "champion/challenger comparison turned off")
    bound = -margin if policy == "not_worse" else 0.0
    threshold = {"policy": policy, "alpha": alpha, "margin": margin, "lower_bound_above": bound}
    if champion is None:
        return Check("champion", None, threshold, True, "no production version yet: nothing to compare against")
    if champion.get("error"):
        return Check("champion", None, threshold, False, f"champion v{champion.get('version')} could not be "
                     f"scored: {champion['error']}")
    if champion.get("same_lineage"):
        return Check("champion", None, threshold, True, champion.get("detail", "same lineage as production"))
    if champion.get("skipped"):
        return Check("champion", None, threshold, True, f"skipped: {champion['skipped']}")
    counts = (f"{champion.get('n_videos', champion.get('n'))} {champion.get('level', 'frame')}s in "
              f"{champion.get('n_clusters', '?')} identity clusters")
    test = champion.get("test") or {}
    diff, lower = _finite(test.get("diff")), _finite(test.get("lower"))
    if champion.get("too_few") or diff is None or lower is None:
        why = champion.get("too_few") or test.get("note") or "the AUC difference is not measurable"
        return Check("champion", None, threshold, False, f"too few to decide: {why} ({counts}{_budget(champion)})",
                     ">")
    conf = round((1 - alpha) * 100)
    where = (f"{champion.get('level', 'frame')} AUC {test['auc_b']:.4f} vs champion v{champion['version']} "
             f"{test['auc_a']:.4f}: diff {diff:+.4f}, one-sided {conf}% lower bound {lower:+.4f} "
             f"(cluster bootstrap p={_p(test.get('p_value'))}"
             + (f", DeLong p={_p(champion['delong'].get('p_value'))}" if champion.get("delong") else "")
             + f"; {counts})")
    if lower > bound:
        verdict = f"not worse than the champion by {margin}" if policy == "not_worse" else "better than the champion"
        return Check("champion", lower, threshold, True, f"{verdict}: {where}", ">")
    upper = _finite(test.get("upper"))
    if policy == "not_worse" and upper is not None and upper < bound:
        # Shown worse: the one-sided upper bound lies below -margin too. A wide interval is then no reason to ask
        # for more videos: they would narrow it around a loss already larger than the margin.
        return Check("champion", lower, threshold, False,
                     f"worse than the margin {margin} allows, shown: one-sided {conf}% upper bound {upper:+.4f} "
                     f"below {bound:+.4f}: {where}", ">")
    half, n_v = diff - lower, int(champion.get("n_videos") or champion.get("n") or 0)
    # Too few: even a tie (not_worse) or the observed gain (better) could not clear the bound at this sample size.
    room = margin if policy == "not_worse" else diff
    if n_v and room > 0 and half >= room:
        return Check("champion", lower, threshold, False,
                     f"too few to decide: interval half-width {half:.4f} >= {room:.4f}; about "
                     f"{_needed(n_v, half, room)} {champion.get('level', 'frame')}s would be needed"
                     f"{_budget(champion)}: {where}", ">")
    verdict = f"worse than the margin {margin} allows" if policy == "not_worse" else "not shown better"
    return Check("champion", lower, threshold, False, f"{verdict}: {where}", ">")


def _p(value: object) -> str:
    """A p-value for the detail; an undefined one (every resample alike) says so."""
    v = _finite(value)
    return f"{v:.4f}" if v is not None else "undefined"


def int8_checks(export: dict[str, Any] | None) -> list[Check]:
    """The int8 members' agreement with torch fp32 on the test crops (export.json of `dfd.serving.onnx_export`):
    share of equal labels, and the largest fused-logit shift where a bound is set. None when int8 was not asked for.
    """
    if not export or "int8" not in export.get("files", {}):
        return []
    got, bounds = export.get("int8") or {}, export.get("bounds") or {}
    checks = [bound_check("int8_equal_labels", got.get("equal_labels"), bounds["int8_min_equal_labels"], ">=",
                          f"share of {got.get('crops', '?')} test crops whose label int8 leaves unchanged")]
    if bounds.get("int8_max_logit_shift") is not None:
        checks.append(bound_check("int8_max_logit_shift", got.get("max_abs_d_fused_logit"),
                                  bounds["int8_max_logit_shift"], "<=", "int8's largest |d fused logit|"))
    return checks


def served_rule_check(metrics: dict[str, Any], file_rule: str) -> Check:
    """Whether the evaluate stage judged the rule served (`serve.file_rule`): the video-level checks read that
    rule's scores (metrics.json `file_rules`, `dfd.evaluation.file_rules`); a rule not judged fails, with why."""
    rules = metrics.get("file_rules")
    threshold = {"serve.file_rule": file_rule}
    if not rules:  # metrics.json of an evaluate stage before file rules: it judged largest_face only
        ok = file_rule == "largest_face"
        return Check("served_rule", None, threshold, ok, "largest_face judged (the only rule that evaluate stage "
                     "scored)" if ok else f"served rule {file_rule} not judged: metrics.json scores largest_face only; "
                     "rerun `dfd stage evaluate`")
    if rules.get("served") != file_rule:
        return Check("served_rule", None, threshold, False, f"served rule {file_rule} not judged: the evaluate stage "
                     f"judged {rules.get('served')}; rerun `dfd stage evaluate`")
    if not rules.get("judged"):
        why = rules.get("reason") or "no reason recorded"
        return Check("served_rule", None, threshold, False, f"served rule {file_rule} not judged: {why}")
    got = (rules.get("rules") or {}).get(file_rule) or {}
    na = f", {got['not_applicable']} not applicable" if got.get("not_applicable") else ""
    return Check("served_rule", None, threshold, True, f"served rule {file_rule} judged: the video checks use its "
                 f"scores ({got.get('files', '?')} test files{na})")


def decide(cfg: GateParams, metrics: dict[str, Any], robustness: dict[str, Any] | None,
           champion: dict[str, Any] | None, export: dict[str, Any] | None = None,
           file_rule: str | None = None) -> dict[str, Any]:
    """Run every configured check and return gate.json's content (format D).

    Args:
        cfg: The thresholds (None turns a check off).
        metrics: metrics.json (`ensemble`, `drift`, `threshold`, ...).
        robustness: robustness.json, or None when the evaluate stage wrote none.
        champion: The champion/challenger summary (see tasks/register.py), None when there is no production version.
        export: The ONNX export report (export.json); with int8 members, their agreement rows (`int8_checks`).
        file_rule: `serve.file_rule`, the rule the model will be served with: its `served_rule` row (None: none).
    """
    ens = metrics.get("ensemble", {})
    checks: list[Check] = [served_rule_check(metrics, file_rule)] if file_rule is not None else []
    for key, metric, op, what in (("min_auc", "auc", ">=", "test AUC"),
                                  ("min_video_auc", "video_auc", ">=", "test video AUC"),
                                  ("max_eer", "eer", "<=", "test EER"),
                                  ("min_accuracy", "accuracy", ">=", "test accuracy at the threshold"),
                                  # per video (an image: one frame), Kumar et al.'s debiased L2-ECE (ece.py)
                                  ("max_ece", "video_ece", "<=", "test calibration error per video (debiased)")):
        bound = getattr(cfg, key)
        if bound is not None:
            checks.append(bound_check(key, ens.get(metric), bound, op, what))
    if cfg.max_auc_drop or cfg.max_auc_drop_default is not None:
        checks.extend(robustness_checks(cfg.max_auc_drop, cfg.max_auc_drop_default, robustness or {}))
    if cfg.max_drift_share is not None:
        drift = metrics.get("drift") or {}
        value = drift.get("drifted_share")
        check = bound_check("max_drift_share", value, cfg.max_drift_share, "<=", "share of drifted columns")
        if value is None and drift.get("error"):
            check = Check(check.name, None, check.threshold, False, f"drift report failed: {drift['error']}", "<=")
        checks.append(check)
    checks.extend(int8_checks(export))
    if cfg.max_uncertain_share is not None:
        agree = metrics.get("agreement") or {}
        what = (f"share of test files whose members disagree (agreement below {agree['threshold']})"
                if "threshold" in agree else "share of test files whose members disagree")
        checks.append(bound_check("max_uncertain_share", agree.get("uncertain_share"), cfg.max_uncertain_share,
                                  "<=", what))
    checks.append(champion_check(champion, cfg.champion.policy, cfg.champion.alpha, cfg.champion.margin))
    failed = [c.name for c in checks if not c.passed]
    return {"passed": not failed, "failed": failed, "checks": [c.to_dict() for c in checks],
            "threshold": metrics.get("threshold"), "split": "test",
            "champion": {k: v for k, v in champion.items() if k != "detail"} if champion else None}


def format_table(gate: dict[str, Any]) -> list[str]:
    """gate.json as aligned text lines: check, value, threshold, verdict, detail."""
    rows = [("check", "value", "threshold", "verdict", "detail")]
    for c in gate.get("checks", []):
        value = "-" if c.get("value") is None else f"{c['value']:.4f}"
        thr = c.get("threshold")
        thr_s = (f"{c.get('op', '')} {thr}".strip() if not isinstance(thr, dict)
                 else " ".join(f"{k}={v}" for k, v in thr.items()))
        rows.append((c["name"], value, thr_s, "PASS" if c["passed"] else "FAIL", c.get("detail", "")))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
