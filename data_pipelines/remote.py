"""Remote inputs: URLs of rasters and catalogs on HTTP servers and object stores.

Rasters are never downloaded whole: rasterio/GDAL opens ``http(s)://``, ``s3://``, ``gs://``
and ``az://`` URLs through its virtual file systems (``/vsicurl/``, ``/vsis3/`` ...) and reads
only the byte ranges a window needs (a COG's header, then the tiles under the window).

The GDAL options for that are computed once per worker process from its environment
(:func:`gdal_remote_options`) and applied around every scene read. Anything the user sets in the
environment (``GDAL_*``, ``CPL_*``, ``AWS_*``, ``GOOGLE_*``, ``AZURE_*``) wins over the defaults
here, so credentials and endpoints are configured the usual way.

HTTP credentials set for every host (``GDAL_HTTP_HEADERS`` and its kin in the environment) would
go to every host a catalog names; :func:`global_http_credentials` lists them so that a catalog
read from a URL with assets on other hosts can be refused unless the user opts in
(:data:`ALLOW_GLOBAL_HTTP_CREDENTIALS_ENV`). Per-host credentials belong in a GDAL configuration
file's ``[credentials]`` section (``path=/vsicurl/https://HOST/``), which GDAL sends to that
prefix only.
"""

from __future__ import annotations

import functools
import os
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

from data_pipelines.errors import UserError

REMOTE_SCHEMES = ("http", "https", "s3", "gs", "az")

# Defaults for remote reads; each can be overridden by the environment variable of that name.
GDAL_REMOTE_DEFAULTS: dict[str, str] = {
    # opening a COG must not list its "directory" (an extra request, and huge on object stores)
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    # only raster files are fetched through /vsicurl/ (no probing for sidecar .aux.xml/.ovr)
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.jp2,.JP2,.vrt",
    # bounded retries with back-off for 429/5xx answers, then the read fails (quarantine)
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_TIMEOUT": "60",
    # neighbouring tile requests become one range request
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    # strips of one scene share blocks with the next strip: keep recently fetched ranges
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(32 * 2**20),
}
# Environment prefixes the user configures remote access with; they are never overridden.
USER_PREFIXES = ("GDAL_", "CPL_", "VSI_", "AWS_", "GOOGLE_", "GS_", "AZURE_")
# GDAL options that put credentials on every HTTP request, whatever the host
GLOBAL_HTTP_CREDENTIAL_OPTIONS = (
    "GDAL_HTTP_HEADERS",
    "GDAL_HTTP_HEADER_FILE",
    "GDAL_HTTP_USERPWD",
    "GDAL_HTTP_BEARER",
)
ALLOW_GLOBAL_HTTP_CREDENTIALS_ENV = "GEOMED_ALLOW_GLOBAL_HTTP_CREDENTIALS"
HTTP_RETRIES = 3  # catalog (JSON) fetches: attempts before the input is reported unreachable
HTTP_TIMEOUT_S = 30


class RemoteError(UserError, OSError):
    """A remote catalog or object that could not be fetched; the message is one line."""


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URL of a remote scheme GDAL reads (http(s), s3, gs, az)."""
    return urlparse(str(path)).scheme.lower() in REMOTE_SCHEMES


def global_http_credentials(environ: dict[str, str] | None = None) -> list[str]:
    """The GDAL options in the environment that send credentials to every HTTP host; empty
    when there are none or the user allowed that (``GEOMED_ALLOW_GLOBAL_HTTP_CREDENTIALS=1``)."""
    env = os.environ if environ is None else environ
    if env.get(ALLOW_GLOBAL_HTTP_CREDENTIALS_ENV, "").strip().lower() in ("1", "yes", "true"):
        return []
    return [name for name in GLOBAL_HTTP_CREDENTIAL_OPTIONS if env.get(name)]


def http_host(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL, None for anything else."""
    parsed = urlparse(url)
    if parsed.scheme.lower() not in ("http", "https"):
        return None
    return f"{parsed.scheme.lower()}://{parsed.netloc.lower()}"


def s3_endpoint_options(endpoint_url: str) -> dict[str, str]:
    """GDAL's S3 settings for a custom endpoint (MinIO, Ceph, a local test server):
    ``AWS_ENDPOINT_URL=http://127.0.0.1:9000`` -> host:port, plain HTTP, path-style buckets."""
    parsed = urlparse(endpoint_url)
    options = {"AWS_S3_ENDPOINT": parsed.netloc or parsed.path}
    if parsed.scheme == "http":
        options["AWS_HTTPS"] = "NO"
    if parsed.scheme in ("http", "https"):
        # a custom endpoint serves buckets as paths, not as bucket.host names
        options["AWS_VIRTUAL_HOSTING"] = "FALSE"
    return options


def gdal_remote_options(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The GDAL config options for remote reads: the defaults, the S3 endpoint derived from
    ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` (the AWS CLI's variables), minus whatever
    the environment sets itself (GDAL reads those directly)."""
    env = dict(os.environ if environ is None else environ)
    options = dict(GDAL_REMOTE_DEFAULTS)
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        options.update(s3_endpoint_options(endpoint))
    return {k: v for k, v in options.items() if k not in env}


@functools.lru_cache(maxsize=4)
def _worker_options(env_key: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(gdal_remote_options(dict(env_key)).items()))


def worker_gdal_options() -> dict[str, str]:
    """:func:`gdal_remote_options` of this process, computed once per worker (recomputed only
    when the remote-access part of its environment changes)."""
    env_key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(USER_PREFIXES)))
    return dict(_worker_options(env_key))


def read_bytes(url: str) -> bytes:
    """The whole object at ``url`` (small files only: catalogs, items); RemoteError if it stays
    unreachable after bounded retries."""
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https"):
        return _http_get(url)
    try:
        import fsspec  # s3fs / gcsfs / adlfs answer their schemes through fsspec
    except ImportError as e:  # pragma: no cover - fsspec is a dependency
        raise RemoteError(f"cannot read {url}: {e}") from None
    try:
        # a fresh filesystem: endpoint and credentials are read from the environment now
        with fsspec.open(url, "rb", skip_instance_cache=True) as f:
            return f.read()
    except Exception as e:
        raise RemoteError(f"cannot read {url}: {_one_line(e)}") from None


def _http_get(url: str) -> bytes:
    last: Exception | None = None
    for attempt in range(HTTP_RETRIES):
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            last = e
            if e.code < 500 and e.code != 429:
                break  # a client error does not get better by asking again
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            last = e
        time.sleep(0.2 * 2**attempt)
    raise RemoteError(f"cannot fetch {url}: {_one_line(last)}") from None


def _one_line(e: BaseException | None) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
