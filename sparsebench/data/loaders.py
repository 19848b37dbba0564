"""Load documents from a named corpus or a local path.

Named corpora (``pg19``, ``wikitext``, ``govreport``) come from the Hugging Face hub through
``datasets`` when it is reachable, and otherwise, explicitly and with a message, from offline copies:
a corpus directory (``--data-dir``, ``$SPARSEBENCH_DATA``, or ``../shared/data`` beside the working
directory or the source tree) or, last, the small sample shipped inside the package. Local inputs are
a ``.txt`` file (one document), a ``.jsonl``/``.jsonl.gz`` file (one document per line, ``text`` field),
or a folder of those.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsebench.errors import DependencyError, UsageError

SAMPLES_DIR = Path(__file__).parent / "samples"
HUB_HOST = "huggingface.co"


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class NamedCorpus:
    """Where a named corpus lives on the hub and offline."""

    name: str
    hub_path: str
    hub_config: str | None
    hub_split: str
    offline_file: str
    """Relative to a corpus directory (``shared/data`` layout)."""
    sample_file: str
    description: str


NAMED: dict[str, NamedCorpus] = {
    c.name: c
    for c in (
        NamedCorpus("pg19", "emozilla/pg19", None, "test", "pg19/pg19_books.jsonl.gz", "pg19_sample.jsonl.gz",
                    "PG-19 test split (public-domain books); offline: 59 Project Gutenberg books"),
        NamedCorpus("wikitext", "Salesforce/wikitext", "wikitext-2-raw-v1", "test",
                    "wikitext/wikitext2_raw_test.jsonl.gz", "wikitext_sample.jsonl.gz",
                    "WikiText-2 raw test split, one document per article"),
        NamedCorpus("wikitext-validation", "Salesforce/wikitext", "wikitext-2-raw-v1", "validation",
                    "wikitext/wikitext2_raw_validation.jsonl.gz", "wikitext_validation_sample.jsonl.gz",
                    "WikiText-2 raw validation split (calibration data for layer maps)"),
        # THUDM/LongBench is a loading script, which datasets >= 4 refuses; this mirror holds the same
        # test sets as parquet.
        NamedCorpus("govreport", "Xnhyacinth/LongBench", "gov_report", "test",
                    "govreport/govreport_like.jsonl.gz", "govreport_sample.jsonl.gz",
                    "LongBench gov_report (reports + summaries); offline: 40 GAO/CRS reports"),
    )
}


@dataclass
class Corpus:
    """Documents plus a one-line statement of where they came from (printed and stored in results)."""

    name: str
    documents: list[Document]
    origin: str


def load_corpus(spec: str, *, data_dir: str | None = None, source: str = "auto",
                log: Callable[[str], None] | None = None) -> Corpus:
    """Load a named corpus or a local path. ``source`` is ``auto`` (hub, else offline), ``hub`` or ``offline``."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if source not in {"auto", "hub", "offline"}:
        raise UsageError(f"--data-source must be auto, hub or offline, got {source!r}")
    if spec in NAMED:
        return _load_named(NAMED[spec], data_dir, source, log)
    path = Path(spec).expanduser()
    if not path.exists():
        raise UsageError(f"dataset {spec!r} is neither a named corpus ({', '.join(NAMED)}) nor an existing "
                         f"path; give one of those names or a .txt/.jsonl file or folder")
    docs = list(_read_path(path))
    if not any(d.text.strip() for d in docs):
        raise UsageError(f"dataset path {spec!r} holds no text; expected .txt files or .jsonl lines "
                         f"with a non-empty 'text' field")
    return Corpus(spec, [d for d in docs if d.text.strip()], f"local path {path.resolve()}")


def _load_named(corpus: NamedCorpus, data_dir: str | None, source: str, log: Callable[[str], None]) -> Corpus:
    if source in {"auto", "hub"}:
        reason = _hub_unavailable_reason()
        if reason is None:
            try:
                docs = _load_from_hub(corpus)
            except DependencyError:
                raise
            except Exception as exc:  # a hub-side failure (moved dataset, network drop) is not a crash
                reason = f"loading {corpus.hub_path} from the hub failed ({type(exc).__name__}: {exc})"
            else:
                return Corpus(corpus.name, docs, f"hub {corpus.hub_path} ({corpus.hub_config or 'default'}, "
                                                 f"{corpus.hub_split})")
        if source == "hub":
            raise UsageError(f"--data-source hub: {reason}; use --data-source offline")
        log(f"sparsebench: {reason}; using the offline copy of {corpus.name!r}")
    directory = find_data_dir(data_dir)
    if directory is not None and (directory / corpus.offline_file).exists():
        path = directory / corpus.offline_file
        return Corpus(corpus.name, list(_read_jsonl(path)), f"offline corpus {path}")
    sample = SAMPLES_DIR / corpus.sample_file
    log(f"sparsebench: no offline corpus directory with {corpus.offline_file} found (set --data-dir or "
        f"$SPARSEBENCH_DATA); using the small sample shipped with sparsebench")
    return Corpus(corpus.name, list(_read_jsonl(sample)), f"packaged sample {sample.name}")


