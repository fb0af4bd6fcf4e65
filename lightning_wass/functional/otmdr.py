"""Tensor-list arithmetic of a SAM-family ascent step, with ``torch._foreach_*`` kernels.

Each function works on lists of tensors (one entry per parameter) so that a step costs a handful of
fused multi-tensor kernels instead of a Python loop over parameters. Scales stay on the device as
0-d tensors: no host synchronisation happens here.

The ascent step (SAM, arXiv:2010.01412; ASAM, arXiv:2102.11600; OT-MDR, arXiv:2306.04178):

    e = rho * T^2 d / ||T g||,     T = |theta| + eta  (adaptive)   or   T = 1,

where ``g`` is the gradient at the current point and ``d`` the ascent direction (``g`` itself, or
the sum of the chain's gradients in OT-MDR's official chain).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from itertools import repeat
from operator import is_

import torch
from torch import Tensor

from lightning_wass.seeding import seeded_generator

EPS = 1e-12


def _same_device(tensors: Sequence[Tensor]) -> bool:
    return all(t.device == tensors[0].device for t in tensors)


def flat_views(tensors: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Fresh storage for ``tensors``: one flat tensor per (device, dtype), in order of first
    appearance, and one contiguous view of it per tensor, shaped like that tensor.

    A norm over every tensor of such storage is one kernel over each flat tensor instead of one per
    tensor (``_foreach_norm`` runs a per-tensor loop on the CPU).
    """
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    views: list[Tensor | None] = [None] * len(tensors)
    flats = []
    for (device, dtype), members in groups.items():
        flat = torch.empty(sum(tensors[i].numel() for i in members), device=device, dtype=dtype)
        for i, piece in zip(members, flat.split([tensors[i].numel() for i in members])):
            views[i] = piece.view(tensors[i].shape)
        flats.append(flat)
    return flats, views  # type: ignore[return-value]


class FlatBuffer:
    """A reusable flat copy of a list of tensors (re-allocated when their layout changes)."""

    def __init__(self) -> None:
        self._layout: list[tuple[object, ...]] | None = None
        self.flats: list[Tensor] = []
        self.views: list[Tensor] = []

    def load(self, tensors: Sequence[Tensor], layout: list[tuple[object, ...]] | None = None) -> list[Tensor]:
        """Copy ``tensors`` in (one ``_foreach_copy_``) and return the flat tensors (``layout``: their
        ``(shape, dtype, device)`` list, when the caller has it)."""
        if layout is None:
            layout = [(t.shape, t.dtype, t.device) for t in tensors]
        if layout != self._layout:
            self.flats, self.views = flat_views(tensors)
            self._layout = layout
        torch._foreach_copy_(self.views, list(tensors))
        return self.flats


def flat_norm(flats: Sequence[Tensor], device: torch.device) -> Tensor:
    """``||(f_1, ..., f_n)||_2`` of flat tensors, a 0-d float32 tensor on ``device``."""
    if len(flats) == 1 and device.type == "cpu" and flats[0].is_cpu:  # (one CPU flat tensor: the usual case)
        return torch.linalg.vector_norm(flats[0], 2, dtype=torch.float32)
    norms = [torch.linalg.vector_norm(f, 2, dtype=torch.float32) for f in flats]
    if len(norms) == 1 and norms[0].device == device:
        return norms[0]
    return torch.stack([n.to(device) for n in norms]).norm()


def global_norm(
    tensors: Sequence[Tensor], device: torch.device, buffer: FlatBuffer | None = None, layout: list[tuple[object, ...]] | None = None
) -> Tensor:
    """``||(t_1, ..., t_n)||_2 = sqrt(sum_i ||t_i||^2)``, a 0-d float32 tensor on ``device`` (no host sync).

    On the CPU, with a ``buffer``, the tensors are copied into it and normed flat (a copy costs
    about a fifth of the CPU's per-tensor ``_foreach_norm``); elsewhere one ``_foreach_norm``.
    """
    tensors = list(tensors)
    if not tensors:
        return torch.zeros((), device=device)
    if buffer is not None and tensors[0].device.type == "cpu":  # (other devices: one flat tensor each)
        return flat_norm(buffer.load(tensors, layout), device)
    norms = torch._foreach_norm(tensors, 2, dtype=torch.float32)  # fp16 norms overflow at 65504
    if _same_device(norms) and norms[0].device == device:
        return torch.stack(norms).norm()
    return torch.stack([n.to(device).float() for n in norms]).norm()


def scaling(params: Sequence[Tensor], adaptive: bool, eta: float) -> list[Tensor] | None:
    """``T = |theta| + eta`` for the adaptive (ASAM) geometry, ``None`` for the Euclidean one."""
    if not adaptive:
        return None
    t = torch._foreach_abs(list(params))
    if eta:
        torch._foreach_add_(t, eta)
    return t


