"""Small MODIS Level-1B files in the exact layout of MOD021KM/MYD021KM (and MOD03), via pyhdf.

SDS names, dimension names, attributes (``band_names``, scales/offsets, ``valid_range``,
``_FillValue``), ``*_Uncert_Indexes``, the 5-km ``Latitude``/``Longitude`` tie points and the
ECS ``CoreMetadata.0`` are those of collection 6.1 granules; only the swath is smaller (a few
scans, fewer frames). Pixel values are smooth textured fields: brightness temperatures of
220-300 K turned into DN through Planck's law and the file's own radiance scales/offsets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

SWATH = ":MODIS_SWATH_Type_L1B"
# (SDS, band dimension, band_names)
EV_LAYOUT = (
    ("EV_250_Aggr1km_RefSB", "Band_250M", "1,2"),
    ("EV_500_Aggr1km_RefSB", "Band_500M", "3,4,5,6,7"),
    ("EV_1KM_RefSB", "Band_1KM_RefSB", "8,9,10,11,12,13lo,13hi,14lo,14hi,15,16,17,18,19,26"),
    ("EV_1KM_Emissive", "Band_1KM_Emissive", "20,21,22,23,24,25,27,28,29,30,31,32,33,34,35,36"),
)
# radiance scales/offsets of the emissive bands, of the size real collection 6.1 granules carry
EMISSIVE_SCALES = (
    6.26e-05, 0.0031495, 6.92e-05, 7.98e-05, 3.14e-04, 4.47e-04, 1.06e-03, 6.36e-04, 8.21e-04,
    6.97e-04, 8.40e-04, 7.29e-04, 5.90e-04, 3.99e-04, 3.21e-04, 2.15e-04,
)  # fmt: skip
EMISSIVE_OFFSETS = (
    2730.58, 2317.49, 2730.58, 2730.58, 1560.33, 1577.34, 1658.22, 2501.30, 2501.30, 1905.19,
    1577.34, 1658.22, 2501.30, 2501.30, 2501.30, 2501.30,
)  # fmt: skip
# the emissive central wavenumbers [cm^-1] (to make plausible radiances from temperatures)
CWN = (
    2641.775, 2505.277, 2518.028, 2465.428, 2235.815, 2200.346, 1477.967, 1362.737, 1173.190,
    1027.715, 908.0884, 831.5399, 748.3394, 730.8963, 718.8681, 704.5367,
)  # fmt: skip

CORE_METADATA = """
GROUP                  = INVENTORYMETADATA
  GROUPTYPE            = MASTERGROUP

  GROUP                  = ECSDATAGRANULE

    OBJECT                 = LOCALGRANULEID
      NUM_VAL              = 1
      VALUE                = "{name}"
    END_OBJECT             = LOCALGRANULEID

    OBJECT                 = DAYNIGHTFLAG
      NUM_VAL              = 1
      VALUE                = "{day_night}"
    END_OBJECT             = DAYNIGHTFLAG

  END_GROUP              = ECSDATAGRANULE

  GROUP                  = COLLECTIONDESCRIPTIONCLASS

    OBJECT                 = SHORTNAME
      NUM_VAL              = 1
      VALUE                = "{short_name}"
    END_OBJECT             = SHORTNAME

    OBJECT                 = VERSIONID
      NUM_VAL              = 1
      VALUE                = 61
    END_OBJECT             = VERSIONID

  END_GROUP              = COLLECTIONDESCRIPTIONCLASS

  GROUP                  = RANGEDATETIME

    OBJECT                 = RANGEENDINGDATE
      NUM_VAL              = 1
      VALUE                = "{date}"
    END_OBJECT             = RANGEENDINGDATE

    OBJECT                 = RANGEENDINGTIME
      NUM_VAL              = 1
      VALUE                = "{end_time}"
    END_OBJECT             = RANGEENDINGTIME

    OBJECT                 = RANGEBEGINNINGDATE
      NUM_VAL              = 1
      VALUE                = "{date}"
    END_OBJECT             = RANGEBEGINNINGDATE

    OBJECT                 = RANGEBEGINNINGTIME
      NUM_VAL              = 1
      VALUE                = "{start_time}"
    END_OBJECT             = RANGEBEGINNINGTIME

  END_GROUP              = RANGEDATETIME

  GROUP                  = ASSOCIATEDPLATFORMINSTRUMENTSENSOR

    OBJECT                 = ASSOCIATEDPLATFORMINSTRUMENTSENSORCONTAINER
      CLASS                = "1"

      OBJECT                 = ASSOCIATEDSENSORSHORTNAME
        CLASS                = "1"
        NUM_VAL              = 1
        VALUE                = "MODIS"
      END_OBJECT             = ASSOCIATEDSENSORSHORTNAME

      OBJECT                 = ASSOCIATEDPLATFORMSHORTNAME
        CLASS                = "1"
        NUM_VAL              = 1
        VALUE                = "{platform}"
      END_OBJECT             = ASSOCIATEDPLATFORMSHORTNAME

      OBJECT                 = ASSOCIATEDINSTRUMENTSHORTNAME
        CLASS                = "1"
        NUM_VAL              = 1
        VALUE                = "MODIS"
      END_OBJECT             = ASSOCIATEDINSTRUMENTSHORTNAME

    END_OBJECT             = ASSOCIATEDPLATFORMINSTRUMENTSENSORCONTAINER

  END_GROUP              = ASSOCIATEDPLATFORMINSTRUMENTSENSOR

