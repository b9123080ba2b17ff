"""Prompt templates: a private row's prompt (its unit's records as examples) and the public
row's prompt (the same request with no records). Templates are TOML files a user can override.

Every choice here is public: the template, the cap on characters per record, the label. A
record is truncated to the cap by itself, so no record's prompt depends on another record.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

FIELDS = ("kind", "kind_label", "example", "with_examples", "without_examples")
PACKAGED = ("default", "sms-spam", "trec", "rotten-tomatoes")  # templates shipped in service/generation/templates/


@dataclass(frozen=True)
class Template:
    kind: str
    kind_label: str
    example: str
    with_examples: str
    without_examples: str
    max_record_chars: int = 500
    label_names: tuple[tuple[str, str], ...] = ()  # [labels] table: label -> words used for it

    @classmethod
    def load(cls, path: str | Path | None = None, max_record_chars: int = 500) -> Template:
        """The TOML template at path, a packaged template by name, or the packaged default."""
        if path is None or str(path) in PACKAGED:
            name = "default" if path is None else str(path)
            text = resources.files("service.generation").joinpath(f"templates/{name}.toml").read_text(encoding="utf-8")
            where = f"the packaged template {name!r}"
        else:
            text = Path(path).read_text(encoding="utf-8")
            where = str(path)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"template {where} is not valid TOML: {e}") from None
        missing = [f for f in FIELDS if not isinstance(data.get(f), str)]
        if missing:
            raise ValueError(f"template {where} must define {', '.join(missing)} (strings)")
        if max_record_chars < 1:
            raise ValueError(f"max_record_chars must be an integer >= 1, got {max_record_chars}")
        labels = data.get("labels", {})
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise ValueError(f"template {where}: [labels] must map labels to strings")
        t = cls(**{f: data[f] for f in FIELDS}, max_record_chars=max_record_chars, label_names=tuple(sorted(labels.items())))
        t.row_prompt(["probe"], "probe")  # fail now, not mid-job, on a bad placeholder
        t.public_prompt("probe")
        return t

    def _kind(self, label: str | None) -> str:
        if label is None:
            return self.kind
        return dict(self.label_names).get(label) or self.kind_label.format(label=label)

    def _fill(self, text: str, label: str | None, **kw: str) -> str:
        return text.format(kind=self._kind(label), **kw)

    def row_prompt(self, records: Sequence[str], label: str | None = None) -> str:
        examples = "\n\n".join(self.example.format(text=r[: self.max_record_chars]) for r in records)
        return self._fill(self.with_examples, label, examples=examples)

    def public_prompt(self, label: str | None = None) -> str:
        return self._fill(self.without_examples, label)
