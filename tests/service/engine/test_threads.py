"""The transformers engine decodes with its own thread count in whichever thread calls it.
Under OpenMP torch.set_num_threads holds for the calling thread, and the server loads its engine
in one thread and decodes in others. Run in a fresh interpreter: an in-process vLLM engine (the contract
tests) pins the OpenMP threads of the whole process."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("torch")

from service.engine import loader  # noqa: E402

if "transformers" not in loader.available():
    pytest.skip("the transformers backend is not installed", allow_module_level=True)

SCRIPT = r'''
import threading, torch
from mechanisms import DecodingConfig, JobRandomness
from service.engine import loader
from service.engine.interface import GroupRequest
from service.generation.selector import MechanismSelector

class Watch:
    def __init__(self, inner):
        self.inner, self.threads = inner, []
    def select(self, group_ids, private_logits, group_sizes, public_logits):
        self.threads.append(torch.get_num_threads())
        return self.inner.select(group_ids, private_logits, group_sizes, public_logits)
    def halted(self, g):
        return self.inner.halted(g)
    def release(self, g):
        self.inner.release(g)

box = {}
t = threading.Thread(target=lambda: box.update(engine=loader.load_engine("transformers", threads=1)))
t.start(); t.join()
engine = box["engine"]
torch.set_num_threads(2)  # what this thread had, whatever the loader set in its own
sel = Watch(MechanismSelector(DecodingConfig(mechanism="em", partitions=2, clip=2.0, top_k=20), JobRandomness.replay(b"privtext test secret", 0)))
public = engine.encode_chat("Write one text message.")
rows = (engine.encode_chat("Example: see you at lunch. Write one more."),) * 2
list(engine.run([GroupRequest(0, rows, public, 3, ignore_eos=True)], sel))
print("threads", sel.threads)
'''


def test_an_engine_loaded_in_another_thread_decodes_with_its_threads():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "threads [1, 1, 1]"
