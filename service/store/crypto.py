"""Encryption at rest for private records: AES-256-GCM, one blob per record chunk.

Blob layout: 1 version byte | 12-byte nonce (fresh per encryption) | ciphertext+tag.
The associated data binds a blob to its dataset id and purpose (and, for records, its chunk
number), so a blob copied into another dataset, or swapped between chunks, fails to decrypt.

Keys: the master data key comes from PRIVTEXT_DATA_KEY (base64 of 32 bytes) or from a 0600
file `config_dir/data.key`; it never lives in the data directory. The store wraps a fresh
per-dataset key with it, so deleting a dataset's wrapped key shreds every copy of its blobs
(WAL frames, freed pages, backups) even where the bytes themselves survive.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_ENV = "PRIVTEXT_DATA_KEY"
KEY_FILE = "data.key"
KEY_BYTES = 32
NONCE_BYTES = 12
_VERSION = b"\x01"


class DecryptionError(Exception):
    """A blob failed authentication: tampered, truncated, wrong key or wrong dataset."""


def _aad(dataset_id: str, purpose: str) -> bytes:
    return b"privtext/v1\x00" + purpose.encode() + b"\x00" + dataset_id.encode()


class RecordCipher:
    """AES-GCM with a fresh random 12-byte nonce per call; AAD = (purpose, dataset id)."""

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
            raise ValueError(f"key must be {KEY_BYTES} bytes (AES-256), got {len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__}")
        self._aead = AESGCM(bytes(key))

    def encrypt(self, plaintext: bytes, dataset_id: str, purpose: str = "record") -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, _aad(dataset_id, purpose))

    def decrypt(self, blob: bytes, dataset_id: str, purpose: str = "record") -> bytes:
        blob = bytes(blob)
        if len(blob) < 1 + NONCE_BYTES + 16 or blob[:1] != _VERSION:
            raise DecryptionError(f"blob for dataset {dataset_id!r} is malformed")
        nonce, body = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, _aad(dataset_id, purpose))
        except InvalidTag:
            raise DecryptionError(
                f"blob for dataset {dataset_id!r} ({purpose}) failed authentication: tampered, or from another dataset or key"
            ) from None


def _decode_key(text: str, source: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{source} must be base64 of {KEY_BYTES} bytes, got something that is not base64") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"{source} must be base64 of {KEY_BYTES} bytes, got {len(key)} bytes")
    return key


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def load_or_create_key(config_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> tuple[bytes, bool]:
    """(key, created). PRIVTEXT_DATA_KEY (base64) wins; else `config_dir/data.key`, created with
    mode 0600 if missing. ValueError if config_dir lies inside data_dir (the key must not sit
    next to the data it protects) or if an existing key file is readable by group or others."""
    config = Path(config_dir).resolve()
    if data_dir is not None and _inside(config, Path(data_dir).resolve()):
        raise ValueError(f"config_dir must be outside the data directory {str(data_dir)!r}, got {str(config_dir)!r}")
    env = os.environ.get(KEY_ENV)
    if env:
        return _decode_key(env, KEY_ENV), False
    path = config / KEY_FILE
    config.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        return _read_key_file(path), False
    # Write a private temp file, then link it into place: atomic, and a concurrent creator
    # either wins (we read its key) or loses (it reads ours); nobody sees a half-written file.
    key = secrets.token_bytes(KEY_BYTES)
    tmp = config / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, base64.b64encode(key) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return _read_key_file(path), False
    finally:
        tmp.unlink()
    return key, True


def _read_key_file(path: Path) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ValueError(f"key file {str(path)!r} must have mode 0600, got {oct(mode)}")
    return _decode_key(path.read_text(), str(path))
