"""MkDocs hook: fills the params and CLI reference pages at build time, from the code itself.

`reference/params.md` gets one table per section of the schema `dfd config --schema` prints (`json_schema()`), each
key with its type, default, bounds and the comment beside it in the typed code (the "why" that DESIGN.md asks
for); `reference/cli.md` gets one section per command of the argparse parser of `dfd` (`build_parser()`), each
flag with its help. Nothing generated is committed: a key or flag added to the code is in the next build, and
tests/unit/test_docs_site.py checks that every one of them is.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import json
import sys
import textwrap
import tokenize
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
PARAMS_MARKER = "<!-- generated: params -->"
CLI_MARKER = "<!-- generated: cli -->"

# Where each command is explained at length (links are checked by `mkdocs build --strict`).
CLI_GUIDES = {
    "run": "../quickstart.md", "demo": "../quickstart.md", "stage": "../concepts/dag.md",
    "rollback": "../guides/gate-and-registry.md#rollback", "compare": "../guides/gate-and-registry.md#compare",
    "demo-data": "../quickstart.md", "validate-dataset": "../guides/own-dataset.md",
    "dataset": "../guides/own-dataset.md", "deploy": "../guides/team-stack.md#weekly-runs-on-a-prefect-server",
    "predict": "../guides/serving.md", "serve": "../guides/serving.md",
    "deploy-model": "../guides/serving.md#deployments", "monitor": "../guides/monitoring.md",
    "weights": "../guides/training.md#imagenet-starts", "config": "params.md",
}


def _import_project() -> None:
    """Import from this checkout (mkdocs may run from an environment whose editable install points elsewhere)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


# --- params.yaml --------------------------------------------------------------------------------------------------


def _field_comments(cls: type) -> dict[str, str]:
    """The comments written beside (or just above) each field of a params class and its bases."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("dfd."):
            continue
        source = textwrap.dedent(inspect.getsource(klass))
        comments: dict[int, str] = {}
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
        lines = source.splitlines()
        body = ast.parse(source).body[0]
        assert isinstance(body, ast.ClassDef)
        for node in body.body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            above, n = [], node.lineno - 1
            while n >= 1 and lines[n - 1].strip().startswith("#"):
                above.insert(0, comments[n])
                n -= 1
            beside = [comments[i] for i in range(node.lineno, (node.end_lineno or node.lineno) + 1) if i in comments]
            # Lines above a field wrap one text; comments beside a multi-line value each annotate one of its lines.
            text = " ".join([" ".join(above), "; ".join(beside)]).strip()
            out[node.target.id] = text.removeprefix("noqa").strip()
    return out


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return schema["$defs"][ref.split("/")[-1]] if ref else node


def _type_name(schema: dict[str, Any], node: dict[str, Any]) -> str:
    node = _resolve(schema, node)
    if "anyOf" in node:
        return " \\| ".join(_type_name(schema, n) for n in node["anyOf"])
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    kind = node.get("type", "any")
    if kind == "array":
        return f"list[{_type_name(schema, node.get('items', {}))}]"
    if kind == "object":
        extra = node.get("additionalProperties")
        return f"map of {_type_name(schema, extra)}" if isinstance(extra, dict) else "map"
    return {"number": "float", "integer": "int", "boolean": "bool", "string": "str"}.get(kind, kind)


def _bounds(node: dict[str, Any]) -> str:
    parts = []
    for sub in node.get("anyOf", [node]):
        for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
            if key in sub:
                parts.append(f"{sign} {sub[key]}")
    return ", ".join(parts)


def _cell(text: str) -> str:
    """Text for a table cell: pipes escaped, and `<placeholders>` outside code kept visible (not read as HTML)."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def _section(schema: dict[str, Any], node: dict[str, Any], key: str, cls: type | None, out: list[str]) -> None:
    """A table of `node`'s leaf keys under `key`, then a sub-section per nested section."""
    from pydantic import BaseModel

    node = _resolve(schema, node)
    comments = _field_comments(cls) if cls else {}
    rows, nested = [], []
    for name, prop in node.get("properties", {}).items():
        full = f"{key}.{name}" if key else name
        target = _resolve(schema, prop)
        sub_cls = None
        if cls is not None:
            annotation = cls.model_fields[name].annotation
            sub_cls = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        extra = target.get("additionalProperties")
        items = target.get("items", {})
        if "properties" in target:
            nested.append((full, prop, sub_cls, comments.get(name, "")))
        elif isinstance(extra, dict) and "$ref" in extra:  # a map of sections (models: one per key)
            nested.append((f"{full}.<name>", extra, _model_class(extra), comments.get(name, "")))
        elif target.get("type") == "array" and "$ref" in items:  # a list of sections (evaluate.datasets)
            rows.append((full, f"list of `{full}[]` entries", "`[]`", "", comments.get(name, "")))
            nested.append((f"{full}[]", items, _model_class(items), comments.get(name, "")))
        else:
            default = f"`{json.dumps(prop['default'])}`" if "default" in prop else _factory_default(cls, name)
            rows.append((full, _type_name(schema, prop), default, _bounds(target), comments.get(name, "")))
    if rows:
        out += ["| key | type | default | bounds | what it is |", "| --- | --- | --- | --- | --- |"]
        out += [f"| `{k}` | {t} | {_cell(d)} | {_cell(b)} | {_cell(c)} |" for k, t, d, b, c in rows]
        out.append("")
    for full, prop, sub_cls, comment in nested:
        sub = _resolve(schema, prop)
        out += [f"### `{full}`", "", _cell(sub.get("description", ""))]
        if comment:
            out.append(f"\n{_cell(comment)}")
        out.append("")
        _section(schema, prop, full, sub_cls, out)


