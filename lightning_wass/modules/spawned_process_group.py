"""Every module of this library releases a ``ddp_spawn`` worker's process group at teardown.

:class:`ReleasesSpawnedProcessGroup` adds
:class:`~lightning_wass.callbacks.release_process_group.ReleaseSpawnedProcessGroup` to the
callbacks the module configures, so a ``ddp_spawn`` run of one of our modules cannot end in the
Gloo exit abort that module's docstring describes, whatever callbacks the user passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl

from lightning_wass.callbacks.release_process_group import ReleaseSpawnedProcessGroup

__all__ = ["ReleasesSpawnedProcessGroup"]


class ReleasesSpawnedProcessGroup:
    """Mixin for LightningModules (put it before ``pl.LightningModule``): ``configure_callbacks`` adds the release."""

    def configure_callbacks(self) -> Sequence[pl.Callback] | pl.Callback:
        configured = super().configure_callbacks()  # type: ignore[misc]
        callbacks = [configured] if isinstance(configured, pl.Callback) else list(configured)
        if not any(isinstance(c, ReleaseSpawnedProcessGroup) for c in callbacks):
            callbacks.append(ReleaseSpawnedProcessGroup())
        return callbacks
