"""PreemptionCheckpoint in one process: a real signal, an atomic checkpoint, exit status 128+sig.

The 2-process SIGTERM → resume → same weights test is in test_distributed.py.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from geomed_mim.data.sharding import sharded_loader
from geomed_mim.tasks.checkpoint_io import AtomicCheckpointIO
from geomed_mim.tasks.preemption import PreemptionCheckpoint


class Points(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> dict:
        return {"x": torch.full((4,), float(i)), "index": i}


class Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch["x"]).pow(2).mean()

    def configure_optimizers(self):
        # as MIMPretrainTask: reading the step count makes Lightning build the train loader
        # before the checkpoint's loader state is applied (LoaderPosition hands it over)
        assert self.trainer.estimated_stepping_batches > 0
        return torch.optim.SGD(self.parameters(), lr=1e-3)

    def train_dataloader(self):
        return sharded_loader(Points(), 4, trainer=self.trainer, seed=0)


class SignalSelfAt(Callback):
    """Sends ``signum`` to this process at the start of optimizer step ``step`` (0-based)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def fit(tmp_path, callbacks, max_epochs=2, ckpt_path=None):
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        plugins=[AtomicCheckpointIO()],
        callbacks=[
            ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0),
            PreemptionCheckpoint(),
            *callbacks,
        ],
    )
    model = Tiny()
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer, model


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGUSR1, 138), (signal.SIGTERM, 143)])
def test_signal_saves_at_the_step_end_and_exits_with_128_plus_signal(tmp_path, signum, code):
    before = signal.getsignal(signum)
    with pytest.raises(SystemExit) as exc:
        fit(tmp_path, [SignalSelfAt(5, signum)])
    assert exc.value.code == code
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6  # the step that was running when the signal came finished
    # 8 batches per epoch: step 6 is batch 6 of epoch 0 -> resume at epoch 0, batch 6
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batch": 6}]
    assert not list((tmp_path / "ckpt").glob("*.tmp"))
    assert signal.getsignal(signum) == before  # handlers restored


def test_resume_after_signal_matches_uninterrupted_run(tmp_path):
    _, reference = fit(tmp_path / "ref", [])
    with pytest.raises(SystemExit):
        fit(tmp_path / "run", [SignalSelfAt(11, signal.SIGTERM)])  # epoch 1, batch 3
    ckpt = tmp_path / "run" / "ckpt" / "last.ckpt"
    trainer, resumed = fit(tmp_path / "run", [], ckpt_path=str(ckpt))
    assert trainer.global_step == 16
    # the resumed run's own last checkpoint replaced the signal's, not a last-v1.ckpt beside it
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt"]
    assert torch.load(ckpt, weights_only=True)["global_step"] == 16
    for a, b in zip(reference.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
