"""Bad inputs to every public entry point (issue 12) are refused with a ``ValueError`` or ``TypeError``
whose message names the argument, never deep inside torch, POT or pickle, and never silently.

One table, :data:`CASES`: each :class:`Case` is a zero-argument call that builds (or calls) one public
class or function with exactly one bad argument, the error type expected and the name the message
must mention. Wrong *values* (negative, zero, NaN, inf, out-of-range fractions, unknown choice
strings, empty shapes) give ``ValueError``; wrong *types* (a bool or a string for a number, a tensor
where a module is expected) give ``TypeError``; where either is a fair answer (a float inside a
shape, a string for a sequence) the case accepts both. Only constructors and cheap calls on tiny
inputs: nothing trains.

:func:`test_every_public_class_and_function_has_a_case` keeps the table growing with the API: every
public class and function of ``lightning_wass`` and its subpackages (their ``__all__``) is the
subject of at least one case, or is in :data:`EXEMPT` with the reason it has no bad input to refuse.

Exact messages for bad data and OT inputs: ``tests/test_bad_inputs_data.py``; damaged files:
``tests/test_damaged_files.py``.
"""

from __future__ import annotations

import importlib
import re
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

import lightning_wass.functional as L
import lightning_wass.functional.proximal_flow as P
from lightning_wass import (
    OTMDR,
    read_checkpoint,
    SAM,
    VAE,
    WGAN,
    GradientNormStopping,
    HJResidualStopping,
    OTMDRClassifier,
    ProportionalRho,
    SampleFigure,
    SAMMixedPrecision,
    W1W2ProximalFlow,
    W2GradientFlow,
    WassersteinDistance,
    WassersteinMonitor,
    WorstCaseGenerator,
    barycentric_map,
    mode_coverage,
    ot_plan,
    wasserstein_distance,
)
from lightning_wass import datamodules as D
from lightning_wass import nn as N
from lightning_wass.ot import check_ot_options, check_p, cost_matrix, default_num_iter_max

NAN, INF = float("nan"), float("inf")
ANY_ERROR = (ValueError, TypeError)
ErrorType = type[Exception] | tuple[type[Exception], ...]


class Case(NamedTuple):
    """``call()`` must raise ``error_type`` with ``must_mention`` (a whole word) in its message.

    ``id`` reads as the call, ``"WGAN(lr=-1)"``; the name before the first ``(`` or ``.`` is the
    public class or function the case is about (the coverage test reads it).
    """

    id: str
    call: Callable[[], Any]
    error_type: ErrorType
    must_mention: str


# ------------------------------------------------------------------ bad values by kind: (label, value, error)
BadValues = list[tuple[str, Any, ErrorType]]

POSITIVE: BadValues = [
    ("-1", -1.0, ValueError), ("0", 0.0, ValueError), ("nan", NAN, ValueError), ("inf", INF, ValueError),
    ("True", True, TypeError), ("'1'", "1", TypeError),
]
NON_NEGATIVE: BadValues = [v for v in POSITIVE if v[0] != "0"]
FRACTION: BadValues = [  # [0, 1)
    ("-0.1", -0.1, ValueError), ("1.0", 1.0, ValueError), ("1.5", 1.5, ValueError), ("nan", NAN, ValueError),
    ("True", True, TypeError), ("'0.5'", "0.5", TypeError),
]
CHOICE: BadValues = [("'nope'", "nope", ValueError), ("3", 3, ANY_ERROR)]
MODULE: BadValues = [("tensor", torch.zeros(2), TypeError), ("'mlp'", "mlp", TypeError)]
SHAPE: BadValues = [  # a per-sample shape
    ("[]", [], ValueError), ("[0]", [0], ValueError), ("[-2]", [-2], ValueError), ("[2.5]", [2.5], ANY_ERROR),
    ("[True]", [True], ANY_ERROR), ("['2']", ["2"], ANY_ERROR), ("2", 2, ANY_ERROR),
]
WIDTHS: BadValues = [  # hidden widths / channels
    ("[0]", [0], ValueError), ("[-4]", [-4], ValueError), ("[2.5]", [2.5], TypeError), ("[True]", [True], TypeError),
    ("4", 4, ANY_ERROR), ("'ab'", "ab", ANY_ERROR),
]
BETAS: BadValues = [
    ("(0.5,)", (0.5,), ValueError), ("(0.5, 1.0)", (0.5, 1.0), ValueError), ("(-0.1, 0.9)", (-0.1, 0.9), ValueError),
    ("(nan, 0.9)", (NAN, 0.9), ValueError), ("(0.5, 'a')", (0.5, "a"), ANY_ERROR), ("0.5", 0.5, ANY_ERROR),
]
SEED: BadValues = [("1.5", 1.5, TypeError), ("True", True, TypeError), ("'0'", "0", TypeError)]


def ints(minimum: int) -> BadValues:
    """An integer argument ``>= minimum``: below it, a float, a bool and a string."""
    below = [(str(minimum - 1), minimum - 1, ValueError)] + ([("-1", -1, ValueError)] if minimum - 1 > -1 else [])
    return below + [("1.5", 1.5, TypeError), ("True", True, TypeError), ("'2'", "2", TypeError)]


def bad(owner: str, build: Callable[..., Any], arg: str, values: BadValues, *, mention: str | None = None) -> list[Case]:
    """One case per bad value: ``build(**{arg: value})``, id ``owner(arg=label)``."""
    return [Case(f"{owner}({arg}={label})", partial(build, **{arg: value}), error, mention or arg) for label, value, error in values]


def args(factory: Callable[..., Any], **good: Any) -> Callable[..., Any]:
    """``factory(**{**good, **bad})``: every argument by keyword, so any one can be replaced."""

    def build(**kwargs: Any) -> Any:
        values = {k: (v() if isinstance(v, partial) else v) for k, v in {**good, **kwargs}.items()}
        return factory(**values)

    return build


def linear() -> nn.Module:
    return nn.Linear(2, 1)


def params() -> list[nn.Parameter]:
    return list(nn.Linear(2, 1).parameters())


def zeros(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape)


