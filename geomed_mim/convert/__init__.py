"""Convert a published pretrained model into this project's export folder:
``python -m geomed_mim.convert --from FORMAT --checkpoint FILE --output DIR`` (``geomed-convert``).

The folder is the one ``geomed_mim.export`` writes (``model.safetensors`` + ``config.json`` +
``README.md``, a model card), so ``--model.init_args.init_from DIR`` (pretraining and
fine-tuning), evaluation and timm load it. A source that holds its MIM decoder (SatVision-TOA's
SimMIM, MAE) also gets ``decoder.safetensors``, and ``config.json`` names the model and
``model_kwargs`` that continue its pretraining (``continue_pretraining``).

Formats (``--from``): ``satvision`` (pytorch-caney SimMIM on Swin V2, ``--config`` its YAML),
``mae`` (facebookresearch/mae keys; SatMAE, Prithvi with ``--frames-to-2d``), ``timm``
(``--architecture``), ``torchgeo:<Weights>.<MEMBER>`` (offline, from torch hub's cache) and
``swinunetr`` (MONAI SwinUNETR's self-supervised ``model_swinvit.pt``, 3-D CT).

Bands: the source's (its metadata, or ``--source-bands``) are matched by name to the target's
(``--target-bands`` or ``--profile``): matched kernels copied, the target's other bands
initialized as the mean of the source's kernels, the source's unmatched bands dropped
(:func:`geomed_mim.convert.common.match_bands`). ``--img-size`` resamples a ViT's position
embeddings. Every user mistake is one line naming the flag, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from data_pipelines.errors import EXIT_OK
from data_pipelines.rs.profiles import ProfileError, load_profile
from geomed_mim.convert.common import Converted, band_table, match_bands, resample_positions
from geomed_mim.convert.common import write_export as write_folder
from geomed_mim.model_card import write_model_card
from geomed_mim.usage import UsageError, UserErrors

FORMATS = ("satvision", "mae", "timm", "swinunetr", "torchgeo:<Weights>.<MEMBER>")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m geomed_mim.convert",
        description="Convert a published pretrained model into an export folder.",
    )
    p.add_argument("--from", dest="source", required=True, help=" | ".join(FORMATS))
    p.add_argument("--checkpoint", help="the published weights file")
    p.add_argument("--config", help="satvision: pytorch-caney's YAML config")
    p.add_argument("--output", "-o", required=True, help="output folder")
    p.add_argument("--architecture", help="timm: the timm model name, e.g. vit_small_patch16_224")
    p.add_argument("--source-bands", help="the source's bands, comma-separated, in its order")
    p.add_argument("--target-bands", help="the bands to convert to, comma-separated")
    p.add_argument("--profile", help="convert to a sensor profile's bands, e.g. sentinel2_l1c")
    p.add_argument(
        "--band-map", help="TARGET=SOURCE pairs, e.g. B04=B1,B08=B2: match only these (sensors)"
    )
    p.add_argument("--img-size", type=int, help="resample position embeddings to this size")
    p.add_argument("--num-heads", type=int, help="mae, timm: encoder heads")
    p.add_argument("--decoder-num-heads", type=int, help="mae: decoder heads (default 16)")
    p.add_argument("--norm-pix-loss", action="store_true", help="mae: trained on normed pixels")
    p.add_argument("--frames-to-2d", choices=("sum", "first", "mean"), help="Prithvi: Conv3d→2-D")
    p.add_argument("--num-frames", type=int, default=1, help="Prithvi: frames in pos_embed")
    return p


def parse_band_map(text: str | None) -> dict[str, str] | None:
    """``B04=B1,B08=B2`` → {"B04": "B1", "B08": "B2"} (target band → source band)."""
    if not text:
        return None
    pairs = [part.split("=") for part in text.split(",") if part.strip()]
    if any(len(pair) != 2 or not all(x.strip() for x in pair) for pair in pairs):
        raise UsageError(f"--band-map {text}: write TARGET=SOURCE pairs, e.g. B04=B1,B08=B2")
    return {t.strip(): s.strip() for t, s in pairs}


def split_bands(text: str | None) -> list[str] | None:
    return [b.strip() for b in text.split(",") if b.strip()] if text else None


def profile_bands(name: str) -> tuple[list[str], list[float | None], str]:
    """(bands, wavelengths, name) of a sensor profile; a usage error naming ``--profile``."""
    try:
        profile = load_profile(name)
    except ProfileError as e:
        raise UsageError(str(e)) from None
    return profile.band_names, [b.wavelength_nm for b in profile.bands], profile.name


def read_source(args: argparse.Namespace) -> Converted:
    """The source format's reader."""
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    if checkpoint is not None and not checkpoint.is_file():
        raise UsageError(f"--checkpoint {checkpoint}: no such file; give the published weights")
    if args.source.startswith("torchgeo:"):
        from geomed_mim.convert.timm_vit import read_torchgeo

        return read_torchgeo(args.source.split(":", 1)[1], checkpoint)
    if args.source not in FORMATS:
        raise UsageError(
            f"--from {args.source}: unknown format; choose one of {', '.join(FORMATS)}"
        )
    if checkpoint is None:
        raise UsageError(f"--checkpoint: required for --from {args.source}; give the weights file")
    if args.source == "satvision":
        return read_satvision_source(args, checkpoint)
    if args.source == "timm":
        from geomed_mim.convert.timm_vit import read_timm

        if not args.architecture:
            raise UsageError("--architecture: required for --from timm, e.g. vit_small_patch16_224")
        return read_timm(checkpoint, args.architecture, f"timm {args.architecture}", args.num_heads)
    if args.source == "swinunetr":
        from geomed_mim.convert.swinunetr import read_swinunetr

        return read_swinunetr(checkpoint, args.img_size)
    from geomed_mim.convert.mae import read_mae

    return read_mae(checkpoint, vars(args))


