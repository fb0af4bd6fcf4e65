"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 as in-memory DataModules on torchvision's files.

Each split is loaded whole into memory as ``uint8``; the class-balanced ``num_samples`` subset is
drawn first and only then scaled to float32 in ``[0, 1]`` with shape ``(N, C, H, W)`` (see
:class:`~lightning_wass.datamodules.base.InMemoryDataModule`). Downloading goes through
torchvision (``download=True``, in ``prepare_data``, so on rank 0 only under DDP). Offline and
absent, ``setup`` raises ``FileNotFoundError`` naming the files expected, the folders searched and
what to do.

MNIST-only-test-set mode: ``MNISTDataModule(data_dir=..., test_set_only=True)`` uses the 10,000
images of ``t10k-*`` alone (held out into train/val/test like
:class:`~lightning_wass.datamodules.digits.DigitsDataModule`), for machines that hold only the
MNIST test set. It is an explicit switch, never automatic: the same code never silently trains on
a different data set because a file is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_wass._validation import check_fraction, check_int
from lightning_wass.datamodules import augment
from lightning_wass.datamodules.base import InMemoryDataModule
from lightning_wass.datamodules.idx import find_file, read_idx
from lightning_wass.seeding import seeded_generator


class TorchvisionImageDataModule(InMemoryDataModule):
    """Common part of the torchvision image sets: ``data_dir``, ``download`` and the common arguments.

    Args:
        data_dir: folder holding the data set (torchvision's layout, see each subclass).
        download: fetch the files with torchvision when they are absent (needs a network).
        batch_size, num_workers, val_fraction, num_samples, seed, return_index, drop_last:
            as in :class:`InMemoryDataModule`; ``num_samples`` is a class-balanced subset of the
            training images left after ``val_fraction`` of them is held out for validation (the
            papers use 1,000 / 2,000 / 6,000).

    Subclasses set :attr:`torchvision_name` and implement :meth:`expected_files`,
    :meth:`read_pools`.
    """

    torchvision_name: str = ""
    class_names: tuple[str, ...] = ()

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        *,
        batch_size: int = 128,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        num_samples: int | None = None,
        seed: int = 0,
        return_index: bool = False,
        drop_last: bool = False,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            val_fraction=val_fraction,
            num_samples=num_samples,
            seed=seed,
            return_index=return_index,
            drop_last=drop_last,
            test_fraction=0.0,  # these sets have an official test split: nothing else is held out for testing
        )
        self._set_location(data_dir, download)

    def _set_location(self, data_dir: str | Path, download: bool) -> None:
        if not isinstance(data_dir, (str, Path)):
            raise TypeError(f"data_dir must be a path (str), got {type(data_dir).__name__}")
        self.data_dir = Path(data_dir).expanduser()
        self.download = bool(download)

    # ----------------------------------------------------------------- subclass hooks
    def expected_files(self) -> tuple[list[str], list[Path]]:
        """``(file names, folders searched)`` that :meth:`read_pools` needs."""
        raise NotImplementedError

    def missing_files(self) -> list[str]:
        """The expected files found in none of the folders."""
        names, folders = self.expected_files()
        return [name for name in names if find_file(name, folders) is None]

    def read_pools(self) -> dict[str, tuple[Tensor, Tensor | None]]:
        """Read the files (all present) into ``uint8`` images ``(N, C, H, W)`` and long labels."""
        raise NotImplementedError

    def missing_hint(self, missing: list[str]) -> str:
        """Extra advice appended to the missing-files message."""
        return ""

    def file_label(self, name: str) -> str:
        """How an expected file is named in messages."""
        return name

    # ----------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        """Download with torchvision when ``download=True`` and files are missing (rank 0 only)."""
        if not self.download or not self.missing_files():
            return
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, self.torchvision_name)
        try:
            dataset_class(root=str(self.data_dir), train=True, download=True)
            dataset_class(root=str(self.data_dir), train=False, download=True)
        except (RuntimeError, OSError) as error:  # URLError is an OSError
            raise FileNotFoundError(
                f"downloading {self.torchvision_name} into {self.data_dir.resolve()} failed ({error}). "
                + self._missing_message(self.missing_files(), download_failed=True)
            ) from error

    def load_pools(self) -> dict[str, tuple[Tensor, Tensor | None]]:
        missing = self.missing_files()
        if missing and self.download:
            self.prepare_data()  # setup() called without prepare_data(), e.g. outside a Trainer
            missing = self.missing_files()
        if missing:
            raise FileNotFoundError(self._missing_message(missing))
        return self.read_pools()

    def _missing_message(self, missing: list[str], download_failed: bool = False) -> str:
        names, folders = self.expected_files()
        where = " or ".join(str(folder.resolve()) for folder in folders)
        todo = (
            "Check the network connection and retry, or"
            if download_failed
            else "With a network, pass download=True to fetch them with torchvision; offline,"
        )
        message = (
            f"{self.torchvision_name} files not found: expected {', '.join(map(self.file_label, names))} "
            f"in {where}; missing {', '.join(missing)}. {todo} copy the files into {folders[0].resolve()}."
        )
        hint = self.missing_hint(missing)
        return f"{message} {hint}" if hint else message


