"""Converting published models: each format's real key layout with random weights, tiny sizes.
The converted folder's encoder gives the source model's features (timm's model and ours), a
converted MIM decoder continues pretraining at the source's loss, bands are matched by name and
every user mistake is one line with exit status 2."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file, save_file

from geomed_mim.convert import main
from geomed_mim.models.masking import MaskUnitMasking
from geomed_mim.models.weights import DECODER_WEIGHTS_NAME, load_encoder
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


def test_fine_tuning_starts_from_a_converted_satvision_folder(satvision, tmp_path):
    """A converted Swin V2 folder starts a fine-tuning: the Swin V2 + FPN network, its encoder
    holding the converted weights."""
    from geomed_mim.tasks.segmentation import SegmentationTask

    _, ckpt, config = satvision
    out = tmp_path / "out"
    cfg = convert_satvision(ckpt, config, out)
    classes = {"ids": [0, 1], "names": ["a", "b"], "ignore_index": 255}
    task = SegmentationTask(
        init_from=str(out), head="fpn", in_chans=len(cfg["bands"]), img_size=64,
        spatial_dims=2, bands=cfg["bands"], classes=classes,
    )  # fmt: skip
    own = task.net.encoder.state_dict()
    for key, value in load_file(str(out / "model.safetensors")).items():
        torch.testing.assert_close(own[key], value, msg=key)


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


# -- MAE (facebookresearch/mae keys) -------------------------------------------------------------
class ReferenceMAE(torch.nn.Module):
    """The published ``MaskedAutoencoderViT``'s modules and forward, written from its formulas:
    timm blocks, random masking by argsort of noise, the decoder over [visible, mask tokens],
    the MSE on masked patches against (p, p, c)-ordered, per-patch normalized pixels."""

    def __init__(self, in_chans: int = 6, img: int = 32, patch: int = 8, dim: int = 32) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block, PatchEmbed

        norm = partial(torch.nn.LayerNorm, eps=1e-6)
        self.patch = patch
        self.patch_embed = PatchEmbed(img, patch, in_chans, dim)
        n = self.patch_embed.num_patches
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = torch.nn.Parameter(torch.randn(1, n + 1, dim) * 0.1)
        self.blocks = torch.nn.ModuleList(
            Block(dim, 2, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(2)
        )
        self.norm = norm(dim)
        self.decoder_embed = torch.nn.Linear(dim, 16)
        self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, 16))
        self.decoder_pos_embed = torch.nn.Parameter(torch.randn(1, n + 1, 16) * 0.1)
        self.decoder_blocks = torch.nn.ModuleList(
            [Block(16, 2, 4.0, qkv_bias=True, norm_layer=norm)]
        )
        self.decoder_norm = norm(16)
        self.decoder_pred = torch.nn.Linear(16, patch * patch * in_chans)

    def encode(self, x: torch.Tensor, noise: torch.Tensor, ratio: float) -> tuple:
        x = self.patch_embed(x) + self.pos_embed[:, 1:, :]
        B, L, D = x.shape
        keep = int(L * (1 - ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, D))
        mask = torch.ones(B, L)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(B, -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def decode(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(x)
        B, L = ids_restore.shape
        tokens = self.mask_token.repeat(B, L + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def loss(self, imgs: torch.Tensor, noise: torch.Tensor, ratio: float = 0.75) -> torch.Tensor:
        latent, mask, ids_restore = self.encode(imgs, noise, ratio)
        pred = self.decode(latent, ids_restore)
        B, C, H, W = imgs.shape
        p = self.patch
        target = imgs.reshape(B, C, H // p, p, W // p, p)
        target = torch.einsum("nchpwq->nhwpqc", target).reshape(B, -1, p * p * C)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5  # norm_pix_loss
        per_patch = ((pred - target) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()


HLS = "B02,B03,B04,B8A,B11,B12"  # Prithvi's six HLS bands


@pytest.fixture
def mae_checkpoint(tmp_path):
    ref = perturbed(ReferenceMAE())
    path = tmp_path / "mae.pth"
    torch.save({"model": ref.state_dict(), "epoch": 3}, path)
    return ref, path


def convert_mae(path: Path, out: Path, *extra: str) -> dict:
    argv = ["--from", "mae", "--checkpoint", str(path), "--output", str(out), "--num-heads", "2"]
    assert main([*argv, "--decoder-num-heads", "2", "--norm-pix-loss", *extra]) == 0
    return json.loads((out / "config.json").read_text())


def test_mae_encoder_gives_the_source_features_in_timm_and_here(mae_checkpoint, tmp_path):
    ref, path = mae_checkpoint
    cfg = convert_mae(path, tmp_path / "out", "--source-bands", HLS)
    x = torch.randn(2, 6, 32, 32)
    with torch.no_grad():
        theirs = ref.encode(x, torch.arange(16.0).expand(2, -1), 0.0)[0]  # nothing masked
        timm_vit = timm.create_model(
            cfg["architecture"], in_chans=6, img_size=32, num_classes=0, **cfg["timm_kwargs"]
        ).eval()
        timm_vit.load_state_dict(load_file(str(tmp_path / "out" / "model.safetensors")))
        torch.testing.assert_close(timm_vit.forward_features(x), theirs, rtol=1e-5, atol=1e-5)
        encoder, report, _ = load_encoder(tmp_path / "out")
        torch.testing.assert_close(encoder.eval().forward_features(x), theirs)
    assert report.shared == HLS.split(",")


def test_mae_continues_with_the_published_decoder_at_the_source_loss(mae_checkpoint, tmp_path):
    """Step 0 of the continued pretraining: the same batch and mask (noise) give the source's
    loss, norm_pix_loss included."""
    ref, path = mae_checkpoint
    cfg = convert_mae(path, tmp_path / "out", "--source-bands", HLS)
    spec = cfg["continue_pretraining"]
    kwargs = dict(spec["model_kwargs"])
    in_chans, img_size = kwargs.pop("in_chans"), kwargs.pop("img_size")
    task = MIMPretrainTask(
        spec["model"], kwargs, in_chans=in_chans, img_size=img_size,
        init_from=str(tmp_path / "out"),
    )  # fmt: skip
    x, noise = torch.randn(3, 6, 32, 32), torch.rand(3, 16)
    with torch.no_grad():
        ours = task.model.eval()(x, noise=noise).loss
        torch.testing.assert_close(ours, ref.loss(x, noise), rtol=1e-5, atol=1e-6)


def test_mae_at_another_size_and_band_list(mae_checkpoint, tmp_path, capsys):
    """Aliases match (nir08 = B8A, red = B04); position embeddings resampled to 48 px."""
    ref, path = mae_checkpoint
    argv = ["--source-bands", HLS, "--target-bands", "red,nir08,B01", "--img-size", "48"]
    cfg = convert_mae(path, tmp_path / "out", *argv)
    state = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert state["pos_embed"].shape == (1, 37, 32)
    source = ref.patch_embed.proj.weight
    torch.testing.assert_close(state["patch_embed.proj.weight"][:, 0], source[:, 2])
    torch.testing.assert_close(state["patch_embed.proj.weight"][:, 1], source[:, 3])
    assert cfg["converted_from"]["bands_initialized_as_mean"] == ["B01"]
    assert cfg["continue_pretraining"]["model_kwargs"]["in_chans"] == 3
    encoder, _, _ = load_encoder(tmp_path / "out")
    assert encoder(torch.randn(1, 3, 48, 48)).shape == (1, 37, 32)


def test_prithvi_temporal_patch_embedding_summed_is_a_still_scene(mae_checkpoint, tmp_path):
    """A Conv3d patch embedding over 2-frame tubelets, summed over time: the 2-D encoder's
    features on an image are the 3-D model's on that image repeated as both frames."""
    ref, _ = mae_checkpoint
    state = ref.state_dict()
    w2d = state["patch_embed.proj.weight"]
    w3d = torch.stack([w2d, torch.randn_like(w2d) * 0.05], dim=2)  # [D, C, T=2, p, p]
    state["patch_embed.proj.weight"] = w3d
    torch.save(state, tmp_path / "prithvi.pt")  # Prithvi's files are bare state dicts
    out = tmp_path / "out"
    argv = ["--from", "mae", "--checkpoint", str(tmp_path / "prithvi.pt"), "--output", str(out)]
    assert main([*argv, "--num-heads", "2", "--frames-to-2d", "sum", "--source-bands", HLS]) == 0
    assert not (out / DECODER_WEIGHTS_NAME).exists()  # it predicts 2-frame tubelets
    x = torch.randn(2, 6, 32, 32)
    with torch.no_grad():
        frames = x.unsqueeze(2).expand(-1, -1, 2, -1, -1)  # [B, C, T, H, W]
        tokens = torch.nn.functional.conv3d(
            frames, w3d, ref.patch_embed.proj.bias, stride=(2, 8, 8)
        )
        ref.patch_embed.proj.weight.copy_(w3d.sum(2))  # what the 3-D embedding computes here
        torch.testing.assert_close(
            ref.patch_embed(x), tokens.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5
        )
        theirs = ref.encode(x, torch.arange(16.0).expand(2, -1), 0.0)[0]
        encoder, _, _ = load_encoder(out)
        torch.testing.assert_close(encoder.eval().forward_features(x), theirs)
    missing = ["--from", "mae", "--checkpoint", str(tmp_path / "prithvi.pt"), "--output", str(out)]
    assert main(missing) == 2  # no --frames-to-2d


