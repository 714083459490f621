"""Archive-wide deduplication: exact hashes, 64-bit perceptual hashes, Hamming-radius search.

- **exact**: BLAKE2b of the decoded pixels plus shape and dtype, so the same pixels under
  another file name (or another container format) collide and nothing else does. RS tiles and
  CT volumes use the same hash and the same first-in-order-wins marking.
- **near**: a DCT perceptual hash of a per-band-normalized composite: each band is
  standardized within the tile, the bands are averaged, the result is resized to 32×32, and the
  64 lowest DCT frequencies are thresholded at their median. Per-band standardization makes the
  hash blind to per-band gain/offset changes (re-calibration, brightness), so re-encoded copies
  of a scene land within a few bits.
- **search**: all pairs within Hamming distance ``radius`` via multi-index hashing
  (faiss ``IndexBinaryMultiHash``: 3 tables of 21 bits probed with 1 bit flipped, which by the
  pigeonhole principle finds every pair within distance 5 — exact, not approximate — up to 5),
  then connected components (union-find) so each group keeps exactly one member: the first in
  manifest order.
"""

from __future__ import annotations

import hashlib

import numpy as np
from scipy import fft, ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

HASH_SIZE = 8  # 8x8 DCT coefficients -> 64 bits
DCT_SIZE = 32
# 3 tables x 21 bits, 1 flip probed: exact for radius <= 3 * (1 + 1) - 1
MIH_TABLES, MIH_BITS, MIH_FLIPS = 3, 21, 1
MAX_EXACT_RADIUS = MIH_TABLES * (MIH_FLIPS + 1) - 1
EXACT_HASH_KIND = "blake2b-128"  # what exact_hash computes; parts hashed otherwise never mix


def exact_hash(tile: np.ndarray) -> str:
    """Hex digest of pixels + shape + dtype."""
    h = hashlib.blake2b(digest_size=16)  # EXACT_HASH_KIND
    h.update(f"{tile.dtype.str}{tile.shape}".encode())
    h.update(np.ascontiguousarray(tile).tobytes())
    return h.hexdigest()


def normalized_composite(tiles: np.ndarray, nodata: float | None = None) -> np.ndarray:
    """``[n, C, h, w]`` -> ``[n, h, w]``: mean over bands of per-band standardized values.

    Invalid pixels (NaN, nodata) are left out of the statistics and set to 0 (the mean)."""
    x = tiles.astype(np.float32)
    invalid = ~np.isfinite(x)
    if nodata is not None:
        invalid |= tiles == nodata
    if invalid.any():
        valid = ~invalid
        cnt = np.maximum(valid.sum(axis=(2, 3), keepdims=True), 1)
        x = np.where(valid, x, 0.0)
        mean = x.sum(axis=(2, 3), keepdims=True) / cnt
        dev = np.where(valid, x - mean, 0.0)
        std = np.sqrt((dev * dev).sum(axis=(2, 3), keepdims=True) / cnt)
    else:
        mean = x.mean(axis=(2, 3), keepdims=True)
        dev = x - mean
        std = np.sqrt((dev * dev).mean(axis=(2, 3), keepdims=True))
    z = dev / np.where(std > 0, std, 1.0)
    return z.mean(axis=1)


def perceptual_hashes(tiles: np.ndarray, nodata: float | None = None) -> np.ndarray:
    """64-bit DCT hashes of tiles ``[n, C, h, w]``: ``uint64 [n]``."""
    img = normalized_composite(tiles, nodata).astype(np.float64)  # [n, h, w]
    n, h, w = img.shape
    if (h, w) != (DCT_SIZE, DCT_SIZE):
        if h % DCT_SIZE == 0 and w % DCT_SIZE == 0:  # area average, the common case
            img = img.reshape(n, DCT_SIZE, h // DCT_SIZE, DCT_SIZE, w // DCT_SIZE).mean(axis=(2, 4))
        else:
            zoom = (1, DCT_SIZE / h, DCT_SIZE / w)
            img = ndimage.zoom(img, zoom, order=1, grid_mode=True, mode="nearest")
    coeffs = fft.dctn(img, axes=(1, 2), norm="ortho")[:, :HASH_SIZE, :HASH_SIZE].reshape(n, -1)
    median = np.median(coeffs[:, 1:], axis=1, keepdims=True)  # DC is ~0 after standardization
    bits = coeffs > median  # [n, 64]
    return np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.uint64)