class _IDXImageDataModule(TorchvisionImageDataModule):
    """MNIST-format (IDX) image sets: 28x28 grey images, 60,000 train and 10,000 test.

    Files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each plain or ``.gz``, in ``<data_dir>/<Name>/raw`` (torchvision's
    layout, what ``download=True`` writes) or directly in ``<data_dir>``.

    Args:
        test_set_only: use only the 10,000 ``t10k`` images (and files): ``test_fraction`` and
            ``val_fraction`` of them are held out as the test and validation splits (stratified,
            seeded), the rest trains. For machines that hold only the test files.
        test_fraction: fraction held out for testing with ``test_set_only=True`` (else unused).
        other arguments: as in :class:`TorchvisionImageDataModule`.
    """

    TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        test_set_only: bool = False,
        *,
        batch_size: int = 128,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        num_samples: int | None = None,
        seed: int = 0,
        return_index: bool = False,
        drop_last: bool = False,
    ) -> None:
        check_fraction("test_fraction", test_fraction)  # refused when bad even where it is unused
        # The parent's __init__ is skipped on purpose: it has no test_fraction (CIFAR-10 and full
        # MNIST have an official test split), which test_set_only needs.
        InMemoryDataModule.__init__(
            self,
            batch_size=batch_size,
            num_workers=num_workers,
            val_fraction=val_fraction,
            test_fraction=test_fraction if test_set_only else 0.0,
            num_samples=num_samples,
            seed=seed,
            return_index=return_index,
            drop_last=drop_last,
        )
        self._set_location(data_dir, download)
        self.test_set_only = bool(test_set_only)

    def expected_files(self) -> tuple[list[str], list[Path]]:
        names = list(self.TEST_FILES) if self.test_set_only else [*self.TRAIN_FILES, *self.TEST_FILES]
        return names, [self.data_dir / self.torchvision_name / "raw", self.data_dir]

    def file_label(self, name: str) -> str:
        return f"{name}[.gz]"

    def missing_hint(self, missing: list[str]) -> str:
        if not self.test_set_only and set(missing) <= set(self.TRAIN_FILES):
            return (
                f"Only the {self.torchvision_name} test set (t10k files) is there: pass test_set_only=True "
                "to split its 10,000 images into train/val/test."
            )
        return ""

    def _read(self, images: str, labels: str) -> tuple[Tensor, Tensor]:
        _, folders = self.expected_files()
        image_path, label_path = find_file(images, folders), find_file(labels, folders)
        x = read_idx(image_path)  # type: ignore[arg-type]
        y = read_idx(label_path)  # type: ignore[arg-type]
        if x.ndim != 3 or x.dtype != torch.uint8 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"{image_path} / {label_path}: expected N x H x W uint8 images and N labels, got "
                f"{tuple(x.shape)} {x.dtype} and {tuple(y.shape)}"
            )
        if len(x) == 0:
            raise ValueError(f"{image_path} holds no image (0 samples); replace it with the full file")
        y = y.long()
        classes = len(self.class_names)
        if classes and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise ValueError(
                f"{label_path}: labels must lie in 0..{classes - 1} ({self.torchvision_name} has {classes} "
                f"classes), got {int(y.min())}..{int(y.max())}; the file is corrupt or of another data set"
            )
        return x.unsqueeze(1), y

    def read_pools(self) -> dict[str, tuple[Tensor, Tensor | None]]:
        test = self._read(*self.TEST_FILES)
        if self.test_set_only:
            return {"train": test}
        return {"train": self._read(*self.TRAIN_FILES), "test": test}


class MNISTDataModule(_IDXImageDataModule):
    """MNIST: 28x28 handwritten digits, ``x`` float ``(N, 1, 28, 28)`` in ``[0, 1]``, ``y`` long.

    60,000 training images (``val_fraction`` held out for validation, ``num_samples`` drawn from the
    rest) and the 10,000 official test images as the test split. With ``test_set_only=True`` only
    the 10,000 test images are used, split into train/val/test (for machines without the training
    files, such as ``../shared/data/mnist`` here).

    Example::

        dm = MNISTDataModule("data", download=True, num_samples=1000)
        dm = MNISTDataModule("/work/shared/data/mnist", test_set_only=True)  # the 10,000 t10k images
    """

    name = "mnist"
    torchvision_name = "MNIST"
    class_names = tuple(str(d) for d in range(10))