def _factory_default(cls: type | None, name: str) -> str:
    """The default of a field built by a factory (lists, maps), which the JSON schema leaves out."""
    if cls is None or cls.model_fields[name].is_required():
        return "required"
    return f"`{json.dumps(cls.model_fields[name].get_default(call_default_factory=True))}`"


def _model_class(node: dict[str, Any]) -> type | None:
    import dfd.platform.config as config

    return getattr(config, node["$ref"].split("/")[-1], None) if "$ref" in node else None


def params_markdown() -> str:
    """Every key of `params.yaml`, section by section, from `json_schema()` and the typed code's comments."""
    _import_project()
    from dfd.platform.config import Params, json_schema

    schema = json_schema()
    out: list[str] = []
    comments = _field_comments(Params)
    for name, prop in schema["properties"].items():
        target = _resolve(schema, prop)
        out += [f"## `{name}`", "", _cell(target.get("description", ""))]
        if comments.get(name):
            out.append(f"\n{_cell(comments[name])}")
        out.append("")
        extra = target.get("additionalProperties")
        if "properties" in target:
            _section(schema, prop, name, _model_class(prop), out)
        elif isinstance(extra, dict) and "$ref" in extra:
            out += [f"### `{name}.<name>`", "", _cell(_resolve(schema, extra).get("description", "")), ""]
            _section(schema, extra, f"{name}.<name>", _model_class(extra), out)
    return "\n".join(out)


# --- the CLI ------------------------------------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _argument_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.option_strings:
            name = ", ".join(f"`{s}`" for s in action.option_strings)
            if action.nargs != 0:
                name += f" `{action.metavar or action.dest.upper()}`"
        else:
            name = f"`{action.metavar or action.dest}`"
        if action.choices:
            name += " (" + " \\| ".join(f"`{c}`" for c in action.choices) + ")"
        default = action.default
        unset = default is None or default is False or default == [] or default == argparse.SUPPRESS
        shown = "" if unset or action.required else f"`{default}`"
        if action.required and action.option_strings:
            shown = "required"
        rows.append(f"| {name} | {shown} | {_cell(action.help or '')} |")
    return ["| argument | default | what it does |", "| --- | --- | --- |", *rows] if rows else []


def _command(parser: argparse.ArgumentParser, path: list[str], help_text: str, out: list[str]) -> None:
    sub = _subparsers(parser)
    out += [f"## `{' '.join(path)}`", "", _cell(help_text)]
    if path[1] in CLI_GUIDES:
        out.append(f"([guide]({CLI_GUIDES[path[1]]}))")
    usage = " ".join(parser.format_usage().split())  # one line, whatever the terminal width
    out += ["", "```", usage, "```", "", *_argument_rows(parser), ""]
    if sub is not None:
        helps = {a.dest: a.help or "" for a in sub._choices_actions}
        for name, child in sub.choices.items():
            _command(child, [*path, name], helps.get(name, ""), out)


def cli_markdown() -> str:
    """Every command and flag of `dfd`, from the argparse parser the CLI runs."""
    _import_project()
    from dfd.cli import build_parser

    out: list[str] = []
    parser = build_parser()
    out += ["## Global options", "", *_argument_rows(parser), ""]
    sub = _subparsers(parser)
    assert sub is not None
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    for name, child in sub.choices.items():
        _command(child, ["dfd", name], helps.get(name, ""), out)
    return "\n".join(out)


# --- the hook -----------------------------------------------------------------------------------------------------


def on_pre_build(**_: Any) -> None:
    """Forget the project's modules imported by the last build, so that `mkdocs serve` documents the code as saved."""
    for name in [m for m in sys.modules if m == "dfd" or m.startswith("dfd.")]:
        del sys.modules[name]


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Replace the marker of a reference page with what the code says today."""
    for uri, marker, make in (("reference/params.md", PARAMS_MARKER, params_markdown),
                              ("reference/cli.md", CLI_MARKER, cli_markdown)):
        if page.file.src_uri == uri:
            if marker not in markdown:
                raise PluginError(f"{uri} lost its marker {marker}: the generated reference has nowhere to go")
            return markdown.replace(marker, make())
    return markdown
