"""Batch buffers: reused only after the consumer released them, never while a batch is held;
in workers they live in shared memory, and every batch holds the samples it names."""

from __future__ import annotations

import numpy as np
import torch

from data_pipelines.store.read import LazyZarrArrays
from geomed_mim.data.buffers import BatchBuffers, release
from geomed_mim.data.datamodules import RSDataModule
from geomed_mim.data.rs import RSTileDataset
from geomed_mim.data.sharding import sharded_loader


def _stored(store, ds: RSTileDataset, rows) -> torch.Tensor:
    reader = LazyZarrArrays(store)
    return torch.stack([torch.from_numpy(reader.read(*ds.index.sample(int(i)))) for i in rows])


def test_a_buffer_is_reused_only_after_release() -> None:
    pool = BatchBuffers(slots=2)
    a, ticket_a = pool.acquire((4, 3), torch.uint16)
    b, _ = pool.acquire((4, 3), torch.uint16)
    c, _ = pool.acquire((4, 3), torch.uint16)  # both slots held: fresh memory
    assert len({a.data_ptr(), b.data_ptr(), c.data_ptr()}) == 3
    release({"buffer": torch.tensor([ticket_a])})
    again, ticket = pool.acquire((2, 3), torch.uint16)  # a smaller batch: a view of slot 0
    assert again.data_ptr() == a.data_ptr()
    assert again.shape == (2, 3)
    assert ticket[3] != ticket_a[3]  # a new use of the slot: an old release cannot free it
    release({"buffer": torch.tensor([ticket_a])})  # releasing the old use again changes nothing
    other, _ = pool.acquire((4, 3), torch.uint16)
    assert other.data_ptr() not in {a.data_ptr(), b.data_ptr()}
    wider, _ = BatchBuffers(slots=1).acquire((2, 2), torch.float32)
    assert wider.dtype == torch.float32


def test_released_batches_share_buffers_and_hold_the_right_tiles(demo_store) -> None:
    ds = RSTileDataset(demo_store, [0.0] * 13, [1.0] * 13, split=None, buffer_slots=1)
    first = ds.load_batch([0, 1, 2], [0, 1, 2])
    held = ds.load_batch([3, 4], [3, 4])  # slot busy: fresh memory
    assert held["tile"].data_ptr() != first["tile"].data_ptr()
    release(first)
    second = ds.load_batch([5, 6, 7], [5, 6, 7])  # reuses first's buffer
    assert second["tile"].data_ptr() == first["tile"].data_ptr()
    assert torch.equal(second["tile"], _stored(demo_store, ds, [5, 6, 7]))
    assert torch.equal(held["tile"], _stored(demo_store, ds, [3, 4]))  # untouched


def test_worker_batches_are_correct_whether_released_or_held(demo_store) -> None:
    ds = RSTileDataset(demo_store, [0.0] * 13, [1.0] * 13, split=None, buffer_slots=2)
    loader = sharded_loader(ds, 8, num_workers=2, persistent_workers=True, seed=3)
    for batch in loader:  # released as soon as read, as the data module does
        assert batch["tile"].is_shared()
        assert torch.equal(batch["tile"], _stored(demo_store, ds, batch["index"]))
        release(batch)
    loader.sampler.set_epoch(1)
    kept = list(loader)  # never released: no buffer may be rewritten under them
    assert len(kept) == len(loader)
    for batch in kept:
        assert torch.equal(batch["tile"], _stored(demo_store, ds, batch["index"]))


def test_the_data_module_hook_releases_and_makes_images(demo_store) -> None:
    dm = RSDataModule(str(demo_store), batch_size=4, num_workers=0, crop_size=16)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    images = dm.on_after_batch_transfer(batch, 0)
    assert set(images) == {"image", "index"}
    assert images["image"].shape == (4, 13, 16, 16)
    token, row, slot, generation = batch["buffer"][0].tolist()
    pool = dm.train_dataset.tile_buffers
    assert token == pool.token
    assert pool.released[row, slot] == generation
    assert np.isfinite(images["image"].numpy()).all()
