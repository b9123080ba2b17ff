"""SDPA attention that keeps grouped-query attention with a padding mask (CPU).

transformers' sdpa path repeats the key/value heads to the query heads whenever an attention
mask is present (its CUDA kernels need that); a left-padded batch always has a mask, so every
layer of every decode step copied the whole KV cache (3 -> 9 heads for SmolLM2: tens of MB per
layer per step). torch's CPU SDPA takes the mask and `enable_gqa=True` together, with the same
output. Registered under its own name so nothing else in the process changes.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import sdpa_mask

NAME = "privtext_sdpa_gqa"


def sdpa_gqa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs):
    groups = getattr(module, "num_key_value_groups", 1)
    causal = query.shape[2] > 1 and attention_mask is None and (is_causal if is_causal is not None else getattr(module, "is_causal", True))
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=causal, enable_gqa=groups > 1
    )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, sdpa_gqa_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)