def read_satvision_source(args: argparse.Namespace, checkpoint: Path) -> Converted:
    from geomed_mim.convert.satvision import PROFILE, read_satvision

    if not args.config:
        raise UsageError("--config: required for --from satvision; give its YAML config")
    if not Path(args.config).is_file():
        raise UsageError(f"--config {args.config}: no such file; give SatVision-TOA's YAML")
    model = read_satvision(checkpoint, Path(args.config))
    model.bands, model.wavelengths_nm, _ = profile_bands(PROFILE)
    return model


def settle_bands(model: Converted, args: argparse.Namespace) -> list[str] | None:
    """The source's band names (``--source-bands`` first) and the target's, or None to keep."""
    given = split_bands(args.source_bands)
    if given:
        if len(given) != model.in_chans:
            raise UsageError(
                f"--source-bands: {len(given)} names for a {model.in_chans}-band patch embedding"
            )
        model.bands = given
    target = split_bands(args.target_bands)
    if args.profile:
        target, wavelengths, model.profile = profile_bands(args.profile)
        model.wavelengths_nm = wavelengths
    if not model.bands:
        if target:
            raise UsageError(
                "--source-bands: the source does not record its bands; give them in its order"
            )
        model.bands = [f"band{i + 1}" for i in range(model.in_chans)]
    return target


def convert(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """Read, match bands, resample, write; return (config, band report or None)."""
    model = read_source(args)
    target = settle_bands(model, args)
    if args.band_map and not target:
        raise UsageError("--band-map: give the target's bands too (--target-bands or --profile)")
    report = match_bands(model, target, parse_band_map(args.band_map)) if target else None
    if target and not args.profile:
        model.wavelengths_nm = None  # the source's no longer line up with the bands
    if args.img_size:
        resample_positions(model, args.img_size)
    out = Path(args.output)
    config = write_folder(model, out, report)
    write_model_card(out, config)
    return config, report


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with UserErrors(output=args.output, system_exit=False) as errors:
        config, report = convert(args)
    if errors.status is not None:
        return errors.status
    if report is not None:
        print(band_table(report))
    else:
        print(f"  bands: the source's {len(config['bands'])}, unchanged: {config['bands']}")
    decoder = " + decoder.safetensors" if config.get("continue_pretraining") else ""
    print(
        f"converted {config['converted_from']['format']} ({config['depth']} blocks, dim "
        f"{config['embed_dim']}, {config['in_chans']} bands, {config['img_size'][0]} px) → "
        f"{args.output}: model.safetensors{decoder} + config.json + README.md; loads into "
        f"{config['architecture']} {config.get('timm_kwargs') or ''}"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