# -- timm / torchgeo ViTs ------------------------------------------------------------------------
def test_torchgeo_weight_from_the_hub_cache_gives_the_builders_features(tmp_path, monkeypatch):
    """torchgeo's builder (random weights, the weight's 13 bands) saved where torchgeo's download
    would put it; converted offline, the export gives its features, bands from the weight.
    Built at 32 px (2 × 2 positions) to stay fast: the size is read from the file's positions."""
    models = pytest.importorskip("torchgeo.models")
    from geomed_mim.convert.timm_vit import hub_cache_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weight = models.ViTSmall16_Weights.SENTINEL2_ALL_DINO
    torch.manual_seed(0)
    source = models.vit_small_patch16_224(in_chans=13, num_classes=0, img_size=32).eval()
    cached = hub_cache_file(weight.url)
    assert cached.is_relative_to(tmp_path / "torch")
    cached.parent.mkdir(parents=True)
    torch.save(source.state_dict(), cached)
    out = tmp_path / "out"
    assert (
        main(["--from", "torchgeo:ViTSmall16_Weights.SENTINEL2_ALL_DINO", "--output", str(out)])
        == 0
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["bands"] == weight.meta["bands"]
    assert cfg["architecture"] == "vit_small_patch16_224"
    x = torch.randn(2, 13, 32, 32)
    encoder, _, _ = load_encoder(out)
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval().forward_features(x), source.forward_features(x))


