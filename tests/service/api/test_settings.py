"""Server settings and API keys: the documented precedence (defaults < YAML < PRIVTEXT_*
environment < flags), the safety checks that refuse a misconfigured server before it binds,
and the tenant lookup from `x-api-key` metadata, including keys made by `privtext keys new`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from service.api.auth import API_KEY_HEADER, LOCAL_TENANT, ApiKeys, hash_key
from service.api.settings import ServerSettings

DIGEST = hash_key("pt_some_key")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No PRIVTEXT_* variable of the calling shell may leak into a test's settings."""
    for k in list(os.environ):
        if k.startswith("PRIVTEXT_"):
            monkeypatch.delenv(k)


def yaml_file(tmp_path, text: str):
    path = tmp_path / "privtext.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "yaml_port, env_port, flag_port, expected",
    [
        (None, None, None, 50051),  # the default
        (1111, None, None, 1111),  # the file over the default
        (1111, 2222, None, 2222),  # the environment over the file
        (None, 2222, None, 2222),  # the environment over the default
        (1111, 2222, 3333, 3333),  # a flag over everything
        (1111, None, 3333, 3333),
        (None, None, 0, 0),  # a flag of 0 is set (only None means unset)
    ],
)
def test_precedence(tmp_path, monkeypatch, yaml_port, env_port, flag_port, expected):
    config = yaml_file(tmp_path, f"port: {yaml_port}\nmax_request_tokens: 77\n") if yaml_port is not None else None
    if env_port is not None:
        monkeypatch.setenv("PRIVTEXT_PORT", str(env_port))
    s = ServerSettings.load(config=config, port=flag_port, host=None)
    assert s.port == expected
    assert s.host == "127.0.0.1"  # host=None was "unset", not None
    assert s.max_request_tokens == (77 if config else 512)  # the file's other fields still apply


def test_each_field_comes_from_its_highest_source(tmp_path, monkeypatch):
    """Sources merge field by field: one field from each layer in a single load."""
    config = yaml_file(tmp_path, "port: 1111\nbatch_rows: 20\ngrace_seconds: 3.5\n")
    monkeypatch.setenv("PRIVTEXT_BATCH_ROWS", "30")
    monkeypatch.setenv("PRIVTEXT_PORT", "2222")
    s = ServerSettings.load(config=config, port=3333, data_dir=str(tmp_path / "d"))
    assert (s.port, s.batch_rows, s.grace_seconds, s.data_dir) == (3333, 30, 3.5, tmp_path / "d")
    assert s.max_running_jobs == 4  # untouched: the default


def test_unknown_field_in_the_file_is_refused(tmp_path):
    """A typo in the file must not silently fall back to the default."""
    with pytest.raises(ValueError, match="prot"):
        ServerSettings.load(config=yaml_file(tmp_path, "prot: 1111\n"))


def test_missing_config_file_names_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--config") as e:
        ServerSettings.load(config=tmp_path / "nope.yaml")
    assert "nope.yaml" in str(e.value)


@pytest.mark.parametrize(
    "host, with_keys, ok",
    [
        ("127.0.0.1", False, True),
        ("localhost", False, True),
        ("::1", False, True),
        ("127.0.0.2", False, True),  # all of 127/8 is loopback
        ("0.0.0.0", False, False),
        ("::", False, False),
        ("10.1.2.3", False, False),
        ("example.com", False, False),
        ("0.0.0.0", True, True),  # multi-tenant: any interface
        ("::", True, True),
    ],
)
def test_without_api_keys_only_loopback(host, with_keys, ok):
    keys = {"acme": [DIGEST]} if with_keys else None
    if ok:
        assert ServerSettings.load(host=host, api_keys=keys).host == host
    else:
        with pytest.raises(ValueError, match="host") as e:
            ServerSettings.load(host=host, api_keys=keys)
        assert repr(host) in str(e.value)


def test_host_from_the_environment_is_checked_too(monkeypatch):
    monkeypatch.setenv("PRIVTEXT_HOST", "0.0.0.0")
    with pytest.raises(ValueError, match="host"):
        ServerSettings.load()
    monkeypatch.setenv("PRIVTEXT_API_KEYS", json.dumps({"acme": [DIGEST]}))
    assert ServerSettings.load().host == "0.0.0.0"


@pytest.mark.parametrize(
    "entry",
    [
        "pt_some_key",  # the key itself instead of its digest
        DIGEST.upper(),  # uppercase hex
        DIGEST[:-1],  # 63 characters
        DIGEST + "0",  # 65 characters
        "g" * 64,  # not hex
        "",
    ],
    ids=["raw-key", "uppercase", "short", "long", "not-hex", "empty"],
)
def test_api_keys_must_be_sha256_digests(entry):
    with pytest.raises(ValueError, match=re.escape("api_keys[acme]")):
        ServerSettings.load(api_keys={"globex": [DIGEST], "acme": [DIGEST, entry]})


