"""Damaged or mismatched files give a ``ValueError`` naming the path and what was expected (issue 12).

- checkpoints (:mod:`lightning_wass.checkpoints`): empty, truncated, flipped bytes, text, random
  bytes, a directory, a missing path, another module's checkpoint, a plain tensor or dict, through
  ``load_from_checkpoint`` and the CLI's ``--ckpt_path``; valid checkpoints of every module (and of
  subclasses, and checkpoints older than the class record) still load, weights intact;
- the latent cache: an unusable cache file is encoded again with a ``UserWarning`` naming it;
- atomic writes: an interrupted save leaves the previous file intact and no temporary file.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_wass import (
    VAE,
    WGAN,
    LatentDataModule,
    OTMDRClassifier,
    TensorDataModule,
    W1W2ProximalFlow,
    W2GradientFlow,
    WorstCaseGenerator,
)
from lightning_wass.checkpoints import (
    MODULE_KEY,
    CheckpointError,
    class_path,
    read_checkpoint,
    read_torch_file,
    save_atomically,
)
from lightning_wass.cli import build_cli
from trainers import quiet_trainer

SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------- tiny modules and data
def _images(n: int = 64) -> TensorDataModule:
    g = torch.Generator().manual_seed(0)
    return TensorDataModule(torch.rand(n, 1, 8, 8, generator=g), batch_size=32)


def _points(n: int = 128) -> TensorDataModule:
    g = torch.Generator().manual_seed(0)
    return TensorDataModule(torch.randn(n, 2, generator=g), batch_size=32)


def _regression() -> TensorDataModule:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g)
    return TensorDataModule(x, x.sum(1, keepdim=True), batch_size=32, return_index=True)


def _classification() -> TensorDataModule:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    return TensorDataModule(x, (x[:, 0] > 0).long(), batch_size=32)


def _vae() -> VAE:
    torch.manual_seed(0)
    return VAE(data_shape=(1, 8, 8), latent_dim=2, hidden=(16,))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


class SmallVAE(VAE):
    """A user's subclass with one extra argument and its own ``on_save_checkpoint`` (no ``super()``)."""

    def __init__(self, tag: str = "mine", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["small_vae"] = True


# builder, data, the extra arguments load_from_checkpoint needs (the nn.Module arguments it does not save)
MODULES: dict[str, tuple[Callable[[], pl.LightningModule], Callable[[], TensorDataModule], Callable[[], dict[str, Any]]]] = {
    "VAE": (_vae, _images, dict),
    "WGAN": (lambda: WGAN(data_shape=(2,)), _points, dict),
    "W2GradientFlow": (lambda: W2GradientFlow(data_shape=(2,), persistent_steps=1, potential_steps=1), _points, dict),
    "W1W2ProximalFlow": (lambda: W1W2ProximalFlow(data_shape=(2,), num_steps=2, n_critic=1), _points, dict),
    "WorstCaseGenerator": (
        lambda: WorstCaseGenerator(nn.Linear(2, 1), transport_hidden=(8,)),
        _regression,
        lambda: {"model": nn.Linear(2, 1)},
    ),
    "OTMDRClassifier": (lambda: OTMDRClassifier(_mlp(), num_classes=2), _classification, lambda: {"network": _mlp()}),
    "SmallVAE": (lambda: SmallVAE(data_shape=(1, 8, 8), latent_dim=2, hidden=(16,)), _images, dict),
}


def _fit_and_save(name: str, path: Path, steps: int = 2) -> pl.LightningModule:
    build, data, _ = MODULES[name]
    torch.manual_seed(0)
    module = build()
    trainer = quiet_trainer(max_steps=steps)
    trainer.fit(module, data())
    trainer.save_checkpoint(path)
    return module


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real checkpoint of a VAE and of a WGAN (2 training steps each)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    return {name: (_fit_and_save(name, folder / f"{name}.ckpt"), folder / f"{name}.ckpt")[1] for name in ("VAE", "WGAN")}


def _assert_same(a: Any, b: Any, where: str = "state_dict") -> None:
    """Tensors equal, dicts (a module's extra state) equal key by key, other values ``==``."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a.cpu(), b.cpu()), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}[{key!r}]")
    else:
        assert a == b, where


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    _assert_same(dict(a.state_dict()), dict(b.state_dict()))


# ----------------------------------------------------------------------------- damaged checkpoints
def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _random_bytes(n: int = 4096) -> bytes:
    data = bytearray(torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes())
    data[0] = 0x17  # neither a zip ("PK") nor a pickle (0x80) header
    return bytes(data)


def _flip_middle(data: bytes) -> bytes:
    middle = bytearray(data)
    mid = len(middle) // 2
    middle[mid : mid + 64] = bytes(b ^ 0xFF for b in middle[mid : mid + 64])
    return bytes(middle)


DAMAGED: dict[str, tuple[Callable[[Path, dict[str, Path]], Path], str]] = {
    "empty": (lambda d, s: _write(d / "empty.ckpt", b""), r"is empty \(0 bytes\)"),
    "truncated": (lambda d, s: _write(d / "cut.ckpt", s["VAE"].read_bytes()[: s["VAE"].stat().st_size // 2]), r"is truncated or damaged"),
    "end cut off": (lambda d, s: _write(d / "cut_end.ckpt", s["VAE"].read_bytes()[:-20]), r"is truncated or damaged"),
    "bytes flipped": (lambda d, s: _write(d / "flipped.ckpt", _flip_middle(s["VAE"].read_bytes())), r"is truncated or damaged \(member .* CRC"),
    "text": (lambda d, s: _write(d / "notes.ckpt", b"epoch 3, loss 0.12\n"), r"is not a PyTorch checkpoint \(it starts with text: 'epoch 3"),
    "random bytes": (lambda d, s: _write(d / "noise.ckpt", _random_bytes()), r"is not a PyTorch checkpoint \(its first bytes 17 "),
    "directory": (lambda d, s: (d / "folder.ckpt").mkdir() or d / "folder.ckpt", r"is a directory"),
    "missing": (lambda d, s: d / "no_such.ckpt", r"does not exist"),
    "WGAN checkpoint": (lambda d, s: s["WGAN"], r"holds a WGAN checkpoint \(lightning_wass\.modules\.wgan\.WGAN\), not a VAE"),
    "plain tensor": (
        lambda d, s: (torch.save(torch.zeros(3, 2), d / "tensor.pt"), d / "tensor.pt")[1],
        r"holding a Tensor of shape \(3, 2\), not a Lightning checkpoint \(no 'state_dict'\)",
    ),
    "dict without state_dict": (
        lambda d, s: (torch.save({"weights": torch.zeros(2), "epoch": 3}, d / "dict.pt"), d / "dict.pt")[1],
        r"holding a dict with keys \['epoch', 'weights'\], not a Lightning checkpoint",
    ),
    "bare state_dict": (
        lambda d, s: (torch.save(_vae().state_dict(), d / "sd.pt"), d / "sd.pt")[1],
        r"looks like a bare state_dict",
    ),
    "state_dict without Lightning": (
        lambda d, s: (torch.save({"state_dict": _vae().state_dict()}, d / "plain.pt"), d / "plain.pt")[1],
        r"no 'pytorch-lightning_version', so it was not written by Lightning",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_checkpoint_is_a_value_error_naming_path_and_expected(case: str, tmp_path: Path, saved: dict[str, Path]) -> None:
    make, pattern = DAMAGED[case]
    path = make(tmp_path, saved)
    with pytest.raises(ValueError, match=pattern) as caught:
        VAE.load_from_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message
    assert "VAE" in message  # the expected thing
    assert "weights_only=False" not in message  # torch's advice is wrong for these files
    with pytest.raises(CheckpointError, match=pattern):  # the helper itself says the same
        read_checkpoint(path, VAE)


def test_missing_checkpoint_is_also_a_file_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no_such.ckpt"):
        VAE.load_from_checkpoint(tmp_path / "no_such.ckpt")


def test_objects_weights_only_refuses_are_named_with_the_trust_hint(tmp_path: Path) -> None:
    path = tmp_path / "objects.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6.6", "module": nn.Linear(2, 2)}, path)
    with pytest.raises(ValueError, match=r"holds objects that weights_only loading refuses.*weights_only=False") as caught:
        VAE.load_from_checkpoint(path)
    assert str(path) in str(caught.value)


def test_the_classmethod_still_refuses_an_instance(saved: dict[str, Path]) -> None:
    with pytest.raises(TypeError, match="cannot be called on an instance"):
        _vae().load_from_checkpoint(saved["VAE"])


# ----------------------------------------------------------------------------- valid checkpoints load
@pytest.mark.parametrize("name", list(MODULES))
def test_checkpoint_of_every_module_records_its_class_and_loads(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.ckpt"
    module = _fit_and_save(name, path)
    stored = torch.load(path, weights_only=True)
    assert stored[MODULE_KEY] == class_path(type(module))
    assert read_checkpoint(path, type(module))["state_dict"].keys() == stored["state_dict"].keys()
    loaded = type(module).load_from_checkpoint(path, **MODULES[name][2]())
    assert type(loaded) is type(module)
    _assert_same_weights(loaded, module)


def test_subclass_override_of_on_save_checkpoint_still_records_the_class(tmp_path: Path) -> None:
    path = tmp_path / "small.ckpt"
    _fit_and_save("SmallVAE", path)
    stored = torch.load(path, weights_only=True)
    assert stored["small_vae"] is True  # the subclass's own hook ran
    assert stored[MODULE_KEY] == class_path(SmallVAE)


def test_checkpoints_load_across_a_subclass_and_its_parent(tmp_path: Path, saved: dict[str, Path]) -> None:
    small = _fit_and_save("SmallVAE", tmp_path / "small.ckpt")
    as_parent = VAE.load_from_checkpoint(tmp_path / "small.ckpt")  # Lightning drops the extra 'tag'
    assert type(as_parent) is VAE
    _assert_same_weights(as_parent, small)
    as_child = SmallVAE.load_from_checkpoint(saved["VAE"])
    assert type(as_child) is SmallVAE and as_child.hparams.tag == "mine"
    _assert_same_weights(as_child, VAE.load_from_checkpoint(saved["VAE"]))
    with pytest.raises(ValueError, match=r"holds a SmallVAE checkpoint .* not a WGAN"):
        WGAN.load_from_checkpoint(tmp_path / "small.ckpt")


def _without_class_record(source: Path, target: Path, **hparams: Any) -> Path:
    checkpoint = torch.load(source, weights_only=True)
    del checkpoint[MODULE_KEY]
    checkpoint["hyper_parameters"].update(hparams)
    torch.save(checkpoint, target)
    return target


def test_checkpoint_older_than_the_class_record_still_loads(tmp_path: Path, saved: dict[str, Path]) -> None:
    old = _without_class_record(saved["VAE"], tmp_path / "old_vae.ckpt")
    _assert_same_weights(VAE.load_from_checkpoint(old), VAE.load_from_checkpoint(saved["VAE"]))
    old_wgan = _without_class_record(saved["WGAN"], tmp_path / "old_wgan.ckpt")
    _assert_same_weights(WGAN.load_from_checkpoint(old_wgan), WGAN.load_from_checkpoint(saved["WGAN"]))


def test_old_checkpoint_of_another_module_is_told_apart_by_its_hyperparameters(tmp_path: Path, saved: dict[str, Path]) -> None:
    old_wgan = _without_class_record(saved["WGAN"], tmp_path / "old_wgan.ckpt")
    with pytest.raises(ValueError, match=r"not a VAE's: its hyperparameters \[.*'lipschitz'.*\] are not arguments of VAE") as caught:
        VAE.load_from_checkpoint(old_wgan)
    assert str(old_wgan) in str(caught.value)
    # LightningCLI's own record of the class is used when ours is missing
    cli_wgan = _without_class_record(saved["WGAN"], tmp_path / "cli_wgan.ckpt", _class_path="lightning_wass.modules.WGAN")
    with pytest.raises(ValueError, match=r"holds a WGAN checkpoint \(lightning_wass\.modules\.WGAN\), not a VAE"):
        VAE.load_from_checkpoint(cli_wgan)


# ----------------------------------------------------------------------------- the CLI's --ckpt_path
def _cli_fit(tmp_path: Path, ckpt_path: Path | None, max_steps: int = 3) -> Any:
    resume = [] if ckpt_path is None else [f"--ckpt_path={ckpt_path}"]
    return build_cli(
        [
            "fit",
            "--model=VAE",
            "--model.data_shape=[1, 8, 8]",
            "--model.latent_dim=2",
            "--model.hidden=[16]",
            "--data=DigitsDataModule",
            "--data.num_samples=200",
            "--data.batch_size=32",
            f"--trainer.max_steps={max_steps}",
            "--trainer.accelerator=cpu",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.limit_val_batches=0",
            f"--trainer.default_root_dir={tmp_path}",
            *resume,
        ]
    )


@pytest.mark.parametrize("case", ["empty", "truncated", "text", "WGAN checkpoint"])
def test_cli_ckpt_path_is_checked_before_training(case: str, tmp_path: Path, saved: dict[str, Path]) -> None:
    make, pattern = DAMAGED[case]
    path = make(tmp_path, saved)
    with pytest.raises(ValueError, match=pattern) as caught:
        _cli_fit(tmp_path, path)
    assert str(path) in str(caught.value)


def test_cli_resumes_from_a_good_checkpoint(tmp_path: Path) -> None:
    first = _cli_fit(tmp_path, None, max_steps=2)
    path = tmp_path / "cli.ckpt"
    first.trainer.save_checkpoint(path)
    assert torch.load(path, weights_only=True)[MODULE_KEY] == class_path(VAE)
    resumed = _cli_fit(tmp_path, path, max_steps=3)
    assert resumed.trainer.global_step == 3  # 2 steps in the checkpoint + 1 more
    assert resumed.model.hparams.latent_dim == 2


# ----------------------------------------------------------------------------- the latent cache
def _latents(cache: Path, vae: VAE) -> LatentDataModule:
    return LatentDataModule(_images(40), vae, cache_dir=str(cache))


def _cache_file(module: LatentDataModule, split: str) -> Path:
    path = module.cache_path(split)
    assert path.is_file()
    return path


CACHE_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "is truncated or damaged"),
    "empty": (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
    "text": (lambda p: p.write_text("not a cache\n"), "is not a PyTorch checkpoint"),
    "wrong contents": (lambda p: torch.save({"codes": torch.zeros(3)}, p), "holds no 'z' and 'y' tensors"),
    "wrong length": (lambda p: torch.save({"z": torch.zeros(3, 2), "y": None}, p), r"holds codes of shape \(3, 2\)"),
}


@pytest.mark.parametrize("case", list(CACHE_DAMAGE))
def test_corrupt_latent_cache_is_encoded_again_with_a_warning(case: str, tmp_path: Path) -> None:
    vae = _vae()
    fresh = _latents(tmp_path, vae)
    fresh.setup("fit")
    path = _cache_file(fresh, "train")
    damage, reason = CACHE_DAMAGE[case]
    damage(path)

    again = _latents(tmp_path, vae)
    with pytest.warns(UserWarning, match=reason) as record:
        again.setup("fit")
    message = " ".join(str(w.message) for w in record if reason.split()[0] in str(w.message))
    assert str(path) in message and "encoding the train split again" in message
    assert again.encoded_splits == ["train"]  # only the damaged split
    for split in SPLITS:
        assert torch.equal(again.tensors(split)[0], fresh.tensors(split)[0])
    with torch.no_grad():
        assert torch.allclose(again.tensors("train")[0], vae.eval().embed(_images(40).tensors("train")[0]), atol=1e-6)

    hit = _latents(tmp_path, vae)  # the re-encoded file is good: a cache hit, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        hit.setup("fit")
    assert hit.encoded_splits == []


# ----------------------------------------------------------------------------- interrupted writes
def _partial_save(exception: BaseException) -> Callable[..., None]:
    """A ``torch.save`` that writes some bytes and then fails, as a full disk or Ctrl-C would."""

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if hasattr(f, "write"):
            f.write(b"PK\x03\x04 half a file")
            f.flush()
        else:
            Path(f).write_bytes(b"PK\x03\x04 half a file")
        raise exception

    return save


@pytest.mark.parametrize("exception", [KeyboardInterrupt(), OSError(28, "No space left on device")], ids=["ctrl-c", "disk-full"])
def test_interrupted_save_keeps_the_old_file_and_leaves_no_temporary(
    exception: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.pt"
    save_atomically({"x": torch.arange(5)}, path)
    good = path.read_bytes()
    monkeypatch.setattr(torch, "save", _partial_save(exception))
    with pytest.raises(type(exception)):
        save_atomically({"x": torch.zeros(5)}, path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    assert path.read_bytes() == good
    assert torch.equal(read_torch_file(path)["x"], torch.arange(5))


def test_atomic_save_writes_the_new_file_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.pt"
    save_atomically({"x": torch.arange(3)}, path)
    save_atomically({"x": torch.arange(4)}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(4))


def test_interrupted_latent_cache_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vae = _vae()
    first = _latents(tmp_path, vae)
    first.setup("fit")
    names = sorted(p.name for p in tmp_path.iterdir())
    path = _cache_file(first, "val")
    good = path.read_bytes()
    path.unlink()  # the val split must be encoded again, and that write is interrupted
    monkeypatch.setattr(torch, "save", _partial_save(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        _latents(tmp_path, vae).setup("fit")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(names) - {path.name})
    retry = _latents(tmp_path, vae)
    retry.setup("fit")
    assert retry.encoded_splits == ["val"]
    assert torch.equal(retry.tensors("val")[0], first.tensors("val")[0])
    assert torch.equal(torch.load(path, weights_only=True)["z"], torch.load(io.BytesIO(good), weights_only=True)["z"])
