"""LatentDataModule: the latents are the VAE's codes of the image splits, the on-disk cache is hit
on a second run and missed exactly when what the latents depend on changes, checkpoint paths and
YAML work, encoding happens on rank 0 only under DDP, and bad input gets clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lightning_wass import DigitsDataModule, LatentDataModule, TensorDataModule, VAE, W2GradientFlow

LATENT_DIM = 3
SPLITS = ("train", "val", "test")


def make_vae(seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(data_shape=(1, 8, 8), latent_dim=LATENT_DIM, hidden=(32,))


def count_embeds(vae: VAE) -> list[int]:
    """Wrap ``vae.embed`` to record the batch size of every call."""
    calls: list[int] = []
    original = vae.embed

    def counting(x):
        calls.append(len(x))
        return original(x)

    vae.embed = counting  # type: ignore[method-assign]
    return calls


def quiet_trainer(**kwargs) -> pl.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def test_latents_are_the_vae_codes_of_every_split(tmp_path):
    vae = make_vae()
    images = DigitsDataModule(batch_size=16)
    latents = LatentDataModule(images, vae, cache_dir=str(tmp_path), batch_size=50, return_index=True)
    latents.prepare_data()
    latents.setup("fit")
    vae.eval()
    for split in SPLITS:
        z, y = latents.tensors(split)
        x, labels = images.tensors(split)
        with torch.no_grad():
            assert torch.allclose(z, vae.embed(x), atol=1e-6)
        assert torch.equal(y, labels)
    assert latents.data_shape == (LATENT_DIM,) and latents.latent_dim == LATENT_DIM
    assert latents.num_classes == 10 and latents.train_size == images.train_size
    batch = next(iter(latents.train_dataloader()))
    assert batch["x"].shape == (50, LATENT_DIM)
    z_train, _ = latents.tensors("train")
    assert torch.equal(batch["x"], z_train[batch["index"]])
    assert torch.equal(latents.image_tensors("train")[0][batch["index"]], images.tensors("train")[0][batch["index"]])
    # decode is the VAE's decoder, on z's device, and leaves the VAE's mode alone
    vae.train()
    decoded = latents.decode(z_train[:4])
    assert vae.training
    with torch.no_grad():
        assert torch.allclose(decoded, vae.decode(z_train[:4]))
    assert decoded.shape == (4, 1, 8, 8)


def test_second_run_is_a_cache_hit(tmp_path):
    vae = make_vae()
    calls = count_embeds(vae)
    first = LatentDataModule(DigitsDataModule(), vae, cache_dir=str(tmp_path))
    first.prepare_data()
    first.setup()
    assert first.encoded_splits == list(SPLITS)
    n_images = sum(len(DigitsDataModule().tensors(s)[0]) for s in SPLITS)
    assert sum(calls) == n_images  # every image encoded exactly once
    assert len(list(tmp_path.glob("digits-*.pt"))) == 3

    calls.clear()
    second = LatentDataModule(DigitsDataModule(), vae, cache_dir=str(tmp_path))
    second.prepare_data()
    second.setup()
    assert calls == [] and second.encoded_splits == []
    for split in SPLITS:
        assert torch.equal(second.tensors(split)[0], first.tensors(split)[0])

    # setup() alone (no prepare_data, e.g. outside a Trainer) also reads the cache
    third = LatentDataModule(DigitsDataModule(), vae, cache_dir=str(tmp_path))
    third.setup()
    assert calls == [] and third.encoded_splits == []


def test_cache_key_follows_encoder_weights_and_subset_not_decoder(tmp_path):
    vae = make_vae()
    LatentDataModule(DigitsDataModule(), vae, cache_dir=str(tmp_path)).prepare_data()

    with torch.no_grad():  # the decoder does not change the codes: still a hit
        next(vae.decoder.parameters()).add_(1.0)
    hit = LatentDataModule(DigitsDataModule(), vae, cache_dir=str(tmp_path))
    hit.prepare_data()
    assert hit.encoded_splits == []

    with torch.no_grad():  # new encoder weights: every split is encoded anew, with the new codes
        next(vae.encoder.parameters()).mul_(0.5)
    miss = LatentDataModule(DigitsDataModule(), vae, cache_dir=str(tmp_path))
    miss.prepare_data()
    assert miss.encoded_splits == list(SPLITS)
    x_val, _ = DigitsDataModule().tensors("val")
    with torch.no_grad():
        assert torch.allclose(miss.tensors("val")[0], vae.eval().embed(x_val), atol=1e-6)

    subset = LatentDataModule(DigitsDataModule(num_samples=500), vae, cache_dir=str(tmp_path))
    subset.prepare_data()
    assert "train" in subset.encoded_splits and subset.train_size == 500

    # same name and shapes, different images: the image bytes are in the key
    g = torch.Generator().manual_seed(0)
    a = LatentDataModule(TensorDataModule(torch.rand(40, 1, 8, 8, generator=g)), vae, cache_dir=str(tmp_path))
    b = LatentDataModule(TensorDataModule(torch.rand(40, 1, 8, 8, generator=g)), vae, cache_dir=str(tmp_path))
    a.prepare_data()
    b.prepare_data()
    assert a.encoded_splits == b.encoded_splits == list(SPLITS)
    assert not torch.equal(a.tensors("train")[0], b.tensors("train")[0])


def _checkpoint(tmp_path: Path) -> tuple[VAE, Path]:
    vae = make_vae()
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(vae, DigitsDataModule(batch_size=64))
    path = tmp_path / "vae.ckpt"
    trainer.save_checkpoint(path)
    return vae, path


def test_vae_from_checkpoint_path_and_yaml(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    vae, path = _checkpoint(tmp_path)
    latents = LatentDataModule(DigitsDataModule(), str(path), cache_dir=str(tmp_path / "cache"))
    x_test, _ = DigitsDataModule().tensors("test")
    with torch.no_grad():
        assert torch.allclose(latents.tensors("test")[0], vae.eval().embed(x_test), atol=1e-6)

    config = tmp_path / "latent.yaml"
    config.write_text(
        f"""