def test_api_keys_from_json_environment(monkeypatch):
    keys = {"acme": [DIGEST, hash_key("rotated")], "globex": [hash_key("g")]}
    monkeypatch.setenv("PRIVTEXT_API_KEYS", json.dumps(keys))
    assert ServerSettings.load().api_keys == keys
    monkeypatch.setenv("PRIVTEXT_API_KEYS", json.dumps({"acme": ["not-a-digest"]}))
    with pytest.raises(ValueError, match=re.escape("api_keys[acme]")):
        ServerSettings.load()


@pytest.mark.parametrize("which", ["tls_cert", "tls_key"])
def test_tls_needs_both_cert_and_key(tmp_path, which):
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        ServerSettings.load(**{which: tmp_path / "x.pem"})
    both = ServerSettings.load(tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem")
    assert (both.tls_cert, both.tls_key) == (tmp_path / "c.pem", tmp_path / "k.pem")


KEYS = ApiKeys({"acme": [hash_key("a-key"), hash_key("a-rotated")], "globex": [hash_key("g-key")]})


@pytest.mark.parametrize(
    "metadata, tenant",
    [
        (((API_KEY_HEADER, "a-key"),), "acme"),
        (((API_KEY_HEADER, "a-rotated"),), "acme"),  # rotation: either key of the tenant
        (((API_KEY_HEADER, "g-key"),), "globex"),
        ((("user-agent", "x"), (API_KEY_HEADER, "g-key")), "globex"),  # among other metadata
        (((API_KEY_HEADER, b"g-key"),), "globex"),  # bytes values are decoded
        (((API_KEY_HEADER, "wrong"),), None),
        (((API_KEY_HEADER, hash_key("a-key")),), None),  # the stored digest is not a key
        (((API_KEY_HEADER, ""),), None),
        ((("authorization", "a-key"),), None),  # the key under another header
        ((), None),
        (None, None),
    ],
)
def test_tenant_of(metadata, tenant):
    assert API_KEY_HEADER == "x-api-key"
    assert KEYS.tenant_of(metadata) == tenant


@pytest.mark.parametrize("metadata", [None, (), (("x-api-key", "anything"),)])
def test_without_keys_every_caller_is_the_local_tenant(metadata):
    assert ApiKeys({}).single_tenant
    assert ApiKeys({}).tenant_of(metadata) == LOCAL_TENANT == "local"


def test_keys_new_prints_a_key_whose_digest_is_the_settings_line(tmp_path, monkeypatch):
    """The key goes to stdout alone; the YAML and environment lines on stderr hold its digest,
    and both, fed back as settings, let that key in as the tenant."""
    out = subprocess.run([sys.executable, "-m", "service.cli", "keys", "new", "--tenant", "acme"],
                         capture_output=True, text=True, timeout=120, check=True)
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pt_")
    key = lines[0]
    digest = hash_key(key)
    assert f"acme: [{digest}]" in out.stderr
    assert key not in out.stderr  # the secret only on stdout

    env_line = re.search(r"PRIVTEXT_API_KEYS='(.*)'", out.stderr).group(1)
    assert json.loads(env_line) == {"acme": [digest]}
    monkeypatch.setenv("PRIVTEXT_API_KEYS", env_line)
    from_env = ServerSettings.load()
    assert ApiKeys(from_env.api_keys).tenant_of(((API_KEY_HEADER, key),)) == "acme"

    monkeypatch.delenv("PRIVTEXT_API_KEYS")
    yaml_lines = re.search(r"settings \(YAML\):\n(.*?)\nor environment", out.stderr, re.S).group(1)
    from_yaml = ServerSettings.load(config=yaml_file(tmp_path, yaml_lines + "\n"))
    assert ApiKeys(from_yaml.api_keys).tenant_of(((API_KEY_HEADER, key),)) == "acme"
    assert ApiKeys(from_yaml.api_keys).tenant_of(((API_KEY_HEADER, key + "x"),)) is None


@pytest.mark.parametrize(
    "keys",
    [{"acme": []}, {"acme": [], "globex": [DIGEST]}],
    ids=["only-tenant-without-keys", "one-tenant-without-keys"],
)
def test_a_tenant_without_keys_is_refused_never_open(keys, monkeypatch):
    """An empty key list used to turn on single-tenant mode: no authentication at all."""
    with pytest.raises(ValueError, match=re.escape("api_keys[acme] must be a list of at least one SHA-256 digest, got []")):
        ServerSettings.load(api_keys=keys)
    monkeypatch.setenv("PRIVTEXT_API_KEYS", json.dumps(keys))
    with pytest.raises(ValueError, match=re.escape("api_keys[acme]")):
        ServerSettings.load()
    # and whatever reaches ApiKeys directly: a configured tenant is never "no authentication"
    direct = ApiKeys(keys)
    assert not direct.single_tenant
    assert direct.tenant_of(()) is None and direct.tenant_of(((API_KEY_HEADER, "anything"),)) is None


def test_epsilon_and_delta_bounds_must_be_ordered():
    with pytest.raises(ValueError, match="min_epsilon/max_epsilon"):
        ServerSettings.load(min_epsilon=2.0, max_epsilon=1.0)
    assert ServerSettings.load(max_epsilon=5.0, min_delta=1e-12).max_epsilon == 5.0
