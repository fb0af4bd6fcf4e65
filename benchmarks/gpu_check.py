"""The checks that need a GPU, in one script of a few minutes, with one table at the end.

Where CUDA is present (``torch.cuda.is_available()``), on ``cuda:0``:

1. step time of our SAM against the per-parameter reference SAM (davda54/sam style, from
   ``benchmarks/otmdr_step.py``) on the deep narrow CNN and WRN-16, variants alternating in one
   process, ``torch.cuda.synchronize()`` around each timed block (target: SAM <= 0.95 x reference);
   OT-MDR K=1 (3 passes) against 3 forward-backward passes (target <= 1.05);
2. fp16 with a ``GradScaler`` (``optimizer.step(closure, grad_scaler=scaler)``) and bf16 autocast:
   a few SAM steps each, the loss finite and the parameters moved;
3. a 1-GPU ``Trainer.fit`` of each module for a few steps (OTMDRClassifier as OT-MDR, SAM, and
   SAM with ``SAMMixedPrecision('16-mixed')`` and ``bf16-mixed``; WGAN-GP, W2GradientFlow,
   W1W2ProximalFlow, WorstCaseGenerator, VAE), each finishing with finite parameters.

Where CUDA is absent it says so and exits 0. ``--device cpu`` runs the same checks on the CPU
(slowly; a smoke test of the script's own logic, not a measurement of anything a GPU does).

Run:  .venv/bin/python benchmarks/gpu_check.py [--quick]
Writes benchmarks/results/gpu_check.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import otmdr_step  # noqa: E402  (the reference SAM and the two benchmark models)

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_check.json"
SGD_KW = otmdr_step.SGD_KW


# ------------------------------------------------------------------------------------ the table
def row(check: str, value: float | str | None, target: str, ok: bool | None, note: str = "") -> dict[str, Any]:
    """One line of the final table (``ok=None``: informational)."""
    return {"check": check, "value": value, "target": target, "ok": ok, "note": note}


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as one aligned text table, with a last line counting passes and failures."""
    def shown(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}"
        return "-" if value is None else str(value)

    status = {True: "ok", False: "FAIL", None: "info"}
    cells = [(r["check"], shown(r["value"]), r["target"], status[r["ok"]], r.get("note", "")) for r in rows]
    header = ("check", "value", "target", "status", "note")
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)).rstrip() for cell in cells]
    failed = sum(r["ok"] is False for r in rows)
    passed = sum(r["ok"] is True for r in rows)
    lines.append(f"{passed} passed, {failed} failed, {sum(r['ok'] is None for r in rows)} informational")
    return "\n".join(lines)


def guarded(name: str, rows: list[dict[str, Any]], fn: Callable[[], list[dict[str, Any]]]) -> None:
    """Run one check; an exception becomes a failed row (the other checks still run)."""
    try:
        rows.extend(fn())
    except Exception as error:  # noqa: BLE001  (reported in the table)
        traceback.print_exc()
        rows.append(row(name, None, "runs", False, f"{type(error).__name__}: {str(error)[:120]}"))


