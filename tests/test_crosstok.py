"""Cross-tokenizer SpecAttn: character-offset alignment of two tokenizations and the attention mapping."""

from __future__ import annotations

import re

import pytest
import torch

from sparsebench.errors import UsageError
from sparsebench.models.tokenizers import ByteTokenizer
from sparsebench.specattn.crosstok import (
    CrossTokenizerCapture,
    CrossTokenizerDraft,
    TokenAlignment,
    Tokenization,
    tokenize_with_offsets,
)


def _toks(text: str, pieces: list[str], specials: tuple[int, ...] = ()) -> Tokenization:
    """Consecutive pieces of ``text`` as tokens (ids = positions); ``specials``: zero-width tokens at 0."""
    assert "".join(pieces) == text
    offsets = [(0, 0)] * len(specials)
    pos = 0
    for p in pieces:
        offsets.append((pos, pos + len(p)))
        pos += len(p)
    return Tokenization(list(range(len(offsets))), offsets)


class WordTokenizer:
    """A fast-tokenizer stand-in: whitespace-led words, with offsets."""

    def __call__(self, text: str, return_offsets_mapping: bool = False, add_special_tokens: bool = True) -> dict:
        spans = [m.span() for m in re.finditer(r"\s*\S+|\s+$", text)]
        out = {"input_ids": list(range(len(spans)))}
        if return_offsets_mapping:
            out["offset_mapping"] = spans
        return out


def test_a_draft_token_over_two_target_tokens_splits_by_overlap() -> None:
    text = "abcdef"
    al = TokenAlignment.from_tokenizations(_toks(text, ["ab", "cdef"]), _toks(text, ["abc", "de", "f"]))
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.25, 0.5, 0.25]])
    torch.testing.assert_close(al.dense(), expected)
    assert al.covered.all()


def test_mass_is_conserved_and_summed_per_block() -> None:
    text = "the cat sat on a mat, then slept."
    draft = _toks(text, ["the", " cat", " s", "at", " on a", " mat", ",", " then", " sl", "ept", "."])
    target = _toks(text, ["th", "e c", "at sat", " on", " a mat", ", t", "hen", " slept."])
    al = TokenAlignment.from_tokenizations(draft, target)
    attn = torch.rand(2, 3, len(draft), generator=torch.Generator().manual_seed(0))
    tokens = al.to_target_tokens(attn)
    torch.testing.assert_close(tokens.sum(-1), attn.sum(-1))
    blocks = al.to_target_blocks(attn, block_size=3)
    assert blocks.shape == (2, 3, 3)  # 8 target tokens in blocks of 3
    torch.testing.assert_close(blocks, torch.stack([tokens[..., :3].sum(-1), tokens[..., 3:6].sum(-1),
                                                    tokens[..., 6:].sum(-1)], -1))
    # Exact against the dense matrix.
    torch.testing.assert_close(tokens, attn @ al.dense())


def test_a_draft_prefix_maps_onto_the_target_prefix() -> None:
    text = "abcdefgh"
    al = TokenAlignment.from_tokenizations(_toks(text, ["abc", "def", "gh"]), _toks(text, ["ab", "cd", "ef", "gh"]))
    out = al.to_target_tokens(torch.tensor([0.5, 0.5]), n_target_tokens=3)  # draft read "abcdef"
    torch.testing.assert_close(out, torch.tensor([1 / 3, 1 / 3, 1 / 3]))
    with pytest.raises(ValueError, match="4 draft tokens"):
        al.to_target_tokens(torch.ones(4))


def test_special_tokens_map_to_special_tokens_at_the_same_place() -> None:
    text = "hello world"
    draft = _toks(text, ["hello", " world"], specials=(0,))
    with_bos = TokenAlignment.from_tokenizations(draft, _toks(text, ["hell", "o world"], specials=(0,)))
    torch.testing.assert_close(with_bos.dense()[0], torch.tensor([1.0, 0.0, 0.0]))
    no_bos = TokenAlignment.from_tokenizations(draft, _toks(text, ["hell", "o world"]))
    assert no_bos.covered.tolist() == [False, True, True]
    attn = torch.tensor([0.6, 0.3, 0.1])
    torch.testing.assert_close(no_bos.to_target_tokens(attn).sum(), torch.tensor(0.4))  # the covered mass


def test_byte_tokens_sharing_a_character_split_without_losing_mass() -> None:
    # Byte-level BPE reports a 3-byte character's full span for each of its byte tokens; text "a東".
    draft = Tokenization([0, 1, 2], [(0, 2), (1, 2), (1, 2)])
    target = Tokenization([0, 1], [(0, 2), (1, 2)])
    al = TokenAlignment.from_tokenizations(draft, target)
    torch.testing.assert_close(al.dense(), torch.tensor([[2 / 3, 1 / 3], [0.5, 0.5], [0.5, 0.5]]))


def test_tokenizers_without_offsets_are_named_in_the_error() -> None:
    class SlowTokenizer:
        def __call__(self, text: str, **kwargs: object) -> dict:
            raise NotImplementedError("return_offset_mapping is not available when using Python tokenizers")

    class NoOffsetsTokenizer:
        def __call__(self, text: str, **kwargs: object) -> dict:
            return {"input_ids": [1, 2]}

    from transformers import ByT5Tokenizer  # a real Python-backend tokenizer, built without files

    for tok in (SlowTokenizer(), NoOffsetsTokenizer(), ByT5Tokenizer()):
        with pytest.raises(UsageError, match=type(tok).__name__):
            tokenize_with_offsets(tok, "some text")


def test_byte_tokenizer_offsets_follow_its_ids() -> None:
    text = "naïve 東"
    tk = tokenize_with_offsets(ByteTokenizer(), text)
    assert tk.ids == ByteTokenizer().encode(text)
    assert tk.offsets[2:4] == [(2, 3), (2, 3)]  # ï is two bytes


