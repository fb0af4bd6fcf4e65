"""MkDocs hooks of the documentation site (``mkdocs.yml``: ``hooks:``); nothing here fetches anything.

- ``<!-- api-modules: PACKAGE -->`` in a page becomes one ``::: PACKAGE.module`` block (mkdocstrings)
  per public module of that package found on disk, so a new or renamed module needs no page edit.
- ``<!-- public-names -->`` becomes a table of ``lightning_wass.__all__``, each name linked to where
  it is documented (read statically with griffe: nothing is imported).
- Links from ``docs/*.md`` to files of the repository outside ``docs/`` (``../benchmarks/results/x.png``)
  are copied into the site under ``repo/`` and the links rewritten, so figures show and links resolve.
  An image link to a git-ignored output that is absent (a benchmark's PNG not drawn on this machine)
  becomes a note saying so; any other broken link is left to MkDocs' validation (an error).
- ``$...$`` / ``$$...$$`` (``pymdownx.arithmatex``, generic mode) are turned into MathML at build time
  with ``latex2mathml``: browsers render MathML natively, so no JavaScript or CDN is needed.
- Sphinx roles in docstrings (``:class:`~a.b.C```) become code spans, linked (optional autorefs)
  where the target is documented on the site.
"""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.site_hooks")
ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "lightning_wass"

_API_MODULES = re.compile(r"<!--\s*api-modules:\s*([\w.]+)((?:\s+[\w.]+)*)\s*-->")
_PUBLIC_NAMES = "<!-- public-names -->"
_OUTSIDE_LINK = re.compile(r"\]\((\.\./[^)\s#]+)(#[^)\s]*)?\)")
_MISSING_IMAGE = re.compile(r"!\[([^\]]*)\]\((\.\./[^)\s]+)\)")
_ROLE = re.compile(r":(?:py:)?(class|func|meth|mod|data|attr|exc|obj):<code>(~?)([\w.]+)</code>")
_INLINE_MATH = re.compile(r'<span class="arithmatex">\\\((.+?)\\\)</span>', re.S)
_BLOCK_MATH = re.compile(r'<div class="arithmatex">\\\[(.+?)\\\]</div>', re.S)

_outside_files: dict[str, Path] = {}


def _public_modules(package: str) -> list[str]:
    """Dotted names of the public modules (and subpackages) directly inside ``package``."""
    folder = ROOT.joinpath(*package.split("."))
    names = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("_"):
            continue
        if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").is_file()):
            names.append(f"{package}.{path.stem if path.suffix == '.py' else path.name}")
    return names


def _expand_api_modules(markdown: str) -> str:
    def block(match: re.Match[str]) -> str:
        package, skip = match.group(1), set(match.group(2).split())
        parts = [f"::: {package}\n    options:\n      members: false\n      show_root_heading: false\n      show_root_toc_entry: false\n"]
        for module in _public_modules(package):
            if module.rsplit(".", 1)[1] in skip or module in skip:
                continue
            parts.append(f"::: {module}\n")
            sub = ROOT.joinpath(*module.split("."))
            if sub.is_dir():  # a subpackage (functional/proximal_flow): its modules too
                parts += [f"::: {m}\n    options:\n      heading_level: 3\n" for m in _public_modules(module)]
        return "\n".join(parts)

    return _API_MODULES.sub(block, markdown)


def _public_names_table() -> str:
    import griffe

    package = griffe.load("lightning_wass", search_paths=[str(ROOT)], resolve_aliases=True)
    rows = ["| name | documented at |", "|---|---|"]
    for name in package.exports or []:
        if name.startswith("__"):
            continue
        member = package.members.get(name)
        try:  # where it is defined (through re-exports such as lightning_wass.optim.OTMDR)
            target = member.final_target.path if member is not None and member.is_alias else getattr(member, "path", None)
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            target = getattr(member, "target_path", None)
        if target is None:  # lazy (PEP 562): the TYPE_CHECKING import names the defining module
            continue
        rows.append(f"| [`{name}`][{target}] | `{target}` |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    markdown = _expand_api_modules(markdown)
    if _PUBLIC_NAMES in markdown:
        markdown = markdown.replace(_PUBLIC_NAMES, _public_names_table())

    def outside(match: re.Match[str]) -> str:
        source = (Path(page.file.abs_src_path).parent / match.group(1)).resolve()
        if not source.is_file() or ROOT not in source.parents:
            return match.group(0)  # left to MkDocs' own link validation
        rel = source.relative_to(ROOT).as_posix()
        if rel not in _outside_files:
            return match.group(0)
        depth = page.file.src_uri.count("/")
        return f"]({'../' * depth}repo/{rel}{match.group(2) or ''})"

    def missing(match: re.Match[str]) -> str:
        source = (Path(page.file.abs_src_path).parent / match.group(2)).resolve()
        if source.exists() or not _git_ignored(source):
            return match.group(0)
        rel = source.relative_to(ROOT).as_posix()
        log.info("%s: %s is absent (git-ignored output); shown as a note", page.file.src_uri, rel)
        return f"*(Figure \"{match.group(1)}\" not in this build: `{rel}` is a git-ignored benchmark output, drawn by running the benchmark.)*"

    markdown = _MISSING_IMAGE.sub(missing, markdown)
    return _OUTSIDE_LINK.sub(outside, markdown)


def _git_ignored(path: Path) -> bool:
    import subprocess

    if ROOT not in path.parents:
        return False
    result = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", str(path)], capture_output=True)
    return result.returncode == 0


def on_files(files: Any, config: Any) -> Any:
    """Add the repository files that ``docs/*.md`` link to (outside ``docs/``) as ``repo/<path>``."""
    from mkdocs.structure.files import File

    docs = Path(config["docs_dir"])
    for page in docs.rglob("*.md"):
        for match in _OUTSIDE_LINK.finditer(page.read_text()):
            source = (page.parent / match.group(1)).resolve()
            rel = source.relative_to(ROOT).as_posix() if ROOT in source.parents else None
            if rel and source.is_file() and not rel.startswith("docs/") and rel not in _outside_files:
                _outside_files[rel] = source
                files.append(File.generated(config, f"repo/{rel}", abs_src_path=str(source)))
    return files


_MTD_ALIGN = re.compile(r'<mtd columnalign="(left|right|center)"')


def _mathml(tex: str, display: str) -> str:
    import latex2mathml.converter

    mathml = latex2mathml.converter.convert(html.unescape(tex).strip(), display=display)
    # latex2mathml aligns array / cases columns with ``columnalign``, which MathML Core browsers
    # (Chromium) ignore, centring every cell; the equivalent CSS keeps the columns as written.
    return _MTD_ALIGN.sub(r'<mtd columnalign="\1" style="text-align: \1"', mathml)


def on_page_content(content: str, page: Any, config: Any, files: Any) -> str:
    content = _BLOCK_MATH.sub(lambda m: f'<div class="arithmatex">{_mathml(m.group(1), "block")}</div>', content)
    content = _INLINE_MATH.sub(lambda m: f'<span class="arithmatex">{_mathml(m.group(1), "inline")}</span>', content)

    def role(match: re.Match[str]) -> str:
        short, path = match.group(2) == "~", match.group(3)
        shown = path.rsplit(".", 1)[-1] if short else path.lstrip(".")
        if path.startswith("lightning_wass."):
            return f'<autoref identifier="{path}" optional><code>{shown}</code></autoref>'
        return f"<code>{shown}</code>"

    return _ROLE.sub(role, content)