def find_data_dir(explicit: str | None = None) -> Path | None:
    """The offline corpus directory: explicit, ``$SPARSEBENCH_DATA``, or a ``shared/data`` nearby."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise UsageError(f"--data-dir {explicit!r} is not a directory")
        return path
    env = os.environ.get("SPARSEBENCH_DATA")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise UsageError(f"$SPARSEBENCH_DATA={env!r} is not a directory; fix or unset it")
        return path
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        for candidate in (base / "shared" / "data", base.parent / "shared" / "data"):
            if candidate.is_dir():
                return candidate
    return None


def _hub_unavailable_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be used right now, or None. A quick probe avoids minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE") in {"1", "true", "TRUE", "yes"} or \
            os.environ.get("HF_DATASETS_OFFLINE") in {"1", "true", "TRUE", "yes"}:
        return "HF_HUB_OFFLINE is set"
    try:
        import datasets  # noqa: F401
    except ImportError:
        return "the `datasets` package is not installed (pip install 'sparsebench[data]')"
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return None
    except OSError as exc:
        return f"the Hugging Face hub is unreachable ({exc.__class__.__name__})"


def _load_from_hub(corpus: NamedCorpus) -> list[Document]:
    try:
        import datasets
    except ImportError as exc:
        raise DependencyError("loading from the hub needs `datasets`: pip install 'sparsebench[data]'") from exc
    rows = datasets.load_dataset(corpus.hub_path, corpus.hub_config, split=corpus.hub_split, streaming=True)
    if corpus.name.startswith("wikitext"):
        return list(_wikitext_articles(r["text"] for r in rows))
    docs = []
    for i, row in enumerate(rows):
        text = row.get("text") or row.get("context") or ""
        doc_id = str(row.get("_id") or row.get("id") or row.get("url") or f"{corpus.name}-{i}")
        title = str(row.get("short_book_title") or row.get("title") or "")
        meta = {k: row[k] for k in ("answers", "summary") if k in row}
        docs.append(Document(doc_id, text, title, meta))
    return docs


def _wikitext_articles(lines: Iterable[str]) -> Iterator[Document]:
    """Join WikiText's line rows into articles at top-level `` = Title = `` headings."""
    title, buf = None, []
    for line in lines:
        stripped = line.strip()
        is_heading = stripped.startswith("= ") and stripped.endswith(" =") and not stripped.startswith("= =")
        if is_heading and buf:
            yield Document(f"wikitext-{len(title or '')}-{title}", "".join(buf), title or "")
            buf = []
        if is_heading:
            title = stripped.strip("= ").strip()
        buf.append(line)
    if buf and "".join(buf).strip():
        yield Document(f"wikitext-{title}", "".join(buf), title or "")


def _read_path(path: Path) -> Iterator[Document]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _is_text_file(p))
        if not files:
            raise UsageError(f"dataset folder {str(path)!r} has no .txt or .jsonl(.gz) files")
        for file in files:
            yield from _read_path(file)
    elif path.name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".json")):
        yield from _read_jsonl(path)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"dataset file {str(path)!r} is not UTF-8 text") from None
        yield Document(path.stem, text, path.stem, {"path": str(path)})


def _is_text_file(path: Path) -> bool:
    return path.suffix in {".txt", ".md"} or path.name.endswith((".jsonl", ".jsonl.gz"))


def _read_jsonl(path: Path) -> Iterator[Document]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise UsageError(f"{path}:{lineno}: not valid JSON; expected one object per line") from None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise UsageError(f"{path}:{lineno}: expected an object with a string 'text' field")
                meta = {k: v for k, v in row.items() if k not in {"id", "text", "title"}}
                yield Document(str(row.get("id", f"{path.stem}-{lineno}")), row["text"],
                               str(row.get("title", "")), meta)
    except (OSError, EOFError) as exc:
        raise UsageError(f"cannot read dataset file {str(path)!r}: {exc}") from None


def select_documents(docs: list[Document], seed: int) -> list[Document]:
    """The documents in a reproducible order: sorted by id, then shuffled with ``seed``.

    Callers take documents from the front (skipping ones that are too short), so the same seed picks
    the same documents on every machine, whatever order the source listed them in.
    """
    ordered = sorted(docs, key=lambda d: d.id)
    random.Random(seed).shuffle(ordered)
    return ordered


def tokenize_documents(
    docs: Iterable[Document], tokenizer: Any, seq_len: int, n: int
) -> tuple[list[tuple[Document, list[int]]], int]:
    """The first ``n`` documents (in the given order) with at least ``seq_len`` tokens, truncated to it.

    Returns the kept ``(document, token ids)`` pairs and how many documents were too short. Only a
    prefix of each text is tokenized (grown when it falls short), so a 1M-character book costs little.
    """
    kept, too_short = [], 0
    for doc in docs:
        ids = _prefix_tokens(doc.text, tokenizer, seq_len)
        if len(ids) < seq_len:
            too_short += 1
            continue
        kept.append((doc, ids[:seq_len]))
        if len(kept) == n:
            break
    return kept, too_short


def _prefix_tokens(text: str, tokenizer: Any, seq_len: int) -> list[int]:
    chars = seq_len * 8
    while True:
        ids = _encode(tokenizer, text[:chars])
        if len(ids) >= seq_len + 1 or chars >= len(text):  # +1: the cut may split the last token
            return ids
        chars *= 2


def _encode(tokenizer: Any, text: str) -> list[int]:
    # The tokenizer's own convention for special tokens (Gemma prepends <bos>, Qwen adds nothing).
    if hasattr(tokenizer, "encode"):
        try:
            return list(tokenizer.encode(text, add_special_tokens=True))
        except TypeError:
            return list(tokenizer.encode(text))
    raise TypeError(f"tokenizer {type(tokenizer).__name__} has no encode()")