@pytest.mark.slow
def test_torchgeo_dino_vit_s16_fine_tunes_on_the_demo_land_cover_store(
    lulc_store, tmp_path, monkeypatch
):
    """The 13-band ViT-S/16 as published (224 px, learned positions) from the hub cache, converted
    at the demo's 32 px tiles, fine-tunes through ``finetune_seg`` (one step, encoder frozen):
    the checkpoint's encoder is the converted one, all 13 bands matched by name."""
    models = pytest.importorskip("torchgeo.models")
    from geomed_mim.convert.timm_vit import hub_cache_file
    from tests.geomed_mim.tasks.test_segmentation import run_cli

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(0)
    source = models.vit_small_patch16_224(in_chans=13, num_classes=0)
    cached = hub_cache_file(models.ViTSmall16_Weights.SENTINEL2_ALL_DINO.url)
    cached.parent.mkdir(parents=True)
    torch.save(perturbed(source).state_dict(), cached)
    out = tmp_path / "ssl4eo_dino"
    spec = "torchgeo:ViTSmall16_Weights.SENTINEL2_ALL_DINO"
    assert main(["--from", spec, "--img-size", "32", "--output", str(out)]) == 0
    run_cli(
        ["fit", "--config", str(CONFIGS / "finetune/lulc_demo_cpu.yaml"),
         "--data.init_args.store", str(lulc_store), "--data.init_args.batch_size", "2",
         "--model.init_args.init_from", str(out), "--model.init_args.freeze_encoder", "true",
         "--trainer.max_epochs", "1", "--trainer.max_steps", "1",
         "--trainer.check_val_every_n_epoch", "1", "--trainer.limit_val_batches", "1",
         "--trainer.logger", "false"],
        tmp_path,
    )  # fmt: skip
    ckpt = torch.load(
        tmp_path / "runs/lulc_demo_cpu/checkpoints/last.ckpt", map_location="cpu", weights_only=True
    )
    assert ckpt["global_step"] == 1
    state, hp = ckpt["state_dict"], ckpt["hyper_parameters"]
    converted = load_file(str(out / "model.safetensors"))
    assert len(hp["bands"]) == 13
    matched = json.loads((out / "config.json").read_text())["bands"]
    for key, value in converted.items():
        if key != "patch_embed.proj.weight":
            assert torch.equal(state[f"net.encoder.{key}"], value), key
    tuned = state["net.encoder.patch_embed.proj.weight"]
    for i, band in enumerate(hp["bands"]):  # the store's B01..B12 are the weight's B1..B12
        j = [b.upper().replace("B0", "B") for b in matched].index(band.upper().replace("B0", "B"))
        assert torch.equal(tuned[:, i], converted["patch_embed.proj.weight"][:, j]), band


