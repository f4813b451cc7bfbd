"""The documentation site builds strict and offline, and its generated reference names every command, flag and key.

The site is built once per module into a temporary folder by `mkdocs build --strict` (a broken link, anchor or API
reference fails it). The CLI and params are walked here directly (the parser `dfd` runs, the pydantic models
`params.yaml` is loaded into), independently of the hook that writes the reference, and every command, flag and
key must appear in the built pages.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import subprocess
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from dfd.cli import build_parser
from dfd.platform.config import Params

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out


def _sections(page: str) -> dict[str, str]:
    """The built page cut at its h2 headings: heading id -> the HTML up to the next h2."""
    parts = re.split(r'<h2 id="([^"]+)"', page)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _commands(parser: argparse.ArgumentParser, path: list[str]) -> Iterator[tuple[list[str], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield [*path, name], child
                yield from _commands(child, [*path, name])


def _names(parser: argparse.ArgumentParser) -> list[str]:
    """Every flag of a parser (each spelling) and every positional, as the reference shows them."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        out += action.option_strings or [action.metavar or action.dest]
    return out


def _section_model(annotation: object) -> tuple[str, type[BaseModel]] | None:
    """('model' | 'map' | 'list', the section class) when a field holds params sections, else None."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return _section_model(args[0]) if len(args) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation
    origin = typing.get_origin(annotation)
    inner = args[-1] if args else None
    if origin in (dict, list) and isinstance(inner, type) and issubclass(inner, BaseModel):
        return ("map" if origin is dict else "list"), inner
    return None


def _keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every key a params file may set, dotted; `<name>` for a map's entries and `[]` for a list's."""
    for name, field in model.model_fields.items():
        full = f"{prefix}.{name}" if prefix else name
        found = _section_model(field.annotation)
        if found is None:
            yield full
        elif found[0] == "model":
            yield from _keys(found[1], full)
        elif found[0] == "map":
            yield from _keys(found[1], f"{full}.<name>")
        else:
            yield full
            yield from _keys(found[1], f"{full}[]")


def test_every_command_and_flag_is_in_the_cli_reference(site: Path) -> None:
    sections = _sections((site / "reference" / "cli" / "index.html").read_text())
    parser = build_parser()
    for flag in _names(parser):
        assert f"<code>{flag}</code>" in sections["global-options"], f"global option {flag} is not documented"
    commands = list(_commands(parser, ["dfd"]))
    assert len(commands) >= 18  # run, demo, stage, ..., dataset add/remote, weights fetch: the walk found them
    for path, child in commands:
        anchor = "-".join(path)
        assert anchor in sections, f"`{' '.join(path)}` has no section in the CLI reference"
        for name in _names(child):
            assert f"<code>{html.escape(name)}</code>" in sections[anchor], f"`{' '.join(path)} {name}` missing"


def test_every_params_key_is_in_the_params_reference(site: Path) -> None:
    page = (site / "reference" / "params" / "index.html").read_text()
    keys = list(_keys(Params))
    assert {"data.root", "models.<name>.arch", "evaluate.datasets[].name", "serve.max_upload_bytes"} <= set(keys)
    missing = [k for k in keys if f"<code>{html.escape(k, quote=False)}</code>" not in page]
    assert not missing, f"params keys missing from the generated reference: {missing}"


def test_the_readme_links_resolve_in_the_site(site: Path) -> None:
    """The README is a front door into docs/: each link names a page that exists, and a heading that the page has."""
    links = re.findall(r"\]\((docs/[^)#\s]+\.md)(?:#([^)\s]+))?\)", (ROOT / "README.md").read_text())
    assert len(links) >= 5  # the five next steps at least
    for path, anchor in links:
        assert (ROOT / path).is_file(), f"README links {path}, which does not exist"
        page = Path(path).relative_to("docs").with_suffix("")
        built = site / ("index.html" if page.name == "index" else page / "index.html")
        if anchor:
            assert f'id="{anchor}"' in built.read_text(), f"README links {path}#{anchor}: no such heading"


def test_the_site_loads_nothing_from_the_network(site: Path) -> None:
    """No web fonts, scripts or styles from a CDN: the built pages work on an offline machine."""
    for page in site.rglob("*.html"):
        text = page.read_text()
        remote = re.findall(r'<(?:link|script)[^>]+(?:href|src)="(https?://[^"]+)"', text)
        assert not remote, f"{page.relative_to(site)} loads {remote}"
        assert "fonts.googleapis.com" not in text, f"{page.relative_to(site)} asks Google for fonts"
