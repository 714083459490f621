"""Export: timm (2-D) and MONAI (3-D) round trips; loading by band name."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from data_pipelines.rs.profiles import load_profile
from geomed_mim.export import export_encoder, main
from geomed_mim.models.weights import build_monai_vit, load_encoder, match_band_channels
from tests.conftest import REPO_ROOT
from tests.geomed_mim.training import TINY_DECODER, task_checkpoint, timm_from_export

S2_BANDS = load_profile("sentinel2_l1c").band_names  # B01 … B12 with B8A, 13 bands


def s2_checkpoint(tmp_path, **model_kwargs):
    """A ViT-Ti/16 MAE on 13 Sentinel-2 bands, 32×32, a one-block decoder."""
    kwargs = {**TINY_DECODER, **model_kwargs}
    return task_checkpoint(
        tmp_path, S2_BANDS, model="mae_vit_tiny_patch16", in_chans=13, img_size=32,
        model_kwargs=kwargs,
    )  # fmt: skip


def test_timm_round_trip_strict_same_features(tmp_path):
    ckpt, task = s2_checkpoint(tmp_path)
    assert main([str(ckpt), "--output", str(tmp_path / "export")]) == 0
    cfg = json.loads((tmp_path / "export" / "config.json").read_text())
    assert cfg["architecture"] == "vit_tiny_patch16_224"
    assert cfg["timm_kwargs"] == {}
    assert cfg["bands"] == S2_BANDS
    assert cfg["mean"][3] == 3.0
    assert cfg["patch_size"] == [16, 16]
    assert cfg["intermediate_blocks"] == [4, 7, 10]
    # exactly the call the export documents; timm's loader is strict about keys
    model = timm.create_model(
        cfg["architecture"],
        in_chans=cfg["in_chans"],
        img_size=cfg["img_size"][0],
        num_classes=0,
        checkpoint_path=str(tmp_path / "export" / "model.safetensors"),
    ).eval()
    x = torch.randn(2, 13, 32, 32)
    with torch.no_grad():
        ours = task.model.encoder.eval().forward_features(x)
        torch.testing.assert_close(model.forward_features(x), ours, atol=1e-5, rtol=1e-5)


def test_timm_forward_intermediates_of_the_recorded_blocks(tmp_path):
    """The export's ``intermediate_indices`` given to timm's ``forward_intermediates`` return the
    recorded blocks (``intermediate_blocks``, numbered from 1), equal to our encoder's."""
    ckpt, task = s2_checkpoint(tmp_path)
    cfg = export_encoder(ckpt, tmp_path / "export")
    assert cfg["intermediate_indices"] == [3, 6, 9]
    model = timm_from_export(tmp_path / "export")
    enc = task.model.encoder.eval()
    x = torch.randn(2, 13, 32, 32)
    with torch.no_grad():
        theirs = model.forward_intermediates(x, indices=cfg["intermediate_indices"])
        ours = enc.forward_intermediates(x, indices=cfg["intermediate_indices"])
        _, blocks = enc.forward_with_block_outputs(x, block_numbers=cfg["intermediate_blocks"])
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-5, rtol=1e-5)
    for mine, timms, tokens in zip(ours[1], theirs[1], blocks, strict=True):
        assert mine.shape == timms.shape == (2, 192, 2, 2)
        torch.testing.assert_close(mine, timms, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine, tokens[:, 1:].transpose(1, 2).reshape(2, 192, 2, 2))


def test_timm_round_trip_with_overridden_architecture(tmp_path):
    ckpt, task = task_checkpoint(
        tmp_path,
        ["red", "nir"],
        model="mae_vit_small_patch16",
        in_chans=2,
        img_size=32,
        model_kwargs={"patch_size": 8, "depth": 2, **TINY_DECODER},
    )
    cfg = export_encoder(ckpt, tmp_path / "export")
    assert cfg["timm_kwargs"] == {"depth": 2, "patch_size": 8}
    model = timm_from_export(tmp_path / "export")
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_features(x), task.model.encoder.eval()(x), atol=1e-5, rtol=1e-5
        )


def test_3d_export_loads_into_monai_vit(tmp_path):
    ckpt, task = task_checkpoint(
        tmp_path,
        ["CT"],
        model="mae_vit_tiny_patch16",
        in_chans=1,
        img_size=32,
        spatial_dims=3,
        model_kwargs={"depth": 3, **TINY_DECODER},
    )
    cfg = export_encoder(ckpt, tmp_path / "export")
    assert cfg["weights_keys"] == "monai"
    assert cfg["spatial_dims"] == 3
    vit = build_monai_vit(tmp_path / "export").eval()
    normed = {}
    vit.norm.register_forward_hook(lambda m, i, o: normed.setdefault("out", o))
    x = torch.randn(2, 1, 32, 32, 32)
    enc = task.model.encoder.eval()
    with torch.no_grad():
        _, hidden = vit(x)
        ours, inter = enc.forward_with_block_outputs(x, block_numbers=(1, 2, 3))
    for mine, theirs in zip(inter, hidden, strict=True):
        torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(normed["out"], ours, atol=1e-5, rtol=1e-5)
    # ...and back into our own encoder
    encoder, report, _ = load_encoder(tmp_path / "export")
    assert report.shared == ["CT"]
    assert not report.added
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(x), ours, atol=1e-6, rtol=1e-6)


