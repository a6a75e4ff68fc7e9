"""TLS for TCP listeners (`--tls-cert/--tls-key`, and `--tls-client-ca` as Docker's
--tlsverify), against `cargohold serve` with a CA and certificates made by `openssl` for
the test. The unix socket stays plain; the token is still required over TLS."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import httpx
import pytest

from app.cli import _check_tls
from app.config import Listener, Settings
from tests.api.served import (
    CARGOHOLD,
    serving,
)
from tests.conftest import free_port
from tests.pki import PKI, make_pki

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_options(pki: PKI, client_ca: bool = False) -> tuple[str, ...]:
    options = ("--tls-cert", str(pki.server[0]), "--tls-key", str(pki.server[1]))
    return (*options, "--tls-client-ca", str(pki.ca)) if client_ca else options


def context(pki: PKI, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    made = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        made.load_cert_chain(*cert)
    return made


async def test_https_with_the_ca_and_the_token(tmp_path: Path, pki: PKI) -> None:
    async with serving(tmp_path, *tls_options(pki)) as daemon:
        token = (daemon.state / "token").read_text().strip()
        base = f"https://127.0.0.1:{daemon.port}"
        async with httpx.AsyncClient(base_url=base, verify=context(pki), timeout=10) as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/version")).status_code == 401, "TLS does not replace the token"
            version = await client.get("/version", headers={"Authorization": f"Bearer {token}"})
            assert version.status_code == 200, version.text
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.port}", timeout=5) as plain:
            with pytest.raises(httpx.TransportError):
                await plain.get("/healthz")
        async with httpx.AsyncClient(base_url=base, timeout=5) as unknown_ca:  # the system's CAs only
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await unknown_ca.get("/healthz")
        async with daemon.unix() as local:
            assert (await local.get("/version")).status_code == 200, "the unix socket stays plain"


async def test_client_certificates_are_required_with_a_client_ca(tmp_path: Path, pki: PKI) -> None:
    async with serving(tmp_path, *tls_options(pki, client_ca=True)) as daemon:
        token = (daemon.state / "token").read_text().strip()
        base = f"https://127.0.0.1:{daemon.port}"
        headers = {"Authorization": f"Bearer {token}"}
        for name, cert in (("none", None), ("another CA's", pki.stranger)):
            async with httpx.AsyncClient(base_url=base, verify=context(pki, cert), timeout=5) as client:
                with pytest.raises(httpx.TransportError):
                    await client.get("/healthz")
                    pytest.fail(f"a client with {name} certificate was served")
        client_cert = pki.client
        async with httpx.AsyncClient(base_url=base, verify=context(pki, client_cert), timeout=10) as client:
            assert (await client.get("/version", headers=headers)).status_code == 200
            assert (await client.get("/version")).status_code == 401, "a certificate does not replace the token"


@pytest.mark.parametrize(
    ("options", "says"),
    [
        pytest.param(("--tls-cert", "{cert}"), "--tls-cert and --tls-key go together", id="cert-alone"),
        pytest.param(("--tls-client-ca", "{ca}"), "--tls-client-ca needs --tls-cert", id="ca-alone"),
        pytest.param(("--tls-cert", "{key}", "--tls-key", "{key}"), "cannot load", id="key-as-cert"),
    ],
)
async def test_tls_flags_that_cannot_work_stop_the_daemon(
    tmp_path: Path, pki: PKI, options: tuple[str, ...], says: str
) -> None:
    paths = {"cert": pki.server[0], "key": pki.server[1], "ca": pki.ca}
    argv = [option.format(**paths) for option in options]
    process = await asyncio.create_subprocess_exec(
        *CARGOHOLD, "serve", "--root", str(tmp_path / "root"), "--state", str(tmp_path / "state"),
        "--listen", f"tcp://127.0.0.1:{free_port()}", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        output, _ = await process.communicate()
    assert process.returncode == 1 and says in output.decode(), output
    assert not (tmp_path / "state").exists(), "refused before anything was made"


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        pytest.param("tcp://127.0.0.1:2375", False, id="loopback-v4"),
        pytest.param("tcp://[::1]:2375", False, id="loopback-v6"),
        pytest.param("tcp://localhost:2375", False, id="localhost"),
        pytest.param("tcp://0.0.0.0:2375", True, id="any"),
        pytest.param("tcp://192.0.2.1:2375", True, id="address"),
        pytest.param("tcp://daemon.example:2375", True, id="host-name"),
    ],
)
def test_tcp_without_tls_beyond_loopback_is_warned_of(caplog: pytest.LogCaptureFixture, url: str, warned: bool) -> None:
    _check_tls(Settings(listeners=(Listener.parse(url),)))  # checks only: nothing is bound
    assert ("served without TLS" in caplog.text) is warned
