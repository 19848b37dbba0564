"""Where distilled drafts live and how they are saved and loaded.

A distilled draft is a plain transformers model directory (``config.json``, ``model.safetensors``, the
target's tokenizer files) that ``AutoModelForCausalLM.from_pretrained`` loads alone, plus
``sparsebench_distill.json`` (what it was distilled from and how; written last, so its presence marks a
complete directory) and ``distill_report.json``. The frozen embeddings, final norm and head shared
with the target are stored as copies, not by reference, so the directory does not depend on the
target's files. A draft trained with a reduced head (``--head-vocab``) also holds ``head_vocab.json``
(:mod:`.headvocab`): its weights keep the full head, and :func:`load_distilled` installs the reduced one.
Training state lives in its ``training/`` subfolder.

``--draft distilled:NAME`` names ``cache_root()/drafts/NAME``; a path to such a directory works too.
The tiny test targets have a byte tokenizer with no files; the manifest records it and the loader
rebuilds it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from sparsebench.distill.headvocab import HEAD_VOCAB_FILE, install_head, read_head_vocab, write_head_vocab
from sparsebench.errors import UsageError

PREFIX = "distilled:"
MANIFEST = "sparsebench_distill.json"
REPORT = "distill_report.json"
FORMAT = 1
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def drafts_root() -> Path:
    """``cache_root()/drafts``: the default home of distilled drafts."""
    from sparsebench.models.registry import cache_root

    return cache_root() / "drafts"


def tokens_cache_dir() -> Path:
    """``cache_root()/distill-tokens``: tokenized training text, shared by every draft of a target."""
    return drafts_root().parent / "distill-tokens"


def check_name(name: str) -> str:
    """``name`` if it is usable as a directory name, else a ``UsageError``."""
    if not NAME.fullmatch(name):
        raise UsageError(f"draft name {name!r} must be letters, digits, '.', '_' or '-' (no slashes), e.g. "
                         "smollm2-135m-L4")
    return name


def default_name(target: str, layers: int, head_vocab: int | None = None) -> str:
    """``smollm2-135m-L4`` from ``smollm2-135m`` and 4 layers, ``smollm2-135m-L10-V8192`` with an 8192-id
    reduced head (paths and ids reduced to a safe name)."""
    stem = Path(target.rstrip("/")).name or target
    suffix = f"-V{head_vocab}" if head_vocab is not None else ""
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', stem).strip('-.') or 'draft'}-L{layers}{suffix}"


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a reader (or a resumed run after a
    crash) sees the old file or the whole new one, never a truncated one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def is_distilled_dir(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def resolve_path(spec: str) -> Path:
    """The directory of ``distilled:NAME`` or of a path to a distilled draft (``UsageError`` if none)."""
    if spec.startswith(PREFIX):
        name = check_name(spec.removeprefix(PREFIX).strip())
        path = drafts_root() / name
        if not is_distilled_dir(path):
            known = sorted(p.name for p in drafts_root().glob("*") if is_distilled_dir(p)) \
                if drafts_root().is_dir() else []
            raise UsageError(f"no distilled draft {name!r} in {drafts_root()} (known: {', '.join(known) or 'none'}); "
                             f"train one with `sparsebench distill --target MODEL --name {name}`")
        return path
    path = Path(spec).expanduser()
    if not is_distilled_dir(path):
        raise UsageError(f"{spec!r} is not a distilled draft directory (it has no {MANIFEST})")
    return path


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path / MANIFEST} ({exc}); retrain the draft") from exc
    if data.get("format") != FORMAT:
        raise UsageError(f"{path} was written by another sparsebench version (format {data.get('format')}); "
                         "retrain it with this version's `sparsebench distill`")
    return data


def save_draft(model: torch.nn.Module, tokenizer: Any, out: Path, manifest: dict[str, Any],
               report: dict[str, Any], *, progress: bool = True,
               head_vocab: tuple[list[int], dict[str, Any]] | None = None) -> None:
    """Write the draft directory: files first into a partial folder, then moved in, the manifest last.

    The directory may already hold ``training/`` (kept) and an older draft (its files replaced), so it
    is updated file by file rather than replaced wholesale; a crash part-way leaves no manifest, and the
    directory then reads as incomplete. ``head_vocab``: the reduced head's ids and how they were chosen
    (``head_vocab.json``; an older draft's file is removed when there is none).
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    (out / HEAD_VOCAB_FILE).unlink(missing_ok=True)
    partial = out / f".partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    from sparsebench.models.registry import _quiet_transformers

    with _quiet_transformers(progress):
        model.save_pretrained(partial)
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(partial)
        manifest["tokenizer"] = {"kind": "files"}
    else:  # the tiny models' byte tokenizer has no files: record how to rebuild it
        manifest["tokenizer"] = {"kind": "bytes", "vocab_size": int(tokenizer.vocab_size)}
    (partial / REPORT).write_text(json.dumps(report, indent=1, default=str))
    if head_vocab is not None:
        write_head_vocab(partial, *head_vocab)
        manifest["head_vocab"] = {"rows": len(head_vocab[0]), "file": HEAD_VOCAB_FILE}
    for item in partial.iterdir():
        os.replace(item, out / item.name)
    partial.rmdir()
    tmp = out / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"format": FORMAT, **manifest}, indent=1, default=str))
    os.replace(tmp, out / MANIFEST)


def load_distilled(spec: str, *, dtype: torch.dtype, device: str, progress: bool = True) -> Any:
    """Load ``distilled:NAME`` or a distilled draft directory as a :class:`~sparsebench.models.LoadedModel`.

    A draft with a reduced head gets it installed (:class:`~sparsebench.distill.headvocab.SubsetHead`,
    full-vocabulary logits with ``-inf`` outside its ids), so whatever proposes tokens from it, the
    speculative decoders or :meth:`~sparsebench.fastdecode.model.FastModel.from_hf`, uses only those ids;
    its identity records the head size.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparsebench.models import ByteTokenizer, LoadedModel
    from sparsebench.models.registry import _quiet_transformers, sha256_file

    path = resolve_path(spec).resolve()
    manifest = read_manifest(path)
    with _quiet_transformers(progress):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    if manifest.get("tokenizer", {}).get("kind") == "bytes":
        tokenizer: Any = ByteTokenizer(vocab_size=int(manifest["tokenizer"]["vocab_size"]),
                                       name_or_path=str(manifest.get("target", {}).get("name", path.name)))
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    weights = path / "model.safetensors"
    identity = {"kind": "distilled", "source": str(path), "revision": None,
                "sha256": sha256_file(weights) if weights.is_file() else None,
                "target": manifest.get("target", {}).get("name")}
    text = model.config.get_text_config()
    if manifest.get("head_vocab"):
        ids = read_head_vocab(path, int(model.get_output_embeddings().weight.shape[0]))
        install_head(model, ids, expand=True)
        identity["head_vocab"] = len(ids)
    return LoadedModel(model=model.to(device).eval(), tokenizer=tokenizer, name=spec, identity=identity,
                       max_positions=int(getattr(text, "max_position_embeddings", 0) or 0))