def test_the_draft_is_fed_every_token_ending_within_the_target_token() -> None:
    text = "ab cd"
    sched = CrossTokenizerDraft(ByteTokenizer(), WordTokenizer(), text)  # draft: bytes; target: " ab", " cd"
    assert sched.target_ids == [0, 1]
    assert sched.prefill_ids(1) == list(b"ab")
    assert sched.step_ids(1) == list(b" cd")
    # The reverse pair: the draft's words are coarser, so some target steps feed no draft token.
    rev = CrossTokenizerDraft(WordTokenizer(), ByteTokenizer(), text)
    assert [rev.draft_fed(t) for t in range(len(text))] == [0, 1, 1, 1, 2]
    assert rev.step_ids(1) == [0] and rev.step_ids(2) == []


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_chunked_draft_capture_matches_full_sequence_attention(arch: str) -> None:
    """Feeding a byte-level tiny draft chunk by chunk on the target's schedule captures, at every step,
    the last fed token's attention: the same row a full causal pass gives, mapped to target blocks.
    Tiny gemma3's sliding-window layers (window 24 < 57 bytes) check the window offset."""
    from conftest import get_tiny
    from transformers import DynamicCache

    from sparsebench.hf_attention import attached, cache_kwarg, use_router
    from sparsebench.specattn.calibrate import collect_block_attention

    model = get_tiny(arch)
    text = "It was a dark night; the ship's mate, Jo, wrote 3 words."
    sched = CrossTokenizerDraft(ByteTokenizer(), WordTokenizer(), text)
    n_layers = model.config.num_hidden_layers
    full = collect_block_attention(model, torch.tensor([sched.draft_ids]), 1, len(sched.draft_ids))
    capture = CrossTokenizerCapture(sched.alignment, block_size=2, layers=frozenset(range(n_layers)))
    cache = DynamicCache(config=model.config)
    prefill = 3
    with torch.inference_mode(), attached(model), use_router(capture):
        for t in range(prefill - 1, len(sched.target_ids)):
            chunk = sched.prefill_ids(prefill) if t == prefill - 1 else sched.step_ids(t)
            if chunk:
                capture.n_draft_tokens += len(chunk)
                model(input_ids=torch.tensor([chunk]), use_cache=True, **{cache_kwarg(model): cache})
            got = capture.target_blocks(t + 1)
            row = sched.draft_fed(t) - 1
            for layer in range(n_layers):
                want = sched.alignment.to_target_blocks(full[layer][row, :, : row + 1][None], 2, t + 1)
                torch.testing.assert_close(got[layer], want, atol=1e-5, rtol=1e-4)


def test_mapped_calibration_rows_reduce_to_the_shared_tokenizer_case() -> None:
    """With the same tokenizer on both sides the mapping is the identity, so the mapped calibration rows
    must be exactly the draft's own block attention rows."""
    from conftest import get_tiny

    from sparsebench.specattn.calibrate import collect_block_attention
    from sparsebench.specattn.crosstok import mapped_draft_block_attention

    model = get_tiny("qwen2")
    text = "Calibration rows: the same text, the same bytes, the same blocks."
    sched = CrossTokenizerDraft(ByteTokenizer(), ByteTokenizer(), text)
    n, rows = 40, 8
    got = mapped_draft_block_attention(model, sched, n, block_size=4, rows=rows)
    want = collect_block_attention(model, torch.tensor([sched.target_ids[:n]]), 4, rows)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="rows"):
        mapped_draft_block_attention(model, sched, n, block_size=4, rows=n + 1)


REAL_TARGETS = ["qwen2.5-coder-0.5b", "gemma3-270m"]


def _cached_tokenizer(alias: str):
    from sparsebench.models.registry import is_cached, model_dir

    if not is_cached(alias):
        pytest.skip(f"{alias} is not cached (sparsebench fetch {alias})")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir(alias))


@pytest.fixture(scope="module")
def paragraph() -> str:
    from sparsebench.data import load_corpus

    doc = sorted(load_corpus("pg19", source="offline", log=lambda m: None).documents, key=lambda d: d.id)[0]
    return doc.text[5000:8000] + " naïve café 東京 🙂\n\n\tdef f(x): return x ** 2"


@pytest.mark.parametrize("target_alias", REAL_TARGETS)
def test_real_pair_conserves_mass_and_covers_every_target_token(target_alias: str, paragraph: str) -> None:
    draft_tok, target_tok = _cached_tokenizer("smollm2-135m"), _cached_tokenizer(target_alias)
    sched = CrossTokenizerDraft(draft_tok, target_tok, paragraph)
    al = sched.alignment
    # The ids are the tokenizer's ordinary ones (what the engine evaluates).
    assert al.target.ids == list(target_tok.encode(paragraph, add_special_tokens=True))
    assert al.draft.ids == list(draft_tok.encode(paragraph, add_special_tokens=True))
    assert al.covered.all()  # smollm2 adds no special tokens, so every draft token covers text
    attn = torch.softmax(torch.randn(3, len(al.draft), generator=torch.Generator().manual_seed(1)), -1)
    blocks = al.to_target_blocks(attn, block_size=16)
    torch.testing.assert_close(blocks.sum(-1), torch.ones(3))
    received = al.dense().sum(0)
    text_tokens = torch.tensor([s < e for s, e in al.target.offsets])
    assert (received[text_tokens] > 0).all()
    assert (received[~text_tokens] == 0).all()  # gemma's zero-width <bos>: smollm2 has no <bos> to give it mass
    fed = [sched.draft_fed(t) for t in range(len(al.target))]
    assert fed == sorted(fed) and fed[-1] == len(al.draft)