def test_torchgeo_weight_absent_offline_says_where_to_put_it(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torchgeo.models")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = "torchgeo:ViTSmall16_Weights.SENTINEL2_ALL_DINO"
    err = run_error(capsys, ["--from", spec, "--output", str(tmp_path / "o")])
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in err
    assert "place the file of https://" in err
    assert "no such torchgeo weight" in run_error(capsys, ["--from", "torchgeo:Nope.X", "-o", "o"])


def test_timm_file_with_architecture(tmp_path, capsys):
    """A plain timm state dict (a tiny ViT, safetensors) with its architecture: sizes from the
    shapes, heads given; the export gives timm's features; a non-ViT is one line."""
    torch.manual_seed(0)
    kwargs = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32, "in_chans": 4}
    source = perturbed(timm.create_model("vit_tiny_patch16_224", num_classes=0, **kwargs))
    path = tmp_path / "vit.safetensors"
    save_file(source.state_dict(), str(path))
    out = tmp_path / "out"
    argv = ["--from", "timm", "--checkpoint", str(path), "--output", str(out)]
    assert "not the plain ViT" in run_error(capsys, [*argv, "--architecture", "resnet18"])
    assert "--architecture" in run_error(capsys, argv)
    bands = ["--source-bands", "blue,green,red,nir", "--profile", "sentinel2_l2a"]
    assert main([*argv, "--architecture", "vit_tiny_patch16_224", "--num-heads", "2", *bands]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["converted_from"]["bands_shared"] == ["B02", "B03", "B04", "B08"]
    encoder, _, _ = load_encoder(out, bands=["blue", "green", "red", "nir"])
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval().forward_features(x), source.forward_features(x))


@pytest.mark.slow
def test_pretrain_fit_continues_from_a_converted_satvision(satvision, demo_store, tmp_path):
    """The pretraining command on the demo config, its model sized as the converted folder says,
    ``--model.init_args.init_from`` the folder (SatVision-TOA to the demo's 13 Sentinel-2 bands,
    32 px): two optimizer steps run from the converted weights."""
    from lightning.pytorch import LightningDataModule

    from geomed_mim.cli import PretrainCLI

    _, ckpt, config = satvision
    out = tmp_path / "out"
    cfg = convert_satvision(ckpt, config, out, "--profile", "sentinel2_l1c", "--img-size", "32")
    kwargs = {k: v for k, v in cfg["continue_pretraining"]["model_kwargs"].items()
              if k not in ("in_chans", "img_size")}  # fmt: skip
    built = PretrainCLI(
        MIMPretrainTask, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        run=False, auto_configure_optimizers=False,
        args=[
            "--config", str(CONFIGS / "pretrain" / "simmim_swinv2_demo_cpu.yaml"),
            "--data.init_args.store", str(demo_store),
            "--model.init_args.model_kwargs", json.dumps(kwargs),
            "--model.init_args.init_from", str(out),
            "--trainer.logger", "false", "--trainer.callbacks", "[]",
            "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path / "run"),
            "--trainer.enable_checkpointing", "false",
        ],
    )  # fmt: skip
    converted = load_file(str(out / "model.safetensors"))
    encoder = built.model.model.encoder
    for key, value in converted.items():
        assert torch.equal(encoder.state_dict()[key], value), key
    built.trainer.fit(built.model, datamodule=built.datamodule)
    assert built.trainer.global_step == 2
    moved = encoder.state_dict()["layers.0.blocks.0.attn.qkv.weight"]
    assert not torch.equal(moved, converted["layers.0.blocks.0.attn.qkv.weight"])


