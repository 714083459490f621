"""Per-rank sharding: every sample once per epoch, global batches independent of world size."""

from __future__ import annotations

import itertools

import pytest
import torch

from geomed_mim.data.sharding import (
    ResumableDataLoader,
    SeededBatchDataset,
    ShardedBatchSampler,
    per_rank_batch_size,
    sharded_loader,
)


class Numbers(torch.utils.data.Dataset):
    """Item i: its index and a random number drawn from torch's global RNG (an 'augmentation')."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "noise": torch.rand(())}


def epoch_shares(n, per_rank, world, epoch, drop_last=False):
    """[rank][step] → list of indices."""
    out = []
    for rank in range(world):
        sampler = ShardedBatchSampler(
            Numbers(n), per_rank, world, rank, seed=3, drop_last=drop_last
        )
        sampler.set_epoch(epoch)
        steps = [indices for _, indices in sampler]
        assert len(steps) == len(sampler)
        out.append(steps)
    return out


@pytest.mark.parametrize(
    ("n", "per_rank", "world"),
    [(64, 8, 2), (67, 8, 2), (65, 8, 2), (100, 3, 4), (10, 4, 3), (5, 2, 4), (7, 1, 7)],
)
def test_every_sample_exactly_once_per_epoch_and_equal_step_counts(n, per_rank, world):
    for epoch in (0, 1):
        shares = epoch_shares(n, per_rank, world, epoch)
        assert len({len(steps) for steps in shares}) == 1  # same number of steps on every rank
        assert all(len(batch) >= 1 for steps in shares for batch in steps)
        seen = [i for steps in shares for batch in steps for i in batch]
        assert sorted(seen) == list(range(n))  # no duplicate, nothing lost


def test_drop_last_gives_equal_batches_and_no_duplicates():
    shares = epoch_shares(67, 8, 2, 0, drop_last=True)
    assert all(len(batch) == 8 for steps in shares for batch in steps)
    seen = [i for steps in shares for batch in steps for i in batch]
    assert len(seen) == len(set(seen)) == 64


def test_global_batches_do_not_depend_on_world_size():
    one = epoch_shares(96, 16, 1, epoch=2)[0]
    for world in (2, 4):
        shares = epoch_shares(96, 16 // world, world, epoch=2)
        for step, batch in enumerate(one):
            # rank r's share is the r-th contiguous slice of the same global batch
            assert list(itertools.chain(*(s[step] for s in shares))) == batch


def test_epochs_are_reshuffled():
    first = epoch_shares(64, 8, 2, 0)[0][0]
    second = epoch_shares(64, 8, 2, 1)[0][0]
    assert first != second


def test_fewer_samples_than_ranks_is_an_error():
    with pytest.raises(ValueError, match="at least one sample"):
        ShardedBatchSampler(Numbers(3), 1, 4, 0)


def test_per_rank_batch_from_global_batch():
    assert per_rank_batch_size(64, None, 4) == 64
    assert per_rank_batch_size(64, 256, 4, accumulate=2) == 32
    with pytest.raises(ValueError, match="not a multiple"):
        per_rank_batch_size(64, 100, 8)


def test_seeded_augmentation_depends_on_sample_and_epoch_only():
    data = SeededBatchDataset(Numbers(10), seed=1)
    torch.manual_seed(0)
    a = data[(0, [3, 5])]
    torch.manual_seed(123)  # global RNG state does not matter
    b = data[(0, [5, 3])]
    assert a["noise"][0] == b["noise"][1]
    assert a["noise"][1] == b["noise"][0]
    assert data[(1, [3])]["noise"][0] != a["noise"][0]  # a new draw each epoch
    before = torch.get_rng_state()
    data[(0, [1, 2])]
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is left as it was


def test_resumable_loader_state_skips_consumed_batches():
    consumed = {"n": 0}
    loader = sharded_loader(Numbers(40), 4, trainer=None, seed=0)
    assert isinstance(loader, ResumableDataLoader)
    loader.consumed_batches = lambda: consumed["n"]
    loader.sampler.set_epoch(1)
    full = [b["index"].tolist() for b in loader]
    consumed["n"] = 3
    state = loader.state_dict()
    assert state == {"epoch": 1, "batch": 3}
    fresh = sharded_loader(Numbers(40), 4, trainer=None, seed=0)
    fresh.load_state_dict(state)
    rest = [b["index"].tolist() for b in fresh]
    assert rest == full[3:]
    assert [b["index"].tolist() for b in fresh] == full  # the skip applies once
    consumed["n"] = len(loader)  # saved at the end of the epoch: the next epoch starts afresh
    assert loader.state_dict() == {"epoch": 2, "batch": 0}


def test_a_global_step_gets_the_same_tiles_and_crops_on_one_or_two_ranks(demo_store):
    """The store loader under the sharded sampler: rank shares of a global batch, put together,
    are the one-rank batch, crops and flips included (per-sample seeds)."""
    from torch.utils.data import DataLoader

    from geomed_mim.data.rs import RSTileDataset

    ds = RSTileDataset(demo_store, [0.1] * 13, [0.05] * 13, split=None, crop_size=24)
    one = sharded_loader(ds, 8, trainer=None, seed=5)
    one.sampler.set_epoch(2)
    ranks = []
    for rank in (0, 1):
        sampler = ShardedBatchSampler(ds, 4, 2, rank, seed=5)
        sampler.set_epoch(2)
        ranks.append(DataLoader(SeededBatchDataset(ds, seed=5), sampler=sampler, batch_size=None))
    steps = 0
    for whole, share0, share1 in zip(one, *ranks, strict=True):
        for key in ("index", "crop", "flip", "tile"):
            assert torch.equal(whole[key], torch.cat([share0[key], share1[key]]))
        images = torch.cat([ds.transform(share0)["image"], ds.transform(share1)["image"]])
        assert torch.equal(ds.transform(whole)["image"], images)
        steps += 1
    assert steps == len(one) > 1


# -- several tile sizes: each batch holds one size ----------------------------------------------


def grouped_shares(groups, per_rank, world, epoch, weights=None):
    """[rank][step] → list of indices, for a store whose samples fall into ``groups``."""
    out = []
    for rank in range(world):
        sampler = ShardedBatchSampler(
            Numbers(len(groups)), per_rank, world, rank, seed=5, groups=groups,
            group_weights=weights,
        )  # fmt: skip
        sampler.set_epoch(epoch)
        steps = [indices for _, indices in sampler]
        assert len(steps) == len(sampler)
        out.append(steps)
    return out


def test_grouped_batches_hold_one_size_and_every_sample_once_without_weights():
    import numpy as np

    # short last batches of 3 and 2 samples: wide enough to be shared by two ranks, so the
    # batches are the same for one and two ranks (a 1-sample tail is merged on two)
    groups = np.array([64] * 36 + [128] * 11 + [256] * 6)
    for world in (1, 2):
        shares = grouped_shares(groups, 4, world, epoch=1)
        for step in range(len(shares[0])):
            batch = [i for rank in shares for i in rank[step]]
            assert len({int(groups[i]) for i in batch}) == 1  # one size per global batch
        seen = sorted(i for rank in shares for step in rank for i in step)
        assert seen == list(range(len(groups)))
    # the same global batches whatever the world size
    one = [sorted(s) for s in grouped_shares(groups, 4, 1, epoch=1)[0]]
    two = grouped_shares(groups, 2, 2, epoch=1)
    assert one == [sorted(a + b) for a, b in zip(*two, strict=True)]


def test_size_weights_set_the_share_of_batches_per_size():
    import numpy as np

    groups = np.array([64] * 400 + [256] * 400)
    counts = {64: 0, 256: 0}
    for epoch in range(20):
        for batch in grouped_shares(groups, 8, 1, epoch, weights={64: 1.0, 256: 3.0})[0]:
            counts[int(groups[batch[0]])] += 1
    share = counts[256] / sum(counts.values())
    assert 0.7 < share < 0.8  # 3 : 1 asked for; 2,000 batches drawn
    only = grouped_shares(groups, 8, 1, 0, weights={256: 1.0})[0]
    assert {int(groups[b[0]]) for b in only} == {256}  # a size left out is not drawn


def test_data_module_batches_one_size_of_a_native_size_store(tmp_path, capsys):
    """A store of crops kept at 16 and 32 px: batches hold one size, images come out at the
    training crop size; a missing crop size is one line naming the flag."""
    from geomed_mim.build_dataset import main
    from geomed_mim.data.datamodules import RSDataModule
    from geomed_mim.data.transforms import TILE_KEY

    store = tmp_path / "store"
    assert main(["--output", str(store), "--tile-size", "16", "32", "--stride", "null",
                 "--workers", "1", "--val-fraction", "0"]) == 0  # fmt: skip
    with pytest.raises(ValueError, match="crop_size"):
        RSDataModule(str(store), batch_size=4, num_workers=0)
    dm = RSDataModule(str(store), batch_size=4, num_workers=0, crop_size=24,
                      size_weights={16: 1, 32: 1})  # fmt: skip
    dm.setup("fit")
    shapes = set()
    for batch in dm.train_dataloader():
        shapes.add(tuple(batch[TILE_KEY].shape[-2:]))  # one stored size per batch
        images = dm.on_after_batch_transfer(batch, 0)["image"]
        assert images.shape[-2:] == (24, 24)
    assert shapes == {(16, 16), (32, 32)}
    wrong = RSDataModule(str(store), batch_size=4, num_workers=0, crop_size=24,
                         size_weights={48: 1})  # fmt: skip
    wrong.setup("fit")
    with pytest.raises(ValueError, match="size_weights"):
        wrong.train_dataloader()


def test_size_weights_of_a_one_size_store_bound_size_classes(tmp_path):
    """Random crops of 16-64 px stored at 16 px: ``{16: 0, 32: 1}`` draws only crops of 32 px
    and more (a crop counts toward the largest key not above its native size)."""
    import numpy as np

    from geomed_mim.build_dataset import main
    from geomed_mim.data.datamodules import RSDataModule

    store = tmp_path / "store"
    assert main(["--output", str(store), "--slicing", "random", "--tile-size", "16", "64",
                 "--crops-per-scene", "20", "--store-size", "16", "--stride", "null",
                 "--workers", "1", "--val-fraction", "0"]) == 0  # fmt: skip
    dm = RSDataModule(str(store), batch_size=4, num_workers=0, size_weights={16: 0, 32: 1})
    dm.setup("fit")
    native = dm.train_dataset.index.columns["native_size"]
    groups = dm.batch_groups(dm.train_dataset, shuffle=True)["groups"]
    np.testing.assert_array_equal(groups, np.where(native >= 32, 32, 16))
    loader = dm.train_dataloader()
    drawn = [i for _, batch in loader.sampler for i in batch]
    assert drawn
    assert (native[drawn] >= 32).all()
    assert not RSDataModule(str(store), batch_size=4, num_workers=0).batch_groups(
        dm.train_dataset, shuffle=True
    )  # one stored size, no weights: batches mix sizes freely
