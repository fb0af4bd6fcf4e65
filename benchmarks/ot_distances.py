"""Our ``wasserstein_distance`` / ``ot_plan`` against calling POT directly, side by side in one run.

For each size n (points in each cloud) and dimension d, and each method (exact, sliced, sinkhorn,
and the exact plan used by minibatch-OT modules), the two variants run alternately on the same
torch tensors (ABAB..., after a warm-up), so that load from other processes hits both alike. The
table gives the median time of each, the median of the paired ratios ours/POT (target <= 1.05: the
wrapper adds nothing), the ratio of the fastest runs (least disturbed by other load) and the
absolute difference of the figures (W2; for plans the largest entry-wise difference). Because
timings on shared CPUs are noisy, the column checks% also gives the only work the wrapper adds
(input checks and weights, timed on their own, 50 runs) as a percentage of POT's median time; the
rest of both variants is the same POT call (our cost matrix is an addmm like ``ot.dist``'s). A second table times the three
ways of building the squared-Euclidean cost matrix.

"POT directly" is what a user holding torch tensors would write:
    exact:    ot.emd2(a, b, ot.dist(x, y), numItermax=max(1e6, 50 n m)) ** 0.5
              (POT's default cap of 1e5 pivots does not converge beyond about 2,000 points in 64-D)
    sliced:   ot.sliced_wasserstein_distance(x, y, n_projections=50, seed=0)
    sinkhorn: M = ot.dist(x, y); ot.sinkhorn2(a, b, M, 0.05 * M.mean(), numItermax=1000, stopThr=1e-6) ** 0.5
    plan:     ot.emd(a, b, ot.dist(x, y), numItermax=max(1e6, 50 n m))

Run:  .venv/bin/python benchmarks/ot_distances.py [--quick]
Writes benchmarks/results/ot_distances.json (git-ignored).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import ot
import torch

from report import write_report

from lightning_wass.ot import check_points, check_weights, cost_matrix, default_num_iter_max, ot_plan, wasserstein_distance

RESULTS = Path(__file__).resolve().parent / "results" / "ot_distances.json"


# ---------------------------------------------------------------------------------- the variants
def pot_exact(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    n, m = x.shape[0], y.shape[0]
    a = torch.full((n,), 1.0 / n, dtype=x.dtype)
    b = torch.full((m,), 1.0 / m, dtype=x.dtype)
    return ot.emd2(a, b, ot.dist(x, y), numItermax=default_num_iter_max(n, m)) ** 0.5


def pot_sliced(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ot.sliced_wasserstein_distance(x, y, n_projections=50, seed=0)


def pot_sinkhorn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    n, m = x.shape[0], y.shape[0]
    a = torch.full((n,), 1.0 / n, dtype=x.dtype)
    b = torch.full((m,), 1.0 / m, dtype=x.dtype)
    cost = ot.dist(x, y)
    return ot.sinkhorn2(a, b, cost, 0.05 * float(cost.mean()), numItermax=1000, stopThr=1e-6) ** 0.5


def pot_plan(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    n, m = x.shape[0], y.shape[0]
    a = torch.full((n,), 1.0 / n, dtype=x.dtype)
    b = torch.full((m,), 1.0 / m, dtype=x.dtype)
    return ot.emd(a, b, ot.dist(x, y), numItermax=default_num_iter_max(n, m))


VARIANTS: dict[str, tuple[Callable, Callable]] = {
    "exact": (lambda x, y: wasserstein_distance(x, y), pot_exact),
    "sliced": (lambda x, y: wasserstein_distance(x, y, method="sliced", num_projections=50, seed=0), pot_sliced),
    "sinkhorn": (lambda x, y: wasserstein_distance(x, y, method="sinkhorn"), pot_sinkhorn),
    "plan": (lambda x, y: ot_plan(x, y), pot_plan),
}


# ---------------------------------------------------------------------------------- timing
def side_by_side(ours: Callable, theirs: Callable, args: tuple, repeats: int, warmup: int) -> dict:
    """Alternate the two callables ``repeats`` times after ``warmup`` calls of each."""
    for _ in range(warmup):
        ours(*args)
        theirs(*args)
    t_ours, t_theirs = [], []
    for i in range(repeats):
        pair = [(ours, t_ours), (theirs, t_theirs)]
        if i % 2:  # alternate which goes first
            pair.reverse()
        for fn, store in pair:
            start = time.perf_counter()
            value = fn(*args)
            store.append(time.perf_counter() - start)
            if fn is ours:
                value_ours = value
            else:
                value_theirs = value
    if value_ours.dim() == 0:
        diff = abs(float(value_ours) - float(value_theirs))
        figure = float(value_ours)
    else:  # plans: largest entry-wise difference, figure = plan cost not shown
        diff = float((value_ours.double() - value_theirs.double()).abs().max())
        figure = float("nan")
    return {
        "ours_s": statistics.median(t_ours),
        "pot_s": statistics.median(t_theirs),
        "ratio": statistics.median(o / t for o, t in zip(t_ours, t_theirs)),
        "ratio_of_min": min(t_ours) / min(t_theirs),
        "ours_times": t_ours,
        "pot_times": t_theirs,
        "figure": figure,
        "abs_diff": diff,
        "repeats": repeats,
        "warmup": warmup,
    }


def input_checks_seconds(x: torch.Tensor, y: torch.Tensor, repeats: int = 50) -> float:
    """Median time of the only work the wrapper adds to POT's: the input checks and the weights."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        px, py = check_points(x, y)
        check_weights(None, px, "a")
        check_weights(None, py, "b")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cost_matrix_variants(x: torch.Tensor, y: torch.Tensor, repeats: int) -> dict:
    """Squared-Euclidean cost: ours (one addmm) vs ot.dist vs torch.cdist(...).square()."""
    fns = {
        "ours_addmm": lambda: cost_matrix(x, y, 2),
        "ot_dist": lambda: ot.dist(x, y),
        "cdist_square": lambda: torch.cdist(x, y).square(),
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    reference = ot.dist(x.double(), y.double())
    return {
        name: {
            "median_s": statistics.median(t),
            "max_abs_err_vs_float64": float((fns[name]().double() - reference).abs().max()),
        }
        for name, t in times.items()
    }


# ---------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 200, 500; 3 repeats (about a minute)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="n values (default 500 2000 5000)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each variant (default 5)")
    parser.add_argument(
        "--large-exact-repeats",
        type=int,
        default=2,
        help="timed runs of exact/plan for n >= 5000, without warm-up (a 5000x5000 simplex takes ~10-60 s)",
    )
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: shared CPUs)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = args.sizes or ([200, 500] if args.quick else [500, 2000, 5000])
    repeats = 3 if args.quick else args.repeats
    dtype = getattr(torch, args.dtype)

    load_start = os.getloadavg()
    rows = []
    header = f"{'method':9s} {'d':>3s} {'n':>5s} {'ours s':>9s} {'POT s':>9s} {'ours/POT':>8s} {'min/min':>7s} {'checks%':>7s} {'|diff|':>9s} {'W2':>9s}"
    print(header)
    print("-" * len(header))
    for d in args.dims:
        for n in sizes:
            gen = torch.Generator().manual_seed(1000 * d + n)
            x = torch.randn(n, d, generator=gen, dtype=dtype)
            y = torch.randn(n, d, generator=gen, dtype=dtype) * 0.8 + 0.5
            checks = input_checks_seconds(x, y)
            for method, (ours, theirs) in VARIANTS.items():
                if method == "plan" and n > 2000:
                    continue  # same solver as exact at this size; timed there
                large = method in ("exact", "plan") and n >= 5000
                reps = args.large_exact_repeats if large else repeats
                result = side_by_side(ours, theirs, (x, y), reps, warmup=0 if large else 1)
                result.update(method=method, d=d, n=n, input_checks_s=checks, checks_share=checks / result["pot_s"])
                rows.append(result)
                print(
                    f"{method:9s} {d:3d} {n:5d} {result['ours_s']:9.4f} {result['pot_s']:9.4f} "
                    f"{result['ratio']:8.3f} {result['ratio_of_min']:7.3f} {100 * result['checks_share']:7.3f} {result['abs_diff']:9.2e} {result['figure']:9.4f}",
                    flush=True,
                )

    print("\ncost matrix ||x_i - y_j||^2 (median s; max abs error vs float64 ot.dist)")
    cost_rows = []
    for d in args.dims:
        n = max(sizes)
        gen = torch.Generator().manual_seed(7)
        x = torch.randn(n, d, generator=gen, dtype=dtype)
        y = torch.randn(n, d, generator=gen, dtype=dtype)
        variants = cost_matrix_variants(x, y, repeats)
        cost_rows.append({"d": d, "n": n, **variants})
        print(f"  d={d:3d} n={n:5d}  " + "  ".join(f"{k} {v['median_s']:.4f}s ({v['max_abs_err_vs_float64']:.1e})" for k, v in variants.items()))

    ratios = [r["ratio"] for r in rows]
    print(f"\nmedian ours/POT over {len(rows)} rows: {statistics.median(ratios):.3f}; max {max(ratios):.3f}")
    min_ratios = [r["ratio_of_min"] for r in rows]
    print(f"ratio of fastest runs: median {statistics.median(min_ratios):.3f}; max {max(min_ratios):.3f}")
    return write_report(args.out, load_start, rows=rows, cost_matrix=cost_rows, dtype=args.dtype)


if __name__ == "__main__":
    main()
