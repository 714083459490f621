"""Reading pretrained encoder weights back: checkpoints and exports give the same encoder, block
numbers are read from every export version, MONAI keys round-trip."""

from __future__ import annotations

import json

import pytest
import torch

from geomed_mim.export import export_encoder
from geomed_mim.models.weights import (
    CONFIG_NAME,
    from_monai_state_dict,
    load_encoder,
    read_encoder_source,
    recorded_block_numbers,
    to_monai_state_dict,
)
from geomed_mim.tasks.segmentation import SegmentationTask
from tests.geomed_mim.training import TINY_DECODER, model_checkpoint

KWARGS = {"in_chans": 3, "img_size": 16, "patch_size": 4, "depth": 4, **TINY_DECODER}
BANDS = ["B02", "B03", "B04"]


@pytest.fixture
def checkpoint(tmp_path):
    """A pretraining checkpoint (metadata + ``model.`` weights) recording blocks 2 and 3."""
    return model_checkpoint(tmp_path / "pre.ckpt", "mae_vit_tiny_patch16", KWARGS, BANDS, [2, 3])


def test_recorded_block_numbers_of_every_config_version():
    assert recorded_block_numbers({"intermediate_blocks": [4, 7, 10]}) == [4, 7, 10]  # older
    both = {"intermediate_blocks": [4, 7, 10], "intermediate_indices": [3, 6, 9]}
    assert recorded_block_numbers(both) == [4, 7, 10]
    assert recorded_block_numbers({"intermediate_indices": [3, 6, 9]}) == [4, 7, 10]  # timm's
    assert recorded_block_numbers({}) == []


def test_export_records_blocks_both_ways(checkpoint, tmp_path):
    cfg = export_encoder(checkpoint, tmp_path / "export")
    assert cfg["intermediate_blocks"] == [2, 3]  # numbered from 1
    assert cfg["intermediate_indices"] == [1, 2]  # timm's forward_intermediates indices


def test_checkpoint_and_export_give_the_same_encoder(checkpoint, tmp_path):
    export_encoder(checkpoint, tmp_path / "export")
    a = read_encoder_source(checkpoint)
    b = read_encoder_source(tmp_path / "export")
    assert a.bands == b.bands == BANDS
    assert a.block_numbers == b.block_numbers == [2, 3]
    assert a.arch == {**b.arch, "patch_size": tuple(b.arch["patch_size"])}
    assert set(a.state) == set(b.state)
    for key in a.state:
        assert torch.equal(a.state[key], b.state[key]), key


def test_an_older_export_without_indices_still_loads(checkpoint, tmp_path):
    """Exports written before ``intermediate_indices`` existed: the 1-indexed list is read."""
    export_encoder(checkpoint, tmp_path / "export")
    path = tmp_path / "export" / CONFIG_NAME
    cfg = json.loads(path.read_text())
    for key in ("intermediate_indices", "intermediate_blocks_indexing"):
        del cfg[key]
    path.write_text(json.dumps(cfg))
    encoder, report, config = load_encoder(tmp_path / "export")
    assert report.shared == BANDS
    assert "intermediate_indices" not in config
    classes = {"ids": [0, 1], "names": ["a", "b"], "ignore_index": 255}
    task = SegmentationTask(
        init_from=str(tmp_path / "export"), in_chans=3, img_size=16, bands=BANDS, classes=classes
    )
    assert task.net.skip_blocks == [3]  # patch 4 → one skip: the deepest recorded below depth
    torch.testing.assert_close(task.net.encoder.state_dict()["blocks.1.attn.qkv.weight"],
                               encoder.state_dict()["blocks.1.attn.qkv.weight"])  # fmt: skip


def test_monai_keys_round_trip(checkpoint):
    state = read_encoder_source(checkpoint).state
    monai = to_monai_state_dict(state)
    assert "patch_embedding.position_embeddings" in monai
    assert monai["patch_embedding.position_embeddings"].shape[1] == 16  # no class slot
    back = from_monai_state_dict(
        {**monai, "classification_head.0.weight": torch.zeros(1)}  # MONAI-only: dropped
    )
    assert set(back) == set(state)
    for key in state:
        assert torch.equal(back[key], state[key]), key


def test_positions_on_another_grid_are_recomputed_or_resampled():
    """Sin-cos positions are the target grid's own table; learned ones (a timm ViT's) are
    resampled as timm resamples them, never swapped for the table; 3-D learned ones refused."""
    from timm.layers import resample_abs_pos_embed

    from geomed_mim.models.pos_embed import get_sincos_pos_embed
    from geomed_mim.models.vit import VisionTransformerEncoder
    from geomed_mim.models.weights import positions_on_grid

    arch = {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 4, "in_chans": 3}
    source = VisionTransformerEncoder(img_size=32, **arch)  # an 8 x 8 grid
    target = VisionTransformerEncoder(img_size=16, **arch)  # a 4 x 4 grid
    own = torch.from_numpy(get_sincos_pos_embed(32, (4, 4), cls_token=True)).float()[None]
    torch.testing.assert_close(positions_on_grid(target, source.pos_embed.data), own)
    learned = torch.randn(1, 1 + 64, 32, generator=torch.Generator().manual_seed(0))
    expected = resample_abs_pos_embed(learned, [4, 4], [8, 8], num_prefix_tokens=1)
    moved = positions_on_grid(target, learned)
    torch.testing.assert_close(moved, expected)
    assert not torch.allclose(moved, own)
    cube = VisionTransformerEncoder(img_size=16, spatial_dims=3, **arch)
    with pytest.raises(ValueError, match=r"^pos_embed: learned 3-D positions"):
        positions_on_grid(cube, torch.randn(1, 1 + 512, 32))
