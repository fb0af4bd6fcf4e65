"""Demo part "vae": runs quickly, writes its figures, checkpoint and TensorBoard logs, and the
report's figures are the ones a fresh evaluation of the saved VAE gives."""

from __future__ import annotations

import re

import pytest
import torch

from lightning_wass import DigitsDataModule, VAE
from lightning_wass.demo import run_demo
from lightning_wass.demo.context import DemoContext
from lightning_wass.demo.vae import checkpoint_path, pca_reconstruction_mse

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_vae_demo_part_writes_figures_and_honest_report(tmp_path):
    sections = run_demo(out=tmp_path, parts=["vae"], quick=True)
    (section,) = sections
    assert len(section.figures) == 3
    for figure in section.figures:
        assert figure.parent == tmp_path / "figures"
        assert figure.read_bytes()[:8] == PNG_MAGIC
    assert list((tmp_path / "tensorboard" / "vae").rglob("events.out.tfevents.*"))  # one version_<k> per run
    report = (tmp_path / "report.md").read_text()
    for figure in section.figures:
        assert f"figures/{figure.name}" in report

    # the report's table, recomputed independently from the saved VAE on the same test split
    rows = dict(re.findall(r"^\| (.+?) \| ([0-9.]+) \|$", report, flags=re.M))
    vae_mse = float(rows["VAE `decode(embed(x))`"])
    mean_mse = float(rows["the training mean image"])
    pca_mse = float(rows["best linear code of the same size (PCA, 8 components)"])
    data = DigitsDataModule(seed=0)
    x_train, _ = data.tensors("train")
    x_test, _ = data.tensors("test")
    vae = VAE.load_from_checkpoint(checkpoint_path(DemoContext(out_dir=tmp_path))).eval()
    with torch.no_grad():
        expected = float((vae(x_test) - x_test).pow(2).mean())
    assert vae_mse == pytest.approx(expected, abs=6e-5)
    assert mean_mse == pytest.approx(float((x_train.mean(0, keepdim=True) - x_test).pow(2).mean()), abs=6e-5)
    # PCA-8 by scikit-learn, a different implementation from the demo's SVD
    from sklearn.decomposition import PCA

    pca = PCA(8).fit(x_train.flatten(1).numpy())
    recon = torch.as_tensor(pca.inverse_transform(pca.transform(x_test.flatten(1).numpy())))
    assert pca_mse == pytest.approx(float((recon - x_test.flatten(1)).pow(2).mean()), abs=6e-5)
    assert pca_reconstruction_mse(x_train, x_test, 8) == pytest.approx(pca_mse, abs=6e-5)
    assert any("test reconstruction MSE/pixel" in line for line in section.summary)
