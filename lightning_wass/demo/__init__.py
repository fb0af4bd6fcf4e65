"""``lightning-wass demo``: the newcomer's tour on embedded data.

Each entry of :data:`PARTS` names a module ``lightning_wass.demo.<name>`` with
``run(ctx: DemoContext) -> DemoSection`` (see :mod:`.context`). :func:`run_demo` runs them in order,
prints a summary, and writes ``report.md``, ``figures/*.png`` and ``tensorboard/`` under ``--out``.

While a part runs the demo prints its own lines and a progress line per training run
(:mod:`.progress`); Lightning's banners, tips and the warnings known to be harmless on the demo's
data are silenced inside the demo only (``quiet=False``, ``lightning-wass demo --verbose``, shows them).
Importing this package imports neither torch nor Lightning (``lightning-wass demo --help`` is fast).
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

from lightning_wass.demo.context import DemoContext, DemoSection

# Order of the tour. Each method adds its part here.
PARTS: list[str] = ["vae", "otmdr", "worst_case", "generative", "proximal_flow"]


def run_demo(
    out: str | Path = "runs/demo", parts: list[str] | None = None, *, seed: int = 0, quick: bool = False, quiet: bool = True
) -> list[DemoSection]:
    """Run the demo parts, print a summary and write ``<out>/report.md``. Returns the sections.

    Args:
        out: output folder.
        parts: names from :data:`PARTS` to run, in the tour's order (default: all).
        seed: random seed of every part.
        quick: a much shorter run (seconds), for smoke tests.
        quiet: show the demo's own lines and progress only (Lightning's banners, tips and the
            known-harmless warnings silenced while a part runs); ``False`` shows everything.
    """
    import lightning.pytorch as pl

    from lightning_wass.demo.progress import quiet_lightning

    chosen = list(PARTS) if parts is None else list(parts)
    unknown = [p for p in chosen if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown demo part(s) {unknown}; available: {PARTS}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(out_dir=out_dir, seed=seed, quick=quick, quiet=quiet)
    sections: list[DemoSection] = []
    start_all = time.perf_counter()
    for number, name in enumerate(chosen, 1):
        print(f"\n=== lightning-wass demo [{number}/{len(chosen)}]: {name} ===", flush=True)
        start = time.perf_counter()
        with quiet_lightning(quiet):
            pl.seed_everything(seed, workers=True, verbose=False)
            section = importlib.import_module(f"lightning_wass.demo.{name}").run(ctx)
        section.seconds = time.perf_counter() - start
        sections.append(section)
    total = time.perf_counter() - start_all
    _write_report(out_dir, sections, total)
    _print_summary(out_dir, sections, total)
    return sections


def _write_report(out_dir: Path, sections: list[DemoSection], total: float) -> None:
    lines = ["# lightning-wass demo report", "", f"Total time: {total:.1f} s.", ""]
    for section in sections:
        lines += [f"## {section.title}", "", f"Time: {section.seconds:.1f} s.", "", section.report_markdown.strip(), ""]
        for fig in section.figures:
            rel = Path(fig).resolve().relative_to(out_dir.resolve())
            lines.append(f"![{rel.stem}]({rel.as_posix()})")
        lines.append("")
    (out_dir / "report.md").write_text("\n".join(lines))


def _print_summary(out_dir: Path, sections: list[DemoSection], total: float) -> None:
    print("\n" + "=" * 72)
    print(f"lightning-wass demo finished in {total:.1f} s")
    for section in sections:
        print(f"\n{section.title} ({section.seconds:.1f} s)")
        for line in section.summary:
            print(f"  {line}")
    print(f"\nReport:      {out_dir / 'report.md'}")
    print(f"Figures:     {out_dir / 'figures'}")
    print(f"TensorBoard: tensorboard --logdir {out_dir / 'tensorboard'}")
