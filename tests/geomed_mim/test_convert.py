"""Converting published models: each format's real key layout with random weights, tiny sizes.
The converted folder's encoder gives the source model's features (timm's model and ours), a
converted MIM decoder continues pretraining at the source's loss, bands are matched by name and
every user mistake is one line with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

from geomed_mim.convert import main
from geomed_mim.models.masking import MaskUnitMasking
from geomed_mim.models.weights import DECODER_WEIGHTS_NAME, load_encoder  # noqa: F401
from geomed_mim.tasks.pretraining import MIMPretrainTask

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MODIS = [
    "B1",
    "B2",
    "B3",
    "B6",
    "B7",
    "B21",
    "B26",
    "B27",
    "B28",
    "B29",
    "B30",
    "B31",
    "B32",
    "B33",
]


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere (post-norms, biases and tokens start at 0 or 1 otherwise)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


# -- SatVision-TOA (pytorch-caney) ---------------------------------------------------------------
SATVISION_YAML = {
    "MODEL": {
        "TYPE": "swinv2",
        "DECODER": "simmim",
        "DROP_PATH_RATE": 0.0,
        "SWINV2": {
            "IN_CHANS": 14,
            "EMBED_DIM": 16,
            "DEPTHS": [1, 1, 1, 1],
            "NUM_HEADS": [1, 2, 2, 2],
            "WINDOW_SIZE": 2,
        },
    },
    "DATA": {"IMG_SIZE": 64, "MASK_PATCH_SIZE": 8, "MASK_RATIO": 0.6},
}


@pytest.fixture
def caney(monkeypatch):
    """pytorch-caney's SimMIM modules, with its one CUDA assumption patched for the test: the
    attention moves a constant to ``logit_scale.get_device()``, which is -1 on the CPU."""
    mim = pytest.importorskip("pytorch_caney.models.mim.mim")
    monkeypatch.setattr(torch.Tensor, "get_device", lambda self: self.device)
    return mim


def build_caney_simmim(mim, cfg: dict) -> torch.nn.Module:
    """pytorch-caney's ``build_mim_model`` on ``cfg`` (its yacs config reader is not needed:
    the same arguments, read from the same YAML keys)."""
    swin, data = cfg["MODEL"]["SWINV2"], cfg["DATA"]
    encoder = mim.SwinTransformerV2ForSimMIM(
        img_size=data["IMG_SIZE"], patch_size=4, in_chans=swin["IN_CHANS"], num_classes=0,
        embed_dim=swin["EMBED_DIM"], depths=swin["DEPTHS"], num_heads=swin["NUM_HEADS"],
        window_size=swin["WINDOW_SIZE"], drop_path_rate=cfg["MODEL"]["DROP_PATH_RATE"],
    )  # fmt: skip
    return mim.MiMModel(encoder=encoder, encoder_stride=32, in_chans=swin["IN_CHANS"], patch_size=4)


@pytest.fixture
def satvision(caney, tmp_path):
    """(pytorch-caney's SimMIM for the YAML, its DeepSpeed-style checkpoint, the YAML path)."""
    path = tmp_path / "satvision.yaml"
    path.write_text(yaml.safe_dump(SATVISION_YAML))
    ref = perturbed(build_caney_simmim(caney, SATVISION_YAML))
    ckpt = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": ref.state_dict(), "global_steps": 10}, ckpt)
    return ref, ckpt, path


def convert_satvision(ckpt: Path, config: Path, out: Path, *extra: str) -> dict:
    argv = ["--from", "satvision", "--checkpoint", str(ckpt), "--config", str(config)]
    assert main([*argv, "--output", str(out), *extra]) == 0
    return json.loads((out / "config.json").read_text())


def test_satvision_encoder_loads_in_timm_with_pytorch_caneys_features(satvision, tmp_path, capsys):
    ref, ckpt, config = satvision
    cfg = convert_satvision(ckpt, config, tmp_path / "out")
    assert "satvision" in capsys.readouterr().out
    assert cfg["bands"] == MODIS
    assert cfg["profile"] == "modis_toa14"
    model = timm.create_model(cfg["architecture"], **cfg["timm_kwargs"]).eval()
    model.load_state_dict(load_file(str(tmp_path / "out" / "model.safetensors")), strict=True)
    x = torch.randn(2, 14, 64, 64)
    with torch.no_grad():
        theirs = ref.encoder(x, torch.zeros(2, 16, 16)).permute(0, 2, 3, 1)  # [B, h, w, C]
        torch.testing.assert_close(model.forward_features(x), theirs, rtol=1e-5, atol=1e-5)
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("---\nlicense:")
    assert "| B21 | 3959 |" in card


def test_satvision_continues_simmim_at_pytorch_caneys_loss(satvision, tmp_path):
    """The pretraining task built with ``init_from`` the converted folder (the demo config's
    model, sized as the source) holds the source's encoder and decoder: same loss on the same
    batch and mask."""
    ref, ckpt, config = satvision
    cfg = convert_satvision(ckpt, config, tmp_path / "out")
    demo = yaml.safe_load((CONFIGS / "pretrain" / "simmim_swinv2_demo_cpu.yaml").read_text())
    init = demo["model"]["init_args"]
    kwargs = dict(cfg["continue_pretraining"]["model_kwargs"])
    in_chans, img_size = kwargs.pop("in_chans"), kwargs.pop("img_size")
    task = MIMPretrainTask(
        init["model"], {**init["model_kwargs"], **kwargs}, in_chans=in_chans, img_size=img_size,
        init_from=str(tmp_path / "out"),
    )  # fmt: skip
    exported = load_file(str(tmp_path / "out" / "model.safetensors"))
    own = task.model.encoder.state_dict()
    for key, value in exported.items():
        assert torch.equal(own[key], value), key
    x = torch.randn(2, 14, 64, 64)
    mask = MaskUnitMasking(0.6, unit=2).unit_mask(torch.rand(2, 64), (16, 16)).reshape(2, 16, 16)
    with torch.no_grad():
        ours = task.model.eval()(x, mask=mask).loss
        torch.testing.assert_close(ours, ref(x, mask), rtol=1e-5, atol=1e-6)


def test_satvision_to_sentinel2_bands_matches_by_name(satvision, tmp_path, capsys):
    """Two MODIS bands named as Sentinel-2's by the target list: copied; the rest of the
    target initialized as the mean kernel; the other MODIS bands dropped, in the table."""
    ref, ckpt, config = satvision
    out = tmp_path / "out"
    cfg = convert_satvision(ckpt, config, out, "--target-bands", "B03,new,b01")
    printed = capsys.readouterr().out
    assert "mean of source kernels" in printed
    assert "dropped" in printed
    weight = load_file(str(out / "model.safetensors"))["patch_embed.proj.weight"]
    source = ref.encoder.patch_embed.proj.weight
    torch.testing.assert_close(weight[:, 0], source[:, 2])  # B03 = MODIS B3
    torch.testing.assert_close(weight[:, 1], source.mean(1))
    torch.testing.assert_close(weight[:, 2], source[:, 0])  # b01 = B1
    assert cfg["converted_from"]["bands_initialized_as_mean"] == ["new"]
    assert len(cfg["converted_from"]["bands_dropped"]) == 12
    decoder = load_file(str(out / DECODER_WEIGHTS_NAME))["decoder.decoder.0.weight"]
    src = ref.decoder[0].weight.reshape(14, 32 * 32, -1, 1, 1)
    torch.testing.assert_close(decoder.reshape(3, 32 * 32, -1, 1, 1)[2], src[0])


# -- user mistakes -------------------------------------------------------------------------------
def run_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("error: --")
    return err


def test_user_mistakes_are_one_line_naming_the_flag(satvision, tmp_path, capsys):
    _, ckpt, config = satvision
    out = ["--output", str(tmp_path / "o")]
    assert "unknown format" in run_error(
        capsys, ["--from", "nope", "--checkpoint", str(ckpt), *out]
    )
    assert "--config" in run_error(capsys, ["--from", "satvision", "--checkpoint", str(ckpt), *out])
    missing = ["--from", "mae", "--checkpoint", str(tmp_path / "none.pth"), *out]
    assert "no such file" in run_error(capsys, missing)
    nothing = ["--from", "satvision", "--checkpoint", str(ckpt), "--config", str(config)]
    err = run_error(capsys, [*nothing, "--target-bands", "X1,X2", *out])
    assert "matches the source's bands" in err
