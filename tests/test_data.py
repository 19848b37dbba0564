from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from sparsebench.data import load_corpus, select_documents, tokenize_documents
from sparsebench.data.loaders import Document, _wikitext_articles
from sparsebench.errors import UsageError


class _Chars:
    """One token per character: enough to test truncation logic."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) % 256 for c in text]


def test_local_txt_jsonl_and_folder(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha " * 50)
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as h:
        h.write(json.dumps({"id": "b1", "text": "beta " * 40}) + "\n\n")
        h.write(json.dumps({"id": "b2", "text": ""}) + "\n")
    corpus = load_corpus(str(tmp_path))
    assert sorted(d.id for d in corpus.documents) == ["a", "b1"]
    assert load_corpus(str(tmp_path / "a.txt")).documents[0].text.startswith("alpha")


@pytest.mark.parametrize("content, match", [("", "holds no text"), ("{\"x\": 1}\n", "string 'text' field"),
                                             ("not json\n", "not valid JSON")])
def test_bad_local_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(UsageError, match=match):
        load_corpus(str(path))


def test_missing_path_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="neither a named corpus"):
        load_corpus("/no/such/place.jsonl")


def test_named_corpus_falls_back_offline_with_a_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SPARSEBENCH_DATA", str(tmp_path))
    (tmp_path / "pg19").mkdir()
    with gzip.open(tmp_path / "pg19" / "pg19_books.jsonl.gz", "wt") as h:
        h.write(json.dumps({"id": "pg-1", "text": "Call me Ishmael. " * 100}) + "\n")
    messages: list[str] = []
    corpus = load_corpus("pg19", log=messages.append)
    assert [d.id for d in corpus.documents] == ["pg-1"]
    assert "offline" in corpus.origin and any("HF_HUB_OFFLINE" in m for m in messages)
    with pytest.raises(UsageError, match="--data-source offline"):
        load_corpus("pg19", source="hub")


def test_packaged_sample_when_no_corpus_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SPARSEBENCH_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sparsebench.data.loaders.find_data_dir", lambda explicit=None: None)
    for name in ("pg19", "wikitext", "wikitext-validation", "govreport"):
        corpus = load_corpus(name, log=lambda m: None)
        assert corpus.documents and "packaged sample" in corpus.origin
        assert all(d.text for d in corpus.documents)


def test_selection_is_deterministic_and_order_independent() -> None:
    docs = [Document(f"d{i}", "x" * (10 + i)) for i in range(20)]
    a = [d.id for d in select_documents(docs, seed=3)]
    b = [d.id for d in select_documents(list(reversed(docs)), seed=3)]
    assert a == b and a != [d.id for d in select_documents(docs, seed=4)]


def test_tokenize_skips_short_documents_and_truncates() -> None:
    docs = [Document("short", "ab"), Document("long", "c" * 5000), Document("long2", "d" * 300)]
    kept, too_short = tokenize_documents(docs, _Chars(), seq_len=200, n=5)
    assert [d.id for d, _ in kept] == ["long", "long2"] and too_short == 1
    assert all(len(ids) == 200 for _, ids in kept)


def test_wikitext_lines_become_articles() -> None:
    lines = [" = A = \n", " text a \n", " = = Sub = = \n", " more \n", " = B = \n", " text b \n"]
    arts = list(_wikitext_articles(lines))
    assert [a.title for a in arts] == ["A", "B"]
    assert "Sub" in arts[0].text


def test_hub_failure_falls_back_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reachable hub whose dataset fails to load (moved, script-based) is a message, not a crash."""
    import sparsebench.data.loaders as loaders

    def broken(corpus):
        raise RuntimeError("Dataset scripts are no longer supported")

    monkeypatch.setattr(loaders, "_hub_unavailable_reason", lambda timeout=3.0: None)
    monkeypatch.setattr(loaders, "_load_from_hub", broken)
    messages: list[str] = []
    corpus = load_corpus("govreport", log=messages.append)
    assert corpus.documents and "hub" not in corpus.origin.split()[0]
    assert any("scripts are no longer supported" in m for m in messages)
    with pytest.raises(UsageError, match="--data-source offline"):
        load_corpus("govreport", source="hub")
