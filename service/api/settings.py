"""Server settings: defaults < YAML file (--config) < environment (PRIVTEXT_*) < flags.

Every field is also an environment variable: `port` is PRIVTEXT_PORT, `api_keys` is
PRIVTEXT_API_KEYS (JSON). API keys are stored as SHA-256 hashes only (`privtext keys new`
prints a key and the line to add); with none configured the server is single-tenant and
refuses to bind anything but loopback.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

LOOPBACK_NAMES = {"localhost"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRIVTEXT_", extra="forbid", frozen=True)
    _yaml_file: ClassVar[Path | None] = None

    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)  # 0: any free port (tests)
    data_dir: Path = Path("privtext-data")
    # The store: None for SQLite in data_dir (one server), or a postgresql:// URL that several
    # servers share (jobs then run under leases of job_lease_seconds, taken over when they expire).
    store: str | None = None
    job_lease_seconds: float = Field(default=30.0, gt=0, le=3600)
    config_dir: Path = Path.home() / ".config" / "privtext"  # where a generated data key lives
    engine: str = "auto"
    model: str | None = None
    # tenant -> SHA-256 hex digests of its API keys (several: rotation)
    api_keys: dict[str, list[str]] = Field(default_factory=dict)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_port: int | None = Field(default=None, ge=0, le=65535)  # Prometheus; None: off
    metrics_host: str = "127.0.0.1"  # metrics name every tenant's dataset ids: keep them off public interfaces
    # limits, enforced with INVALID_ARGUMENT naming the record and the limit
    max_message_bytes: int = Field(default=4 << 20, ge=1024)
    max_upload_bytes: int = Field(default=256 << 20, ge=1)
    max_upload_records: int = Field(default=1_000_000, ge=1)
    max_record_chars: int = Field(default=2000, ge=1)
    max_request_records: int = Field(default=10_000, ge=1)
    max_request_tokens: int = Field(default=512, ge=1)
    # Public bounds on request fields, checked before anything is charged (INVALID_ARGUMENT
    # naming the field and the setting). Epsilon bounds apply to a request's epsilon, the gate's
    # epsilon and a dataset's epsilon cap: below min_epsilon nothing useful is released, above
    # max_epsilon nothing is protected (and the accounting overflows).
    min_epsilon: float = Field(default=1e-6, gt=0)
    max_epsilon: float = Field(default=1000.0, gt=0)
    min_delta: float = Field(default=1e-30, gt=0)
    max_delta: float = Field(default=0.01, gt=0, lt=1)
    max_id_chars: int = Field(default=64, ge=1)  # dataset and job ids (the server's are 27-28)
    max_name_chars: int = Field(default=200, ge=1)  # a dataset's name
    max_field_name_chars: int = Field(default=100, ge=1)  # text_field, label_field, unit_field
    max_label_chars: int = Field(default=100, ge=1)  # each label (labels, label_counts)
    max_request_labels: int = Field(default=100, ge=1)  # labels or label_counts per request
    max_stop_chars: int = Field(default=100, ge=1)  # each stop string
    max_stop_strings: int = Field(default=16, ge=0)  # stop strings per request
    max_pe_iterations: int = Field(default=10, ge=1, le=100)  # Private Evolution's T per request (pe.iterations)
    max_pe_population: int = Field(default=256, ge=1, le=100_000)  # PE candidates per label per iteration (pe.population)
    max_select_candidates: int = Field(default=2000, ge=1)  # candidates per SelectCandidates request
    max_candidate_chars: int = Field(default=2000, ge=1)  # each SelectCandidates candidate
    budget_entries: int = Field(default=100, ge=0)  # ledger entries GetBudget returns (the most recent)
    presets: dict[str, float] = Field(default_factory=lambda: {"low": 1.0, "medium": 4.0, "high": 8.0})
    count_noise: float = Field(default=10.0, gt=0)  # sigma of the DP unit count / label histogram
    batch_rows: int = Field(default=160, ge=2)
    # Batch jobs on a Ray cluster of engine workers: a cluster address, or "auto" for a local one
    # (service/jobs/ray_executor.py); None: decoded by this server's engine. Streams stay local.
    ray: str | None = None
    ray_workers: int = Field(default=2, ge=1, le=1024)
    max_running_jobs: int = Field(default=4, ge=1)
    # Threads that wait on open Generate streams (one each while a stream waits for its next
    # record); more open streams than this queue for a thread before reaching the engine.
    stream_threads: int = Field(default=64, ge=1)
    grace_seconds: float = Field(default=10.0, ge=0)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=cls._yaml_file))
        return tuple(sources)

    @classmethod
    def load(cls, config: str | Path | None = None, **flags: Any) -> ServerSettings:
        """Settings from an optional YAML file, the environment and the given flags (None: unset)."""
        if config is not None and not Path(config).is_file():
            raise ValueError(f"--config: no such file {str(config)!r}")
        sub = type("ServerSettingsFromFile", (cls,), {"_yaml_file": Path(config) if config else None})
        return sub(**{k: v for k, v in flags.items() if v is not None})

    @field_validator("api_keys")
    @classmethod
    def _hashes(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for tenant, hashes in v.items():
            if not tenant:
                raise ValueError("api_keys: a tenant name must be non-empty")
            if not hashes:  # with no key at all the server would have no tenant to authenticate
                raise ValueError(f"api_keys[{tenant}] must be a list of at least one SHA-256 digest, got []; "
                                 "a tenant with no key would open the server without authentication")
            for h in hashes:
                if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
                    raise ValueError(f"api_keys[{tenant}]: each entry must be a SHA-256 hex digest (64 lowercase hex characters); "
                                     "`privtext keys new` prints one")
        return v

    @model_validator(mode="after")
    def _safe(self) -> ServerSettings:
        if not self.api_keys and not is_loopback(self.host):
            raise ValueError(f"host: without api_keys the server is single-tenant and binds loopback only, got {self.host!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key: give both or neither")
        if self.min_epsilon > self.max_epsilon or self.min_delta > self.max_delta:
            raise ValueError("min_epsilon/max_epsilon, min_delta/max_delta: each minimum must be <= its maximum")
        return self
