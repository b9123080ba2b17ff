"""Private Evolution's loop: public candidates, the units' votes, variation by the public model.

    S_1     = P candidates per label, written by the model from the public prompt alone
    for t in 1..T:
        h_t = DP nearest-neighbour histogram of the units' votes over S_t   (mechanisms.pe)
        t < T:  S_{t+1} = variations of P survivors sampled in proportion to h_t
        t = T:  output  = the top records of S_T by h_t

No private record is ever in a prompt: every group the engine decodes here has no private row
(`GroupRequest(rows=())`), and its token is sampled from softmax(public logits / temperature)
over the public top-k with the group's own stream (PublicSampler). The variation prompt holds
a candidate's text, which is public: the model wrote it from public prompts, and which
candidates survive is decided by the released histograms only. The private units enter once,
as embeddings (MiniLM, service/generation/embed.py), and leave only through the T noisy
histograms that mechanisms.pe.HistogramReleases hands out and the plan charged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mechanisms.pe import HistogramReleases, PePlan, choose_parents, rank, vote_histogram
from mechanisms.randomness import JobRandomness

from ..engine.interface import Engine, GroupRequest, GroupResult
from .corpus import Record
from .prompts import Template

VARIATION = (
    "Rewrite the following {kind} as a new one: change some words and details, keep its style, length and topic. "
    "Reply with the new text only, nothing else.\n\n{example}"
)
VARIATION_SLACK = 8  # tokens a candidate of max_tokens tokens may gain when re-encoded inside a prompt


class StreamReused(RuntimeError):
    """A group id was sampled twice by one job (its stream would be reused: never allowed)."""


class PublicSampler:
    """The engine's Selector for groups with no private rows: each group samples its token from
    softmax(public_logits / temperature) over the public top-k, with its own stream
    (randomness.stream("pe", group id)). It reads no private row: it refuses a group that has one."""

    def __init__(self, randomness: JobRandomness, temperature: float = 1.0, top_k: int | None = 64):
        if not (temperature > 0 and np.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
        self.randomness = randomness
        self.temperature = float(temperature)
        self.top_k = top_k
        self._streams: dict[int, np.random.Generator] = {}
        self._finished: set[int] = set()
        self.tokens = 0

    def _stream(self, group_id: int) -> np.random.Generator:
        rng = self._streams.get(group_id)
        if rng is None:
            if group_id in self._finished:
                raise StreamReused(f"group {group_id} already finished in this job; its random stream is never reused")
            rng = self._streams[group_id] = self.randomness.stream("pe", group_id)
        return rng

    def select(self, group_ids: Sequence[int], private_logits: np.ndarray, group_sizes: np.ndarray, public_logits: np.ndarray) -> np.ndarray:
        if np.any(np.asarray(group_sizes) != 0) or (private_logits is not None and len(private_logits)):
            raise ValueError("PE samples from the public model only: a group with private rows reached its sampler")
        public = np.asarray(public_logits, dtype=np.float64)
        out = np.empty(len(group_ids), dtype=np.int64)
        for g, gid in enumerate(group_ids):
            z = np.where(np.isnan(public[g]), -np.inf, public[g]) / self.temperature
            ids = np.arange(len(z)) if self.top_k is None or self.top_k >= len(z) else np.argpartition(-z, self.top_k - 1)[: self.top_k]
            ids = np.sort(ids)  # a fixed order, so the stream's draws map to tokens the same way every time
            scores = z[ids] + self._stream(gid).gumbel(size=len(ids))  # Gumbel-max: a sample of softmax(z)
            out[g] = ids[int(np.argmax(scores))]
            self.tokens += 1
        return out

    def halted(self, group_id: int) -> bool:
        return False

    def release(self, group_id: int) -> None:
        self._streams.pop(group_id, None)
        self._finished.add(group_id)


def kind_words(template: Template, label: str | None) -> str:
    """What the template calls a label's texts: its [labels] words, else kind_label, else kind
    (the words its public prompt uses)."""
    if label is None:
        return template.kind
    return dict(template.label_names).get(label) or template.kind_label.format(label=label)


def variation_prompt(template: Template, text: str, label: str | None) -> str:
    """The public prompt asking the model to rewrite one candidate (already public)."""
    example = template.example.format(text=text[: template.max_record_chars])
    return VARIATION.format(kind=kind_words(template, label), example=example)


def strip_example_prefix(template: Template, text: str) -> str:
    """The candidate without the template's example prefix ("SMS:" for "SMS: {text}"), which the
    model tends to echo and, through variations, repeat ("SMS: SMS: ..."). Candidates are public:
    this is post-processing."""
    prefix = template.example.split("{text}", 1)[0].strip()
    text = text.strip()
    while prefix and text[: len(prefix)].lower() == prefix.lower():
        text = text[len(prefix) :].lstrip()
    return text


def _fit_variation(engine: Engine, template: Template, text: str, label: str | None, max_tokens: int) -> tuple[int, ...]:
    """The variation prompt's token ids, the candidate cut (by characters) so that prompt +
    max_tokens fit the model's context. Candidates are public: the cut reveals nothing."""
    ids = engine.encode_chat(variation_prompt(template, text, label))
    room = engine.max_model_len - max_tokens
    while len(ids) > room and text:
        text = text[: len(text) // 2]
        ids = engine.encode_chat(variation_prompt(template, text, label))
    return ids


def capacity_problems(engine: Engine, template: Template, labels: Sequence[str | None], max_tokens: int, batch_rows: int) -> list[str]:
    """Why PE's public groups would not fit the engine (empty: they fit); public numbers only."""
    problems: list[str] = []
    for label in labels:
        public = len(engine.encode_chat(template.public_prompt(label)))
        problems += engine.capacity_problems(0, 0, public, max_tokens, batch_rows)
        variation = len(engine.encode_chat(variation_prompt(template, "", label))) + max_tokens + VARIATION_SLACK
        if variation + max_tokens > engine.max_model_len:
            problems.append(f"a variation prompt ({variation} tokens with a candidate of max_tokens {max_tokens}) + max_tokens "
                            f"{max_tokens} is over the model's context of {engine.max_model_len} tokens")
    return list(dict.fromkeys(problems))


@dataclass(frozen=True)
class Voters:
    """The private side, once: one embedding per record kept, its unit's index and label.
    Never leaves the process; only ever the input of mechanisms.pe.vote_histogram."""

    embeddings: np.ndarray = field(repr=False)
    units: tuple[int, ...] = field(repr=False)
    labels: tuple[str, ...] | None = field(repr=False)

    def __repr__(self) -> str:
        return f"Voters(records={len(self.units)})"


def voters(
    units: Mapping[str, Sequence[Record]],
    labels: Sequence[str] | None,
    embed_fn: Callable[[Sequence[str]], np.ndarray],
    max_records_per_unit: int,
    max_record_chars: int,
) -> Voters:
    """Embed each unit's records: its first max_records_per_unit records (its own, in file
    order; a public cap that bounds the work one unit causes), each cut to max_record_chars.
    With labels, only records of a wanted label are kept; a unit still votes once
    (mechanisms.pe.unit_votes: its majority label, the mean of its records)."""
    texts: list[str] = []
    unit_idx: list[int] = []
    rec_labels: list[str] = []
    for i, recs in enumerate(units.values()):
        kept = [r for r in recs if labels is None or r.label in labels][:max_records_per_unit]
        for r in kept:
            texts.append(r.text[:max_record_chars])
            unit_idx.append(i)
            rec_labels.append(r.label)
    emb = embed_fn(texts)  # (0, dim) when no unit has a record to vote with
    return Voters(np.asarray(emb), tuple(unit_idx), tuple(rec_labels) if labels is not None else None)


@dataclass
class PeOutcome:
    """What a PE run produced: the records (ranked, per label) and public tallies."""

    records: list[tuple[GroupResult, str | None]]
    candidates_per_iteration: int
    histograms: int = 0  # histograms released (the plan's T)
    generated: int = 0  # candidates the model wrote, every iteration
    tokens_generated: int = 0
    fallbacks: list[dict] = field(default_factory=list)  # {iteration, label, step}: every noisy count was 0


def _decode(engine: Engine, prompts: Sequence[tuple[int, ...]], first_gid: int, max_tokens: int, stop: tuple[str, ...],
            sampler: PublicSampler, batch_rows: int) -> list[GroupResult]:
    """Decode public-only groups, one per prompt; results in prompt order."""

    def requests() -> Iterator[GroupRequest]:
        for i, ids in enumerate(prompts):
            yield GroupRequest(first_gid + i, (), tuple(ids), max_tokens, stop=stop, max_rows=0, max_row_tokens=0)

    got = {r.group_id: r for r in engine.run(requests(), sampler, max_batch_rows=batch_rows)}
    return [got[first_gid + i] for i in range(len(prompts))]


def evolve(
    engine: Engine,
    template: Template,
    private: Voters,
    plan: PePlan,
    records: Mapping[str | None, int],
    population: int,
    randomness: JobRandomness,
    embed_fn: Callable[[Sequence[str]], np.ndarray],
    *,
    max_tokens: int,
    stop: tuple[str, ...] = (),
    temperature: float = 1.0,
    top_k: int | None = 64,
    batch_rows: int = 160,
    say: Callable[[str], None] = lambda _m: None,
) -> PeOutcome:
    """Run the plan's T iterations. records: label (None without labels) -> records wanted,
    public; population: candidates per label per iteration (>= every label's records). Labels
    with no record wanted get no candidates."""
    labels = [lab for lab in sorted(records, key=lambda x: "" if x is None else x) if records[lab] > 0]
    if any(records[lab] > population for lab in labels):
        raise ValueError(f"pe_population ({population}) must be at least the records wanted per label ({dict(records)})")
    labelled = private.labels is not None
    sampler = PublicSampler(randomness, temperature, top_k)
    releases = HistogramReleases(plan)
    out = PeOutcome(records=[], candidates_per_iteration=population * len(labels))
    gid = 0

    def write(prompts_by_label: dict[str | None, list[tuple[int, ...]]]) -> dict[str | None, list[GroupResult]]:
        nonlocal gid
        flat = [p for lab in labels for p in prompts_by_label[lab]]
        results = [dataclasses.replace(r, text=strip_example_prefix(template, r.text))
                   for r in _decode(engine, flat, gid, max_tokens, stop, sampler, batch_rows)]
        gid += len(flat)
        out.generated += len(results)
        out.tokens_generated += sum(len(r.token_ids) for r in results)
        by: dict[str | None, list[GroupResult]] = {}
        i = 0
        for lab in labels:
            by[lab] = results[i : i + len(prompts_by_label[lab])]
            i += len(prompts_by_label[lab])
        return by

    say(f"PE: writing {out.candidates_per_iteration} candidates from the public prompt (no private record)")
    pop = write({lab: [engine.encode_chat(template.public_prompt(lab))] * population for lab in labels})
    for t in range(1, plan.iterations + 1):
        cands = [(lab, r) for lab in labels for r in pop[lab]]
        emb = embed_fn([r.text for _, r in cands])
        counts = vote_histogram(private.embeddings, private.units, emb, private.labels if labelled else None,
                                [lab for lab, _ in cands] if labelled else None)
        noisy = releases.release(counts, randomness.stream("pe-histogram", t))
        del counts  # private: nothing below reads it
        slices: dict[str | None, np.ndarray] = {}
        i = 0
        for lab in labels:
            slices[lab] = noisy[i : i + population]
            i += population
        if t == plan.iterations:
            for lab in labels:
                order, fell_back = rank(slices[lab], population)
                if fell_back:
                    out.fallbacks.append({"iteration": t, "label": lab, "step": "final ranking"})
                # Candidates are public: prefer non-empty ones, keeping the ranking's order.
                order = [j for j in order if pop[lab][j].text.strip()] + [j for j in order if not pop[lab][j].text.strip()]
                out.records += [(pop[lab][j], lab) for j in order[: records[lab]]]
            break
        prompts: dict[str | None, list[tuple[int, ...]]] = {}
        for lab in labels:
            parents, fell_back = choose_parents(slices[lab], population, randomness.stream("pe-parents", t, str(lab)))
            if fell_back:
                out.fallbacks.append({"iteration": t, "label": lab, "step": "survivors"})
            prompts[lab] = [_fit_variation(engine, template, pop[lab][j].text, lab, max_tokens) for j in parents.tolist()]
        kept = sum(int((slices[lab] > 0).sum()) for lab in labels)
        say(f"PE iteration {t}/{plan.iterations}: histogram released ({kept} of {len(cands)} candidates above the threshold); "
            f"writing {out.candidates_per_iteration} variations")
        pop = write(prompts)
    out.histograms = releases.released
    if out.histograms != plan.iterations:  # pragma: no cover - the loop above runs exactly T
        raise AssertionError(f"released {out.histograms} histograms, planned {plan.iterations}")
    return out
