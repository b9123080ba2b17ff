"""`privtext serve` as a process: SIGKILL mid-job and restart, a job that survives it, SIGTERM
drain, and logs that never hold a record of the corpus."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_kit import Client, Process, corpus, request

from service.api.gen.privtext.v1 import generation_pb2

pytestmark = pytest.mark.slow


def wait_for(pred, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(what)


def test_sigkill_restart_keeps_the_ledger_and_the_job_finishes(tmp_path):
    data, config, log = tmp_path / "data", tmp_path / "config", tmp_path / "serve.log"
    rows = corpus(40)
    first = Process(data, config, log)
    c = Client(first.address, None)
    ds = c.upload("sms", rows)
    job = c.generation.SubmitJob(request(ds.id, records=40, max_tokens=12, epsilon=2.0), metadata=c.md)

    def get():
        return c.generation.GetJob(generation_pb2.GetJobRequest(id=job.id), metadata=c.md)

    wait_for(lambda: get().records_done >= 1, 300, "a first result")
    before = c.budget(ds.id)
    assert get().state == generation_pb2.JOB_STATE_RUNNING  # killed mid-job, not after it
    first.kill()  # mid-job: no drain, no goodbye

    second = Process(data, config, log)
    c = Client(second.address, None)
    after = c.budget(ds.id)
    assert [(e.label, e.epsilon) for e in after.entries] == [(e.label, e.epsilon) for e in before.entries]
    assert after.spent == pytest.approx(before.spent)  # every reservation still charged, nothing new

    done = wait_for(lambda: (j := get()).state in (generation_pb2.JOB_STATE_SUCCEEDED, generation_pb2.JOB_STATE_FAILED) and j, 600, "the resumed job")
    assert done.state == generation_pb2.JOB_STATE_SUCCEEDED
    results = list(c.generation.StreamJobResults(generation_pb2.StreamJobResultsRequest(id=job.id), metadata=c.md, timeout=60))
    assert 1 <= len(results) <= 40 and [r.index for r in results] == list(range(len(results)))
    assert len(c.budget(ds.id).entries) == len(before.entries)  # the resumed job paid nothing more

    # SIGTERM drains: a stream in flight is cancelled within the grace period, the process exits 0
    stream = c.generation.Generate(request(ds.id, records=20, max_tokens=60, epsilon=0.5), metadata=c.md, timeout=300)
    health = health_pb2_grpc.HealthStub(c.channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    t0 = time.time()
    rc = second.terminate(timeout=120)
    assert rc == 0 and time.time() - t0 < 60
    with pytest.raises(grpc.RpcError):
        list(stream)

    text = log.read_text(errors="replace")
    assert "resumed 1 unfinished job" in text and "draining" in text
    for r in rows:  # no private record, nor a long piece of one, ever reaches a log line
        assert r["text"] not in text and r["text"][:30] not in text


# ---------------------------------------------------------------------------------------------
# issue 22: a start that cannot succeed says why in one line, exits non-zero, no traceback


def _serve_fails(data: Path, *, port: int = 0, env: dict | None = None, prefix: tuple[str, ...] = ()) -> tuple[int, str]:
    """`privtext serve` expected to refuse to start: (exit status, stderr)."""
    env = {**os.environ, "PRIVTEXT_CONFIG_DIR": str(data.parent / "config"), **(env or {})}
    proc = subprocess.run([*prefix, sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--data-dir", str(data)],
                          capture_output=True, text=True, env=env, timeout=180, cwd=Path(__file__).resolve().parents[3])
    return proc.returncode, proc.stderr


def _one_error_line(rc: int, stderr: str, *words: str) -> str:
    assert rc != 0, stderr[-2000:]
    lines = [x for x in stderr.splitlines() if x.startswith("privtext: error: ")]
    assert len(lines) == 1, stderr[-2000:]
    assert "Traceback" not in stderr and "serving on" not in stderr, stderr[-2000:]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def test_missing_tls_files(tmp_path):
    rc, err = _serve_fails(tmp_path / "data", env={"PRIVTEXT_TLS_CERT": str(tmp_path / "no-cert.pem"),
                                                   "PRIVTEXT_TLS_KEY": str(tmp_path / "no-key.pem")})
    _one_error_line(rc, err, "tls_cert and tls_key must be readable files", "no-key.pem", "No such file")


def test_corrupt_database(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "privtext.db").write_bytes(b"this is not an SQLite file " * 200)
    rc, err = _serve_fails(data)
    _one_error_line(rc, err, "data_dir must hold a readable privtext database", "file is not a database")


def test_read_only_data_directory(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o555)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root writes anywhere: run the server without the capability that lets it
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: no way to make a directory read-only to the server")
        prefix = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")
    try:
        rc, err = _serve_fails(data, prefix=prefix)
        _one_error_line(rc, err, "data_dir must be a writable directory", str(data), "Permission denied")
    finally:
        data.chmod(0o755)


def test_a_locked_data_directory(tmp_path):
    from service.store.lock import DataDirLock

    data = tmp_path / "data"
    data.mkdir()
    held = DataDirLock(data)  # what a running server holds for its lifetime
    try:
        rc, err = _serve_fails(data)
        _one_error_line(rc, err, "data_dir must be used by one server at a time", f"pid {os.getpid()}")
    finally:
        held.release()


def test_a_port_in_use(tmp_path):
    other = grpc.server(futures.ThreadPoolExecutor(1))  # gRPC's defaults: SO_REUSEPORT on, as privtext had
    port = other.add_insecure_port("127.0.0.1:0")
    other.start()
    try:
        rc, err = _serve_fails(tmp_path / "data", port=port)
        _one_error_line(rc, err, f"port must be free to bind on 127.0.0.1, got {port}")
    finally:
        other.stop(None)


def test_a_tenant_without_keys(tmp_path):
    rc, err = _serve_fails(tmp_path / "data", env={"PRIVTEXT_API_KEYS": json.dumps({"acme": []})})
    _one_error_line(rc, err, "api_keys[acme] must be a list of at least one SHA-256 digest")
