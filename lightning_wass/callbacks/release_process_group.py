"""Destroy the process group at the end of a ``ddp_spawn`` worker, before its interpreter exits.

Lightning's multiprocessing launcher (``strategy="ddp_spawn"``, ``"ddp_fork"``,
``"ddp_notebook"``) returns from each worker without calling
:func:`torch.distributed.destroy_process_group`. The worker's process group then lives until
interpreter finalisation, where Gloo's worker threads can still hold work objects with Python
references; destroying them then, with the interpreter half torn down, occasionally aborts the
worker ("terminate called without an active exception", SIGABRT), and ``Trainer.fit`` in the main
process raises ``ProcessExitedException`` although training finished (pytorch/pytorch#190489; an
``atexit`` fix in torch itself, pytorch/pytorch#179291, was withdrawn). torch's documentation asks
each trainer process to call ``destroy_process_group()`` once communication is over; this callback
does that at ``teardown``, the last hook of a fit / validate / test run.

Only workers started by the multiprocessing launcher are touched: there the process ends right
after the run, so no later run can need the group. Under ``strategy="ddp"`` (the subprocess
launcher) the same processes go on to the user's next ``Trainer`` call, and the group is left to
them. Every LightningModule of this library adds the callback itself (``configure_callbacks``);
add it to the Trainer's ``callbacks`` for a module of your own run with ``ddp_spawn``. A
LightningModule's own ``teardown`` runs after the callbacks' and so must not communicate.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch.distributed as dist
# Lightning's one launcher that starts workers with multiprocessing (spawn / fork); it has no public alias
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

__all__ = ["ReleaseSpawnedProcessGroup", "release_spawned_process_group"]


def release_spawned_process_group(trainer: pl.Trainer) -> bool:
    """Destroy the default process group if this process is a multiprocessing-launched worker.

    Returns whether a group was destroyed (``False`` outside such a worker, or when no group is
    initialised).
    """
    spawned_worker = isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher)
    if not (spawned_worker and dist.is_available() and dist.is_initialized()):
        return False
    dist.destroy_process_group()
    return True


class ReleaseSpawnedProcessGroup(pl.Callback):
    """At ``teardown``, :func:`release_spawned_process_group` (see the module docstring for why)."""

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        release_spawned_process_group(trainer)
