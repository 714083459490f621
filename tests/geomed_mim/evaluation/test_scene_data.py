"""Scene data: the fixture is EuroSAT's layout as torchgeo itself reads it, label fractions are
stratified seeded draws of the training split, and a pretrained encoder gets the dataset's
bands matched by name (channel by channel) and normalised by its recorded statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchgeo.datasets import EuroSAT

from geomed_mim.evaluation import scene_data as sd
from geomed_mim.evaluation.scene_protocol import SceneProtocol, build_encoder, open_splits
from geomed_mim.models.weights import read_encoder_source
from tests.geomed_mim.evaluation.eurosat_fixture import SPLIT_SIZES, TORCHGEO_BANDS, write_eurosat
from tests.geomed_mim.test_export import S2_BANDS, s2_checkpoint


@pytest.fixture(scope="module")
def eurosat(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("eurosat")
    return root, write_eurosat(root)


def test_torchgeo_eurosat_reads_the_fixture(eurosat):
    root, splits = eurosat
    for split, items in splits.items():
        ds = EuroSAT(root, split=split, download=False)
        assert len(ds) == len(items) == 3 * SPLIT_SIZES[split]
        assert ds.classes == ["Forest", "Pasture", "Residential"]
        sample = ds[0]
        assert sample["image"].shape == (13, 64, 64)
        assert sorted(ds.targets) == sorted(k for _, k in items)
    assert tuple(EuroSAT.all_band_names) == TORCHGEO_BANDS


def test_fractions_are_stratified_seeded_draws():
    labels = np.repeat([0, 1, 2], [50, 30, 4])
    a, b = sd.draw_fraction(labels, 0.1, 0), sd.draw_fraction(labels, 0.1, 1)
    assert np.bincount(labels[a]).tolist() == [5, 3, 1]  # at least one of every class
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, sd.draw_fraction(labels, 0.1, 0))
    np.testing.assert_array_equal(sd.draw_fraction(labels, 1.0, 3), np.arange(84))


def test_band_names_match_across_spellings():
    assert sd.same_band("B08A", "B8A")
    assert sd.same_band("b01", "B1")
    assert not sd.same_band("B08", "B8A")
    recorded = {"bands": ["B8A", "B02"], "mean": [0.3, 0.1], "std": [0.2, 0.05]}
    fallback = (np.array([9.0, 9.0, 9.0]), np.array([8.0, 8.0, 8.0]))
    mean, std, missing = sd.recorded_statistics(["B02", "B03", "B08A"], recorded, fallback)
    np.testing.assert_allclose(mean, [0.1, 9.0, 0.3])
    np.testing.assert_allclose(std, [0.05, 8.0, 0.2])
    assert missing == ["B03"]


def test_a_pretrained_encoder_gets_the_dataset_bands_by_name(eurosat, tmp_path):
    root, _ = eurosat
    ckpt, _ = s2_checkpoint(tmp_path)  # 13 bands in the profile's order (B8A after B08)
    source = read_encoder_source(ckpt)
    p = SceneProtocol(data=sd.SceneData(root=str(root), batch_size=8))
    splits = open_splits(p)
    assert splits.bands == list(TORCHGEO_BANDS) != list(S2_BANDS)  # B8A last in torchgeo's
    enc, mean, std = build_encoder(p, str(ckpt), splits, 0, print)
    theirs = source.state["patch_embed.proj.weight"]
    ours = enc.patch_embed.proj.weight
    for j, band in enumerate(splits.bands):
        i = S2_BANDS.index(band)
        torch.testing.assert_close(ours[:, j], theirs[:, i])
        assert mean[j] == source.config["mean"][i]
        assert std[j] == source.config["std"][i]
    assert enc.img_size == (64, 64)  # the dataset's images, not the recorded 32


def test_scratch_is_normalised_by_the_training_split(eurosat):
    root, _ = eurosat
    p = SceneProtocol(data=sd.SceneData(root=str(root), batch_size=5))
    splits = open_splits(p)
    _, mean, std = build_encoder(p, "scratch", splits, 0, print)
    images = torch.stack([splits.datasets["train"][i]["image"] for i in range(12)]).double()
    x = images * 1e-4  # DN → reflectance
    np.testing.assert_allclose(mean, x.mean(dim=(0, 2, 3)).numpy(), rtol=1e-9)
    np.testing.assert_allclose(std, x.std(dim=(0, 2, 3), correction=0).numpy(), rtol=1e-6)
