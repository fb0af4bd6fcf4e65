"""The VAE-latent version of any in-memory image DataModule.

Seed 000 (worst-case generation for Wasserstein DRO) runs its MNIST and CIFAR-10 experiments in a
VAE's latent space: every image ``x`` is replaced by its deterministic code ``z = mu(x)`` (the
posterior mean, :meth:`~lightning_wass.modules.VAE.embed`), a classifier and the worst-case
particles live there, and figures decode ``z`` back to images with the VAE.

Encoding happens once: :meth:`LatentDataModule.prepare_data` (called by Lightning on local rank 0
only) encodes each split and saves it with ``torch.save`` under ``cache_dir``, in a file whose name
hashes everything the latents depend on; :meth:`~LatentDataModule.setup` (every rank) loads them. A
second run with the same data and the same encoder weights is a cache hit and encodes nothing.
Cache files are written atomically (:func:`~lightning_wass.checkpoints.save_atomically`); one that
is damaged anyway (empty, truncated, not a latent cache, the wrong number of codes) is encoded
again, with a ``UserWarning`` naming the file and what was wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lightning_wass._validation import check_finite, check_int, check_path
from lightning_wass.checkpoints import CheckpointError, load_module, read_torch_file, save_atomically
from lightning_wass.datamodules.base import SPLITS, InMemoryDataModule
from lightning_wass.nn.modes import eval_mode

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$LIGHTNING_WASS_CACHE/latents`` if that variable is set, else ``~/.cache/lightning_wass/latents``."""
    root = os.environ.get("LIGHTNING_WASS_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "lightning_wass") / "latents"


def tensor_digest(tensors: dict[str, Tensor] | list[Tensor], digest: Any = None) -> str:
    """Hex BLAKE2b digest of tensors' names, dtypes, shapes and raw bytes (a state_dict or a list)."""
    digest = digest or hashlib.blake2b(digest_size=16)
    items = sorted(tensors.items()) if isinstance(tensors, dict) else list(enumerate(tensors))
    for name, tensor in items:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def checkpoint_file(path: str | Path) -> Path:
    """``path`` as a ``Path`` if it is an existing file, else ``FileNotFoundError`` saying what to do."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"vae checkpoint {str(path)!r} not found; train one first, e.g. "
            "`lightning-wass fit --config examples/vae_digits.yaml`, and pass the .ckpt path"
        )
    return path


def load_vae(vae: Any) -> pl.LightningModule:
    """A VAE-like module from a module or a checkpoint path (built by the class that wrote it).

    A VAE-like module has ``embed(x) -> z`` and ``decode(z) -> x`` (:class:`~lightning_wass.modules.VAE`
    and its subclasses, or a user's own module). A path is loaded with
    :func:`~lightning_wass.checkpoints.load_module`; a damaged checkpoint or one that does not say who
    wrote it is a :class:`~lightning_wass.checkpoints.CheckpointError` (a ``ValueError``) naming the path.
    """
    if isinstance(vae, (str, Path)):
        vae = load_module(checkpoint_file(vae), map_location="cpu")
    if not isinstance(vae, nn.Module) or not callable(getattr(vae, "embed", None)) or not callable(getattr(vae, "decode", None)):
        raise TypeError(
            "vae must be a VAE module (anything with embed(x) and decode(z)) or a checkpoint path, "
            f"got {type(vae).__name__}"
        )
    return vae


class LatentDataModule(InMemoryDataModule):
    """Latent codes ``z = vae.embed(x)`` of every split of an image DataModule, with its labels.

    Sample ``i`` of split ``s`` here is the code of image ``i`` of ``images.tensors(s)``, so
    ``return_index`` indices refer to both, and :meth:`image_tensors` gives the matching images.

    Args:
        images: the image DataModule (any :class:`InMemoryDataModule`: ``DigitsDataModule``,
            ``MNISTDataModule``, ...). Its own split and subset arguments decide which images are encoded.
        vae: a trained :class:`~lightning_wass.modules.VAE` (or any module with ``embed``/``decode``),
            or the path of a VAE checkpoint (``.ckpt``), as from YAML.
        cache_dir: folder of the latent cache (default :func:`default_cache_dir`).
        batch_size, num_workers, return_index, drop_last: as in :class:`InMemoryDataModule`.
        seed: seed of the training order (default: the image DataModule's seed).
        encode_batch_size: images per forward pass when encoding.

    The cache key of a split hashes: the image DataModule's class and name, the split, its subset
    arguments (``num_samples``, ``seed``, ``val_fraction``, ``test_fraction``), the bytes of the
    split's images and labels, and the encoder's weights (its ``state_dict`` bytes). Changing any of
    them encodes anew; nothing is ever served stale.

    Example::

        vae = VAE(data_shape=(1, 8, 8), latent_dim=8); pl.Trainer(max_epochs=30).fit(vae, DigitsDataModule())
        latents = LatentDataModule(DigitsDataModule(), vae, batch_size=256, return_index=True)
        trainer.fit(model_on_latents, latents)
        images = latents.decode(z)  # back to (N, 1, 8, 8) in [0, 1], for figures
    """

    def __init__(
        self,
        images: InMemoryDataModule,
        vae: pl.LightningModule | str,
        cache_dir: str | None = None,
        *,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int | None = None,
        return_index: bool = False,
        drop_last: bool = False,
        encode_batch_size: int = 1024,
    ) -> None:
        if not isinstance(images, InMemoryDataModule):
            raise TypeError(
                "images must be an InMemoryDataModule of images (DigitsDataModule, MNISTDataModule, "
                f"TensorDataModule, ...), got {type(images).__name__}"
            )
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            seed=images.seed if seed is None else seed,
            return_index=return_index,
            drop_last=drop_last,
        )
        self.images = images
        if isinstance(vae, (str, Path)):  # loaded on first use (checked now)
            self._vae: pl.LightningModule | None = None
            self._vae_path: Path | None = checkpoint_file(vae)
        else:
            self._vae, self._vae_path = load_vae(vae), None
        check_path("cache_dir", cache_dir, optional=True)
        self.cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
        self.encode_batch_size = check_int("encode_batch_size", encode_batch_size, minimum=1)
        self.name = f"latent-{images.name}"
        self.encoded_splits: list[str] = []  # splits this instance encoded (empty on a cache hit)

    @property
    def vae(self) -> pl.LightningModule:
        """The VAE (loaded from the checkpoint path on first use when given as a path)."""
        if self._vae is None:
            self._vae = load_vae(self._vae_path)
        return self._vae

    # ----------------------------------------------------------------- cache
    def cache_key(self, split: str) -> str:
        """Hex digest identifying the latents of ``split`` (see the class docstring)."""
        x, y = self.images.tensors(split)
        fields = {
            "format": CACHE_FORMAT,
            "datamodule": f"{type(self.images).__module__}.{type(self.images).__qualname__}",
            "dataset": self.images.name,
            "split": split,
            "num_samples": self.images.num_samples,
            "seed": self.images.seed,
            "val_fraction": self.images.val_fraction,
            "test_fraction": getattr(self.images, "test_fraction", None),
            "vae": f"{type(self.vae).__module__}.{type(self.vae).__qualname__}",
        }
        digest = hashlib.blake2b(json.dumps(fields, sort_keys=True).encode(), digest_size=16)
        tensor_digest([x] if y is None else [x, y], digest)
        encoder = getattr(self.vae, "encoder", self.vae)
        digest.update(tensor_digest(encoder.state_dict()).encode())
        return digest.hexdigest()

    def cache_path(self, split: str) -> Path:
        """File of ``split``'s latents: ``<cache_dir>/<dataset>-<split>-<key>.pt``."""
        return self.cache_dir / f"{self.images.name}-{split}-{self.cache_key(split)}.pt"

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """``vae.embed(x)`` in eval mode, in batches of ``encode_batch_size``, returned on the CPU as float32."""
        with eval_mode(self.vae):
            device = next(self.vae.parameters()).device
            codes = [self.vae.embed(chunk.to(device)).float().cpu() for chunk in x.split(self.encode_batch_size)]
        return torch.cat(codes) if codes else torch.zeros(0, 0)

    def _encode_split(self, split: str, path: Path) -> None:
        x, y = self.images.tensors(split)
        z = self.encode(x)
        check_finite(f"latent codes of the {split} split (the VAE's encoder output)", z)
        # atomic: a reader never sees a half-written file, and an interrupted write leaves no temporary file
        save_atomically({"z": z, "y": y, "split": split, "dataset": self.images.name}, path)
        self.encoded_splits.append(split)

    def _read_split(self, split: str, path: Path) -> tuple[Tensor, Tensor | None]:
        """The cached ``(z, y)`` of ``split``; ``CheckpointError`` naming ``path`` if the file is unusable."""
        expected = f"the latent cache of the {split} split (a dict with 'z' and 'y')"
        stored = read_torch_file(path, expected=expected, what="latent cache", weights_only=True)
        n = len(self.images.tensors(split)[0])
        if not isinstance(stored, dict) or not isinstance(stored.get("z"), Tensor) or "y" not in stored:
            raise CheckpointError(f"latent cache {str(path)!r} holds no 'z' and 'y' tensors; expected {expected}")
        z, y = stored["z"], stored["y"]
        if z.ndim != 2 or len(z) != n or (y is not None and (not isinstance(y, Tensor) or len(y) != n)):
            raise CheckpointError(
                f"latent cache {str(path)!r} holds codes of shape {tuple(z.shape)} for a split of {n} images; "
                f"expected {expected}, {n} rows"
            )
        return z, y

    def _load_split(self, split: str) -> tuple[Tensor, Tensor | None]:
        """Cached latents of ``split``, encoded now if missing or (with a ``UserWarning``) if the file is unusable."""
        path = self.cache_path(split)
        if not path.is_file():
            self._encode_split(split, path)
        try:
            return self._read_split(split, path)
        except CheckpointError as error:
            warnings.warn(f"{error}; encoding the {split} split again", UserWarning, stacklevel=3)
        self._encode_split(split, path)
        return self._read_split(split, path)

    # ----------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        """Encode every split not yet in the cache (Lightning calls this on local rank 0 only)."""
        self.images.prepare_data()
        for split in SPLITS:
            path = self.cache_path(split)
            if not path.is_file():
                self._encode_split(split, path)

    def setup(self, stage: str | None = None) -> None:
        """Load the cached latents (encoding any split still missing, e.g. when used outside a Trainer)."""
        if self._splits is not None:
            return
        self._splits = {split: self._load_split(split) for split in SPLITS}

    def load_pools(self) -> dict[str, tuple[Tensor, Tensor | None]]:
        raise NotImplementedError("LatentDataModule takes its splits from the image DataModule; use setup()")

    # ----------------------------------------------------------------- for figures
    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Images ``vae.decode(z)`` in ``[0, 1]``, shape ``(N, *image shape)``, on ``z``'s device."""
        with eval_mode(self.vae):
            device = next(self.vae.parameters()).device
            return self.vae.decode(z.to(device)).to(z.device)

    def image_tensors(self, split: str = "train") -> tuple[Tensor, Tensor | None]:
        """The images (and labels) whose codes are ``tensors(split)``, in the same order."""
        return self.images.tensors(split)

    @property
    def latent_dim(self) -> int:
        """Dimension of the latent codes."""
        return int(self.tensors("train")[0].shape[1])
