"""The reference backend: Hugging Face transformers, CPU or CUDA, with continuous batching.

Two batches decode in lock step: one holds the private rows of every active group, the other
their public rows, so a public row's logits never depend on the private rows (see _loop). Each
is left-padded, with one KV cache (kv_cache.RoomyLayer: spare columns, no copy per step) reused across steps: a prompt is prefilled
once and every later step feeds one token per row. Groups join between steps (prefilled
together, then merged into the batch by left-padding the shorter cache) and leave as they
finish (their rows are dropped from the cache, and columns that became padding for every row
are trimmed). Positions come from each row's own count of real tokens, so padding never shifts
a row's positions.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .interface import Engine, GroupRequest, GroupResult, Selector
from .raw import RawDecoding
from .stats import EngineStats
from .model_files import load_model_and_tokenizer
from .tokens import ChatTokens


_HALTED = -2  # _select's mark for a group halted before the step

QUANTIZE_ENV = "PRIVTEXT_QUANTIZE"
QUANTIZE_CHOICES = ("none", "bf16", "int8")


def check_quantize(quantize: str, device: str) -> str:
    """The quantize option checked: "none" (float32), "bf16" (bfloat16 weights and activations)
    or "int8" (CPU only)."""
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize ({QUANTIZE_ENV}) must be one of {', '.join(QUANTIZE_CHOICES)}, got {quantize!r}")
    if quantize == "int8" and device != "cpu":
        raise ValueError(f"quantize int8 is a CPU option (int8 matmuls through torch._int_mm), not for device {device!r}")
    return quantize


def quantize_int8(model) -> int:
    """Swap every nn.Linear of `model` (attention and MLP projections, and the LM head) for a
    RowInt8Linear in place; returns how many were swapped.

    Not torch.ao's quantize_dynamic: its activations share one scale per tensor (the min and max
    of the whole batch), so one private row's activations would move every other row's logits,
    and a unit's data would reach the rows of other units. Here each row (each token, in prefill)
    gets its own activation scale and the products accumulate exactly in int32, so a row's logits
    depend on that row alone, bit for bit, whatever shares its batch."""
    import torch

    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, torch.nn.Linear)]
    for parent, name, child in swaps:
        setattr(parent, name, _row_int8_linear()(child))
    return len(swaps)


_ROW_INT8_LINEAR = None


def _row_int8_linear():
    """The RowInt8Linear class, defined on first use (torch is imported lazily in this module)."""
    global _ROW_INT8_LINEAR
    if _ROW_INT8_LINEAR is not None:
        return _ROW_INT8_LINEAR
    import torch

    class RowInt8Linear(torch.nn.Module):
        """y = x W^T (+ b) with W quantized to int8 per output channel (symmetric, absmax / 127)
        once, and x quantized to int8 per row at every call; int8 x int8 -> int32 products
        (torch._int_mm: VNNI/AMX kernels on x86), scaled back to float32."""

        def __init__(self, linear: torch.nn.Linear):
            super().__init__()
            w = linear.weight.detach().float()
            scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.register_buffer("qweight_t", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).t().contiguous())
            self.register_buffer("weight_scale", scale)
            self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

        def forward(self, x):
            # few passes over the batch: on 2 shared cores every elementwise op is a parallel
            # region, and each costs a wait for the other thread
            shape = x.shape
            x2 = x.reshape(-1, shape[-1]).float()
            absmax = x2.abs().amax(dim=1, keepdim=True).clamp_(min=1e-30)  # 15x faster than vector_norm(inf) here
            q = torch.mul(x2, 127.0 / absmax).round_().to(torch.int8)  # |x| * 127 / absmax <= 127: no clamp needed
            y = torch.mul(torch._int_mm(q, self.qweight_t), absmax * (1.0 / 127.0)).mul_(self.weight_scale)  # int32 * float32 -> float32
            if self.bias is not None:
                y.add_(self.bias)
            return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel weights, int8 per-row activations"

    _ROW_INT8_LINEAR = RowInt8Linear
    return RowInt8Linear


def default_threads() -> int:
    """Threads for a CPU engine: PRIVTEXT_THREADS, else the cores this process may run on."""
    env = os.environ.get("PRIVTEXT_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class _Active:
    req: GroupRequest
    tokens: list[int] = field(default_factory=list)

    @property
    def step(self) -> int:
        return len(self.tokens)


class TransformersEngine(Engine, RawDecoding):
    name = "transformers"

    def __init__(self, model_path: str, device: str | None = None, threads: int | None = None, prefill_tokens: int = 4096,
                 quantize: str | None = None):
        import torch

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        quantize = check_quantize((os.environ.get(QUANTIZE_ENV) or "none") if quantize is None else quantize, device)
        self.threads = (threads or default_threads()) if device == "cpu" else None
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        self.device = device
        self.model_path = str(model_path)
        attn = None
        if device == "cpu":
            from .attention import NAME

            attn = NAME  # grouped-query attention with a padding mask, no KV-head copies
        self.model, self.tokenizer = load_model_and_tokenizer(model_path, device=device, attn_implementation=attn)
        self.prefill_tokens = prefill_tokens  # padded prompt tokens per prefill forward
        self._stats = EngineStats()
        self.tokens = ChatTokens(self.tokenizer, self.model.config.eos_token_id)
        self._vocab = int(self.model.get_output_embeddings().weight.shape[0])
        self.max_model_len = int(getattr(self.model.config, "max_position_embeddings", 4096) or 4096)
        self.quantize = quantize  # "none", "bf16" or "int8": the one model both the private and the public rows use
        self.quantized_layers = quantize_int8(self.model) if quantize == "int8" else 0
        if quantize == "bf16":
            self.model.to(torch.bfloat16)  # AMX / AVX512-BF16 matmuls on x86; norms and softmax stay float32 inside
        self._warm_up()

    # -- Engine API -----------------------------------------------------------------------

    def run(self, groups: Iterable[GroupRequest], selector: Selector, max_batch_rows: int = 160) -> Iterator[GroupResult]:
        yield from self._loop(groups, max_batch_rows, selector=selector, rng=None)

    def run_raw(self, groups: Iterable[GroupRequest], seed: int = 0, max_batch_rows: int = 160) -> int:
        import torch

        gen = torch.Generator(device=self.device).manual_seed(seed)
        for _ in self._loop(groups, max_batch_rows, selector=None, rng=gen):
            pass  # the rows' own tokens never leave: only their count
        return self._raw_tokens

    # -- the loop -------------------------------------------------------------------------

    def _warm_up(self) -> None:
        """One tiny forward: the first forward of a process pays a one-time cost of seconds."""
        import torch

        with torch.inference_mode():
            ids = torch.tensor([[self.tokenizer.pad_token_id or 0] * 4], device=self.device)
            self.model(input_ids=ids, logits_to_keep=1)

    def _loop(self, groups: Iterable[GroupRequest], max_batch_rows: int, selector: Selector | None, rng) -> Iterator[GroupResult]:
        """The private rows of every active group decode in one batch (`priv`), their public rows
        in another (`pub`). The public batch holds nothing but public rows, and which groups are
        in it follows public facts only (admission by worst-case rows, finishing by the released
        tokens), so a public row's logits are bit-for-bit the same whatever private rows decode
        beside it: floating-point reductions depend on a batch's shape, and a near-tie flipped
        in the public top-k would give a token probability zero under one neighbour."""
        import torch

        if max_batch_rows < 2:
            raise ValueError(f"max_batch_rows must be >= 2, got {max_batch_rows}")
        if self.threads is not None:
            torch.set_num_threads(self.threads)  # per calling thread under OpenMP: the engine may have loaded in another
        waiting = deque()
        source = iter(groups)
        self._drained = False
        active: list[_Active] = []
        priv, pub = _Batch.empty(), _Batch.empty()
        self._raw_tokens = 0

        with torch.inference_mode():
            while True:
                # Admit waiting groups while their worst-case rows fit (public: a group counts as
                # its row slots + 1, however many rows it really has).
                new: list[_Active] = []
                rows_free = max_batch_rows - sum(g.req.admit_rows for g in active)
                while (req := self._peek(waiting, source, max_batch_rows)) is not None:
                    if selector is not None and selector.halted(req.group_id):
                        waiting.popleft()  # halted (cancelled) while waiting for room: never admitted
                        yield GroupResult(req.group_id, (), "", "halted")
                        continue
                    need = req.admit_rows
                    if need > rows_free:
                        break
                    new.append(_Active(waiting.popleft()))
                    rows_free -= need
                if new:
                    priv = priv.merge(self._prefill([list(r) for g in new for r in g.req.rows]))
                    pub = pub.merge(self._prefill([list(g.req.public) for g in new]))
                    active.extend(new)
                if not active:
                    if self._drained and not waiting:
                        return
                    continue  # a live source had nothing to admit (it blocks while we are idle)
                self._count(priv.rows + pub.rows, steps=1)

                # Choose: one token per group (selector), or one per row (raw benchmark).
                if selector is None:
                    own_priv, own_pub = _sample_rows(priv.logits, rng), _sample_rows(pub.logits, rng)
                    chosen = None
                else:
                    chosen = self._select(active, priv, pub, selector)

                # Append, decide who stops, drop finished groups' rows.
                keep_priv: list[int] = []
                keep_pub: list[int] = []
                next_priv: list[int] = []
                next_pub: list[int] = []
                still: list[_Active] = []
                start = 0
                for gi, g in enumerate(active):
                    n = len(g.req.rows)
                    if selector is None:
                        tok = int(own_pub[gi])
                        self._raw_tokens += n + 1
                        row_next = [int(t) for t in own_priv[start : start + n]] if n else []
                    else:
                        tok = int(chosen[gi])  # -1: the group was found out of step
                        row_next = [tok] * n
                    if tok == _HALTED:
                        reason = "halted"
                    elif tok < 0:
                        reason = "out_of_step"
                    else:
                        g.tokens.append(tok)
                        reason = self._stop_reason(g, selector)
                    if reason is None:
                        keep_priv.extend(range(start, start + n))
                        keep_pub.append(gi)
                        next_priv.extend(row_next)
                        next_pub.append(tok)
                        still.append(g)
                    else:
                        if selector is not None:
                            selector.release(g.req.group_id)
                        self._count(groups_finished=1)
                        yield self._result(g, reason)
                    start += n
                active = still
                if not active:
                    priv, pub = _Batch.empty(), _Batch.empty()
                    continue
                priv = self._advance(priv, keep_priv, next_priv)
                pub = self._advance(pub, keep_pub, next_pub)

    def _advance(self, batch: _Batch, keep: list[int], next_ids: list[int]) -> _Batch:
        """Keep the rows still decoding and feed each its next token (one forward)."""
        import torch

        if not keep:
            return _Batch.empty()
        if len(keep) < batch.rows:
            batch = batch.select(torch.tensor(keep, dtype=torch.long, device=self.device))
        return self._decode_step(batch, torch.tensor(next_ids, device=self.device))

    def _select(self, active: list[_Active], priv: _Batch, pub: _Batch, selector: Selector) -> np.ndarray:
        """Hand every group's block to the selector; -1 marks a group found out of step, _HALTED
        one its selector halted before this step."""
        private = _host(priv.logits)
        public = _host(pub.logits)
        private_idx: list[int] = []
        public_idx: list[int] = []
        sizes: list[int] = []
        ids: list[int] = []
        where: list[int] = []
        out = np.full(len(active), -1, dtype=np.int64)
        start = 0
        for gi, g in enumerate(active):
            n = len(g.req.rows)
            if not (np.all(priv.steps[start : start + n] == g.step) and pub.steps[gi] == g.step):
                self._count(out_of_step=1)  # never aggregated: the group ends, counted
            elif selector.halted(g.req.group_id):
                out[gi] = _HALTED  # cancelled before this step: ends without selecting again
            else:
                private_idx.extend(range(start, start + n))
                public_idx.append(gi)
                sizes.append(n)
                ids.append(g.req.group_id)
                where.append(gi)
            start += n
        if ids:
            rows = private[private_idx] if private is not None else np.zeros((0, public.shape[1]), dtype=np.float32)
            t0 = time.perf_counter()
            tokens = selector.select(ids, rows, np.asarray(sizes), public[public_idx])
            self._count(selections=1, selection_seconds=time.perf_counter() - t0)
            out[where] = tokens
        return out

    def _stop_reason(self, g: _Active, selector: Selector | None) -> str | None:
        tok = g.tokens[-1]
        if tok in self.tokens.eos_ids and not g.req.ignore_eos:
            return "eos"
        if self.tokens.hit_stop(g.tokens, g.req.stop):
            return "stop"
        if g.step >= g.req.max_tokens:
            return "length"
        if selector is not None and selector.halted(g.req.group_id):
            return "halted"
        return None

    def _result(self, g: _Active, reason: str) -> GroupResult:
        return self.tokens.result(g.req.group_id, g.tokens, reason, g.req.stop)

    def _prefill(self, in_order: list[list[int]]) -> _Batch:
        """Prefill rows (one batch's kind: private rows, or public rows): their common prefix
        once, then each row's own suffix.

        Rows built from one template share its start (system prompt, instruction); that prefix
        is computed once and its KV cache expanded to every row, the suffixes are left-padded
        after it (the mask marks the padding, positions count real tokens only). Suffixes go in
        chunks of similar lengths (prefill_chunks).
        """
        import torch
        from transformers import DynamicCache

        if not in_order:
            return _Batch.empty()
        t0 = time.perf_counter()
        forwards = tokens = 0
        # chunks of similar lengths pad less; the rows go back to group order at the end
        order = sorted(range(len(in_order)), key=lambda i: len(in_order[i]))
        prompts = [in_order[i] for i in order]
        shared = _common_prefix(prompts)
        shared = shared if shared >= 8 else 0
        prefix_layers: list[tuple] = []
        if shared:
            cache = DynamicCache(config=self.model.config)
            self.model(input_ids=torch.tensor([prompts[0][:shared]], device=self.device), past_key_values=cache, use_cache=True, logits_to_keep=1)
            forwards, tokens = 1, shared
            prefix_layers = [(layer.keys, layer.values) for layer in cache.layers]
        parts: list[_Batch] = []
        pad = self.tokenizer.pad_token_id or 0
        for i, j in prefill_chunks([len(p) - shared for p in prompts], self.prefill_tokens):
            chunk = [p[shared:] for p in prompts[i:j]]
            b, width = len(chunk), len(chunk[-1])
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=self.device)
            mask = torch.tensor([[1] * shared + [0] * (width - len(p)) + [1] * len(p) for p in chunk], device=self.device)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
            cache = DynamicCache(
                ddp_cache_data=[(k.expand(b, -1, -1, -1).contiguous(), v.expand(b, -1, -1, -1).contiguous()) for k, v in prefix_layers]
            ) if shared else DynamicCache(config=self.model.config)
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1)
            forwards, tokens = forwards + 1, tokens + sum(len(p) for p in chunk)
            parts.append(_Batch(cache, mask, mask.sum(-1), out.logits[:, -1, :].float(), np.zeros(b, dtype=np.int64)))
        merged = parts[0]
        for p in parts[1:]:
            merged = merged.merge(p)
        back = torch.empty(len(order), dtype=torch.long)
        back[torch.tensor(order)] = torch.arange(len(order))
        merged = merged.select(back.to(self.device))
        self._count(forwards=forwards, prefill_forwards=forwards, prefill_tokens=tokens, prefill_seconds=time.perf_counter() - t0)
        return merged

    def _decode_step(self, batch: _Batch, next_ids) -> _Batch:
        import torch

        t0 = time.perf_counter()
        mask = torch.cat([batch.mask, torch.ones((batch.rows, 1), dtype=batch.mask.dtype, device=self.device)], dim=1)
        out = self.model(
            input_ids=next_ids[:, None],
            attention_mask=mask,
            position_ids=batch.next_pos[:, None],
            past_key_values=batch.cache,
            use_cache=True,
        )
        logits = out.logits[:, -1, :].float()
        self._count(forwards=1, decode_row_tokens=batch.rows, decode_seconds=time.perf_counter() - t0)
        return _Batch(batch.cache, mask, batch.next_pos + 1, logits, batch.steps + 1)


def _host(logits) -> np.ndarray | None:
    """A batch's logits as a float32 numpy array on the host (None for an empty batch)."""
    if logits is None:
        return None
    return logits.float().cpu().numpy() if logits.device.type != "cpu" else logits.numpy()


def _sample_rows(logits, rng):
    """Raw benchmark: each row samples its own token (inverse-CDF: ~15x cheaper than
    multinomial at 49k tokens). None for an empty batch."""
    import torch

    if logits is None:
        return None
    cdf = torch.softmax(logits, dim=-1).cumsum(-1)
    u = torch.rand((cdf.shape[0], 1), generator=rng, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(1).clamp(max=cdf.shape[1] - 1)


PREFILL_WASTE = 0.25  # padding a prefill chunk may add, as a share of its real tokens


def prefill_chunks(widths: list[int], budget: int, waste: float = PREFILL_WASTE) -> list[tuple[int, int]]:
    """Chunks [i, j) of rows whose widths are sorted ascending, for one prefill forward each: a
    chunk grows while its padded size (rows x its widest row) stays within `budget` tokens and
    within (1 + waste) x its real tokens. Padding is arithmetic thrown away: record lengths
    vary several-fold (SMS suffixes of 11 to 86 tokens after the template), and one chunk as
    wide as its widest row computed about twice the real tokens; a few more, narrower forwards
    cost far less. A single row wider than the budget is a chunk of its own."""
    chunks: list[tuple[int, int]] = []
    i = 0
    while i < len(widths):
        j, real = i + 1, widths[i]
        while j < len(widths):
            padded = (j + 1 - i) * widths[j]
            if padded > budget or padded > (1 + waste) * (real + widths[j]):
                break
            real += widths[j]
            j += 1
        chunks.append((i, j))
        i = j
    return chunks


def _common_prefix(prompts: list[list[int]]) -> int:
    """Length of the longest common prefix, leaving every prompt at least one token of its own
    (its last token's logits start the decoding)."""
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


@dataclass
class _Batch:
    """Rows decoding together: KV cache, attention mask (B, L), each row's next position, the
    next-token logits (B, V) and each row's count of generated tokens (the lock-step check)."""

    cache: object | None
    mask: object | None
    next_pos: object | None
    logits: object | None
    steps: np.ndarray

    @classmethod
    def empty(cls) -> _Batch:
        return cls(None, None, None, None, np.zeros(0, dtype=np.int64))

    @property
    def rows(self) -> int:
        return int(self.steps.shape[0])

    def _layers(self) -> list[tuple]:
        return [(layer.keys, layer.values) for layer in self.cache.layers]  # type: ignore[union-attr]

    def merge(self, other: _Batch) -> _Batch:
        """Append other's rows, left-padding whichever cache is shorter."""
        import torch
        import torch.nn.functional as F

        from .kv_cache import roomy_cache

        if self.rows == 0:
            return other
        if other.rows == 0:
            return self
        la, lb = self.mask.shape[1], other.mask.shape[1]
        width = max(la, lb)
        layers = []
        for (ka, va), (kb, vb) in zip(self._layers(), other._layers()):
            ka, va = F.pad(ka, (0, 0, width - la, 0)), F.pad(va, (0, 0, width - la, 0))
            kb, vb = F.pad(kb, (0, 0, width - lb, 0)), F.pad(vb, (0, 0, width - lb, 0))
            layers.append((torch.cat([ka, kb]), torch.cat([va, vb])))
        mask = torch.cat([F.pad(self.mask, (width - la, 0)), F.pad(other.mask, (width - lb, 0))])
        return _Batch(roomy_cache(layers), mask, torch.cat([self.next_pos, other.next_pos]), torch.cat([self.logits, other.logits]), np.concatenate([self.steps, other.steps]))

    def select(self, idx) -> _Batch:
        """Keep rows idx; trim leading columns that are padding for every kept row."""
        from .kv_cache import roomy_cache

        mask = self.mask[idx]
        first = int((mask.sum(0) > 0).nonzero()[0]) if mask.numel() else 0
        layers = [(k[idx][:, :, first:], v[idx][:, :, first:]) for k, v in self._layers()]
        return _Batch(roomy_cache(layers), mask[:, first:], self.next_pos[idx], self.logits[idx], self.steps[idx.cpu().numpy()])