def potential(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``U(x, t) = |x|^2 / 2 + t`` per sample."""
    return 0.5 * x.flatten(1).pow(2).sum(1) + t


def critic(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)


X, Y = torch.randn(4, 2), torch.randn(4, 2)
STATES = [torch.randn(4, 2) for _ in range(3)]
TIMES = [0.0, 0.5]
TENSOR = torch.zeros(2)

CASES: list[Case] = []

# ================================================================== modules
for name, build in [("WGAN", WGAN), ("W2GradientFlow", W2GradientFlow)]:
    CASES += [
        *bad(name, build, "data_shape", SHAPE),
        *bad(name, build, "latent_dim", ints(1)),
        *bad(name, build, "generator", MODULE),
        *bad(name, build, "lr", POSITIVE),
        *bad(name, build, "betas", BETAS),
        *bad(name, build, "eval_samples", ints(0)),
        *bad(name, build, "seed", ints(0)),
    ]
CASES += [
    *bad("WGAN", WGAN, "critic", MODULE),
    *bad("WGAN", WGAN, "lipschitz", CHOICE),
    *bad("WGAN", WGAN, "n_critic", ints(1)),
    *bad("WGAN", WGAN, "clip_value", POSITIVE),
    *bad("WGAN", WGAN, "gp_weight", NON_NEGATIVE),
    *bad("WGAN.sample", WGAN(data_shape=[2]).sample, "n", ints(1)),
    *bad("W2GradientFlow", W2GradientFlow, "potential", MODULE),
    *bad("W2GradientFlow", W2GradientFlow, "potential_correction", MODULE),
    *bad("W2GradientFlow", W2GradientFlow, "dt", POSITIVE),
    *bad("W2GradientFlow", W2GradientFlow, "persistent_steps", ints(1)),
    *bad("W2GradientFlow", W2GradientFlow, "transport", CHOICE),
    *bad("W2GradientFlow", W2GradientFlow, "potential_steps", ints(1)),
    *bad("W2GradientFlow", W2GradientFlow, "potential_lr", POSITIVE),
    *bad("W2GradientFlow", W2GradientFlow, "dual_penalty", POSITIVE),
    *bad("W2GradientFlow.sample", W2GradientFlow(data_shape=[2]).sample, "n", ints(1)),
]

flow = args(W1W2ProximalFlow, potential=partial(N.PotentialMLP, 2, hidden=(4,)), discriminator=partial(N.MLPDiscriminator, 2, hidden=(4,)))
CASES += [
    *bad("W1W2ProximalFlow", W1W2ProximalFlow, "data_shape", SHAPE),
    *bad("W1W2ProximalFlow", flow, "potential", MODULE),
    *bad("W1W2ProximalFlow", flow, "discriminator", MODULE),
    *bad("W1W2ProximalFlow", flow, "T", POSITIVE),
    *bad("W1W2ProximalFlow", flow, "num_steps", ints(1)),
    *bad("W1W2ProximalFlow", flow, "alpha", NON_NEGATIVE),
    *bad("W1W2ProximalFlow", flow, "L", POSITIVE),
    *bad("W1W2ProximalFlow", flow, "gp_weight", NON_NEGATIVE),
    *bad("W1W2ProximalFlow", flow, "divergence", CHOICE),
    *bad("W1W2ProximalFlow", flow, "divergence_order", POSITIVE + [("1", 1.0, ValueError)]),
    *bad("W1W2ProximalFlow", flow, "n_critic", ints(1)),
    *bad("W1W2ProximalFlow", flow, "reference", CHOICE),
    *bad("W1W2ProximalFlow", flow, "reference_range", [
        ("(0.5, 0.0)", (0.5, 0.0), ValueError), ("(0.0,)", (0.0,), ValueError), ("(0.0, nan)", (0.0, NAN), ValueError),
        ("(0.0, inf)", (0.0, INF), ValueError), ("'ab'", "ab", ANY_ERROR), ("0.5", 0.5, ANY_ERROR),
    ]),
    *bad("W1W2ProximalFlow", flow, "lr_potential", POSITIVE),
    *bad("W1W2ProximalFlow", flow, "lr_discriminator", POSITIVE),
    *bad("W1W2ProximalFlow", flow, "betas", BETAS),
    *bad("W1W2ProximalFlow", flow, "flow_alpha", POSITIVE),
    *bad("W1W2ProximalFlow", flow, "indicator_samples", ints(1)),
    *bad("W1W2ProximalFlow", flow, "seed", SEED),
    *bad("W1W2ProximalFlow.sample", flow().sample, "n", ints(1)),
    *bad("W1W2ProximalFlow.trajectories", flow().trajectories, "n", ints(1)),
]

vae = args(VAE, hidden=(4,))
CASES += [
    *bad("VAE", vae, "data_shape", SHAPE),
    *bad("VAE", vae, "latent_dim", ints(1)),
    *bad("VAE", vae, "architecture", CHOICE),
    *bad("VAE", vae, "hidden", WIDTHS),
    *bad("VAE", vae, "beta", NON_NEGATIVE),
    *bad("VAE", vae, "lr", POSITIVE),
    *bad("VAE", vae, "likelihood", CHOICE),
    *bad("VAE.sample", vae().sample, "n", ints(1)),
    Case("VAE.encode(x=list)", lambda: vae().encode([[0.0] * 64]), TypeError, "x"),
    Case("VAE.encode(x=wrong shape)", lambda: vae().encode(torch.zeros(2, 1, 4, 4)), ValueError, "x"),
]

worst_case = args(WorstCaseGenerator, model=partial(nn.Linear, 2, 1), transport_hidden=(4,))
CASES += [
    *bad("WorstCaseGenerator", worst_case, "model", MODULE + [("None", None, TypeError)]),
    *bad("WorstCaseGenerator", worst_case, "loss", CHOICE),
    *bad("WorstCaseGenerator", worst_case, "gamma", POSITIVE),
    *bad("WorstCaseGenerator", worst_case, "model_lr", POSITIVE),
    *bad("WorstCaseGenerator", worst_case, "model_momentum", FRACTION),
    *bad("WorstCaseGenerator", worst_case, "model_weight_decay", NON_NEGATIVE),
    *bad("WorstCaseGenerator", worst_case, "particle_lr", POSITIVE),
    *bad("WorstCaseGenerator", worst_case, "particle_momentum", FRACTION),
    *bad("WorstCaseGenerator", worst_case, "train_model", [("'yes'", "yes", TypeError), ("1", 1, TypeError)]),
    *bad("WorstCaseGenerator", worst_case, "model_warmup_steps", ints(0)),
    *bad("WorstCaseGenerator", worst_case, "transport_map", MODULE),
    *bad("WorstCaseGenerator", worst_case, "transport_hidden", WIDTHS),
    *bad("WorstCaseGenerator", worst_case, "transport_lr", POSITIVE),
    *bad("WorstCaseGenerator", worst_case, "transport_batch_size", ints(1)),
    *bad("WorstCaseGenerator", worst_case, "num_particles", ints(1)),
    *bad("WorstCaseGenerator", worst_case, "gradient_norm_every", ints(0)),
    *bad("WorstCaseGenerator", worst_case, "gradient_norm_chunk_size", ints(1)),
    *bad("WorstCaseGenerator", worst_case, "seed", ints(0)),
    *bad("WorstCaseGenerator", worst_case, "iterations_per_step", ints(1)),
    Case("WorstCaseGenerator(gradient_norm_every=2, iterations_per_step=3)", lambda: worst_case(gradient_norm_every=2, iterations_per_step=3), ValueError, "iterations_per_step"),
    Case("WorstCaseGenerator.transport(x=list)", lambda: worst_case().transport([[0.0, 1.0]]), TypeError, "x"),
]

classifier = args(OTMDRClassifier, network=partial(nn.Linear, 4, 3), num_classes=3)
CASES += [
    *bad("OTMDRClassifier", classifier, "network", MODULE + [("[]", [], ValueError), ("[tensor]", [TENSOR], TypeError)]),
    *bad("OTMDRClassifier", classifier, "num_classes", ints(2)),
    *bad("OTMDRClassifier", classifier, "ensemble_size", ints(1)),
    *bad("OTMDRClassifier", classifier, "method", CHOICE),
    *bad("OTMDRClassifier", classifier, "base_optimizer", CHOICE),
    *bad("OTMDRClassifier", classifier, "lr", POSITIVE),
    *bad("OTMDRClassifier", classifier, "momentum", FRACTION),
    *bad("OTMDRClassifier", classifier, "weight_decay", NON_NEGATIVE),
    *bad("OTMDRClassifier", classifier, "scheduler", CHOICE),
    *bad("OTMDRClassifier", classifier, "plateau_patience", ints(0)),
    *bad("OTMDRClassifier", classifier, "rho", NON_NEGATIVE + [("[]", [], ValueError), ("[0.05, -1]", [0.05, -1.0], ValueError)]),
    *bad("OTMDRClassifier", classifier, "ascent_steps", ints(1)),
    *bad("OTMDRClassifier", classifier, "num_particles", ints(1)),
    *bad("OTMDRClassifier", classifier, "noise_std", NON_NEGATIVE),
    *bad("OTMDRClassifier", classifier, "chunked_ascent", [("'yes'", "yes", TypeError)]),
    *bad("OTMDRClassifier", classifier, "chain_direction", CHOICE),
    *bad("OTMDRClassifier", classifier, "particle_reduction", CHOICE),
    *bad("OTMDRClassifier", classifier, "freeze_norm_stats", [("'nope'", "nope", ValueError)]),
    *bad("OTMDRClassifier", classifier, "kl_weight", NON_NEGATIVE),
    *bad("OTMDRClassifier", classifier, "train_size", ints(1)),
    *bad("OTMDRClassifier", classifier, "train_samples", ints(1)),
    *bad("OTMDRClassifier", classifier, "bnn_noise", CHOICE),
    *bad("OTMDRClassifier", classifier, "mc_samples", ints(1)),
    *bad("OTMDRClassifier", classifier, "label_smoothing", FRACTION),
    *bad("OTMDRClassifier", classifier, "label_smoothing_mode", CHOICE),
    *bad("OTMDRClassifier", classifier, "ece_bins", ints(1)),
    *bad("OTMDRClassifier", classifier, "seed", SEED),
    Case("OTMDRClassifier(method='sam', rho=[0.05, 0.1])", lambda: classifier(method="sam", rho=[0.05, 0.1]), ValueError, "rho"),
    Case("OTMDRClassifier(ensemble_size=3, network=[2 nets])", lambda: classifier(network=[nn.Linear(4, 3), nn.Linear(4, 3)], ensemble_size=3), ValueError, "ensemble_size"),
    Case("OTMDRClassifier.check_labels(y=float)", lambda: classifier().check_labels(torch.tensor([0.5])), ValueError, "labels"),
    Case("OTMDRClassifier.check_labels(y=[3])", lambda: classifier().check_labels(torch.tensor([3])), ValueError, "num_classes"),
]

# ================================================================== optimizers and the fp16 plugin
otmdr = args(OTMDR, params=partial(params), base_optimizer=torch.optim.SGD, lr=0.1)
sam = args(SAM, params=partial(params), base_optimizer=torch.optim.SGD, lr=0.1)
adam = args(SAM, params=partial(params), base_optimizer=torch.optim.Adam, lr=0.1)
SGD_INSTANCE = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
for name, build in [("OTMDR", otmdr), ("SAM", sam)]:
    CASES += [
        *bad(name, build, "params", [("tensor", torch.zeros(2), TypeError), ("3", 3, TypeError)]),
        Case(f"{name}(params=[])", partial(build, params=[]), ValueError, "parameter"),
        *bad(name, build, "base_optimizer", [
            ("'sgd'", "sgd", TypeError), ("SGD instance", SGD_INSTANCE, TypeError), ("nn.Linear", nn.Linear, TypeError),
            ("SAM", SAM, TypeError), ("LBFGS", torch.optim.LBFGS, TypeError),
        ]),
        *bad(name, build, "adaptive_eta", NON_NEGATIVE),
        *bad(name, build, "interval", ints(1)),
        *bad(name, build, "freeze_norm_stats", [("'nope'", "nope", ValueError), ("2", 2, ValueError)]),
        *bad(name, build, "max_update_ratio", POSITIVE),
        *bad(name, build, "lr", NON_NEGATIVE),
        *bad(name, build, "momentum", FRACTION),
        *bad(name, build, "weight_decay", NON_NEGATIVE),
    ]
CASES += [
    *bad("SAM", sam, "rho", NON_NEGATIVE + [("[0.05, 0.1]", [0.05, 0.1], TypeError)]),
    *bad("SAM", adam, "betas", [("(0.9, 1.2)", (0.9, 1.2), ValueError), ("(0.9,)", (0.9,), ValueError), ("0.9", 0.9, ValueError)], mention="betas"),
    *bad("SAM", adam, "eps", NON_NEGATIVE),
    *bad("OTMDR", otmdr, "rho", NON_NEGATIVE + [("[]", [], ValueError), ("[0.05, -1]", [0.05, -1.0], ValueError), ("[0.05, 'a']", [0.05, "a"], TypeError)]),
    Case("OTMDR(rho=[0.05, 0.1], ascent_steps=3)", partial(otmdr, rho=[0.05, 0.1], ascent_steps=3), ValueError, "ascent_steps"),
    *bad("OTMDR", otmdr, "ascent_steps", ints(1)),
    *bad("OTMDR", otmdr, "num_particles", ints(1)),
    Case("OTMDR(num_particles=2, chunked_ascent=False)", partial(otmdr, num_particles=2, chunked_ascent=False), ValueError, "chunked_ascent"),
    *bad("OTMDR", otmdr, "noise_std", NON_NEGATIVE),
    *bad("OTMDR", otmdr, "chain_direction", CHOICE),
    *bad("OTMDR", otmdr, "chunked_ascent", [("'yes'", "yes", TypeError), ("1", 1, TypeError)]),
    *bad("OTMDR", otmdr, "particle_reduction", CHOICE),
    *bad("OTMDR", otmdr, "seed", SEED),
    Case("OTMDR.add_param_group(rho=-1)", lambda: otmdr(params=[nn.Parameter(torch.zeros(1))]).add_param_group({"params": params(), "rho": -1.0}), ValueError, "rho"),
    Case("OTMDR.add_param_group(noise_std=nan)", lambda: otmdr().add_param_group({"params": params(), "noise_std": NAN}), ValueError, "noise_std"),
    Case("OTMDR.add_param_group(lr=-1)", lambda: otmdr().add_param_group({"params": params(), "lr": -1.0}), ValueError, "lr"),
    Case("OTMDR.attach_no_sync(context=3)", lambda: otmdr().attach_no_sync(3), TypeError, "context"),
    Case("OTMDR.attach_grad_scaler(grad_scaler=3)", lambda: otmdr().attach_grad_scaler(3), TypeError, "grad_scaler"),
    Case("OTMDR.step(closure=3)", lambda: otmdr().step(3), TypeError, "closure"),
    Case("OTMDR.load_state_dict(state_dict={})", lambda: otmdr().load_state_dict({}), ValueError, "load_state_dict"),
    Case("SAM.load_state_dict(state_dict=SGD's)", lambda: sam().load_state_dict(SGD_INSTANCE.state_dict()), ValueError, "load_state_dict"),
]

rho_schedule = args(ProportionalRho, optimizer=partial(sam), rho_max=0.05)
CASES += [
    *bad("ProportionalRho", rho_schedule, "optimizer", [("tensor", torch.zeros(2), TypeError), ("3", 3, TypeError)]),
    Case("ProportionalRho(optimizer=SGD)", lambda: ProportionalRho(torch.optim.SGD(params(), lr=0.1), 0.05), ValueError, "optimizer"),
    *bad("ProportionalRho", rho_schedule, "rho_max", NON_NEGATIVE),
    *bad("ProportionalRho", rho_schedule, "rho_min", NON_NEGATIVE),
    *bad("ProportionalRho", rho_schedule, "lr_max", POSITIVE),
    *bad("ProportionalRho", rho_schedule, "lr_min", NON_NEGATIVE),
    Case("ProportionalRho(lr_min=1.0)", partial(rho_schedule, lr_min=1.0), ValueError, "lr_min"),
    *bad("ProportionalRho", rho_schedule, "last_epoch", [("-2", -2, ValueError), ("1.5", 1.5, TypeError), ("True", True, TypeError)]),
]

sam_precision = args(SAMMixedPrecision, precision="16-mixed", device="cpu")
CASES += [
    *bad("SAMMixedPrecision", sam_precision, "precision", [("'32'", "32", ValueError), ("16", 16, ValueError), ("'16'", "16", ValueError)]),
    *bad("SAMMixedPrecision", sam_precision, "device", [("3.5", 3.5, TypeError), ("'nope'", "nope", ValueError), ("tensor", TENSOR, TypeError)]),
    *bad("SAMMixedPrecision", sam_precision, "scaler", [("tensor", TENSOR, TypeError), ("'scaler'", "scaler", TypeError)]),
    Case("SAMMixedPrecision(precision='bf16-mixed', scaler=GradScaler)", lambda: SAMMixedPrecision("bf16-mixed", "cpu", torch.amp.GradScaler("cpu")), ValueError, "scaler"),
]

# ================================================================== callbacks
CASES += [
    *bad("GradientNormStopping", GradientNormStopping, "tol", POSITIVE),
    *bad("GradientNormStopping", GradientNormStopping, "patience", ints(1)),
    *bad("GradientNormStopping", GradientNormStopping, "monitor", [("'gn_T'", "gn_T", TypeError), ("[1]", [1], TypeError), ("3", 3, TypeError), ("[]", [], ValueError)]),
    *bad("HJResidualStopping", HJResidualStopping, "tol", POSITIVE),
    *bad("HJResidualStopping", HJResidualStopping, "patience", ints(1)),
    *bad("HJResidualStopping", HJResidualStopping, "monitor", [("''", "", ValueError), ("3", 3, TypeError)]),
    *bad("HJResidualStopping", HJResidualStopping, "terminal_tol", POSITIVE),
    *bad("HJResidualStopping", HJResidualStopping, "terminal_monitor", [("''", "", ValueError), ("3", 3, TypeError)]),
    *bad("SampleFigure", SampleFigure, "every_n_steps", ints(1)),
    *bad("SampleFigure", SampleFigure, "num_samples", ints(1)),
    *bad("SampleFigure", SampleFigure, "num_data", ints(0)),
    *bad("SampleFigure", SampleFigure, "split", CHOICE),
    *bad("SampleFigure", SampleFigure, "dirpath", [("3", 3, TypeError), ("''", "", ValueError)]),
    *bad("SampleFigure", SampleFigure, "tag", [("3", 3, TypeError), ("''", "", ValueError)]),
    *bad("SampleFigure", SampleFigure, "seed", ints(0)),
    *bad("SampleFigure", SampleFigure, "max_images", ints(1)),
    *bad("WassersteinMonitor", WassersteinMonitor, "every_n_steps", ints(1)),
    *bad("WassersteinMonitor", WassersteinMonitor, "num_samples", ints(2)),
    *bad("WassersteinMonitor", WassersteinMonitor, "p", [
        ("3", 3, ValueError), ("1.5", 1.5, ANY_ERROR), ("True", True, TypeError), ("'2'", "2", ANY_ERROR), ("[]", [], ValueError), ("[1, 3]", [1, 3], ValueError),
    ]),
    *bad("WassersteinMonitor", WassersteinMonitor, "split", CHOICE + [("'train'", "train", ValueError)]),
    *bad("WassersteinMonitor", WassersteinMonitor, "floor_repeats", ints(1)),
    *bad("WassersteinMonitor", WassersteinMonitor, "prefix", [("3", 3, TypeError), ("''", "", ValueError)]),
    *bad("WassersteinMonitor", WassersteinMonitor, "seed", ints(0)),
    *bad("WassersteinMonitor", WassersteinMonitor, "modes", [
        ("tensor", torch.zeros(3, 2), ValueError), ("(centres,)", (torch.zeros(3, 2),), ValueError),
        ("(1-D centres, 0.1)", (torch.zeros(3), 0.1), ValueError), ("(empty centres, 0.1)", (torch.zeros(0, 2), 0.1), ValueError),
        ("(NaN centres, 0.1)", (torch.full((3, 2), NAN), 0.1), ValueError),
        ("(centres, -1)", (torch.zeros(3, 2), -1.0), ValueError), ("(centres, nan)", (torch.zeros(3, 2), NAN), ValueError),
        ("(centres, 'a')", (torch.zeros(3, 2), "a"), TypeError),
    ]),
]

# ================================================================== networks
mlp = args(N.MLP, in_features=2, out_features=3, hidden=(4,))
CASES += [
    *bad("MLP", mlp, "in_features", ints(1)),
    *bad("MLP", mlp, "out_features", ints(1)),
    *bad("MLP", mlp, "hidden", WIDTHS),
    *bad("MLP", mlp, "activation", CHOICE),
    Case("MLP.forward(x=3 features)", lambda: mlp()(torch.zeros(2, 3)), ValueError, "features"),
]
for name, build in [
    ("MLPCritic", args(N.MLPCritic, hidden=(4,))),
    ("MLPGenerator", args(N.MLPGenerator, hidden=(4,))),
]:
    CASES += [*bad(name, build, "data_shape", SHAPE), *bad(name, build, "hidden", WIDTHS), *bad(name, build, "activation", CHOICE)]
CASES += [
    *bad("MLPGenerator", args(N.MLPGenerator, hidden=(4,)), "latent_dim", ints(1)),
    *bad("MLPGenerator", args(N.MLPGenerator, hidden=(4,)), "output", CHOICE),
]
for name, build in [("DCGANCritic", args(N.DCGANCritic, width=2)), ("DCGANGenerator", args(N.DCGANGenerator, width=2, latent_dim=2))]:
    CASES += [
        *bad(name, build, "channels", ints(1)),
        *bad(name, build, "image_size", ints(4) + [("30", 30, ValueError)]),
        *bad(name, build, "width", ints(1)),
    ]
CASES += bad("DCGANGenerator", args(N.DCGANGenerator, width=2), "latent_dim", ints(1))

for name, factory, shape in [
    ("MLPEncoder", N.MLPEncoder, (1, 4, 4)), ("MLPDecoder", N.MLPDecoder, (1, 4, 4)),
    ("ConvEncoder", N.ConvEncoder, (1, 8, 8)), ("ConvDecoder", N.ConvDecoder, (1, 8, 8)),
]:
    width_arg = "hidden" if name.startswith("MLP") else "channels"
    build = args(factory, data_shape=shape, latent_dim=2, **{width_arg: (4,)})
    CASES += [
        *bad(name, build, "data_shape", SHAPE if name.startswith("MLP") else SHAPE + [("(1, 8)", (1, 8), ValueError), ("(1, 5, 5)", (1, 5, 5), ValueError)]),
        *bad(name, build, "latent_dim", ints(1)),
        *bad(name, build, width_arg, WIDTHS + ([("[]", [], ValueError)] if width_arg == "channels" else [])),
    ]
vae_nets = args(N.build_vae_nets, data_shape=(1, 4, 4), latent_dim=2, hidden=(4,))
CASES += [
    *bad("build_vae_nets", vae_nets, "data_shape", SHAPE),
    *bad("build_vae_nets", vae_nets, "latent_dim", ints(1)),
    *bad("build_vae_nets", vae_nets, "architecture", CHOICE),
    *bad("build_vae_nets", vae_nets, "hidden", WIDTHS),
    Case("build_vae_nets(architecture='conv', data_shape=(8,))", partial(vae_nets, architecture="conv", data_shape=(8,)), ValueError, "data_shape"),
]

transport_map = args(N.ResidualTransportMap, in_features=2, hidden=(4,))
CASES += [
    *bad("ResidualTransportMap", transport_map, "in_features", ints(1)),
    *bad("ResidualTransportMap", transport_map, "hidden", WIDTHS),
    *bad("ResidualTransportMap", transport_map, "num_classes", ints(2)),
    *bad("ResidualTransportMap", transport_map, "target_features", ints(1)),
    *bad("ResidualTransportMap", transport_map, "activation", CHOICE),
    Case("ResidualTransportMap(num_classes=3, target_features=1)", partial(transport_map, num_classes=3, target_features=1), ValueError, "num_classes"),
]
for name, build in [
    ("PotentialMLP", args(N.PotentialMLP, in_features=2, hidden=(4,))),
    ("MLPDiscriminator", args(N.MLPDiscriminator, in_features=2, hidden=(4,))),
]:
    CASES += [*bad(name, build, "in_features", ints(1)), *bad(name, build, "hidden", WIDTHS), *bad(name, build, "activation", CHOICE)]
CONV_SHAPE = (1, 4, 4)
IMAGE_SHAPES: BadValues = SHAPE + [("(1, 4)", (1, 4), ValueError), ("(0, 4, 4)", (0, 4, 4), ValueError)]
for name, build, has_hidden, has_activation in [
    ("ConvTrunk", args(N.ConvTrunk, data_shape=CONV_SHAPE, channels=(2,)), False, True),
    ("ConvPotential", args(N.ConvPotential, data_shape=CONV_SHAPE, channels=(2,), hidden=(4,)), True, True),
    ("ConvDiscriminator", args(N.ConvDiscriminator, data_shape=CONV_SHAPE, channels=(2,), hidden=(4,)), True, True),
    ("OfficialConvPotential", args(N.OfficialConvPotential, data_shape=CONV_SHAPE, channels=(2,), hidden=(4,)), True, False),
    ("OfficialConvDiscriminator", args(N.OfficialConvDiscriminator, data_shape=CONV_SHAPE, channels=(2,), hidden=(4,)), True, False),
]:
    CASES += [*bad(name, build, "data_shape", IMAGE_SHAPES), *bad(name, build, "channels", WIDTHS + [("[]", [], ValueError)])]
    CASES += bad(name, build, "hidden", WIDTHS) if has_hidden else []
    CASES += bad(name, build, "activation", CHOICE) if has_activation else []
CASES += [
    Case("OfficialConvPotential.load_official_weights(conv_w=[])", lambda: N.OfficialConvPotential(CONV_SHAPE, (2,), (4,)).load_official_weights([], [], []), ValueError, "conv"),
    *bad("official_init_", N.official_init_, "module", MODULE),
]

bayes_module = args(N.BayesianModule)
CASES += [
    *bad("BayesianModule", bayes_module, "prior_sigma", POSITIVE),
    *bad("BayesianModule", bayes_module, "init_mu_std", NON_NEGATIVE),
    *bad("BayesianModule", bayes_module, "init_rho", [("nan", NAN, ValueError), ("inf", INF, ValueError), ("True", True, TypeError), ("'-5'", "-5", TypeError)]),
    *bad("BayesianModule", bayes_module, "init_rho_std", NON_NEGATIVE),
]
bayes_linear = args(N.BayesLinear, in_features=2, out_features=3)
CASES += [
    *bad("BayesLinear", bayes_linear, "in_features", ints(1)),
    *bad("BayesLinear", bayes_linear, "out_features", ints(1)),
    *bad("BayesLinear", bayes_linear, "prior_sigma", POSITIVE),
]
bayes_conv = args(N.BayesConv2d, in_channels=2, out_channels=2, kernel_size=3)
CASES += [
    *bad("BayesConv2d", bayes_conv, "in_channels", ints(1)),
    *bad("BayesConv2d", bayes_conv, "out_channels", ints(1)),
    *bad("BayesConv2d", bayes_conv, "kernel_size", ints(1)),
    *bad("BayesConv2d", bayes_conv, "stride", ints(1)),
    *bad("BayesConv2d", bayes_conv, "padding", ints(0)),
    *bad("BayesConv2d", bayes_conv, "dilation", ints(1)),
    *bad("BayesConv2d", bayes_conv, "groups", ints(1) + [("3", 3, ValueError)]),
    *bad("BayesConv2d", bayes_conv, "prior_sigma", POSITIVE),
]
CASES += [
    *bad("bayesian_parameter_groups", N.bayesian_parameter_groups, "module", MODULE),
    *bad("kl_divergence", N.kl_divergence, "module", MODULE),
    *bad("shared_noise", lambda **kw: N.shared_noise(**{"module": linear(), "seed": 0, **kw}).__enter__(), "module", MODULE),
    *bad("shared_noise", lambda **kw: N.shared_noise(**{"module": linear(), "seed": 0, **kw}).__enter__(), "seed", SEED),
    *bad("use_posterior_mean", lambda **kw: N.use_posterior_mean(**kw).__enter__(), "module", MODULE),
]

for name, build in [
    ("MLPClassifier", args(N.MLPClassifier, in_shape=(1, 2, 2), hidden=(4,))),
    ("BayesianMLPClassifier", args(N.BayesianMLPClassifier, in_shape=(1, 2, 2), hidden=(4,))),
]:
    CASES += [
        *bad(name, build, "in_shape", [("0", 0, ValueError), ("True", True, TypeError), ("2.5", 2.5, ANY_ERROR)] + SHAPE[:-1]),
        *bad(name, build, "num_classes", ints(2)),
        *bad(name, build, "hidden", WIDTHS),
    ]
for name, build in [
    ("ConvClassifier", args(N.ConvClassifier, width=2)),
    ("BayesianConvClassifier", args(N.BayesianConvClassifier, width=2)),
]:
    CASES += [*bad(name, build, "in_channels", ints(1)), *bad(name, build, "num_classes", ints(2)), *bad(name, build, "width", ints(1))]
CASES += [
    *bad("BayesianMLPClassifier", args(N.BayesianMLPClassifier, in_shape=(1, 2, 2), hidden=(4,)), "prior_sigma", POSITIVE),
    *bad("BayesianConvClassifier", args(N.BayesianConvClassifier, width=2), "prior_sigma", POSITIVE),
    Case("ConvClassifier.forward(x=flat)", lambda: N.ConvClassifier(width=2)(torch.zeros(2, 4)), ValueError, "x"),
    *bad("Ensemble", N.Ensemble, "members", [("[]", [], ValueError), ("[tensor]", [TENSOR], TypeError), ("3", 3, TypeError), ("linear", nn.Linear(2, 1), TypeError)]),
]
wide_resnet = args(N.WideResNet, depth=10, widen_factor=1)
CASES += [
    *bad("WideResNet", wide_resnet, "depth", ints(10) + [("12", 12, ValueError)]),
    *bad("WideResNet", wide_resnet, "widen_factor", ints(1)),
    *bad("WideResNet", wide_resnet, "num_classes", ints(2)),
    *bad("WideResNet", wide_resnet, "dropout", FRACTION),
    *bad("WideResNet", wide_resnet, "in_channels", ints(1)),
]

# ================================================================== losses (pure torch)
CASES += [
    *bad("critic_gap", args(L.critic_gap, f_data=X[:, 0], f_gen=Y[:, 0]), "f_data", [("empty", zeros(0), ValueError), ("list", [1.0], TypeError)]),
    *bad("critic_gap", args(L.critic_gap, f_data=X[:, 0], f_gen=Y[:, 0]), "f_gen", [("empty", zeros(0), ValueError), ("list", [1.0], TypeError)]),
    *bad("critic_loss", args(L.critic_loss, f_data=X[:, 0], f_gen=Y[:, 0]), "f_data", [("empty", zeros(0), ValueError)]),
    *bad("generator_loss", L.generator_loss, "f_gen", [("empty", zeros(0), ValueError), ("list", [1.0], TypeError)]),
    *bad("clip_weights", args(L.clip_weights, parameters=partial(params), clip_value=0.01), "clip_value", POSITIVE),
    *bad("clip_weights", args(L.clip_weights, clip_value=0.01), "parameters", [("3", 3, TypeError), ("[3]", [3], TypeError)]),
]
penalty = args(L.gradient_penalty, critic=critic, data=X, generated=Y, eps=torch.rand(4))
CASES += [
    *bad("gradient_penalty", penalty, "critic", [("3", 3, TypeError)]),
    *bad("gradient_penalty", penalty, "generated", [("(3, 2)", zeros(3, 2), ValueError), ("list", [[0.0, 0.0]] * 4, TypeError)]),
    *bad("gradient_penalty", penalty, "eps", [("(3,)", torch.rand(3), ValueError), ("list", [0.5] * 4, TypeError)]),
    *bad("gradient_penalty", penalty, "target", NON_NEGATIVE),
    *bad("lipschitz_estimate", args(L.lipschitz_estimate, critic=critic, points=X), "critic", [("3", 3, TypeError)]),
    *bad("lipschitz_estimate", args(L.lipschitz_estimate, critic=critic, points=X), "points", [("empty", zeros(0, 2), ValueError), ("list", [[0.0]], TypeError)]),
]
euler = args(L.forward_euler_targets, y=X, mapped=Y, dt=0.5)
ot_targets = args(L.minibatch_ot_targets, generated=X, data=Y, dt=0.5)
semi_dual = args(L.semi_dual_loss, potential=critic, generated=X, data=Y)
w2gan = args(L.w2gan_dual_loss, phi=critic, psi=critic, data=X, generated=Y, penalty=10.0)
CASES += [
    *bad("forward_euler_targets", euler, "dt", POSITIVE),
    *bad("forward_euler_targets", euler, "mapped", [("(3, 2)", zeros(3, 2), ValueError), ("list", [[0.0, 0.0]] * 4, TypeError)]),
    *bad("minibatch_ot_targets", ot_targets, "dt", POSITIVE),
    *bad("minibatch_ot_targets", ot_targets, "generated", [("empty", zeros(0, 2), ValueError), ("list", [[0.0, 0.0]], TypeError)]),
    *bad("minibatch_ot_targets", ot_targets, "data", [("(4, 3)", zeros(4, 3), ValueError), ("empty", zeros(0, 2), ValueError)]),
    *bad("potential_map", args(L.potential_map, potential=critic, y=X), "potential", [("3", 3, TypeError)]),
    *bad("potential_map", args(L.potential_map, potential=critic, y=X), "y", [("list", [[0.0]], TypeError)]),
    *bad("adversarial_map", args(L.adversarial_map, psi=critic, y=X), "psi", [("3", 3, TypeError)]),
    *bad("adversarial_map", args(L.adversarial_map, psi=critic, y=X), "y", [("list", [[0.0]], TypeError)]),
    *bad("semi_dual_loss", semi_dual, "potential", [("3", 3, TypeError)]),
    *bad("semi_dual_loss", semi_dual, "generated", [("empty", zeros(0, 2), ValueError)]),
    *bad("semi_dual_loss", semi_dual, "data", [("(4, 3)", zeros(4, 3), ValueError), ("empty", zeros(0, 2), ValueError)]),
    *bad("w2gan_dual_loss", w2gan, "penalty", NON_NEGATIVE),
    *bad("w2gan_dual_loss", w2gan, "phi", [("3", 3, TypeError)]),
    *bad("w2gan_dual_loss", w2gan, "psi", [("3", 3, TypeError)]),
    *bad("w2gan_dual_loss", w2gan, "generated", [("(3, 2)", zeros(3, 2), ValueError)]),
]

# ================================================================== proximal-flow math (pure torch)
SCORES: BadValues = [("empty", zeros(0), ValueError), ("(4, 2)", zeros(4, 2), ValueError), ("list", [0.0], TypeError)]
for name, fn in [("kl_dual", P.kl_dual), ("reverse_kl_dual", P.reverse_kl_dual), ("alpha_dual", P.alpha_dual)]:
    build = args(fn, phi_p=X[:, 0], phi_q=Y[:, 0])
    CASES += [*bad(name, build, "phi_p", SCORES), *bad(name, build, "phi_q", SCORES)]
CASES += [
    *bad("alpha_dual", args(P.alpha_dual, phi_p=X[:, 0], phi_q=Y[:, 0]), "order", POSITIVE + [("1", 1.0, ValueError)]),
    *bad("reverse_kl_dual", args(P.reverse_kl_dual, phi_p=X[:, 0], phi_q=Y[:, 0]), "eps", POSITIVE),
    *bad("f_divergence_dual", args(P.f_divergence_dual, name="kl", phi_p=X[:, 0], phi_q=Y[:, 0]), "name", CHOICE),
    *bad("f_divergence_dual", args(P.f_divergence_dual, name="alpha", phi_p=X[:, 0], phi_q=Y[:, 0]), "order", [("1", 1.0, ValueError), ("nan", NAN, ValueError)]),
    *bad("f_divergence_dual", args(P.f_divergence_dual, name="kl", phi_p=X[:, 0], phi_q=Y[:, 0]), "phi_p", SCORES[:1]),
]
lip = args(P.lipschitz_penalty, discriminator=partial(N.MLPDiscriminator, 2, hidden=(4,)), real=X, fake=Y, L=1.0)
CASES += [
    *bad("lipschitz_penalty", lip, "L", POSITIVE),
    *bad("lipschitz_penalty", lip, "fake", [("(3, 2)", zeros(3, 2), ValueError), ("list", [[0.0, 0.0]] * 4, TypeError)]),
    *bad("lipschitz_penalty", lip, "real", [("empty", zeros(0, 2), ValueError)]),
    *bad("lipschitz_penalty", lip, "discriminator", [("3", 3, TypeError)]),
]
rollout = args(P.euler_rollout, potential=potential, x0=X, T=1.0, num_steps=2, alpha=1.0)
CASES += [
    *bad("euler_rollout", rollout, "T", POSITIVE),
    *bad("euler_rollout", rollout, "num_steps", ints(1)),
    *bad("euler_rollout", rollout, "alpha", POSITIVE),
    *bad("euler_rollout", rollout, "potential", [("3", 3, TypeError)]),
    *bad("euler_rollout", rollout, "x0", [("list", [[0.0, 0.0]], TypeError), ("empty", zeros(0, 2), ValueError)]),
]
evaluate = args(P.evaluate_potential, potential=potential, x=X, t=0.5)
gradient = args(P.potential_gradient, potential=potential, x=X, t=0.5)
CASES += [
    *bad("evaluate_potential", evaluate, "potential", [("3", 3, TypeError)]),
    *bad("evaluate_potential", evaluate, "x", [("list", [[0.0, 0.0]], TypeError)]),
    *bad("evaluate_potential", evaluate, "t", [("nan", NAN, ValueError), ("'a'", "a", TypeError), ("True", True, TypeError), ("(3,) times", zeros(3), ValueError)]),
    *bad("potential_gradient", gradient, "potential", [("3", 3, TypeError)]),
    *bad("potential_gradient", gradient, "x", [("list", [[0.0, 0.0]], TypeError)]),
    *bad("potential_gradient", gradient, "t", [("nan", NAN, ValueError), ("'a'", "a", TypeError)]),
]
TRAJECTORIES: BadValues = [("(3,)", zeros(3), ValueError), ("one state", zeros(1, 4, 2), ValueError), ("[]", [], ValueError), ("3", 3, TypeError)]
CASES += [
    *bad("excess_path_length", P.excess_path_length, "states", TRAJECTORIES),
    *bad("path_straightness", P.path_straightness, "trajectories", TRAJECTORIES),
    *bad("median_path_straightness", P.median_path_straightness, "trajectories", TRAJECTORIES),
]
kinetic = args(P.kinetic_energy, gradients=STATES[:2], dt=0.5, alpha=1.0)
kinetic_official = args(P.kinetic_energy_official, potential=potential, states=STATES, times=TIMES, dt=0.5, alpha=1.0)
hj = args(P.hj_residual, potential=potential, states=STATES, times=TIMES, dt=0.5, alpha=1.0)
hj_official = args(P.hj_residual_official, potential=potential, states=STATES, times=TIMES, dt=0.5, alpha=1.0)
hj_pointwise = args(P.hj_residual_pointwise, potential=potential, x=X, t=0.5, alpha=1.0)
CASES += [
    *bad("kinetic_energy", kinetic, "gradients", [("[]", [], ValueError), ("tensor", torch.zeros(0), ANY_ERROR)]),
    *bad("kinetic_energy", kinetic, "dt", POSITIVE),
    *bad("kinetic_energy", kinetic, "alpha", POSITIVE),
    *bad("kinetic_energy_official", kinetic_official, "alpha", POSITIVE),
    *bad("kinetic_energy_official", kinetic_official, "dt", POSITIVE),
    *bad("kinetic_energy_official", kinetic_official, "states", [("2 states for 2 times", STATES[:2], ValueError)]),
    *bad("hj_residual", hj, "alpha", POSITIVE),
    *bad("hj_residual", hj, "dt", POSITIVE),
    *bad("hj_residual", hj, "times", [("[]", [], ValueError)]),
    *bad("hj_residual", hj, "states", [("1 state for 2 times", STATES[:1], ValueError)]),
    *bad("hj_residual", hj, "sign", [("0", 0.0, ValueError), ("2", 2.0, ValueError), ("'-1'", "-1", ANY_ERROR)]),
    *bad("hj_residual_official", hj_official, "alpha", POSITIVE),
    *bad("hj_residual_official", hj_official, "dt", POSITIVE),
    *bad("hj_residual_official", hj_official, "states", [("2 states for 2 times", STATES[:2], ValueError)]),
    *bad("hj_residual_pointwise", hj_pointwise, "alpha", POSITIVE),
    *bad("hj_residual_pointwise", hj_pointwise, "t", [("nan", NAN, ValueError), ("'a'", "a", TypeError)]),
    *bad("hj_residual_pointwise", hj_pointwise, "sign", [("0", 0.0, ValueError), ("nan", NAN, ValueError)]),
    *bad("hj_residual_pointwise", hj_pointwise, "x", [("list", [[0.0, 0.0]], TypeError)]),
]
for name, fn in [("terminal_error", P.terminal_error), ("terminal_error_official", P.terminal_error_official)]:
    build = args(fn, potential=potential, discriminator=critic, x_T=X, T=1.0)
    CASES += [
        *bad(name, build, "T", [("nan", NAN, ValueError), ("'a'", "a", TypeError), ("-1", -1.0, ValueError)]),
        *bad(name, build, "discriminator", [("3", 3, TypeError)]),
        *bad(name, build, "potential", [("3", 3, TypeError)]),
        *bad(name, build, "x_T", [("list", [[0.0, 0.0]], TypeError), ("empty", zeros(0, 2), ValueError)]),
    ]
reference = args(P.sample_reference, kind="normal", n=4, shape=(2,))
CASES += [
    *bad("sample_reference", reference, "kind", CHOICE),
    *bad("sample_reference", reference, "n", ints(1)),
    *bad("sample_reference", reference, "shape", SHAPE[1:]),
    *bad("sample_reference", args(P.sample_reference, kind="uniform", n=4, shape=(2,)), "low", [("nan", NAN, ValueError), ("1.0 > high", 1.0, ValueError), ("'0'", "0", TypeError)]),
    *bad("sample_reference", args(P.sample_reference, kind="uniform", n=4, shape=(2,)), "high", [("inf", INF, ValueError), ("0.0 = low", 0.0, ValueError)]),
]

# ================================================================== optimal transport and metrics
CASES += [
    *bad("wasserstein_distance", args(wasserstein_distance, x=X, y=Y), "p", POSITIVE[:4] + [("0.5", 0.5, ValueError), ("True", True, TypeError), ("'2'", "2", TypeError)]),
    *bad("wasserstein_distance", args(wasserstein_distance, x=X, y=Y), "method", CHOICE),
    *bad("wasserstein_distance", args(wasserstein_distance, x=X, y=Y, method="sliced"), "num_projections", ints(1)),
    *bad("wasserstein_distance", args(wasserstein_distance, x=X, y=Y, method="sliced"), "seed", ints(0)),
    *bad("wasserstein_distance", args(wasserstein_distance, x=X, y=Y, method="sinkhorn"), "reg", POSITIVE),
    *bad("wasserstein_distance", args(wasserstein_distance, x=X, y=Y, method="sinkhorn"), "stop_threshold", POSITIVE),
    *bad("wasserstein_distance", args(wasserstein_distance, x=X, y=Y, method="sinkhorn"), "sinkhorn_method", CHOICE),
    *bad("wasserstein_distance", args(wasserstein_distance, x=X, y=Y), "num_iter_max", ints(1)),
    Case("wasserstein_distance(method='exact', reg=0.1)", partial(wasserstein_distance, X, Y, reg=0.1), ValueError, "reg"),
    Case("wasserstein_distance(method='exact', num_projections=10)", partial(wasserstein_distance, X, Y, num_projections=10), ValueError, "num_projections"),
    *bad("wasserstein_distance", args(wasserstein_distance, y=Y), "x", [("list", [[0.0, 0.0]], TypeError), ("empty", zeros(0, 2), ValueError)]),
    *bad("ot_plan", args(ot_plan, x=X, y=Y), "p", POSITIVE[:4] + [("0.5", 0.5, ValueError), ("True", True, TypeError)]),
    *bad("ot_plan", args(ot_plan, x=X, y=Y), "num_iter_max", ints(1)),
    *bad("ot_plan", args(ot_plan, x=X, y=Y), "a", [("(3,)", torch.ones(3), ValueError), ("negative", -torch.ones(4), ValueError)]),
    *bad("barycentric_map", args(barycentric_map, x=X, y=Y), "p", [("0.5", 0.5, ValueError), ("nan", NAN, ValueError), ("True", True, TypeError)]),
    *bad("barycentric_map", args(barycentric_map, x=X, y=Y), "plan", [("(3, 4)", torch.ones(3, 4), ValueError), ("negative", -torch.ones(4, 4), ValueError)]),
    *bad("cost_matrix", args(cost_matrix, x=X, y=Y), "p", [("0", 0.0, ValueError), ("nan", NAN, ValueError), ("True", True, TypeError), ("'2'", "2", TypeError)]),
    *bad("cost_matrix", args(cost_matrix, x=X, y=Y), "y", [("list", [[0.0, 0.0]], TypeError)]),
    *bad("default_num_iter_max", args(default_num_iter_max, n=4, m=4), "n", ints(1)),
    *bad("default_num_iter_max", args(default_num_iter_max, n=4, m=4), "m", ints(1)),
    *bad("check_p", check_p, "p", [("0.5", 0.5, ValueError), ("inf", float("inf"), ValueError), ("True", True, TypeError)]),
    *bad("check_ot_options", args(check_ot_options, method="sinkhorn"), "reg", POSITIVE[:4]),
    *bad("check_ot_options", args(check_ot_options, method="sinkhorn"), "sinkhorn_method", CHOICE),
    *bad("check_ot_options", args(check_ot_options, method="sliced"), "num_projections", ints(1)),
    Case("check_ot_options(method='exact', seed=0)", partial(check_ot_options, "exact", seed=0), ValueError, "seed"),
    *bad("OTOptions", args(importlib.import_module("lightning_wass.ot").OTOptions, method="sinkhorn"), "reg", POSITIVE[:4]),
    *bad("OTOptions", args(importlib.import_module("lightning_wass.ot").OTOptions), "method", CHOICE),
    Case("OTOptions(method='exact', seed=0)", partial(importlib.import_module("lightning_wass.ot").OTOptions, "exact", seed=0), ValueError, "seed"),
    *bad("check_points", args(importlib.import_module("lightning_wass.ot").check_points, y=Y), "x", [("list", [[0.0, 0.0]], TypeError), ("empty", zeros(0, 2), ValueError)]),
    *bad("check_weights", args(importlib.import_module("lightning_wass.ot").check_weights, like=X, name="a"), "value", [("(3,)", torch.ones(3), ValueError), ("negative", -torch.ones(4), ValueError)], mention="a"),
    *bad("check_weights", args(importlib.import_module("lightning_wass.ot").check_weights, value=None), "like", [("list", [[0.0, 0.0]], TypeError)]),
]
CASES += [
    *bad("WassersteinDistance", WassersteinDistance, "p", [("0.5", 0.5, ValueError), ("nan", NAN, ValueError), ("True", True, TypeError), ("'2'", "2", TypeError)]),
    *bad("WassersteinDistance", WassersteinDistance, "method", CHOICE),
    *bad("WassersteinDistance", WassersteinDistance, "max_samples", ints(1)),
    *bad("WassersteinDistance", args(WassersteinDistance, method="sliced"), "num_projections", ints(1)),
    *bad("WassersteinDistance", args(WassersteinDistance, method="sinkhorn"), "reg", POSITIVE),
    *bad("WassersteinDistance", args(WassersteinDistance, method="sinkhorn"), "sinkhorn_method", CHOICE),
    *bad("WassersteinDistance", WassersteinDistance, "num_iter_max", ints(1)),
    Case("WassersteinDistance(method='exact', reg=0.1)", partial(WassersteinDistance, reg=0.1), ValueError, "reg"),
    Case("WassersteinDistance.update(x=list)", lambda: WassersteinDistance().update([[0.0, 0.0]], Y), TypeError, "x"),
    Case("WassersteinDistance.compute(no update)", lambda: WassersteinDistance().compute(), ValueError, "update"),
]
coverage = args(mode_coverage, samples=X, modes=Y[:2], std=0.1)
CASES += [
    *bad("mode_coverage", coverage, "std", POSITIVE),
    *bad("mode_coverage", coverage, "num_std", POSITIVE),
    *bad("mode_coverage", coverage, "min_share", [("0", 0.0, ValueError), ("1.5", 1.5, ValueError), ("nan", NAN, ValueError), ("True", True, TypeError)]),
    *bad("mode_coverage", coverage, "samples", [("list", [[0.0, 0.0]], ANY_ERROR), ("(4,)", zeros(4), ValueError)]),
    *bad("mode_coverage", coverage, "modes", [("list", [[0.0, 0.0]], ANY_ERROR), ("(2, 3)", zeros(2, 3), ValueError)]),
]

# ================================================================== data
SPLIT_KWARGS: list[tuple[str, BadValues]] = [
    ("batch_size", ints(1)), ("num_workers", ints(0)), ("val_fraction", FRACTION), ("num_samples", ints(1)), ("seed", ints(0)),
]
for name, build in [
    ("InMemoryDataModule", D.InMemoryDataModule),
    ("TensorDataModule", args(D.TensorDataModule, x=torch.randn(20, 2))),
    ("DigitsDataModule", D.DigitsDataModule),
    ("MNISTDataModule", D.MNISTDataModule),
    ("FashionMNISTDataModule", D.FashionMNISTDataModule),
    ("CIFAR10DataModule", D.CIFAR10DataModule),
    ("CIFAR100DataModule", D.CIFAR100DataModule),
    ("TorchvisionImageDataModule", D.TorchvisionImageDataModule),
]:
    for arg, values in SPLIT_KWARGS:
        CASES += bad(name, build, arg, values)
for name, build in [
    ("InMemoryDataModule", D.InMemoryDataModule),
    ("TensorDataModule", args(D.TensorDataModule, x=torch.randn(20, 2))),
    ("DigitsDataModule", D.DigitsDataModule),
    ("MNISTDataModule", args(D.MNISTDataModule, test_set_only=True)),  # test_fraction splits the t10k set only then
]:
    CASES += bad(name, build, "test_fraction", FRACTION)
    CASES.append(Case(f"{name}(val_fraction=0.5, test_fraction=0.5)", partial(build, val_fraction=0.5, test_fraction=0.5), ValueError, "val_fraction"))
for name, factory in [("MNISTDataModule", D.MNISTDataModule), ("FashionMNISTDataModule", D.FashionMNISTDataModule), ("CIFAR10DataModule", D.CIFAR10DataModule), ("TorchvisionImageDataModule", D.TorchvisionImageDataModule)]:
    CASES += bad(name, factory, "data_dir", [("3", 3, TypeError), ("None", None, TypeError)])
for name, factory in [("CIFAR10DataModule", D.CIFAR10DataModule), ("CIFAR100DataModule", D.CIFAR100DataModule)]:
    CASES += [*bad(name, factory, "crop_padding", ints(0)), *bad(name, factory, "cutout", ints(0))]
CASES += [
    *bad("TensorDataModule", D.TensorDataModule, "x", [("'abc'", "abc", TypeError), ("None", None, TypeError), ("scalar", torch.tensor(1.0), ValueError), ("empty", zeros(0, 2), ValueError)]),
    *bad("TensorDataModule", args(D.TensorDataModule, x=torch.randn(20, 2)), "y", [("(19,)", zeros(19), ValueError), ("'abc'", "abc", TypeError)]),
]
toy = args(D.ToyDataModule, train_size=8, val_size=4, test_size=4)
CASES += [
    *bad("ToyDataModule", toy, "name", CHOICE),
    *bad("ToyDataModule", toy, "train_size", ints(1)),
    *bad("ToyDataModule", toy, "val_size", ints(0)),
    *bad("ToyDataModule", toy, "test_size", ints(0)),
    *bad("ToyDataModule", toy, "noise", NON_NEGATIVE),
    *bad("ToyDataModule", toy, "dim", ints(1)),
    *bad("ToyDataModule", toy, "rotate", [("'yes'", "yes", TypeError)]),
    *bad("ToyDataModule", toy, "batch_size", ints(1)),
    *bad("ToyDataModule", toy, "num_workers", ints(0)),
    *bad("ToyDataModule", toy, "seed", ints(0)),
    Case("ToyDataModule.sample(n=-1)", lambda: toy().sample(-1), ValueError, "n"),
]
for name, fn in [("sample_toy", D.sample_toy), ("make_toy", D.make_toy)]:
    build = args(fn, name="moons", n=4)
    CASES += [
        *bad(name, build, "name", CHOICE),
        *bad(name, build, "n", ints(0)),
        *bad(name, build, "noise", NON_NEGATIVE),
        *bad(name, build, "dim", ints(1)),
        *bad(name, build, "rotate", [("'yes'", "yes", TypeError)]),
    ]
CASES += [
    *bad("toy_embedding", args(D.toy_embedding, name="moons_7d"), "name", CHOICE + [("'regression'", "regression", ValueError)]),
    *bad("toy_embedding", args(D.toy_embedding, name="moons_7d"), "rotate", [("'yes'", "yes", TypeError)]),
    *bad("toy_modes", args(D.toy_modes, name="8gaussians"), "name", CHOICE),
    *bad("toy_modes", args(D.toy_modes, name="8gaussians"), "noise", NON_NEGATIVE),
    *bad("regression_coefficients", D.regression_coefficients, "dim", ints(1)),
    *bad("TensorDictDataset", args(D.TensorDictDataset, x=torch.randn(4, 2)), "y", [("(3,)", zeros(3), ValueError)]),
    *bad("TensorDictDataset", D.TensorDictDataset, "x", [("3", 3, TypeError), ("'abc'", "abc", TypeError)]),
    Case("require_index(batch without index)", lambda: D.require_index(D.unpack_batch({"x": X}), "WorstCaseGenerator"), ValueError, "return_index"),
    *bad("unpack_batch", D.unpack_batch, "batch", [("3", 3, ValueError), ("{'y': y}", {"y": X}, ValueError), ("()", (), ValueError)]),
]
sampler = args(D.TrainingSampler, dataset=range(10), num_replicas=2, rank=0)
CASES += [
    *bad("TrainingSampler", sampler, "num_replicas", ints(1)),
    *bad("TrainingSampler", sampler, "rank", [("2", 2, ValueError), ("-1", -1, ValueError), ("1.5", 1.5, TypeError), ("True", True, TypeError)]),
    *bad("TrainingSampler", sampler, "dataset", [("3", 3, TypeError)]),
    *bad("TrainingSampler", sampler, "seed", SEED),
    *bad("padding_mask", D.padding_mask, "index", [("float", zeros(3), TypeError), ("bool", torch.zeros(3, dtype=torch.bool), TypeError), ("list", [0, -1], TypeError)]),
]
MISSING_CHECKPOINT = str(Path(__file__).parent / "no_such_folder" / "model.ckpt")
CASES += [
    Case("read_checkpoint(path=missing file)", partial(read_checkpoint, MISSING_CHECKPOINT), ValueError, MISSING_CHECKPOINT),
    Case("read_checkpoint(path=a folder)", partial(read_checkpoint, str(Path(__file__).parent)), ValueError, str(Path(__file__).parent)),
    *bad("read_checkpoint", read_checkpoint, "path", [("3", 3, TypeError), ("None", None, TypeError)]),
    *bad("read_checkpoint", args(read_checkpoint, path=MISSING_CHECKPOINT), "expected", [("3", 3, TypeError), ("'VAE'", "VAE", TypeError)]),
]
latent = args(D.LatentDataModule, images=partial(D.DigitsDataModule), vae=partial(VAE, hidden=(4,)))
CASES += [
    *bad("LatentDataModule", latent, "images", [("tensor", TENSOR, TypeError), ("VAE", VAE(hidden=(4,)), TypeError)]),
    *bad("LatentDataModule", latent, "vae", [("3", 3, TypeError), ("tensor", TENSOR, TypeError), ("linear", nn.Linear(2, 1), TypeError)]),
    *bad("LatentDataModule", latent, "encode_batch_size", ints(1)),
    *bad("LatentDataModule", latent, "batch_size", ints(1)),
    *bad("LatentDataModule", latent, "cache_dir", [("3", 3, TypeError)]),
]


# ------------------------------------------------------------------ the suite
def _mentions(message: str, name: str) -> bool:
    """``name`` appears in ``message`` as a whole word (``lr`` is not found in ``model_lr``)."""
    return re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", message) is not None


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")  # WassersteinDistance.compute(no update)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_naming_the_argument(case: Case) -> None:
    try:
        case.call()
    except Exception as error:  # noqa: BLE001 - any other exception is a finding too
        raised = error
    else:
        pytest.fail(f"{case.id}: no error (expected {case.error_type}, naming {case.must_mention!r})")
    message = f"{case.id}: {type(raised).__name__}: {raised}"
    assert isinstance(raised, case.error_type), f"wrong error type, {message}"
    assert _mentions(str(raised), case.must_mention), f"the message does not name {case.must_mention!r}: {message}"


# The boundaries and the other accepted forms next to the bad values: the checks are not stricter than the API.
GOOD_NEIGHBOURS: list[tuple[str, Callable[[], Any]]] = [
    ("WGAN(data_shape=torch.Size([2]))", lambda: WGAN(data_shape=torch.Size([2]))),
    ("WGAN(data_shape=(np.int64(2),))", lambda: WGAN(data_shape=(np.int64(2),))),
    ("WGAN(betas=(0.0, 0.99))", lambda: WGAN(betas=(0.0, 0.99))),
    ("W2GradientFlow(betas=[0, 0.9])", lambda: W2GradientFlow(betas=[0, 0.9])),
    ("W1W2ProximalFlow(alpha=0, L=None)", lambda: flow(alpha=0.0, L=None)),
    ("VAE(hidden=[])", lambda: VAE(hidden=[])),
    ("MLP(hidden=())", lambda: N.MLP(2, 3, hidden=())),
    ("Ensemble(members=ModuleList)", lambda: N.Ensemble(nn.ModuleList([nn.Linear(2, 2)]))),
    ("BayesConv2d(groups=2)", lambda: N.BayesConv2d(2, 4, 3, groups=2, padding=1)),
    ("OTMDRClassifier(momentum=0, chunked_ascent=False)", lambda: classifier(momentum=0.0, chunked_ascent=False, freeze_norm_stats="final_passes")),
    ("WorstCaseGenerator(transport_hidden=())", lambda: worst_case(transport_hidden=())),
    ("WassersteinMonitor(p=[1, 2])", lambda: WassersteinMonitor(p=[1, 2])),
    ("SampleFigure(dirpath=Path)", lambda: SampleFigure(dirpath=Path("figures"))),
    ("SAMMixedPrecision(device=torch.device)", lambda: SAMMixedPrecision("bf16-mixed", torch.device("cpu"))),
    ("ProportionalRho(rho_max=0)", lambda: rho_schedule(rho_max=0.0)),
    ("clip_weights(parameters=generator)", lambda: L.clip_weights(nn.Linear(2, 1).parameters(), 0.01)),
    ("hj_residual_pointwise(t=0-dim tensor, sign=+1)", lambda: P.hj_residual_pointwise(potential, X, torch.tensor(0.5), 1.0, sign=1)),
    ("sample_reference(low=-1, high=1)", lambda: P.sample_reference("uniform", 3, (2,), low=-1.0, high=1.0)),
    ("sample_reference(shape=())", lambda: P.sample_reference("normal", 3, ())),
    ("excess_path_length(states=tensor)", lambda: P.excess_path_length(torch.zeros(2, 3, 2))),
    ("kinetic_energy(gradients=tuple)", lambda: P.kinetic_energy((torch.ones(3, 2),), 0.5, 1.0)),
    ("evaluate_potential(t=one time a sample)", lambda: P.evaluate_potential(potential, X, torch.zeros(4))),
]


@pytest.mark.parametrize("call", [c for _, c in GOOD_NEIGHBOURS], ids=[i for i, _ in GOOD_NEIGHBOURS])
def test_good_neighbours_of_the_bad_values_are_accepted(call: Callable[[], Any]) -> None:
    call()


# ------------------------------------------------------------------ coverage of the public API
PUBLIC_MODULES = (
    "lightning_wass",
    "lightning_wass.callbacks",
    "lightning_wass.datamodules",
    "lightning_wass.functional",
    "lightning_wass.modules",
    "lightning_wass.nn",
    "lightning_wass.optim",
    "lightning_wass.ot",
    "lightning_wass.plugins",
)

EXEMPT: dict[str, str] = {
    "CheckpointError": "an exception class: raised by the library, never called with user input",
    "DivergenceError": "an exception class: raised by the library, never called with user input",
    "OTConvergenceError": "an exception class: raised by the library, never called with user input",
    "ModeCoverage": "the NamedTuple mode_coverage returns (its inputs are checked there)",
    "Rollout": "the dataclass euler_rollout returns (its inputs are checked there)",
    "Batch": "the NamedTuple unpack_batch returns (its input is checked there)",
    "PassInfo": "a read-only record the optimizer builds and hands its closure during a step; users never build one",
    "ReleaseSpawnedProcessGroup": "a callback built without arguments: there is no user input to refuse",
}


def _public_callables() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type) or callable(obj):
                found[name] = obj
    return found


def test_every_public_class_and_function_has_a_case() -> None:
    public = _public_callables()
    covered = {re.match(r"\w+", case.id).group() for case in CASES}  # type: ignore[union-attr]
    missing = sorted(name for name in public if name not in covered and name not in EXEMPT)
    assert not missing, f"public names without a bad-input case (add cases, or an EXEMPT entry with a reason): {missing}"
    unknown = sorted(covered - set(public))
    assert not unknown, f"case ids that do not start with a public name: {unknown}"
    stale = sorted(name for name in EXEMPT if name not in public or name in covered)
    assert not stale, f"EXEMPT entries that are not public or that have cases now (remove them): {stale}"
    assert all(len(reason) > 20 for reason in EXEMPT.values())


def test_case_ids_are_unique_and_read_as_calls() -> None:
    ids = [case.id for case in CASES]
    duplicates = sorted(i for i, count in Counter(ids).items() if count > 1)
    assert not duplicates, f"duplicate case ids: {duplicates}"
    assert all(re.fullmatch(r"\w+(\.\w+)?\(.*\)", i) for i in ids), [i for i in ids if not re.fullmatch(r"\w+(\.\w+)?\(.*\)", i)]
