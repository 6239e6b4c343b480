"""Access control: API keys for the data, an admin key for model management, probes and the scrape
open; TLS with a certificate made here (a real `serve` process over HTTPS)."""

from __future__ import annotations

import datetime
import ssl
import time
from pathlib import Path

import httpx
import pytest
from test_serve_process import serve_process, stop
from test_server import FAKE, client_for

from chronoserve import cli
from chronoserve._serve_options import read_keys
from chronoserve.client import AsyncClient
from chronoserve.server.auth import is_admin_route
from chronoserve.testing import server_settings

API = "api-key-0123456789abcdef"
ADMIN = "admin-key-0123456789abcdef"
BODY = {"target": [1.0, 2.0, 3.0], "horizon_hours": 2}


def settings(**options):
    return server_settings(default_model=FAKE, policy_options={"max_wait": 0.001}, **options)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_without_keys_everything_is_open_but_model_management() -> None:
    async with client_for(settings()) as client:
        assert (await client.post("/forecast", json=BODY)).status_code == 200
        off = await client.post(f"/models/{FAKE}/load")
    assert off.status_code == 403 and "--admin-key" in off.json()["detail"]


async def test_api_keys_guard_every_route_but_the_probes_and_the_scrape() -> None:
    async with client_for(settings(api_keys=(API,), admin_keys=(ADMIN,))) as client:
        missing = await client.post("/forecast", json=BODY)
        wrong = await client.post("/forecast", json=BODY, headers=bearer(API + "x"))
        basic = await client.post("/forecast", json=BODY, headers={"Authorization": f"Basic {API}"})
        assert [r.status_code for r in (missing, wrong, basic)] == [401, 401, 401]
        assert missing.headers["www-authenticate"].startswith("Bearer") and "missing" in missing.json()["detail"]
        assert "invalid" in wrong.json()["detail"]
        for key in (API, ADMIN):  # the admin key opens the data too
            assert (await client.post("/forecast", json=BODY, headers=bearer(key))).status_code == 200
        for path in ("/models", "/series"):
            assert (await client.get(path)).status_code == 401
            assert (await client.get(path, headers=bearer(API))).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert (await client.get(path)).status_code == 200, path
        # model management: the admin key only
        assert (await client.post(f"/models/{FAKE}/load", headers=bearer(API))).status_code == 403
        assert (await client.post(f"/models/{FAKE}/load")).status_code == 401
        assert (await client.post(f"/models/{FAKE}/load", headers=bearer(ADMIN))).status_code == 200


async def test_an_admin_key_alone_leaves_the_data_open_and_guards_management() -> None:
    async with client_for(settings(admin_keys=(ADMIN,))) as client:
        assert (await client.post("/forecast", json=BODY)).status_code == 200
        assert (await client.post(f"/models/{FAKE}/unload")).status_code == 401
        assert (await client.post(f"/models/{FAKE}/unload", headers=bearer(ADMIN))).status_code == 200


async def test_the_python_client_sends_its_api_key() -> None:
    from asgi_lifespan import LifespanManager
    from test_server import fake_loader

    from chronoserve.server import create_app

    app = create_app(settings(api_keys=(API,)), loader=fake_loader())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with AsyncClient("http://test", transport=transport, api_key=API) as client:
            forecast = await client.forecast(target=[1.0, 2.0], horizon_hours=2)
        assert len(forecast.median) == 2


def test_keys_come_from_options_and_files_and_must_be_long(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# the team's keys\n{API}\n\n  {ADMIN}  \n")
    assert read_keys(f"{API},other-key-0123456789", str(keys), "--api-key") == (API, "other-key-0123456789", ADMIN)
    with pytest.raises(ValueError, match="at least 16"):
        read_keys("short", None, "--api-key")
    with pytest.raises(ValueError, match="--api-key-file: cannot read"):
        read_keys(None, str(tmp_path / "missing"), "--api-key")
    assert is_admin_route("/models/random/chronos-2/load") and is_admin_route("/models//data/m/unload")
    assert not is_admin_route("/models") and not is_admin_route("/forecast")


def test_print_config_never_shows_a_key(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHRONOSERVE_API_KEY", API)
    assert cli.main(["serve", "--admin-key", ADMIN, "--print-config"]) == 0
    out = capsys.readouterr().out
    assert API not in out and ADMIN not in out
    assert 'api-key = "<redacted>"  # CHRONOSERVE_API_KEY' in out and 'admin-key = "<redacted>"  # command line' in out


def make_certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made here."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certfile, keyfile


def test_tls_options_are_checked_before_serving(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    certfile, keyfile = make_certificate(tmp_path)
    assert cli.main(["serve", "--ssl-certfile", str(certfile), "--port", "1"]) == 2
    assert "--ssl-keyfile is needed too" in capsys.readouterr().err
    assert cli.main(["serve", "--ssl-certfile", str(keyfile), "--ssl-keyfile", str(keyfile), "--port", "1"]) == 2
    assert "cannot load" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.torch
def test_serve_over_https_with_an_api_key(tmp_path: Path) -> None:
    certfile, keyfile = make_certificate(tmp_path)
    keys = tmp_path / "keys"
    keys.write_text(API + "\n")
    options = ["--default-model", "random/tiny-chronos-bolt", "--backend", "torch", "--api-key-file", str(keys)]
    tls = ["--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile)]
    with serve_process(*options, *tls, scheme="https") as (url, proc):
        with httpx.Client(verify=ssl.create_default_context(cafile=str(certfile)), timeout=120) as client:
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=180)
            while True:  # ready once its model has loaded (warm-up)
                assert proc.poll() is None, "serve exited"
                assert datetime.datetime.now() < deadline, "not ready"
                try:
                    if client.get(f"{url}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)  # pacing only: what is waited for is the 200
            assert client.post(f"{url}/forecast", json={"city": "dongsi"}).status_code == 401
            r = client.post(f"{url}/forecast", json={"city": "dongsi", "horizon_hours": 3}, headers=bearer(API))
            assert r.status_code == 200 and len(r.json()["median"]) == 3
        with pytest.raises(httpx.TransportError):  # plain HTTP is not spoken there
            httpx.get(url.replace("https:", "http:") + "/healthz", timeout=10)
        stop(proc)
