"""Fixtures: a real privtext server on a loopback port, one per test module (one engine per session)."""

from __future__ import annotations

import pytest
from server_kit import KEYS, Client, InProcess

from service.api.auth import hash_key


@pytest.fixture(autouse=True)
def local_ledger_dir(tmp_path, monkeypatch):
    """Every test gets its own local ledger directory (privtext generate charges a ledger per
    corpus there): a test that runs a corpus several times composes only its own runs."""
    monkeypatch.setenv("PRIVTEXT_DATA_DIR", str(tmp_path / "privtext-data"))


@pytest.fixture(scope="session")
def engine():
    from service.engine.loader import load_engine

    return load_engine("transformers")


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    from service.api.settings import ServerSettings

    root = tmp_path_factory.mktemp("server")
    settings = ServerSettings(
        port=0, data_dir=root / "data", config_dir=root / "config", api_keys={t: [hash_key(k)] for t, k in KEYS.items()},
        max_message_bytes=64 * 1024, max_record_chars=400, max_upload_records=500, max_request_tokens=64, metrics_port=0,
        batch_rows=64,
    )
    s = InProcess(settings, engine)
    yield s
    s.stop()


@pytest.fixture()
def acme(server):
    return Client(server.address, KEYS["acme"])


@pytest.fixture()
def globex(server):
    return Client(server.address, KEYS["globex"])


