"""The transformers engine with quantize="int8" (issue 26): its logits stay close to float32, it
decodes in lock step through engine.run with a real MechanismSelector, and a private row's logits
never depend on the other rows of its batch (the reason it is not torch.ao's quantize_dynamic).
quantize="bf16" (bfloat16 weights and activations): close to float32 and decodes in lock step.

The float32 reference is the session's `engine` fixture (tests/service/conftest.py); the int8
engine is loaded once here, through PRIVTEXT_QUANTIZE=int8 (the environment route)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from mechanisms import DecodingConfig, JobRandomness  # noqa: E402
from service.engine import loader  # noqa: E402
from service.engine.interface import GroupRequest  # noqa: E402
from service.generation.selector import MechanismSelector  # noqa: E402

if "transformers" not in loader.available():
    pytest.skip("the transformers backend is not installed", allow_module_level=True)

TEXTS = [
    "Free entry in 2 a wkly comp to win FA Cup final tkts 21st May.",
    "Ok lar... Joking wif u oni...",
    "WINNER!! As a valued network customer you have been selected to receive a prize reward!",
    "I'm gonna be home soon and i don't want to talk about this stuff anymore tonight.",
    "Even my brother is not like to speak with me.",
]
# What float32 vs int8 gave here (SmolLM2-135M, 5 SMS prompts): max |logit difference| 3.3 on
# logits up to ~30, total variation between the next-token distributions up to 0.16. The bounds
# leave room for another CPU's kernels, and still fail a broken quantizer (wrong scales give
# differences in the tens, a transposed weight garbage).
MAX_ABS_DIFF = 6.0
MAX_TV = 0.3
# bfloat16 keeps 8 bits of mantissa: here max |logit difference| about 1 and total variation
# about 0.1 (printed by the test); the same bounds as int8.


@pytest.fixture(scope="module")
def bf16_engine():
    return loader.load_engine("transformers", quantize="bf16")


@pytest.fixture(scope="module")
def int8_engine():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVTEXT_QUANTIZE", "int8")
        return loader.load_engine("transformers")


def selector(seed=0):
    return MechanismSelector(DecodingConfig(mechanism="em", partitions=4, clip=2.0, top_k=20), JobRandomness.replay(b"privtext test secret", seed))


def prompt(engine, i, extra=""):
    return engine.encode_chat(f"Example text message:\n{TEXTS[i % len(TEXTS)]}{extra}\nWrite one more like it.")


class Forced:
    """A real selector whose tokens are replaced by a fixed sequence (every run then sees the
    same history), recording the blocks it was shown."""

    def __init__(self, inner, tokens):
        self.inner, self.tokens, self.blocks = inner, tokens, []

    def select(self, group_ids, private_logits, group_sizes, public_logits):
        self.blocks.append((list(group_ids), private_logits.copy(), np.asarray(group_sizes).copy(), public_logits.copy()))
        out = self.inner.select(group_ids, private_logits, group_sizes, public_logits)
        step = len(self.blocks) - 1
        return np.full_like(out, self.tokens[step % len(self.tokens)])

    def halted(self, g):
        return self.inner.halted(g)

    def release(self, g):
        self.inner.release(g)


def _softmax(x):
    p = np.exp(x - x.max())
    return p / p.sum()


def test_the_option_is_selected_and_every_linear_layer_is_int8(int8_engine, engine):
    assert (int8_engine.name, int8_engine.quantize) == ("transformers", "int8")
    assert engine.quantize == "none" and engine.quantized_layers == 0
    cfg = int8_engine.model.config
    assert int8_engine.quantized_layers == 7 * cfg.num_hidden_layers + 1  # q, k, v, o, gate, up, down per layer + the LM head
    assert int8_engine.vocab_size == engine.vocab_size and int8_engine.max_model_len == engine.max_model_len
    import torch

    assert not [n for n, m in int8_engine.model.named_modules() if isinstance(m, torch.nn.Linear)]


def close_to_float32(other, engine, name: str) -> None:
    """Plain forwards of the same prompts: `other`'s logits are close to float32's and keep the
    top of the distribution (float32's top token is in other's top 5)."""
    import torch

    worst, worst_tv = 0.0, 0.0
    for i in range(len(TEXTS)):
        ids = torch.tensor([list(prompt(engine, i))])
        with torch.inference_mode():
            a = engine.model(input_ids=ids).logits[0, -1].float().numpy()
            b = other.model(input_ids=ids).logits[0, -1].float().numpy()
        assert np.isfinite(b).all()
        worst = max(worst, float(np.abs(a - b).max()))
        worst_tv = max(worst_tv, 0.5 * float(np.abs(_softmax(a) - _softmax(b)).sum()))
        assert int(a.argmax()) in np.argsort(-b)[:5]
    print(f"{name} vs float32: max |logit difference| {worst:.3f}, max total variation {worst_tv:.3f}")
    assert 0 < worst <= MAX_ABS_DIFF
    assert worst_tv <= MAX_TV


def test_logits_are_close_to_float32(int8_engine, engine):
    close_to_float32(int8_engine, engine, "int8")


def test_bf16_is_bfloat16_and_close_to_float32(bf16_engine, engine):
    """Every weight is bfloat16, and the logits (handed to the selector as float32) stay close."""
    import torch

    assert (bf16_engine.quantize, bf16_engine.quantized_layers) == ("bf16", 0)
    assert {p.dtype for p in bf16_engine.model.parameters()} == {torch.bfloat16}
    close_to_float32(bf16_engine, engine, "bf16")


def test_bf16_decodes_in_lock_step(bf16_engine):
    """engine.run with a MechanismSelector hands float32 logits over and every group decodes
    its max_tokens; the same seed gives the same tokens."""
    public = bf16_engine.encode_chat("Write one text message.")
    groups = [GroupRequest(0, (prompt(bf16_engine, 0), prompt(bf16_engine, 1)), public, 5, ignore_eos=True),
              GroupRequest(1, (prompt(bf16_engine, 2),), public, 3, ignore_eos=True)]
    spy = Forced(selector(seed=3), [int(bf16_engine.tokenizer.encode(" ok", add_special_tokens=False)[0])])
    a = {r.group_id: r.token_ids for r in bf16_engine.run(groups, spy)}
    assert {g: len(t) for g, t in a.items()} == {0: 5, 1: 3}
    assert all(priv.dtype == np.float32 and pub.dtype == np.float32 for _, priv, _, pub in spy.blocks)
    b = {r.group_id: r.token_ids for r in bf16_engine.run(groups, selector(seed=3))}
    c = {r.group_id: r.token_ids for r in bf16_engine.run(groups, selector(seed=3))}
    assert b == c


def test_lock_step_decoding_with_a_real_selector(int8_engine):
    """engine.run with a MechanismSelector: identical rows stay identical (each receives the
    group's token every step), every group decodes its max_tokens, and the same seed gives the
    same tokens."""
    same = prompt(int8_engine, 0)
    public = int8_engine.encode_chat("Write one text message.")
    groups = [
        GroupRequest(0, (same, same, same), public, 6, ignore_eos=True),
        GroupRequest(1, tuple(prompt(int8_engine, 1 + i, " and more" * i) for i in range(3)), public, 4, ignore_eos=True),
    ]
    seen = []

    class Spy:
        def __init__(self, inner):
            self.inner = inner

        def select(self, group_ids, private_logits, group_sizes, public_logits):
            seen.append((list(group_ids), private_logits.copy()))
            return self.inner.select(group_ids, private_logits, group_sizes, public_logits)

        def halted(self, g):
            return self.inner.halted(g)

        def release(self, g):
            self.inner.release(g)

    a = {r.group_id: r.token_ids for r in int8_engine.run(groups, Spy(selector(seed=5)))}
    assert {g: len(t) for g, t in a.items()} == {0: 6, 1: 4}
    for ids, priv in seen:
        if 0 in ids:
            block = priv[:3]  # group 0 is first: its 3 rows lead the block
            assert np.array_equal(block, np.broadcast_to(block[0], block.shape))
    b = {r.group_id: r.token_ids for r in int8_engine.run(groups, selector(seed=5))}
    assert a == b
    assert int8_engine.run_raw(groups, seed=0) == 4 * 6 + 4 * 4


def test_a_private_row_does_not_see_its_neighbours(int8_engine):
    """Change another unit's row (same length, other tokens) and this row's logits are equal to
    the last bit at every step: each row quantizes its own activations, and int8 products add up
    exactly. With one activation scale per batch (quantize_dynamic) they would move."""
    public = int8_engine.encode_chat("Write one text message.")
    mine, other = prompt(int8_engine, 0), prompt(int8_engine, 2)
    k = len(other) // 2
    changed = other[:k] + tuple(reversed(other[k:-6])) + other[-6:]  # same length, other content
    assert len(changed) == len(other) and changed != other
    tokens = [int(int8_engine.tokenizer.encode(t, add_special_tokens=False)[0]) for t in (" The", " message", " is", " short")]

    def my_rows(rows):
        sel = Forced(selector(), tokens)
        list(int8_engine.run([GroupRequest(0, rows, public, 4, ignore_eos=True)], sel))
        return [priv[0] for _, priv, _, _ in sel.blocks]

    base = my_rows((mine, other))
    moved = my_rows((mine, changed))
    assert len(base) == len(moved) == 4
    for step, (x, y) in enumerate(zip(base, moved)):
        assert np.array_equal(x, y), f"step {step}: max {np.abs(x - y).max():.3g}"


def test_quantize_dynamic_would_couple_rows():
    """Why not torch.ao.quantization.quantize_dynamic: one scale for the whole batch, so scaling
    one row changes the others' outputs (here, on a plain Linear)."""
    import warnings

    import torch

    from service.engine.transformers_backend import _row_int8_linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dyn = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
    ours = _row_int8_linear()(lin)
    a = torch.randn(4, 64)
    b = a.clone()
    b[3] *= 10
    with torch.inference_mode():
        assert not torch.equal(dyn(a)[:3], dyn(b)[:3])
        assert torch.equal(ours(a)[:3], ours(b)[:3])
        assert torch.equal(ours(a)[:1], ours(a[:1]))  # nor on the batch's size
        assert (ours(a) - lin(a)).abs().max() < 0.05


def test_option_checks(monkeypatch):
    """Bad values fail before any model loads; the loader passes quantize through to the
    transformers engine, and vLLM refuses it (before importing vllm)."""
    from service.engine import transformers_backend as tb

    with pytest.raises(ValueError, match="quantize .* must be one of none, bf16, int8, got 'int4'"):
        tb.check_quantize("int4", "cpu")
    with pytest.raises(ValueError, match="CPU option"):
        tb.check_quantize("int8", "cuda")
    monkeypatch.setattr(tb, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("loaded a model despite a bad option"))
    monkeypatch.setenv("PRIVTEXT_QUANTIZE", "fp4")
    with pytest.raises(ValueError, match="PRIVTEXT_QUANTIZE"):
        tb.TransformersEngine("/nonexistent", device="cpu")
    monkeypatch.delenv("PRIVTEXT_QUANTIZE")

    got = {}
    monkeypatch.setattr(tb, "TransformersEngine", lambda path, **kw: got.update(kw) or "engine")
    assert loader._transformers("/x", quantize="int8") == "engine" and got == {"quantize": "int8"}
    with pytest.raises(ValueError, match="option of the transformers engine, not of vllm"):
        loader._vllm("/nonexistent", quantize="int8")
    monkeypatch.setenv("PRIVTEXT_QUANTIZE", "int8")
    with pytest.raises(ValueError, match="not of vllm"):
        loader._vllm("/nonexistent")