END_GROUP              = INVENTORYMETADATA

END
"""


@dataclass
class Granule:
    path: Path
    dn: dict[str, np.ndarray]  # SDS name -> [bands, rows, frames] as written
    attrs: dict[str, dict]  # SDS name -> attributes as written
    lat5: np.ndarray
    lon5: np.ndarray
    lat_1km: np.ndarray  # the smooth field the tie points were sampled from
    lon_1km: np.ndarray


def smooth_field(shape: tuple[int, ...], seed: int, sigma: float = 6.0) -> np.ndarray:
    """A textured field in [0, 1]: smoothed noise (real-imagery-like autocorrelation)."""
    rng = np.random.default_rng(seed)
    f = gaussian_filter(rng.standard_normal(shape), sigma=sigma)
    return (f - f.min()) / max(f.max() - f.min(), 1e-12)


def planck_radiance(bt_k: np.ndarray, cwn: float) -> np.ndarray:
    """Spectral radiance [W m^-2 sr^-1 um^-1] of a black body at ``bt_k`` (before the tcs/tci
    correction, which is < 0.5 K)."""
    h, c, k = 6.6260755e-34, 2.9979246e8, 1.380658e-23
    lam = 1.0 / (cwn * 100.0)
    return 2 * h * c * c / (lam**5 * (np.exp(h * c / (k * lam * bt_k)) - 1.0)) * 1e-6


def geolocation_1km(rows: int, frames: int, lat0: float, lon0: float) -> tuple[np.ndarray, ...]:
    """A smooth, slightly rotated swath: about 1 km per pixel."""
    r, c = np.meshgrid(np.arange(rows), np.arange(frames), indexing="ij")
    lat = lat0 - 0.009 * r + 0.0015 * c
    lon = lon0 + 0.0105 * c + 0.002 * r
    return lat, lon


def _sds(sd, name: str, dtype_code, data: np.ndarray, dims: list[str], attrs: dict) -> None:
    from pyhdf.SD import SDC

    sds = sd.create(name, dtype_code, list(data.shape))
    for i, dim in enumerate(dims):
        sds.dim(i).setname(dim)
    for key, value in attrs.items():
        if isinstance(value, str):
            sds.attr(key).set(SDC.CHAR8, value)
        else:
            arr = np.atleast_1d(np.asarray(value))
            code = {
                np.dtype(np.float32): SDC.FLOAT32,
                np.dtype(np.uint16): SDC.UINT16,
                np.dtype(np.uint8): SDC.UINT8,
            }[arr.dtype]
            sds.attr(key).set(code, arr.tolist() if arr.size > 1 else arr.item())
    sds[:] = data
    sds.endaccess()


def _band_dn(n_bands: int, rows: int, frames: int, seed: int, emissive: bool, scales, offsets):
    if not emissive:
        refl = 0.05 + 0.6 * smooth_field((n_bands, rows, frames), seed)  # reflectance 0.05-0.65
        return np.round(refl / scales[:, None, None] + offsets[:, None, None]).astype(np.uint16)
    bt = 220.0 + 80.0 * smooth_field((n_bands, rows, frames), seed)  # 220-300 K
    dn = np.empty((n_bands, rows, frames), dtype=np.uint16)
    for i in range(n_bands):
        radiance = planck_radiance(bt[i], CWN[i])
        dn[i] = np.clip(np.round(radiance / scales[i] + offsets[i]), 0, 32767)
    return dn


def ev_attributes(band_names: str, emissive: bool, seed: int) -> dict:
    n = len(band_names.split(","))
    rng = np.random.default_rng(seed)
    if emissive:
        r_scales = np.asarray(EMISSIVE_SCALES, dtype=np.float32)
        r_offsets = np.asarray(EMISSIVE_OFFSETS, dtype=np.float32)
    else:
        r_scales = rng.uniform(0.005, 0.05, n).astype(np.float32)
        r_offsets = np.zeros(n, dtype=np.float32)
    attrs = {
        "long_name": "Earth View "
        + ("1KM Emissive Bands" if emissive else "Reflective Solar Bands")
        + " Scaled Integers",
        "units": "none",
        "valid_range": np.array([0, 32767], dtype=np.uint16),
        "_FillValue": np.uint16(65535),
        "band_names": band_names,
        "radiance_scales": r_scales,
        "radiance_offsets": r_offsets,
        "radiance_units": "Watts/m^2/micrometer/steradian",
    }
    if not emissive:
        attrs |= {
            "reflectance_scales": rng.uniform(2.5e-5, 6e-5, n).astype(np.float32),
            "reflectance_offsets": rng.uniform(0.0, 320.0, n).astype(np.float32),
            "reflectance_units": "none",
            "corrected_counts_scales": np.full(n, 0.1249, dtype=np.float32),
            "corrected_counts_offsets": np.zeros(n, dtype=np.float32),
            "corrected_counts_units": "counts",
        }
    return attrs


def write_mod021km(
    folder: Path,
    platform: str = "Terra",
    scans: int = 26,
    frames: int = 262,
    when: str = "A2021123.1235",
    seed: int = 0,
    day_night: str = "Day",
    lat0: float = 45.0,
    lon0: float = 10.0,
) -> Granule:
    """Write ``MOD021KM.<when>.061.<processed>.hdf`` (``MYD`` for Aqua) into ``folder``."""
    from pyhdf.SD import SD, SDC

    prefix = "MOD" if platform == "Terra" else "MYD"
    path = folder / f"{prefix}021KM.{when}.061.2021124012345.hdf"
    rows = 10 * scans
    sd = SD(str(path), SDC.WRITE | SDC.CREATE | SDC.TRUNC)
    dn, attrs_out = {}, {}
    for k, (sds_name, band_dim, names) in enumerate(EV_LAYOUT):
        emissive = sds_name == "EV_1KM_Emissive"
        attrs = ev_attributes(names, emissive, seed + 10 * k)
        n = len(names.split(","))
        scales = attrs["radiance_scales" if emissive else "reflectance_scales"]
        offsets = attrs["radiance_offsets" if emissive else "reflectance_offsets"]
        data = _band_dn(n, rows, frames, seed + k, emissive, scales, offsets)
        dims = [band_dim + SWATH, "10*nscans" + SWATH, "Max_EV_frames" + SWATH]
        _sds(sd, sds_name, SDC.UINT16, data, dims, attrs)
        uncert = np.full(data.shape, 3, dtype=np.uint8)
        _sds(sd, sds_name + "_Uncert_Indexes", SDC.UINT8, uncert, dims, {
            "long_name": "Earth View Uncertainty Indexes",
            "units": "percent",
            "valid_range": np.array([0, 15], dtype=np.uint8),
            "_FillValue": np.uint8(255),
            "specified_uncertainty": np.full(n, 1.5, dtype=np.float32),
            "scaling_factor": np.full(n, 7.0, dtype=np.float32),
            "uncertainty_units": "percent",
        })  # fmt: skip
        dn[sds_name], attrs_out[sds_name] = data, attrs
    lat, lon = geolocation_1km(rows, frames, lat0, lon0)
    tie_rows = np.concatenate([[10 * s + 2, 10 * s + 7] for s in range(scans)])
    tie_cols = np.arange(2, frames, 5)
    lat5 = lat[np.ix_(tie_rows, tie_cols)].astype(np.float32)
    lon5 = lon[np.ix_(tie_rows, tie_cols)].astype(np.float32)
    geo_dims = ["2*nscans" + SWATH, "1KM_geo_dim" + SWATH]
    for name, values, lo in (("Latitude", lat5, 90.0), ("Longitude", lon5, 180.0)):
        _sds(sd, name, SDC.FLOAT32, values, geo_dims, {
            "units": "degrees",
            "valid_range": np.array([-lo, lo], dtype=np.float32),
            "_FillValue": np.float32(-999.0),
        })  # fmt: skip
    start = f"{when[9:11]}:{when[11:13]}:00.000000"
    date = _date_of(when)
    core = CORE_METADATA.format(
        name=path.name, day_night=day_night, short_name=f"{prefix}021KM", date=date,
        start_time=start, end_time=f"{when[9:11]}:{int(when[11:13]) + 5:02d}:00.000000",
        platform=platform,
    )  # fmt: skip
    sd.attr("CoreMetadata.0").set(SDC.CHAR8, core)
    sd.attr("Number of Scans").set(SDC.INT32, scans)
    sd.attr("Number of Day mode scans").set(SDC.INT32, scans if day_night == "Day" else 0)
    sd.attr("Number of Night mode scans").set(SDC.INT32, 0 if day_night == "Day" else scans)
    sd.attr("Max Earth View Frames").set(SDC.INT32, frames)
    sd.end()
    return Granule(path, dn, attrs_out, lat5, lon5, lat, lon)


def write_mod03(folder: Path, granule: Granule, lat_shift: float = 0.0) -> Path:
    """The matching ``MOD03``/``MYD03`` with 1-km ``Latitude``/``Longitude`` (optionally
    shifted, so a test can tell which geolocation was used)."""
    from pyhdf.SD import SD, SDC

    name = granule.path.name.replace("021KM", "03")
    path = folder / name
    sd = SD(str(path), SDC.WRITE | SDC.CREATE | SDC.TRUNC)
    dims = ["nscans*10:MODIS_Swath_Type_GEO", "mframes:MODIS_Swath_Type_GEO"]
    for sds_name, values in (
        ("Latitude", granule.lat_1km + lat_shift),
        ("Longitude", granule.lon_1km),
    ):
        _sds(sd, sds_name, SDC.FLOAT32, values.astype(np.float32), dims, {
            "units": "degrees", "_FillValue": np.float32(-999.0),
        })  # fmt: skip
    sd.end()
    return path


def _date_of(when: str) -> str:
    import datetime as dt

    year, doy = int(when[1:5]), int(when[5:8])
    return (dt.date(year, 1, 1) + dt.timedelta(days=doy - 1)).isoformat()


def band_of(granule: Granule, band: str) -> tuple[str, int]:
    """(SDS, index) of a MODIS band number in the written granule."""
    for sds_name, _, names in EV_LAYOUT:
        parts = names.split(",")
        if band in parts:
            return sds_name, parts.index(band)
    raise KeyError(band)


def expected_bt(dn: np.ndarray, scale: float, offset: float, band: str) -> np.ndarray:
    """Brightness temperature written out from the MODIS L1B formulas and the published
    constants (effective central wavenumber, tcs, tci), independently of the package."""
    emissive = [b.strip() for b in EV_LAYOUT[3][2].split(",")]
    i = emissive.index(band)
    tcs = (
        0.9993411, 0.9998646, 0.9998584, 0.9998682, 0.9998819, 0.9998845, 0.9994877, 0.9994918,
        0.9995495, 0.9997398, 0.9995608, 0.9997256, 0.9999160, 0.9999167, 0.9999191, 0.9999281,
    )[i]  # fmt: skip
    tci = (
        0.4770532, 0.09262664, 0.09757996, 0.08929242, 0.07310901, 0.07060415, 0.2204921,
        0.2046087, 0.1599191, 0.08253401, 0.1302699, 0.07181833, 0.01972608, 0.01913568,
        0.01817817, 0.01583042,
    )[i]  # fmt: skip
    radiance = scale * (dn.astype(np.float64) - offset)  # W m^-2 sr^-1 um^-1
    h, c, k = 6.6260755e-34, 2.9979246e8, 1.380658e-23
    lam = 1.0 / (CWN[i] * 100.0)  # m
    # Planck inverted for temperature; radiance per metre = 1e6 x per micrometre
    t = (h * c / (k * lam)) / np.log(2 * h * c * c / (lam**5 * radiance * 1e6) + 1.0)
    return (t - tci) / tcs


def great_circle_km(lat1, lon1, lat2, lon2) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dlon = math.radians(lon2 - lon1)
    cos = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dlon)
    return 6371.0 * math.acos(min(1.0, max(-1.0, cos)))


def set_pixels(path: Path, sds_name: str, band_index: int, rows: slice, cols: slice, value: int):
    """Overwrite a block of one band of an SDS in a written granule (flags, uncertainty)."""
    from pyhdf.SD import SD, SDC

    sd = SD(str(path), SDC.WRITE)
    sds = sd.select(sds_name)
    start = [band_index, rows.start, cols.start]
    count = [1, rows.stop - rows.start, cols.stop - cols.start]
    block = sds.get(start=start, count=count)
    block[:] = value
    sds.set(block, start=start, count=count)
    sds.endaccess()
    sd.end()
