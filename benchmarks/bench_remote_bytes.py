"""Bytes a build fetches over HTTP from a STAC ItemCollection of COGs, against the bytes its
tiles need and the whole files.

The archive: Sentinel-2 L2A-like scenes (12 bands at 10/20/60 m, uint16, deflate COGs with
256 px internal tiles and overviews) served by ``data_pipelines.range_server`` on 127.0.0.1,
which counts every byte it sends. For each scenario the build runs in this process (one
worker, its own process), then the table compares:

- whole: the size of every file the build opened;
- needed: each file's header (everything before its first image block) plus the full-resolution
  blocks that intersect a tile's footprint (for 20/60 m bands: the footprint on their grid, one
  pixel wider for bilinear resampling);
- fetched: what the server sent.

Scenarios: every pixel tiled (the usual build), and a tile size that leaves the scene's right and
bottom edges untiled (``--no_cover-edges``), where a range reader must skip what whole-file
downloads would fetch. Counting bytes makes the result independent of machine load.

    python benchmarks/bench_remote_bytes.py [--scenes 2] [--size 1024]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window, from_bounds
from rasterio.windows import bounds as window_bounds

from data_pipelines.range_server import RangeServer
from data_pipelines.rs.profiles import load_profile
from data_pipelines.rs.tiling import tile_grid

BLOCK = 256
COG = "image/tiff; application=geotiff; profile=cloud-optimized"


def write_scene(folder: Path, name: str, seed: int, size: int) -> dict[str, Path]:
    """One scene as 12 COG band files on one extent (smooth fields plus sensor-like noise)."""
    rng = np.random.default_rng(seed)
    fine = from_origin(300000.0 + 20000 * seed, 5000000.0, 10.0, 10.0)
    paths = {}
    for i, band in enumerate(load_profile("sentinel2_l2a").bands):
        res = int(band.resolution_m)
        n = math.ceil(size * 10 / res)
        yy, xx = np.mgrid[0:n, 0:n] / n
        field = 1800 + 900 * np.sin(7 * xx + i) * np.cos(5 * yy + seed) + 150 * i
        dn = np.clip(field + rng.normal(0, 80, (n, n)), 1, 20000).astype(np.uint16)
        path = folder / f"{name}_{band.name}.tif"
        with rasterio.open(
            path, "w", driver="COG", width=n, height=n, count=1, dtype="uint16", nodata=0,
            crs="EPSG:32633", transform=fine * fine.scale(res / 10), blocksize=BLOCK,
            compress="deflate", overview_resampling="average",
        ) as dst:  # fmt: skip
            dst.write(dn, 1)
        paths[band.name] = path
    return paths


def item(name: str, url: str, paths: dict[str, Path]) -> dict:
    assets = {
        band: {
            "href": f"{url}/{p.name}",
            "type": COG,
            "roles": ["data"],
            "eo:bands": [{"name": band}],
            "raster:bands": [{"nodata": 0, "scale": 1e-4, "offset": 0.0}],
        }
        for band, p in paths.items()
    }
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": name, "bbox": [14, 45, 15, 46],
        "geometry": {"type": "Point", "coordinates": [14.5, 45.5]},
        "properties": {"datetime": "2021-06-01T10:00:00Z", "eo:cloud_cover": 3.0},
        "links": [], "assets": assets,
    }  # fmt: skip


def block_offsets(ds: rasterio.io.DatasetReader) -> dict[tuple[int, int], tuple[int, int]]:
    """(row, col) -> (offset, size) of every full-resolution block, from GDAL's TIFF domain."""
    out = {}
    rows, cols = math.ceil(ds.height / BLOCK), math.ceil(ds.width / BLOCK)
    for r in range(rows):
        for c in range(cols):
            offset = ds.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=1)
            size = ds.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=1)
            out[(r, c)] = (int(offset or 0), int(size or 0))
    return out


def header_bytes(path: Path) -> int:
    """Bytes before the first image block of any resolution level (TIFF header and IFDs)."""
    first = []
    with rasterio.open(path) as ds:
        first.append(min(o for o, _ in block_offsets(ds).values()))
        levels = len(ds.overviews(1))
    for level in range(levels):
        with rasterio.open(path, overview_level=level) as ov:
            first.append(min(o for o, _ in block_offsets(ov).values() if o > 0))
    return min(first)


