"""Run InvisibleInk (`invink`) once and write what it produced as JSON: the peer side of
`privtext bench peer`. Run by the peer's own Python (scripts/peer-venv), never imported by
privtext: it uses the standard library and invink only.

    python peer_runner.py --input corpus.jsonl --model FOLDER --out result.json [settings]
"""

from __future__ import annotations

import argparse
import json
import os
import time

# the same offline promise as privtext: nothing is fetched from a model hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

DESCRIPTION = "SMS text messages, some personal (between friends or family), some spam (ads, prizes, premium-rate offers)."


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--input", required=True, help="JSONL with a text field (privtext data export)")
    p.add_argument("--model", required=True, help="a local model folder")
    p.add_argument("--out", required=True)
    p.add_argument("--records", type=int, default=8)
    p.add_argument("--partitions", type=int, default=8, help="private references per record (invink batch_size - 1)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--epsilon", type=float, default=3.0)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--dtype", default="float32")
    a = p.parse_args()
    started = time.time()
    with open(a.input, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    import invink

    t0 = time.time()
    out = invink.generate(
        texts, a.model, DESCRIPTION, epsilon=a.epsilon, delta=a.delta, batch_size=a.partitions + 1, num=a.records,
        max_toks=a.max_tokens, topk=a.top_k, dtype=a.dtype, device_map=-1, allow_download=False, trust_remote_code=False,
    )
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump({
            "records": len(out.texts),
            "tokens": int(sum(out.lens)),
            "epsilon_spent_max": max(out.epsilon_spent) if out.epsilon_spent else 0.0,
            "generate_seconds": time.time() - t0,
            "seconds_after_start": time.time() - started,
            "texts": list(out.texts),
        }, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
