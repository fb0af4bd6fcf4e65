"""The documentation site's own code: the link checker, the docstring and math hooks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


check_links = _load(ROOT / ".ci" / "check_links.py")


def _site(tmp_path: Path, pages: dict[str, str]) -> Path:
    for name, body in pages.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<html><body>{body}</body></html>")
    return tmp_path


def test_link_checker_accepts_files_fragments_root_relative_and_external(tmp_path: Path) -> None:
    site = _site(tmp_path, {
        "index.html": '<a href="api/a.html#f">x</a><a href="#top">t</a><h1 id="top"></h1><a href="https://example.org">e</a>',
        "api/a.html": '<h2 id="f"></h2><a href="../index.html">up</a><img src="/img.png">',
        "img.png": "",
    })
    broken, internal, external = check_links.check_site(site)
    assert broken == [] and internal == 4 and external == 1


def test_link_checker_reports_missing_files_and_fragments(tmp_path: Path) -> None:
    site = _site(tmp_path, {"index.html": '<a href="nope.html">a</a><a href="b.html#gone">b</a><a href="../../etc/passwd">c</a>', "b.html": '<p id="here"></p>'})
    broken, _, _ = check_links.check_site(site)
    assert len(broken) == 3
    assert any("no such file" in b for b in broken)
    assert any("no id 'gone'" in b for b in broken)
    assert any("outside the site" in b for b in broken)
    assert check_links.main([str(site)]) == 1


def test_link_checker_refuses_a_site_not_built(tmp_path: Path) -> None:
    assert check_links.main([str(tmp_path)]) == 2


griffe = pytest.importorskip("griffe", reason="docs tools not installed (pip install -e .[docs])")
grouped = _load(ROOT / "docs" / "_hooks" / "griffe_grouped_args.py")


def test_grouped_args_are_split_per_parameter() -> None:
    text = """Summary.

    Args:
        lr, momentum: as in SGD,
            continued.
        batch_size, num_workers,
            seed: wrapped names.
        alone (int): kept.

    Returns:
        a, b: not an argument section, left alone.
    """
    out = grouped.split_grouped_args(text)
    assert "        lr: as in SGD," in out and "        momentum: as in SGD," in out
    assert out.count("            continued.") == 2
    for name in ("batch_size", "num_workers", "seed"):
        assert f"        {name}: wrapped names." in out
    assert "        alone (int): kept." in out
    assert "        a, b: not an argument section, left alone." in out


def test_site_hooks_render_math_as_mathml_and_roles_as_code() -> None:
    pytest.importorskip("latex2mathml")
    hooks = _load(ROOT / "docs" / "_hooks" / "site_hooks.py")
    html = (
        '<p><span class="arithmatex">\\(W_2(\\mu, \\nu)^2\\)</span></p>'
        '<div class="arithmatex">\\[\\min_\\theta \\max_T L(\\theta, T)\\]</div>'
        "<p>:class:<code>~lightning_wass.modules.vae.VAE</code> and :func:<code>torch.nn.functional.mse_loss</code></p>"
    )
    out = hooks.on_page_content(html, page=None, config=None, files=None)
    assert out.count("<math") == 2 and 'display="block"' in out and "\\(" not in out
    assert '<autoref identifier="lightning_wass.modules.vae.VAE" optional><code>VAE</code></autoref>' in out
    assert "<code>torch.nn.functional.mse_loss</code>" in out and ":func:" not in out


def test_site_hooks_keep_array_column_alignment_in_browsers() -> None:
    pytest.importorskip("latex2mathml")
    hooks = _load(ROOT / "docs" / "_hooks" / "site_hooks.py")
    html = '<div class="arithmatex">\\[\\begin{array}{ll} a = b &amp; \\text{pass 0} \\\\ \\quad c &amp; {} \\end{array}\\]</div>'
    out = hooks.on_page_content(html, page=None, config=None, files=None)
    assert out.count("<mtr>") == 2 and "<mi>&amp;</mi>" not in out and "<mi>&</mi>" not in out
    assert out.count('style="text-align: left"') == 4


def test_api_module_blocks_follow_the_files_on_disk() -> None:
    hooks = _load(ROOT / "docs" / "_hooks" / "site_hooks.py")
    expanded = hooks._expand_api_modules("<!-- api-modules: lightning_wass.functional -->")
    for module in ("worst_case", "otmdr", "wgan", "w2_gradient_flow", "penalties", "proximal_flow"):
        assert f"::: lightning_wass.functional.{module}\n" in expanded
    assert "::: lightning_wass.functional.proximal_flow.rollout" in expanded
    assert "_" + "validation" not in expanded


def test_every_subpackage_has_an_api_page_in_the_nav() -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = [p for section in config["nav"] if isinstance(section, dict) for v in section.values() if isinstance(v, list) for p in (list(x.values())[0] for x in v)]
    expected = {
        "api/lightning_wass.md": "lightning_wass",
        "api/functional.md": "lightning_wass.functional",
        "api/optim.md": "lightning_wass.optim",
        "api/modules.md": "lightning_wass.modules",
        "api/nn.md": "lightning_wass.nn",
        "api/callbacks.md": "lightning_wass.callbacks",
        "api/datamodules.md": "lightning_wass.datamodules",
        "api/plugins.md": "lightning_wass.plugins",
        "api/ot.md": "lightning_wass.metrics",
        "api/checkpoints.md": "lightning_wass.guard",
    }
    for page, package in expected.items():
        assert page in pages, f"{page} not in mkdocs.yml's nav"
        text = (ROOT / "docs" / page).read_text()
        assert f"::: {package}\n" in text or f"api-modules: {package} " in text, f"{page} does not document {package}"
    for method in ("worst_case.md", "otmdr.md", "proximal_flow.md", "generative.md", "vae.md"):
        assert method in pages