def needed_bytes(paths: dict[str, Path], tile: int, cover_edges: bool) -> int:
    """Header plus the full-resolution blocks under the tiles' footprints, every band file."""
    with rasterio.open(paths["B02"]) as ref:  # a 10 m band: the scene grid
        grid, height, width = ref.transform, ref.height, ref.width
    windows = [w for row in tile_grid(height, width, tile, tile, cover_edges) for w in row]
    total = 0
    for path in paths.values():
        total += header_bytes(path)
        with rasterio.open(path) as ds:
            blocks = block_offsets(ds)
            used: set[tuple[int, int]] = set()
            for w in windows:
                bounds = window_bounds(Window(w.col_off, w.row_off, tile, tile), grid)
                win = from_bounds(*bounds, transform=ds.transform)
                pad = 0 if ds.transform == grid else 1  # bilinear reads one pixel around
                r0 = max(0, math.floor(win.row_off) - pad)
                c0 = max(0, math.floor(win.col_off) - pad)
                r1 = min(ds.height, math.ceil(win.row_off + win.height) + pad)
                c1 = min(ds.width, math.ceil(win.col_off + win.width) + pad)
                for r in range(r0 // BLOCK, (r1 - 1) // BLOCK + 1):
                    for c in range(c0 // BLOCK, (c1 - 1) // BLOCK + 1):
                        used.add((r, c))
            total += sum(blocks[b][1] for b in used)
    return total


def run(scenario: str, doc: Path, out: Path, server: RangeServer, tile: int, edges: bool):
    server.reset_counts()
    flags = ["--tile-size", str(tile), "--profile", "sentinel2_l2a", "--workers", "1"]
    if not edges:
        flags.append("--no_cover-edges")
    # a fresh process per build: GDAL caches remote file contents per process
    proc = subprocess.run(
        [sys.executable, "-m", "geomed_mim.build_dataset", "--input", str(doc), "--output",
         str(out), "--overwrite", *flags],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"{scenario}: build failed ({proc.returncode}): {proc.stderr[-500:]}")
    tifs = [p for p in server.requests if p.endswith(".tif")]
    fetched = sum(server.bytes_sent[p] for p in tifs)
    requests = sum(server.requests[p] for p in tifs)
    whole_answers = sum(server.whole_file_answers[p] for p in tifs)
    return fetched, requests, whole_answers, len(tifs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--size", type=int, default=1024, help="10 m band size in pixels")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "cogs").mkdir()
        scenes = {
            f"scene{i}": write_scene(root / "cogs", f"scene{i}", i, args.size)
            for i in range(args.scenes)
        }
        whole = sum(p.stat().st_size for ps in scenes.values() for p in ps.values())
        rows = []
        with RangeServer(root / "cogs") as server:
            doc = root / "items.json"
            features = [item(n, server.url, ps) for n, ps in scenes.items()]
            doc.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
            scenarios = [
                ("every pixel tiled", 256, True),
                (f"edges untiled ({args.size // 384 * 384}² of {args.size}²)", 384, False),
            ]
            for name, tile, edges in scenarios:
                fetched, requests, whole_answers, files = run(
                    name, doc, root / "out", server, tile, edges
                )
                needed = sum(needed_bytes(ps, tile, edges) for ps in scenes.values())
                rows.append((name, tile, files, whole, needed, fetched, requests, whole_answers))
    print(f"{args.scenes} scenes x 12 bands, 10 m bands {args.size}² px, COG blocks {BLOCK}² px")
    print(
        f"| scenario | tile | files | whole files MB | tiles need MB | fetched MB | requests "
        f"| fetched / needed | fetched / whole | answered whole |\n|{'---|' * 10}"
    )
    for name, tile, files, whole, needed, fetched, requests, whole_answers in rows:
        print(
            f"| {name} | {tile} | {files} | {whole / 1e6:.2f} | {needed / 1e6:.2f} | "
            f"{fetched / 1e6:.2f} | {requests} | {fetched / needed:.3f} | {fetched / whole:.3f} "
            f"| {whole_answers} |"
        )


if __name__ == "__main__":
    main()