# ------------------------------------------------------------------------------------ 1. step time
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_times(model_name: str, device: torch.device, batch: int, size: int, rounds: int, steps: int) -> dict[str, float]:
    """Median seconds per step of each variant (alternating; synchronised around each block)."""
    from lightning_wass.optim import OTMDR, SAM

    model, x, y = otmdr_step.make(model_name, batch, size)
    model, x, y = model.to(device), x.to(device), y.to(device)
    model.train()

    def closure_for(opt: Any) -> Callable[[], torch.Tensor]:
        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        return closure

    sgd = torch.optim.SGD(model.parameters(), **SGD_KW)
    ref = otmdr_step.ReferenceSAM(model.parameters(), torch.optim.SGD, rho=0.05, **SGD_KW)
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, **SGD_KW)
    otmdr = OTMDR(model.parameters(), torch.optim.SGD, **SGD_KW)
    variants: dict[str, Callable[[], Any]] = {
        "fwd-bwd": closure_for(sgd),
        "reference SAM": lambda: ref.step(closure_for(ref), model),
        "SAM": lambda: sam.step(closure_for(sam)),
        "OT-MDR K=1": lambda: otmdr.step(closure_for(otmdr)),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        for _ in range(2):
            fn()
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                variants[name]()
            _sync(device)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def check_step_times(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    rows = []
    for model_name, batch, size in (("narrow", 128, 32), ("wrn", 128, 32)):
        t = step_times(model_name, device, batch, size, rounds=3 if quick else 7, steps=5 if quick else 10)
        sam_ratio = t["SAM"] / t["reference SAM"]
        otmdr_ratio = t["OT-MDR K=1"] / (3 * t["fwd-bwd"])
        note = f"SAM {t['SAM'] * 1e3:.2f} ms, reference {t['reference SAM'] * 1e3:.2f} ms, fwd-bwd {t['fwd-bwd'] * 1e3:.2f} ms"
        rows.append(row(f"{model_name}: SAM / reference SAM step", sam_ratio, "<= 0.95", sam_ratio <= 0.95, note))
        rows.append(row(f"{model_name}: OT-MDR K=1 / 3 fwd-bwd", otmdr_ratio, "<= 1.05", otmdr_ratio <= 1.05,
                        f"OT-MDR {t['OT-MDR K=1'] * 1e3:.2f} ms"))
    return rows


# ------------------------------------------------------------------------------------ 2. precision
def mixed_precision_steps(device: torch.device, dtype: torch.dtype, steps: int = 4) -> dict[str, Any]:
    """A few SAM steps under autocast(``dtype``) (fp16 with a GradScaler); loss and parameters after."""
    from lightning_wass.optim import SAM

    model, x, y = otmdr_step.make("narrow", 32, 16)
    model, x, y = model.to(device), x.to(device), y.to(device)
    before = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, **SGD_KW)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    losses = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=dtype):
            loss = F.cross_entropy(model(x), y)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        return loss

    for _ in range(steps):
        losses.append(float(optimizer.step(closure, grad_scaler=scaler)))
        if scaler is not None:
            scaler.update()
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return {
        "losses": losses,
        "finite": all(torch.isfinite(torch.tensor(losses))) and bool(torch.isfinite(after).all()),
        "moved": float((after - before).norm()),
        "completed_steps": optimizer.completed_steps,
    }


def check_mixed_precision(device: torch.device) -> list[dict[str, Any]]:
    rows = []
    for name, dtype in (("fp16 + GradScaler", torch.float16), ("bf16", torch.bfloat16)):
        result = mixed_precision_steps(device, dtype)
        ok = result["finite"] and result["moved"] > 0 and result["completed_steps"] >= 1
        rows.append(row(f"SAM {name}: 4 steps", result["moved"], "finite, moved", ok,
                        f"losses {', '.join(f'{v:.3f}' for v in result['losses'])}; {result['completed_steps']} taken"))
    return rows