model:
  class_path: lightning_wass.modules.W2GradientFlow
  init_args: {{data_shape: [{LATENT_DIM}], eval_samples: 64}}
data:
  class_path: lightning_wass.datamodules.LatentDataModule
  init_args:
    images:
      class_path: lightning_wass.datamodules.DigitsDataModule
      init_args: {{num_samples: 300}}
    vae: {path}
    cache_dir: {tmp_path / "cache"}
    batch_size: 32
trainer: {{fast_dev_run: true, accelerator: cpu, logger: false, enable_progress_bar: false,
          default_root_dir: {tmp_path}}}
"""
    )
    cli = LightningCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True,
                       subclass_mode_data=True, args=["fit", "--config", str(config)])
    assert isinstance(cli.datamodule, LatentDataModule)
    assert cli.datamodule.train_size == 300 and cli.datamodule.data_shape == (LATENT_DIM,)

    # the VAE given by class_path instead of a checkpoint: built with its own arguments
    config.write_text(
        config.read_text().replace(
            f"vae: {path}", "vae: {class_path: lightning_wass.modules.VAE, init_args: {latent_dim: 5, hidden: [12]}}"
        )
    )
    cli = LightningCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True,
                       subclass_mode_data=True, run=False, args=["--config", str(config)])
    assert isinstance(cli.datamodule.vae, VAE) and cli.datamodule.vae.latent_dim == 5
    assert cli.datamodule.vae.encoder.net.in_features == 64 and cli.datamodule.vae.hidden == (12,)


class EmbedLoggingVAE(VAE):
    """Appends ``<pid> <batch size>`` to the file named by $LW_TEST_EMBED_LOG at every embed."""

    def embed(self, x):
        with open(os.environ["LW_TEST_EMBED_LOG"], "a") as log:
            log.write(f"{os.getpid()} {len(x)}\n")
        return super().embed(x)


@pytest.mark.ddp
def test_ddp_encodes_once_on_rank_zero(tmp_path, monkeypatch):
    log = tmp_path / "embeds.log"
    monkeypatch.setenv("LW_TEST_EMBED_LOG", str(log))
    torch.manual_seed(0)
    vae = EmbedLoggingVAE(data_shape=(1, 8, 8), latent_dim=LATENT_DIM, hidden=(16,))
    latents = LatentDataModule(DigitsDataModule(), vae, cache_dir=str(tmp_path / "cache"), batch_size=32,
                               encode_batch_size=4096)
    model = W2GradientFlow(data_shape=(LATENT_DIM,), eval_samples=64)  # latent codes are not in [0, 1]: no VAE
    trainer = quiet_trainer(devices=2, strategy="ddp_spawn", max_steps=2, limit_val_batches=1)
    trainer.fit(model, latents)
    lines = log.read_text().split()
    pids, sizes = lines[0::2], [int(s) for s in lines[1::2]]
    assert len(set(pids)) == 1 and str(os.getpid()) not in pids  # one spawned process encoded
    assert sorted(sizes) == sorted(len(DigitsDataModule().tensors(s)[0]) for s in SPLITS)
    # the parent now finds everything cached
    latents.setup()
    assert latents.encoded_splits == [] and len(log.read_text().split()) == len(lines)


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.ckpt"):
        LatentDataModule(DigitsDataModule(), str(tmp_path / "no_such.ckpt"))
    with pytest.raises(TypeError, match="vae must be"):
        LatentDataModule(DigitsDataModule(), torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="images must be"):
        LatentDataModule(torch.rand(10, 1, 8, 8), make_vae())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="encode_batch_size"):
        LatentDataModule(DigitsDataModule(), make_vae(), encode_batch_size=0)
    wrong = LatentDataModule(DigitsDataModule(), VAE(data_shape=(1, 28, 28)), cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"data_shape=\(1, 28, 28\).*\(1, 8, 8\)"):
        wrong.prepare_data()


def test_non_finite_codes_are_refused_before_caching(tmp_path):
    vae = make_vae()
    with torch.no_grad():
        next(p for p in vae.parameters() if p.dim() == 1).fill_(float("nan"))  # a NaN bias in the encoder
    latents = LatentDataModule(DigitsDataModule(), vae, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="latent codes of the .* split .*non-finite"):
        latents.prepare_data()
    assert not list(tmp_path.rglob("*.pt"))  # nothing cached
