"""The one optimization recipe: the warmup-cosine schedule and the parameter groups of both
training tasks, against expectations computed by hand here."""

from __future__ import annotations

import itertools

import pytest
import torch

from geomed_mim.tasks.optim import param_groups, warmup_cosine
from geomed_mim.tasks.pretraining import MIMPretrainTask
from geomed_mim.tasks.segmentation import SegmentationTask

CLASSES = {"ids": [0, 1, 2], "names": ["a", "b", "c"], "ignore_index": 255}


class FakeTrainer:
    estimated_stepping_batches = 20
    accumulate_grad_batches = 2
    world_size = 1
    datamodule = None


def test_warmup_cosine_schedule():
    values = [warmup_cosine(s, 10, 110, 0.1) for s in range(110)]
    assert values[0] == pytest.approx(0.1)
    assert values[9] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(values[:10]))  # warmup rises
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))  # then decays
    assert values[60] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway down the cosine
    assert warmup_cosine(500, 10, 110, 0.1) == pytest.approx(0.1)


def summary(groups, model) -> list[tuple[set[str], float, float]]:
    """(names, lr before the schedule's factor, weight decay) per group, in order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [
        ({names[id(p)] for p in g["params"]}, g.get("initial_lr", g["lr"]), g["weight_decay"])
        for g in groups
    ]


def takes_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Weight matrices only: not 1-D (norms, biases), not tokens nor position embeddings."""
    return param.ndim >= 2 and not name.endswith(("cls_token", "mask_token", "pos_embed"))


def test_pretraining_groups_and_lr():
    task = MIMPretrainTask(
        model="mae_vit_tiny_patch16",
        in_chans=3,
        img_size=32,
        base_lr=1e-3,
        weight_decay=0.05,
        betas=(0.9, 0.95),
        model_kwargs={
            "depth": 2,
            "decoder_depth": 1,
            "decoder_embed_dim": 32,
            "decoder_num_heads": 2,
        },
    )
    task.trainer = FakeTrainer()
    optimizer = task.configure_optimizers()["optimizer"]
    trainable = [(n, p) for n, p in task.model.named_parameters() if p.requires_grad]
    lr = 1e-3 * (1 * 2 * 1) / 256  # base_lr × per-device batch × accumulation × world / 256
    expected = [
        ({n for n, p in trainable if takes_decay(n, p)}, lr, 0.05),  # decay first, as always
        ({n for n, p in trainable if not takes_decay(n, p)}, lr, 0.0),
    ]
    assert summary(optimizer.param_groups, task.model) == expected
    assert all(g["betas"] == (0.9, 0.95) for g in optimizer.param_groups)


def segmentation_task(**kwargs) -> SegmentationTask:
    task = SegmentationTask(
        in_chans=2, img_size=16, spatial_dims=2, bands=["a", "b"], classes=CLASSES, lr=0.3,
        weight_decay=0.05, encoder={"embed_dim": 24, "depth": 2, "num_heads": 2, "patch_size": 4},
        **kwargs,
    )  # fmt: skip
    task.trainer = FakeTrainer()
    return task


def expected_layer(name: str) -> int:
    """Embeddings 0, encoder block i → i + 1, the final norm and the decoder 3 (depth 2)."""
    if name.startswith(("encoder.cls_token", "encoder.pos_embed", "encoder.patch_embed")):
        return 0
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return 3


def test_segmentation_groups_with_layer_decay():
    task = segmentation_task(layer_decay=0.5)
    groups = task.configure_optimizers()["optimizer"].param_groups
    trainable = [(n, p) for n, p in task.net.named_parameters() if p.requires_grad]
    expected = []  # per layer: no-decay then decay (the order the parameters come in)
    for layer in range(4):
        for decays in (False, True):
            names = {
                n
                for n, p in trainable
                if expected_layer(n) == layer and takes_decay(n, p) == decays
            }
            expected.append((names, 0.3 * 0.5 ** (3 - layer), 0.05 if decays else 0.0))
    assert summary(groups, task.net) == expected
    assert "encoder.norm.weight" in expected[6][0]  # full lr, with the decoder
    assert "head.conv.conv.weight" in expected[7][0]


@pytest.mark.parametrize("freeze", [False, True])
def test_segmentation_groups_without_layer_decay(freeze):
    task = segmentation_task(layer_decay=1.0, freeze_encoder=freeze)
    groups = task.configure_optimizers()["optimizer"].param_groups
    trainable = [(n, p) for n, p in task.net.named_parameters() if p.requires_grad]
    assert any(n.startswith("encoder.") for n, _ in trainable) != freeze
    decay = ({n for n, p in trainable if takes_decay(n, p)}, 0.3, 0.05)
    no_decay = ({n for n, p in trainable if not takes_decay(n, p)}, 0.3, 0.0)
    # in the order of each group's first parameter: the class token, or the decoder's first conv
    assert summary(groups, task.net) == ([decay, no_decay] if freeze else [no_decay, decay])


def test_param_groups_needs_a_group_matcher_only_for_layer_decay():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    groups = param_groups(model, lr=0.1, weight_decay=0.01)
    assert summary(groups, model) == [
        ({"0.weight"}, 0.1, 0.01),
        ({"0.bias", "1.weight", "1.bias"}, 0.1, 0.0),
    ]
