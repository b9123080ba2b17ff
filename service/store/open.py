"""Pick a store backend from where it lives: a file path (SQLite) or a PostgreSQL URL.

    open_store("data/privtext.db", key)                        # SqliteStore
    open_store("sqlite:////srv/privtext/privtext.db", key)     # SqliteStore, absolute path
    open_store("postgresql://privtext@db.internal/privtext", key)  # PostgresStore

psycopg is imported only for a PostgreSQL URL, so a server on SQLite needs no `postgres` extra.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote

from mechanisms.config import require

from .interface import Store

SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_postgres_url(url_or_path: str | os.PathLike) -> bool:
    return isinstance(url_or_path, str) and url_or_path.lower().startswith(POSTGRES_SCHEMES)


def open_store(url_or_path: str | os.PathLike, key: bytes) -> Store:
    """The store at url_or_path, opened with the 32-byte master data key:
    - a path, or `sqlite:///PATH` (SQLAlchemy's form: `sqlite:///rel.db`, `sqlite:////abs.db`):
      SqliteStore on that database file;
    - `postgresql://...` or `postgres://...` (any libpq URL): PostgresStore.
    ValueError for another scheme (or an empty location); ImportError, naming the extra to
    install, when psycopg is missing for a PostgreSQL URL."""
    if isinstance(url_or_path, os.PathLike):
        url_or_path = os.fspath(url_or_path)
    require(isinstance(url_or_path, str) and url_or_path.strip() != "", "store", "a file path or a sqlite:/// or postgresql:// URL", url_or_path)
    if is_postgres_url(url_or_path):
        try:
            from .postgres import PostgresStore
        except ImportError as e:
            raise ImportError(f"a postgresql:// store needs psycopg: pip install 'privtext[postgres]' ({e})") from e
        return PostgresStore(url_or_path, key)
    from .sqlite import SqliteStore

    if url_or_path.lower().startswith(SQLITE_PREFIX):
        path = unquote(url_or_path[len(SQLITE_PREFIX):])
        require(path != "", "store", "sqlite:///PATH with a file path", url_or_path)
        return SqliteStore(Path(path), key)
    other = _URL.match(url_or_path)  # the scheme only: a URL's password is never echoed
    require(other is None, "store", "a file path or a sqlite:/// or postgresql:// URL", other and other.group(0) + "…")
    return SqliteStore(Path(url_or_path), key)