def test_band_map_carries_modis_bands_to_sentinel2_by_meaning(satvision, tmp_path, capsys):
    """MODIS B1 is red (645 nm) and S2 B01 coastal aerosol: with --band-map only the given pairs
    match, so S2 B04 takes MODIS B1, B08 MODIS B2, and S2 B01 the mean kernel."""
    ref, ckpt, config = satvision
    out = tmp_path / "out"
    argv = ["--profile", "sentinel2_l1c", "--band-map", "B04=B1,B08=B2,B02=B3"]
    cfg = convert_satvision(ckpt, config, out, *argv)
    weight = load_file(str(out / "model.safetensors"))["patch_embed.proj.weight"]
    source = ref.encoder.patch_embed.proj.weight
    torch.testing.assert_close(weight[:, 3], source[:, 0])  # B04 ← B1
    torch.testing.assert_close(weight[:, 7], source[:, 1])  # B08 ← B2
    torch.testing.assert_close(weight[:, 0], source.mean(1))  # B01: no MODIS twin
    assert cfg["converted_from"]["bands_shared"] == ["B02", "B04", "B08"]
    assert len(cfg["converted_from"]["bands_dropped"]) == 11
    assert "B6" in cfg["converted_from"]["bands_dropped"]  # not matched to S2 B06 by name
    source_args = ["--from", "satvision", "--checkpoint", str(ckpt), "--config", str(config)]
    err = run_error(capsys, [*source_args, *argv[:2], "--band-map", "B04=B99", "-o", str(out)])
    assert "--band-map" in err


def test_band_names_users_write_are_one_band():
    from geomed_mim.models.weights import canonical_band

    assert {canonical_band(b) for b in ("B8A", "B08A", "b8a", "nir08", "NIR08")} == {"B8A"}
    assert {canonical_band(b) for b in ("B04", "B4", "red", "Red")} == {"B4"}
    assert canonical_band("swir_16") == "B11"
    assert canonical_band("VV") == "VV"