def sum_of_squares(
    grads: Sequence[Tensor],
    t: Sequence[Tensor] | None,
    device: torch.device,
    buffer: FlatBuffer | None = None,
    layout: list[tuple[object, ...]] | None = None,
) -> Tensor:
    """``sum_i ||T_i g_i||^2`` as a 0-d float32 tensor on ``device`` (CPU with ``buffer``: see :func:`global_norm`)."""
    if not grads:
        return torch.zeros((), device=device)
    weighted = list(grads) if t is None else torch._foreach_mul(list(t), list(grads))
    if buffer is not None and weighted[0].device.type == "cpu":
        return global_norm(weighted, device, buffer, layout if t is None else None).square()
    norms = torch._foreach_norm(weighted, 2, dtype=torch.float32)  # fp16 norms overflow at 65504
    if _same_device(norms) and norms[0].device == device:
        stacked = torch.stack(norms)
    else:
        stacked = torch.stack([n.to(device) for n in norms])
    return stacked.float().square().sum()


def ascend_(params: Sequence[Tensor], directions: Sequence[Tensor], scale: Tensor | float, t: Sequence[Tensor] | None) -> None:
    """``theta <- theta + scale * T^2 d`` in place (``T = 1`` when ``t is None``).

    ``scale`` is a 0-d tensor (no host synchronisation: the GPU path) or a Python float (one
    ``_foreach_add_`` with ``alpha``: the CPU path, where reading the scale back costs nothing).
    """
    if not params:
        return
    params, directions = list(params), list(directions)
    if t is None:
        if isinstance(scale, float):
            torch._foreach_add_(params, directions, alpha=scale)
            return
        step = torch._foreach_mul(directions, scale) if _same_device(params) else [d * scale.to(d.device) for d in directions]
    else:
        t = list(t)
        step = torch._foreach_mul(t, t)
        torch._foreach_mul_(step, directions)
        if isinstance(scale, float):
            torch._foreach_add_(params, step, alpha=scale)
            return
        if _same_device(params):
            torch._foreach_mul_(step, scale)
        else:
            step = [s * scale.to(s.device) for s in step]
    torch._foreach_add_(params, step)


def ascend_terms_(params: Sequence[Tensor], terms: Sequence[Sequence[Tensor | None]], scale: float, t: Sequence[Tensor] | None) -> None:
    """``theta <- theta + scale * T^2 (sum of the terms)`` in place, one ``_foreach_add_`` (or
    ``_foreach_addcmul_``) per term and no allocation (the CPU path; ``scale`` a Python float).
    A ``None`` entry in a term (no gradient for that parameter in that pass) counts as zero."""
    if not params:
        return
    t2 = None if t is None else torch._foreach_mul(list(t), list(t))
    for term in terms:
        if term and not any(map(is_, term, repeat(None))):  # every parameter has this term (a C loop: no index list)
            keep, ps, gs = term, list(params), list(term)
        else:
            keep = [k for k, g in enumerate(term) if g is not None]
            if not keep:
                continue
            ps = [params[k] for k in keep]
            gs = [term[k] for k in keep]
        if t2 is None:
            torch._foreach_add_(ps, gs, alpha=scale)  # type: ignore[arg-type]
        else:
            ts = t2 if len(keep) == len(term) else [t2[k] for k in keep]
            torch._foreach_addcmul_(ps, ts, gs, value=scale)  # type: ignore[arg-type]


def sum_terms(terms: Sequence[Sequence[Tensor | None]]) -> list[Tensor]:
    """Elementwise sum of gradient lists (the last one has no ``None``); one list as it is."""
    total: list[Tensor] = list(terms[-1])  # type: ignore[arg-type]
    for term in terms[:-1]:
        keep = [k for k, g in enumerate(term) if g is not None]
        if keep:
            added = torch._foreach_add([total[k] for k in keep], [term[k] for k in keep])  # type: ignore[misc]
            for k, value in zip(keep, added):
                total[k] = value
    return total


class NoiseSource:
    """Adds Langevin noise ``std * xi``, ``xi ~ N(0, I)``, drawn from a generator seeded per call.

    One flat draw per (device, dtype) group of parameters into a buffer kept between calls (with
    its per-parameter views), so a call costs one ``randn(out=...)`` and one ``_foreach_add_``. The
    noise depends only on the seed and the parameter shapes: the same on every DDP replica for the
    same seed.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[tuple[int, tuple[int, ...]], ...], list[tuple[list[Tensor], Tensor, list[Tensor]]]] = {}

    def _groups_for(self, params: Sequence[Tensor]) -> list[tuple[list[Tensor], Tensor, list[Tensor]]]:
        layout = tuple((id(p), tuple(p.shape)) for p in params)
        groups = self._cache.get(layout)
        if groups is not None:
            return groups
        grouped: dict[tuple[torch.device, torch.dtype], list[Tensor]] = defaultdict(list)
        for p in params:
            grouped[(p.device, p.dtype)].append(p)
        groups = []
        for (device, dtype), members in grouped.items():
            flat = torch.empty(sum(p.numel() for p in members), device=device, dtype=dtype)
            views = [piece.view_as(p) for piece, p in zip(flat.split([p.numel() for p in members]), members)]
            groups.append((members, flat, views))
        if len(self._cache) >= 8:  # parameter sets change rarely; keep a few (one per perturbed group)
            self._cache.clear()
        self._cache[layout] = groups
        return groups

    def add_(self, params: Sequence[Tensor], std: float, seed: int) -> None:
        if std == 0 or not params:
            return
        for offset, (members, flat, views) in enumerate(self._groups_for(params)):
            generator = seeded_generator(flat.device, seed, offset)
            torch.randn(flat.shape, generator=generator, out=flat)
            torch._foreach_add_(members, views, alpha=std)
