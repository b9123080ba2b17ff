"""Prompt encoding and record text, shared by every backend (one place for each rule)."""

from __future__ import annotations

from collections.abc import Sequence

from .interface import GroupResult


class ChatTokens:
    """A Hugging Face tokenizer seen through the two operations the engine needs."""

    def __init__(self, tokenizer, model_eos: int | list[int] | None = None):
        self.tokenizer = tokenizer
        ids = set(model_eos if isinstance(model_eos, list) else [model_eos] if model_eos is not None else [])
        if tokenizer.eos_token_id is not None:
            ids.add(tokenizer.eos_token_id)
        self.eos_ids = frozenset(int(i) for i in ids)

    def encode_chat(self, user_message: str, prefix: str = "") -> tuple[int, ...]:
        tok = self.tokenizer
        if tok.chat_template:
            text = tok.apply_chat_template([{"role": "user", "content": user_message}], tokenize=False, add_generation_prompt=True)
            ids = tok(text + prefix, add_special_tokens=False)["input_ids"]
        else:
            ids = tok(user_message + "\n" + prefix)["input_ids"]
        return tuple(int(i) for i in ids)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def hit_stop(self, token_ids: Sequence[int], stop: Sequence[str]) -> bool:
        return bool(stop) and any(s in self.decode(token_ids) for s in stop)

    def result(self, group_id: int, token_ids: Sequence[int], reason: str, stop: Sequence[str]) -> GroupResult:
        """The group's record: without its end-of-sequence token, cut at a stop string, without
        the replacement character a length cut leaves when it splits a multi-byte character."""
        tokens = list(token_ids)
        if reason == "eos" and tokens and tokens[-1] in self.eos_ids:
            tokens = tokens[:-1]
        text = self.decode(tokens)
        if reason == "stop":
            hits = [text.index(s) for s in stop if s in text]
            text = text[: min(hits)] if hits else text
        return GroupResult(group_id, tuple(tokens), text.rstrip("\ufffd").strip(), reason)  # type: ignore[arg-type]
