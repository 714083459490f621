"""``--scheduler tls://...``: a real dask scheduler on 127.0.0.1 that accepts TLS only, with
certificates made here by the openssl command: the demo builds through it with --tls-*; a plain
tcp:// client and a tls:// address without certificates are one line each (exit 2)."""

from __future__ import annotations

import contextlib
import copy
import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dask
import pytest

from geomed_mim.build_dataset import main

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA and one certificate for 127.0.0.1 signed by it (scheduler, worker and client)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "1", "-subj", "/CN=geomed test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr",
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "node.pem", "-days", "1", "-extfile", "san.ext")  # fmt: skip
    return {"ca": folder / "ca.pem", "cert": folder / "node.pem", "key": folder / "node.key"}


@pytest.fixture(scope="module")
def tls_scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict]]:
    from distributed import LocalCluster
    from distributed.security import Security

    certs = make_certificates(tmp_path_factory.mktemp("certs"))
    ca, cert, key = (str(certs[k]) for k in ("ca", "cert", "key"))
    security = Security(
        tls_ca_file=ca,
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_worker_cert=cert,
        tls_worker_key=key,
        tls_client_cert=cert,
        tls_client_key=key,
        require_encryption=True,
    )
    saved = copy.deepcopy(dask.config.config)
    cluster = LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        host="127.0.0.1",
        protocol="tls://",
        security=security,
        dashboard_address="127.0.0.1:0",  # never the shared default :8787
    )
    try:
        yield cluster.scheduler_address, certs
    finally:
        cluster.close()
        dask.config.config.clear()  # in place, as build_main restores it
        dask.config.config.update(saved)


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, err
    return err[0]


def test_demo_builds_through_a_tls_scheduler(tls_scheduler, tmp_path: Path) -> None:
    address, certs = tls_scheduler
    assert address.startswith("tls://127.0.0.1:")
    flags = ["--tls-ca-file", str(certs["ca"]), "--tls-cert", str(certs["cert"])]
    flags += ["--tls-key", str(certs["key"])]
    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()) as said:
        assert main(["--output", str(out), "--scheduler", address, *flags]) == 0
    assert f"dask scheduler at {address}" in said.getvalue()
    assert (out / "build.json").is_file()


def test_plain_tcp_and_missing_certificates_are_one_line(
    tls_scheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, _ = tls_scheduler
    plain = address.replace("tls://", "tcp://")
    with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):
        assert main(["--output", str(tmp_path / "a"), "--scheduler", plain]) == 2
    assert _one_error_line(capsys).startswith(f"error: --scheduler: cannot connect to {plain} (")
    assert not (tmp_path / "a" / "build.json").exists()

    assert main(["--output", str(tmp_path / "b"), "--scheduler", address]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: --scheduler: {address} is a TLS address, but no ")
    assert "--tls-ca-file, --tls-cert, --tls-key" in line