def test_band_name_matching(tmp_path, caplog):
    ckpt, task = s2_checkpoint(tmp_path, depth=1)
    export_encoder(ckpt, tmp_path / "export")
    src = task.model.encoder.patch_embed.proj.weight.detach()
    new_bands = ["B04", "b03", "B02", "TIR1", "B08"]  # RGB reordered (one lower-case), a new band
    encoder, report, _ = load_encoder(tmp_path / "export", bands=new_bands)
    assert report.shared == ["B04", "b03", "B02", "B08"]
    assert report.added == ["TIR1"]
    assert report.dropped == ["B01", "B05", "B06", "B07", "B8A", "B09", "B10", "B11", "B12"]
    assert "TIR1" in caplog.text
    assert "dropped" in caplog.text
    w = encoder.patch_embed.proj.weight.detach()
    for j, i in [(0, 3), (1, 2), (2, 1), (4, 7)]:
        torch.testing.assert_close(w[:, j], src[:, i])
    assert not any(torch.allclose(w[:, 3], src[:, i]) for i in range(13))  # fresh init, not a copy
    # the rest of the encoder is the pretrained one
    torch.testing.assert_close(
        encoder.blocks[0].attn.qkv.weight, task.model.encoder.blocks[0].attn.qkv.weight
    )


def test_match_band_channels_rejects_inconsistent_names():
    with pytest.raises(ValueError, match="band names"):
        match_band_channels(
            torch.zeros(4, 2, 2, 2), torch.zeros(4, 3, 2, 2), ["a", "b"], ["a", "b"]
        )


@pytest.mark.parametrize("kind", ["missing", "not_ours", "not_torch"])
def test_a_wrong_checkpoint_is_one_line_exit_2(tmp_path, capsys, kind):
    path = tmp_path / "model.ckpt"
    if kind == "not_ours":
        torch.save({"state_dict": {}}, path)  # a Lightning checkpoint of something else
    elif kind == "not_torch":
        path.write_text("not a checkpoint")
    assert main([str(path), "--output", str(tmp_path / "export")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: checkpoint: ")
    assert "pretraining run wrote" in err
    assert not (tmp_path / "export").exists()  # nothing written


def _modes(root) -> dict[str, int]:
    return {
        str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]
    }


def test_every_file_of_a_build_a_checkpoint_and_an_export_is_readable_by_others(tmp_path):
    """Under umask 022 everything the project writes is 0644 (folders 0755): store chunks and
    metadata, parts, settings, lock, manifest, build record, quarantine list, preview, a
    checkpoint written by the atomic checkpoint writer, a training preview, and an export, so a
    store mounted into the Docker image's non-root user, or shared on a cluster, is readable."""
    from geomed_mim.build_dataset import main as build_dataset
    from geomed_mim.tasks.checkpoint_io import AtomicCheckpointIO
    from geomed_mim.tasks.preview import save_png

    old = os.umask(0o022)
    try:
        out = tmp_path / "store"
        with contextlib.redirect_stdout(io.StringIO()):
            rc = build_dataset(["--config", str(REPO_ROOT / "configs/data/demo_lulc.yaml"),
                                "--output", str(out), "--workers", "1"])  # fmt: skip
        assert rc == 0
        _, task = s2_checkpoint(tmp_path)
        ckpt = tmp_path / "run" / "last.ckpt"
        state = {"state_dict": task.state_dict(), "geomed_mim": task.checkpoint_metadata()}
        AtomicCheckpointIO().save_checkpoint(state, ckpt)
        save_png(np.zeros((8, 8, 3), np.uint8), tmp_path / "run" / "preview.png")
        assert main([str(ckpt), "--output", str(tmp_path / "export")]) == 0
    finally:
        os.umask(old)
    modes = {}
    for root in (out, tmp_path / "run", tmp_path / "export"):
        modes.update({f"{root.name}/{k}": v for k, v in _modes(root).items()})
    names = set(modes)
    for expected in ("store/manifest.parquet", "store/build.json", "store/preview.png",
                     "store/quarantine.jsonl", "store/parts/_settings.json", "store/.build.lock",
                     "run/last.ckpt", "run/preview.png", "export/model.safetensors",
                     "export/config.json"):  # fmt: skip
        assert expected in names
    assert any(n.startswith("store/store.zarr/tiles/") and "/c/" in n for n in names)
    assert any(n.startswith("store/parts/") and n.endswith(".parquet") for n in names)
    wrong = {
        n: oct(m)
        for n, m in modes.items()
        if m != (0o755 if tmp_path.joinpath(n).is_dir() else 0o644)
    }
    assert not wrong


SWIN_TINY = {
    "embed_dim": 24,
    "depths": [2, 2],
    "num_heads": [2, 2],
    "window_size": 4,
    "drop_path_rate": 0.0,
}


def test_swin_v2_export_loads_strictly_into_timm_and_gives_the_same_features(tmp_path):
    """A SimMIM checkpoint's Swin V2 encoder: timm.create_model(architecture, **timm_kwargs)
    takes its weights with strict keys (no mask token) and computes the encoder's features."""
    ckpt, task = task_checkpoint(
        tmp_path, model="simmim_swinv2_tiny_window8", model_kwargs=SWIN_TINY, in_chans=6,
        img_size=32,
    )  # fmt: skip
    cfg = export_encoder(ckpt, tmp_path / "export")
    assert cfg["architecture"] == "swinv2_tiny_window8_256"
    model = timm.create_model(cfg["architecture"], **cfg["timm_kwargs"]).eval()
    model.load_state_dict(load_file(str(tmp_path / "export" / "model.safetensors")), strict=True)
    x = torch.randn(2, 6, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), task.model.encoder.eval()(x))
    assert cfg["bands"] == [f"b{i}" for i in range(6)]