# ------------------------------------------------------------------------------------ 3. module fits
def _module_cases() -> dict[str, tuple[Callable[[], Any], Callable[[], Any], dict[str, Any]]]:
    """name -> (module factory, datamodule factory, extra Trainer kwargs)."""
    from lightning_wass import VAE, WGAN, OTMDRClassifier, TensorDataModule, W1W2ProximalFlow, W2GradientFlow, WorstCaseGenerator

    def points() -> Any:
        g = torch.Generator().manual_seed(0)
        return TensorDataModule(torch.randn(512, 2, generator=g), batch_size=128, seed=0)

    def images() -> Any:
        g = torch.Generator().manual_seed(0)
        return TensorDataModule(torch.rand(256, 1, 8, 8, generator=g), batch_size=64)

    def regression() -> Any:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(128, 2, generator=g)
        return TensorDataModule(x, x.sum(1, keepdim=True) + 0.5 * torch.randn(128, 1, generator=g), batch_size=64, return_index=True)

    def classification() -> Any:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 4, generator=g)
        return TensorDataModule(x, (x[:, 0] > 0).long(), batch_size=64)

    def mlp() -> nn.Module:
        return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))

    return {
        "OTMDRClassifier (OT-MDR)": (lambda: OTMDRClassifier(mlp(), num_classes=2, scheduler="none"), classification, {}),
        "OTMDRClassifier (SAM)": (lambda: OTMDRClassifier(mlp(), num_classes=2, method="sam", scheduler="none"), classification, {}),
        "OTMDRClassifier (SAM, 16-mixed)": (
            lambda: OTMDRClassifier(mlp(), num_classes=2, method="sam", scheduler="none"), classification, {"sam_precision": "16-mixed"}),
        "OTMDRClassifier (SAM, bf16-mixed)": (
            lambda: OTMDRClassifier(mlp(), num_classes=2, method="sam", scheduler="none"), classification, {"precision": "bf16-mixed"}),
        "WGAN (gp)": (lambda: WGAN(data_shape=(2,), lipschitz="gp"), points, {}),
        "W2GradientFlow": (lambda: W2GradientFlow(data_shape=(2,)), points, {}),
        "W1W2ProximalFlow": (lambda: W1W2ProximalFlow(data_shape=(2,)), points, {"inference_mode": False}),
        "WorstCaseGenerator": (lambda: WorstCaseGenerator(nn.Linear(2, 1), transport_hidden=(8,)), regression, {}),
        "VAE": (lambda: VAE(data_shape=(1, 8, 8)), images, {}),
    }


def fit_module(name: str, device: torch.device, max_steps: int = 4) -> dict[str, Any]:
    """``Trainer.fit`` of one module on one device for ``max_steps``; whether its parameters are finite."""
    import lightning.pytorch as pl

    from lightning_wass import SAMMixedPrecision

    build, data, extra = _module_cases()[name]
    extra = dict(extra)
    kwargs: dict[str, Any] = dict(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=max_steps, limit_val_batches=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    if "sam_precision" in extra:
        kwargs["plugins"] = [SAMMixedPrecision(extra.pop("sam_precision"), device.type)]
    kwargs.update(extra)
    module = build()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(**kwargs)
        trainer.fit(module, datamodule=data())
    seconds = time.perf_counter() - start
    finite = all(bool(torch.isfinite(p).all()) for p in module.parameters())
    on_device = all(p.device.type == device.type for p in module.parameters())
    return {"global_step": int(trainer.global_step), "finite": finite, "seconds": seconds, "on_device": on_device}


def check_fits(device: torch.device) -> list[dict[str, Any]]:
    rows = []
    for name in _module_cases():
        def one(name: str = name) -> list[dict[str, Any]]:
            result = fit_module(name, device)
            ok = result["finite"] and result["global_step"] > 0
            return [row(f"fit {name}", result["global_step"], "steps > 0, finite", ok, f"{result['seconds']:.1f} s")]

        guarded(f"fit {name}", rows, one)
    return rows


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds")
    parser.add_argument("--device", default=None, help="default cuda:0 when CUDA is present; 'cpu' for a smoke run")
    parser.add_argument("--skip", nargs="*", default=[], choices=["steps", "precision", "fits"], help="checks to leave out")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.device is None:
        if not torch.cuda.is_available():
            print("gpu_check: CUDA is not available on this machine; nothing to check (run it where a GPU is).")
            return 0
        args.device = "cuda:0"
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"gpu_check on {device} ({name}); torch {torch.__version__}", flush=True)
    rows: list[dict[str, Any]] = []
    if "steps" not in args.skip:
        guarded("step times", rows, lambda: check_step_times(device, args.quick))
    if "precision" not in args.skip:
        guarded("mixed precision", rows, lambda: check_mixed_precision(device))
    if "fits" not in args.skip:
        rows.extend(check_fits(device))
    table = format_table(rows)
    print()
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": str(device), "device_name": name, "torch": torch.__version__,
                                    "quick": args.quick, "rows": rows}, indent=2, default=str))
    print(f"wrote {args.out}")
    return 1 if any(r["ok"] is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
