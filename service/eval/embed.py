"""all-MiniLM-L6-v2 sentence embeddings: moved to service/generation/embed.py, which Private
Evolution needs below service/eval; re-exported here for `privtext eval`."""

from __future__ import annotations

from ..generation.embed import MAX_TOKENS, embed

__all__ = ["MAX_TOKENS", "embed"]
