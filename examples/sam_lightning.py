"""SAM in an ordinary LightningModule: the loss logged at theta only, a GSAM rho schedule tied to the
learning rate, and fp16 through SAMMixedPrecision where a GPU is present.

Run: python examples/sam_lightning.py  (about 15 s on a CPU core; scikit-learn's digits)

Lightning calls training_step once per forward-backward pass (twice per SAM step); pass 0 is at the
unperturbed parameters, so that is the one to log. On a GPU the script trains in fp16 with a
gradient scaler: Lightning's own precision="16-mixed" steps the optimizer without its closure,
SAMMixedPrecision hands it over and unscales every pass.
"""

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from lightning_wass import SAM, DigitsDataModule, ProportionalRho, SAMMixedPrecision
from lightning_wass.datamodules import unpack_batch


class DigitsClassifier(pl.LightningModule):
    def __init__(self, lr: float = 0.1, rho: float = 0.05, epochs: int = 5) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 10))

    def training_step(self, batch, batch_idx):
        data = unpack_batch(batch)  # the DataModule's batches are dicts {"x", "y"}
        x, y = data.x, data.y
        loss = F.cross_entropy(self.net(x), y)
        current = self.optimizers().optimizer.current_pass
        if current is None or current.index == 0:  # pass 0: the loss at theta; later passes are perturbed
            self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True)
            self.log("rho", self.optimizers().optimizer.param_groups[0]["rho"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        data = unpack_batch(batch)
        x, y = data.x, data.y
        self.log("val_acc", (self.net(x).argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        optimizer = SAM(self.parameters(), torch.optim.SGD, rho=self.hparams.rho, lr=self.hparams.lr, momentum=0.9)
        steps = self.trainer.estimated_stepping_batches
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        rho = ProportionalRho(optimizer, rho_max=self.hparams.rho, rho_min=self.hparams.rho / 5)  # GSAM's rho_t
        return [optimizer], [{"scheduler": cosine, "interval": "step"}, {"scheduler": rho, "interval": "step"}]


if __name__ == "__main__":
    gpu = torch.cuda.is_available()
    plugins = [SAMMixedPrecision("16-mixed", "cuda")] if gpu else []
    trainer = pl.Trainer(max_epochs=5, accelerator="gpu" if gpu else "cpu", devices=1, plugins=plugins,
                         logger=False, enable_checkpointing=False)
    model = DigitsClassifier()
    trainer.fit(model, DigitsDataModule(batch_size=64))
    print({k: round(float(v), 4) for k, v in trainer.callback_metrics.items()})