def test_a_swin_encoder_with_extra_norms_is_refused_in_one_line(tmp_path, capsys):
    ckpt, _ = task_checkpoint(
        tmp_path, model="simmim_swinv2_tiny_window8", in_chans=3, img_size=32,
        model_kwargs={**SWIN_TINY, "extra_norm_period": 2},
    )  # fmt: skip
    assert main([str(ckpt), "--output", str(tmp_path / "export")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint: timm's SwinTransformerV2 has no extra norms")
    assert "\n" not in err


def test_a_3d_swin_encoder_is_refused_in_one_line(tmp_path, capsys):
    ckpt, _ = task_checkpoint(
        tmp_path, model="simmim_swinvit3d_feat48", in_chans=1, img_size=32, spatial_dims=3,
        model_kwargs={"embed_dim": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4],
                      "window_size": 4, "mask_patch_size": 8},
    )  # fmt: skip
    assert main([str(ckpt), "--output", str(tmp_path / "export")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: checkpoint: the 3-D Swin encoder (MONAI's, SimMIM 3-D) has no export yet"


def test_export_writes_a_model_card(tmp_path):
    """README.md next to config.json: Hugging Face front matter, the bands with wavelengths and
    statistics, the method and steps, and the timm call that loads the folder."""
    import yaml

    ckpt, _ = s2_checkpoint(tmp_path)
    assert main([str(ckpt), "--output", str(tmp_path / "export")]) == 0
    card = (tmp_path / "export" / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "timm"
    assert {"remote-sensing", "timm"} <= set(front["tags"])
    assert "license" in front
    cfg = json.loads((tmp_path / "export" / "config.json").read_text())
    wave = (cfg["wavelengths_nm"] or [None] * 13)[8] or "-"  # as the checkpoint recorded them
    assert f"| 9 | B8A | {wave} | {cfg['mean'][8]:.6g} | {cfg['std'][8]:.6g} |" in card
    assert "mae_vit_tiny_patch16" in card
    assert "- steps: " in card
    assert "timm.create_model('vit_tiny_patch16_224', checkpoint_path='model.safetensors'" in card


def test_push_to_hub_without_the_package_or_the_network_is_one_line(tmp_path, capsys, monkeypatch):
    """The upload is the last step: its failure leaves the export written and says so in one
    line (no network here: the Hub client is replaced by one that fails as offline would)."""
    import sys

    ckpt, _ = s2_checkpoint(tmp_path)
    argv = [str(ckpt), "--output", str(tmp_path / "export"), "--push-to-hub", "me/encoder"]
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --push-to-hub: huggingface_hub is not installed")
    assert "\n" not in err
    assert (tmp_path / "export" / "model.safetensors").is_file()

    class OfflineApi:
        def create_repo(self, repo: str, exist_ok: bool) -> None:
            raise ConnectionError("Failed to resolve 'huggingface.co'\nmore detail")

    hub = type(sys)("huggingface_hub")
    hub.HfApi = OfflineApi
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "--push-to-hub me/encoder: the upload failed (ConnectionError: Failed to resolve" in err