def test_mae_halves_wrapped_as_encoder_and_decoder_modules(mae_checkpoint, tmp_path):
    """Prithvi 2.0's layout: MAE's keys under ``encoder.``/``decoder.``, plus encodings a plain
    MAE has no place for (left out, said in the notes); the published loss still comes out."""
    ref, _ = mae_checkpoint
    state = {f"{'decoder' if k.startswith(('decoder_', 'mask_token')) else 'encoder'}.{k}": v
             for k, v in ref.state_dict().items()}  # fmt: skip
    state["encoder.temporal_embed_enc.w"] = torch.zeros(4)
    torch.save({"model": state}, tmp_path / "wrapped.pt")
    cfg = convert_mae(tmp_path / "wrapped.pt", tmp_path / "out", "--source-bands", HLS)
    assert "temporal_embed_enc.w" in cfg["converted_from"]["notes"][0]
    kwargs = dict(cfg["continue_pretraining"]["model_kwargs"])
    in_chans, img_size = kwargs.pop("in_chans"), kwargs.pop("img_size")
    task = MIMPretrainTask(
        cfg["continue_pretraining"]["model"], kwargs, in_chans=in_chans, img_size=img_size,
        init_from=str(tmp_path / "out"),
    )  # fmt: skip
    x, noise = torch.randn(2, 6, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(task.model.eval()(x, noise=noise).loss, ref.loss(x, noise))


def test_satvision_giant_extra_norms_continue_at_the_sources_loss(caney, tmp_path):
    """The giant's ``NORM_PERIOD``: pytorch-caney's newer blocks end with ``norm3`` (a LayerNorm
    of the block's output, every N-th block of a stage). The installed pytorch-caney predates
    it, so the reference runs its blocks with that LayerNorm as a forward hook, and the
    checkpoint holds the ``layers.S.blocks.B.norm3`` keys it writes."""
    cfg = yaml.safe_load(yaml.safe_dump(SATVISION_YAML))
    cfg["MODEL"]["SWINV2"].update(DEPTHS=[2, 2, 1, 1], NORM_PERIOD=2)
    path = tmp_path / "giant.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ref = perturbed(build_caney_simmim(caney, cfg))
    state = dict(ref.state_dict())
    for s in (0, 1):  # the 2nd block of the two 2-block stages
        norm = torch.nn.LayerNorm(16 * 2**s)
        torch.nn.init.normal_(norm.weight, 1.0, 0.1)
        torch.nn.init.normal_(norm.bias, 0.0, 0.1)
        block = ref.encoder.layers[s].blocks[1]
        block.register_forward_hook(lambda m, i, out, norm=norm: norm(out))
        state[f"encoder.layers.{s}.blocks.1.norm3.weight"] = norm.weight.detach()
        state[f"encoder.layers.{s}.blocks.1.norm3.bias"] = norm.bias.detach()
    torch.save({"module": state}, tmp_path / "giant.pt")
    out = tmp_path / "out"
    exported = convert_satvision(tmp_path / "giant.pt", path, out)
    assert exported["extra_norm_period"] == 2
    assert not exported["timm_loadable"]
    spec = dict(exported["continue_pretraining"]["model_kwargs"])
    in_chans, img_size = spec.pop("in_chans"), spec.pop("img_size")
    task = MIMPretrainTask(
        "simmim_swinv2_giant_window8", spec, in_chans=in_chans, img_size=img_size,
        init_from=str(out),
    )  # fmt: skip
    assert sorted(task.model.encoder.extra_norms) == ["0_1", "1_1"]
    x = torch.randn(2, 14, 64, 64)
    mask = MaskUnitMasking(0.6, unit=2).unit_mask(torch.rand(2, 64), (16, 16)).reshape(2, 16, 16)
    with torch.no_grad():
        ours = task.model.eval()(x, mask=mask).loss
        torch.testing.assert_close(ours, ref(x, mask), rtol=1e-5, atol=1e-6)


# -- MONAI SwinUNETR self-supervised Swin ViT ----------------------------------------------------
def test_swinunetr_swinvit_gives_monais_features_and_continues_simmim_3d(tmp_path):
    """``model_swinvit.pt``'s layout is what MONAI's own ``SwinUNETR.load_from`` reads (checked
    first: MONAI loads the file into a fresh SwinUNETR with the source's features); the
    converted folder gives those features in the 3-D SimMIM encoder."""
    from monai.networks.nets import SwinUNETR
    from monai.networks.nets.swin_unetr import SwinTransformer

    def tiny_unetr() -> SwinUNETR:
        return SwinUNETR(in_channels=1, out_channels=2, feature_size=12, depths=(1, 1, 1, 1),
                         num_heads=(1, 1, 2, 2), window_size=4)  # fmt: skip

    source = perturbed(tiny_unetr()).swinViT
    state = {f"module.{k}".replace(".linear1.", ".fc1.").replace(".linear2.", ".fc2."): v
             for k, v in source.state_dict().items()}  # fmt: skip
    state["module.rotation_head.weight"] = torch.zeros(4, 96)  # a self-supervised head
    torch.save({"state_dict": state, "epoch": 100}, tmp_path / "model_swinvit.pt")
    x = torch.randn(1, 1, 32, 32, 32)
    monai_loaded = tiny_unetr().eval()
    monai_loaded.load_from(torch.load(tmp_path / "model_swinvit.pt", weights_only=True))
    with torch.no_grad():
        expected = source(x, normalize=True)[4]
        torch.testing.assert_close(monai_loaded.swinViT(x, normalize=True)[4], expected)
    out = tmp_path / "out"
    argv = ["--from", "swinunetr", "--checkpoint", str(tmp_path / "model_swinvit.pt")]
    assert main([*argv, "--img-size", "32", "--output", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["monai_kwargs"]["window_size"] == [4, 4, 4]
    assert cfg["monai_kwargs"]["num_heads"] == [1, 1, 2, 2]
    swin = SwinTransformer(**cfg["monai_kwargs"]).eval()
    swin.load_state_dict(load_file(str(out / "model.safetensors")))
    spec = dict(cfg["continue_pretraining"]["model_kwargs"])
    in_chans, img_size = spec.pop("in_chans"), spec.pop("img_size")
    task = MIMPretrainTask(
        cfg["continue_pretraining"]["model"], {**spec, "mask_patch_size": 8},
        in_chans=in_chans, img_size=img_size, spatial_dims=3, init_from=str(out),
    )  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(swin(x, normalize=True)[4], expected)
        torch.testing.assert_close(task.model.encoder.eval().forward_features(x), expected)