def perceptual_hash(tile: np.ndarray, nodata: float | None = None) -> int:
    """64-bit DCT hash of one ``[C, h, w]`` tile, as a Python int in ``[0, 2**64)``."""
    return int(perceptual_hashes(tile[None], nodata)[0])


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def near_pairs_exhaustive(hashes: np.ndarray, radius: int, block: int = 2048) -> np.ndarray:
    """All pairs ``i < j`` with Hamming distance <= radius, by brute force: ``[P, 2]``."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    out = []
    for start in range(0, len(hashes), block):
        q = hashes[start : start + block]
        d = hamming(q[:, None], hashes[None, :])  # [b, N]
        i, j = np.nonzero(d <= radius)
        i = i + start
        keep = i < j
        out.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.int64)


def near_pairs_mih(hashes: np.ndarray, radius: int) -> np.ndarray:
    """All pairs ``i < j`` within ``radius`` via faiss multi-index hashing: ``[P, 2]``."""
    import faiss

    if radius > MAX_EXACT_RADIUS:
        raise ValueError(f"near-dup radius {radius} > {MAX_EXACT_RADIUS} is not searched exactly")
    hashes = np.ascontiguousarray(np.asarray(hashes, dtype=np.uint64))
    codes = hashes.astype(">u8").view(np.uint8).reshape(-1, 8)
    index = faiss.IndexBinaryMultiHash(64, MIH_TABLES, MIH_BITS)
    index.nflip = MIH_FLIPS
    index.add(codes)
    lims, _, labels = index.range_search(codes, radius + 1)  # faiss keeps d < radius + 1
    queries = np.repeat(np.arange(len(hashes)), np.diff(lims).astype(np.int64))
    labels = labels.astype(np.int64)
    keep = queries < labels
    return np.stack([queries[keep], labels[keep]], axis=1)


def near_duplicate_pairs(hashes: np.ndarray, radius: int, method: str = "auto") -> np.ndarray:
    """Pairs within ``radius``; brute force for small inputs, multi-index hashing otherwise."""
    if len(hashes) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    if method == "auto":
        method = "exhaustive" if len(hashes) <= 4096 else "mih"
    if method == "exhaustive":
        return near_pairs_exhaustive(hashes, radius)
    return near_pairs_mih(hashes, radius)


def group_representatives(n: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find over ``pairs``: for each item, the smallest index of its group."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if len(pairs) == 0:
        return np.arange(n)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), (n, n))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    return first[labels]


def mark_exact_duplicates(
    exact: list[str | None], candidates: np.ndarray | None = None
) -> np.ndarray:
    """For items in order: index of the first earlier item with the same exact hash, else -1.

    ``candidates`` (a boolean mask, default all) limits which items take part; items without a
    hash never do.
    """
    dup_of = np.full(len(exact), -1, dtype=np.int64)
    first_seen: dict[str, int] = {}
    members = np.arange(len(exact)) if candidates is None else np.nonzero(candidates)[0]
    for i in members:
        key = exact[i]
        if key is None:
            continue
        if key in first_seen:
            dup_of[i] = first_seen[key]
        else:
            first_seen[key] = int(i)
    return dup_of


def mark_duplicates(
    exact: list[str | None],
    phash: np.ndarray,
    candidates: np.ndarray,
    radius: int | None,
) -> tuple[np.ndarray, list[str | None]]:
    """For items in manifest order: index of the item each duplicates (-1 = none), and the kind.

    ``candidates`` is a boolean mask of items taking part (kept tiles); exact duplicates are
    resolved first, then near duplicates among the remaining unique items.
    """
    dup_of = mark_exact_duplicates(exact, candidates)
    kind: list[str | None] = ["exact" if j >= 0 else None for j in dup_of]
    if radius is None or radius < 0:
        return dup_of, kind
    unique = np.nonzero(candidates & (dup_of < 0))[0]
    pairs = near_duplicate_pairs(phash[unique], radius)
    reps = unique[group_representatives(len(unique), pairs)]
    for i, rep in zip(unique, reps, strict=True):
        if rep != i:
            dup_of[i] = rep
            kind[i] = "near"
    return dup_of, kind
