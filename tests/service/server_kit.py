"""Helpers for API tests: a real privtext server in this process (InProcess) or as a `privtext
serve` subprocess (Process), clients on the generated stubs, and a corpus of real SMS lines."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from service.api.auth import hash_key
from service.api.gen.privtext.v1 import datasets_pb2, datasets_pb2_grpc, generation_pb2, generation_pb2_grpc

KEYS = {"acme": "pt_test_acme_key", "globex": "pt_test_globex_key"}
SMS = [
    "Free entry in 2 a wkly comp to win FA Cup final tkts 21st May. Text FA to 87121 to receive entry",
    "Ok lar... Joking wif u oni... see you at the usual place after work",
    "U dun say so early hor... U c already then say... call me later tonight",
    "WINNER!! As a valued network customer you have been selected to receive a prize reward of 900",
    "I'm gonna be home soon and i don't want to talk about this stuff anymore tonight, k?",
    "Even my brother is not like to speak with me. They treat me like aids patent.",
    "Had your mobile 11 months or more? U R entitled to Update to the latest colour mobiles with camera",
    "I've been searching for the right words to thank you for this breather. I promise i wont take your help",
]


def quota(err: grpc.RpcError) -> list[error_details_pb2.QuotaFailure.Violation]:
    """The QuotaFailure violations in a refusal's rich status (read off the wire, not through the
    client library)."""
    st = rpc_status.from_call(err)
    out = []
    for d in st.details if st else ():
        q = error_details_pb2.QuotaFailure()
        if d.Unpack(q):
            out.extend(q.violations)
    return out


def corpus(n: int = 48) -> list[dict]:
    """n distinct records (labels spam/ham) built from real SMS lines."""
    return [{"text": f"{SMS[i % len(SMS)]} #{i}", "label": "spam" if i % 3 == 0 else "ham"} for i in range(n)]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


class Client:
    """Generated stubs on one channel, with a tenant's key."""

    def __init__(self, address: str, key: str | None):
        self.channel = grpc.insecure_channel(address)
        self.datasets = datasets_pb2_grpc.DatasetsStub(self.channel)
        self.generation = generation_pb2_grpc.GenerationStub(self.channel)
        self.md = (("x-api-key", key),) if key else ()

    def upload(self, name: str, rows: list[dict], *, label_field: str = "", epsilon_cap: float = 8.0, delta: float = 1e-3,
               chunk: int = 1000, **spec) -> datasets_pb2.Dataset:
        data = jsonl(rows)
        msgs = [datasets_pb2.UploadRequest(spec=datasets_pb2.DatasetSpec(
            name=name, text_field="text", label_field=label_field, epsilon_cap=epsilon_cap, delta=delta, format="jsonl", **spec))]
        msgs += [datasets_pb2.UploadRequest(chunk=data[i:i + chunk]) for i in range(0, len(data), chunk)]
        return self.datasets.UploadDataset(iter(msgs), metadata=self.md, timeout=60)

    def budget(self, dataset_id: str) -> datasets_pb2.Budget:
        return self.datasets.GetBudget(datasets_pb2.GetBudgetRequest(id=dataset_id), metadata=self.md, timeout=30)

    def generate(self, dataset_id: str, timeout: float = 300, **kw) -> list[generation_pb2.SyntheticRecord]:
        return list(self.generation.Generate(request(dataset_id, **kw), metadata=self.md, timeout=timeout))


def request(dataset_id: str, records: int = 2, max_tokens: int = 6, epsilon: float = 1.0, **kw) -> generation_pb2.GenerateRequest:
    settings = kw.pop("settings", None) or generation_pb2.MechanismSettings(partitions=4)
    return generation_pb2.GenerateRequest(dataset_id=dataset_id, records=records, max_tokens=max_tokens, epsilon=epsilon,
                                          settings=settings, **kw)


class InProcess:
    """privtext's Server on its own event loop thread."""

    def __init__(self, settings, engine):
        from service.api.server import Server

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = Server(settings, engine)
        self.run(self.server.start(), 300)
        self.address = f"127.0.0.1:{self.server.port}"

    def run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.run(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Process:
    """`privtext serve` in a subprocess, its log in a file."""

    def __init__(self, data_dir: Path, config_dir: Path, log: Path, port: int = 0, env: dict | None = None):
        env = {**os.environ, "PRIVTEXT_CONFIG_DIR": str(config_dir), "PRIVTEXT_GRACE_SECONDS": "5", **(env or {})}
        self.log = log
        start = log.stat().st_size if log.exists() else 0  # a restart appends to the same log
        self.fh = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--data-dir", str(data_dir), "--engine", "transformers"],
            stdout=self.fh, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.time() + 300
        while time.time() < deadline:
            text = log.read_text(errors="replace")
            found = re.findall(r"privtext serving on [\d.]+:(\d+)", text[start:])
            if found:
                self.address = f"127.0.0.1:{found[-1]}"
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.5)
        raise TimeoutError("server did not start")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.fh.close()

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self.fh.close()
        return rc
