"""CIFAR-10 / CIFAR-100: files in the real formats (written here), the papers' augmentation checked
against torchvision's transforms, normalisation, and what the Trainer's batches look like."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from lightning_wass import CIFAR10DataModule, CIFAR100DataModule
from lightning_wass.datamodules import augment


def write_fake_cifar100(root: Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Files in CIFAR-100's python format: pickled dicts with 'data' (rows of 3072 bytes, R, G, B
    planes), 'fine_labels' and 'coarse_labels'; 'meta' with the label names."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    arrays = {}
    for name, n in (("train", n_train), ("test", n_test)):
        rows = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(v) for v in np.arange(n) % 100]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows, "fine_labels": fine, "coarse_labels": [v // 5 for v in fine]}, f)
        arrays[name], arrays[name + "_labels"] = rows, np.array(fine)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}, f)
    return arrays


@pytest.fixture
def no_checksums(monkeypatch):
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)


def test_cifar100_layout_pixels_and_fine_labels(tmp_path: Path, no_checksums) -> None:
    arrays = write_fake_cifar100(tmp_path, n_train=300, n_test=100)
    dm = CIFAR100DataModule(tmp_path, val_fraction=0.0)
    dm.setup()
    x, y = dm.tensors("test")
    assert x.shape == (100, 3, 32, 32) and dm.num_classes == 100
    expected = arrays["test"].reshape(100, 3, 32, 32)
    np.testing.assert_array_equal((x * 255).round().byte().numpy(), expected)
    assert y.tolist() == arrays["test_labels"].tolist()


def test_cifar100_missing_files_name_the_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"(?s)CIFAR100 files not found.*train, test, meta.*cifar-100-python.*download=True"):
        CIFAR100DataModule(tmp_path).setup()


def _padded(x: torch.Tensor, padding: int) -> torch.Tensor:
    return TF.pad(x, [padding])  # torchvision's zero padding, as RandomCrop(padding=4) uses


def test_random_crop_is_a_torchvision_crop_of_the_padded_image_at_an_offset_per_sample():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    out = augment.random_crop(x, 4, g)
    padded = _padded(x, 4)
    offsets = []
    for i in range(len(x)):
        found = [(t, l) for t in range(9) for l in range(9) if torch.equal(TF.crop(padded[i], t, l, 8, 8), out[i])]
        assert found, f"sample {i} is no crop of its padded image"
        offsets.append(found[0])
    assert len(set(offsets)) > 20  # offsets are drawn per sample, over the whole 9 x 9 range


def test_random_flip_mirrors_about_half_the_samples_like_torchvision():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(400, 3, 4, 4)
    out = augment.random_flip(x, g)
    flipped = torch.tensor([torch.equal(o, TF.horizontal_flip(i)) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert bool((flipped | kept).all())
    assert 0.4 < float(flipped.float().mean()) < 0.6


def test_cutout_zeroes_one_square_per_sample_clipped_at_the_border():
    g = torch.Generator().manual_seed(2)
    x = torch.ones(200, 3, 32, 32)
    out = augment.cutout(x, 16, g)
    zeros = (out == 0).all(1)  # (N, H, W): the same square in every channel
    for mask in zeros:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert int(mask.sum()) == len(rows) * len(cols)  # a rectangle
        assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16  # a 16-square, clipped by at most half
    assert int(zeros.sum(dim=(1, 2)).eq(256).sum()) > 50  # many squares lie fully inside


def test_normalize_equals_torchvision_normalize():
    x = torch.rand(5, 3, 8, 8)
    mean, std = CIFAR10DataModule.mean, CIFAR10DataModule.std
    torch.testing.assert_close(augment.normalize(x, mean, std), TF.normalize(x, list(mean), list(std)))


class FakeTrainer:
    """What the DataModule's hook reads of the Trainer."""

    def __init__(self, training: bool, epoch: int = 0, batch: int = 0) -> None:
        self.training = training
        self.current_epoch = epoch
        self.global_rank = 0

        class Progress:
            ready = batch

        class Loop:
            batch_progress = type("BP", (), {"current": Progress})()

        self.fit_loop = type("FL", (), {"epoch_loop": Loop})()


def test_training_batches_are_augmented_and_normalised_evaluation_batches_only_normalised(tmp_path: Path, no_checksums) -> None:
    write_fake_cifar100(tmp_path, n_train=200, n_test=100)
    dm = CIFAR100DataModule(tmp_path, val_fraction=0.0, batch_size=16, cutout=16)
    dm.setup()
    raw = dm.tensors("test")[0][:16]
    batch = {"x": raw.clone(), "y": torch.zeros(16, dtype=torch.long)}
    dm.trainer = FakeTrainer(training=False)
    evaluated = dm.on_after_batch_transfer(batch, 0)["x"]
    torch.testing.assert_close(evaluated, TF.normalize(raw, list(dm.mean), list(dm.std)))  # no augmentation
    dm.trainer = FakeTrainer(training=True, epoch=0, batch=3)
    trained = dm.on_after_batch_transfer(batch, 0)["x"]
    assert not torch.allclose(trained, evaluated)
    assert int((trained == 0).all(1).sum()) >= 16 * 64  # a Cutout square (at least a clipped 8 x 8) per image
    again = dm.on_after_batch_transfer(batch, 0)["x"]
    torch.testing.assert_close(trained, again)  # seeded by (seed, epoch, batch): the same after a resume
    dm.trainer = FakeTrainer(training=True, epoch=1, batch=3)
    assert not torch.allclose(dm.on_after_batch_transfer(batch, 0)["x"], trained)
    assert torch.equal(dm.tensors("test")[0][:16], raw)  # tensors() stay raw images in [0, 1]
    plain = CIFAR100DataModule(tmp_path, val_fraction=0.0, augment=False, normalize=False)
    plain.trainer = FakeTrainer(training=True)
    assert torch.equal(plain.on_after_batch_transfer(batch, 0)["x"], raw)


@pytest.mark.parametrize("kwargs, words", [(dict(crop_padding=-1), "crop_padding"), (dict(cutout=-4), "cutout")])
def test_bad_augmentation_arguments_are_refused(tmp_path: Path, kwargs, words) -> None:
    with pytest.raises(ValueError, match=words):
        CIFAR10DataModule(tmp_path, **kwargs)