class FashionMNISTDataModule(_IDXImageDataModule):
    """Fashion-MNIST: 28x28 clothing images, same format and arguments as :class:`MNISTDataModule`.

    Files in ``<data_dir>/FashionMNIST/raw`` (or ``<data_dir>``).
    """

    name = "fashion_mnist"
    torchvision_name = "FashionMNIST"
    class_names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class _CIFARDataModule(TorchvisionImageDataModule):
    """CIFAR-10 / CIFAR-100: torchvision's python files, and the papers' training recipe on the batches.

    Batches the Trainer receives (``on_after_batch_transfer``, on their device) are, for training
    only, randomly cropped after zero-padding by ``crop_padding`` pixels and flipped left-right
    (``augment=True``, the SAM and OT-MDR papers' and official codes' augmentation), then
    normalised per channel with the data set's mean and std (``normalize=True``; the official
    OT-MDR ``data/cifar.py`` constants), then, with ``cutout > 0``, a ``cutout x cutout`` square is
    zeroed (davda54/sam uses 16). Validation, test and prediction batches are only normalised.
    :meth:`tensors` and ``dataset()`` stay raw images in ``[0, 1]`` (what a VAE or a latent cache
    reads); turn both off for a model that wants ``[0, 1]`` batches.

    Args:
        augment: random crop + horizontal flip of training batches.
        crop_padding: zero padding before the random crop (4 in the papers).
        cutout: side of the Cutout square, 0 for none.
        normalize: per-channel normalisation of every batch.
        (the rest as in :class:`TorchvisionImageDataModule`)
    """

    folder: str = ""
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        *,
        augment: bool = True,
        crop_padding: int = 4,
        cutout: int = 0,
        normalize: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir, download, **kwargs)
        self.augment = bool(augment)
        self.crop_padding = check_int("crop_padding", crop_padding, minimum=0)
        self.cutout = check_int("cutout", cutout, minimum=0)
        self.normalize = bool(normalize)
        self._fallback_generator = torch.Generator().manual_seed(self.seed)

    def expected_files(self) -> tuple[list[str], list[Path]]:
        return list(self.file_names), [self.data_dir / self.folder]

    file_names: tuple[str, ...] = ()

    def read_pools(self) -> dict[str, tuple[Tensor, Tensor | None]]:
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, self.torchvision_name)
        pools: dict[str, tuple[Tensor, Tensor | None]] = {}
        for split, train in (("train", True), ("test", False)):
            try:
                dataset: Any = dataset_class(root=str(self.data_dir), train=train, download=False)
            except RuntimeError as error:  # files present but failing torchvision's checksum
                raise FileNotFoundError(
                    f"{self.torchvision_name} files in {(self.data_dir / self.folder).resolve()} are corrupted or "
                    f"incomplete ({error}); delete the folder and pass download=True to fetch them again."
                ) from error
            x = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
            pools[split] = (x, torch.as_tensor(dataset.targets, dtype=torch.long))
        return pools

    # ----------------------------------------------------------------- the training recipe
    def _generator(self) -> torch.Generator:
        """Seeded by (seed, epoch, batch in epoch, rank): the same crops after a resume."""
        trainer = self.trainer
        if trainer is None:
            return self._fallback_generator
        loop = trainer.fit_loop
        batch = loop.epoch_loop.batch_progress.current.ready
        parts = (self.seed, trainer.current_epoch, batch, trainer.global_rank)
        return seeded_generator(None, *parts)

    def transform_batch(self, x: Tensor, training: bool) -> Tensor:
        """The recipe above on a float batch ``(N, 3, H, W)`` in ``[0, 1]``."""
        generator = self._generator() if training else None
        if training and self.augment:
            x = augment.random_flip(augment.random_crop(x, self.crop_padding, generator), generator)
        if self.normalize:
            x = augment.normalize(x, self.mean, self.std)
        if training and self.cutout:
            x = augment.cutout(x, self.cutout, generator)
        return x

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "x" in batch and (self.augment or self.normalize or self.cutout):
            training = self.trainer is not None and bool(self.trainer.training)
            batch = {**batch, "x": self.transform_batch(batch["x"], training)}
        return batch


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10: 32x32 colour images, ``x`` float ``(N, 3, 32, 32)``, ``y`` long (10 classes).

    50,000 training images (``val_fraction`` held out, ``num_samples`` drawn from the rest) and the
    10,000 test images. Files: torchvision's ``<data_dir>/cifar-10-batches-py/`` (``data_batch_1``
    .. ``data_batch_5``, ``test_batch``, ``batches.meta``), read with ``torchvision.datasets.CIFAR10``.
    Training batches are augmented and every batch normalised (see :class:`_CIFARDataModule`).
    """

    name = "cifar10"
    torchvision_name = "CIFAR10"
    folder = "cifar-10-batches-py"
    file_names = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
    class_names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    mean = (0.4914, 0.4822, 0.4465)  # official OT-MDR data/cifar.py
    std = (0.2471, 0.2435, 0.2616)


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100: 32x32 colour images, 100 classes (the OT-MDR paper's headline data set).

    50,000 training and 10,000 test images. Files: torchvision's ``<data_dir>/cifar-100-python/``
    (``train``, ``test``, ``meta``), read with ``torchvision.datasets.CIFAR100`` (fine labels).
    Training batches are augmented and every batch normalised (see :class:`_CIFARDataModule`).
    """

    name = "cifar100"
    torchvision_name = "CIFAR100"
    folder = "cifar-100-python"
    file_names = ("train", "test", "meta")
    mean = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)  # official OT-MDR data/cifar.py
    std = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)
