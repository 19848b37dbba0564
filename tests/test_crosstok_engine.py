"""Cross-tokenizer drafts in the teacher-forced engine (SpecAttn) and in speculative decoding."""

from __future__ import annotations

import re
from typing import Any, ClassVar

import pytest
import torch
from conftest import get_tiny
from lm_helpers import plain_greedy, scaled_lm

from sparsebench.engine import EngineConfig, TeacherForcedEngine
from sparsebench.errors import UsageError
from sparsebench.kernels.torch_backend import TorchBackend
from sparsebench.models import ByteTokenizer
from sparsebench.policies import Dense, SpecAttn
from sparsebench.specattn.capture import Draft
from sparsebench.specattn.crosstok import CrossTokenizerDraftModel, check_offsets, document_schedule
from sparsebench.specdec import SpeculationConfig
from sparsebench.specdec.crosstok import CrossTokenizerSpeculativeDecoder

CFG = EngineConfig(block_size=4, dense_layers=1)
TEXT = ("The ship left the harbour at dawn; its mate, a quiet man from the north, counted the crates twice. "
        "Nobody spoke until the coast was gone.")
SEQ_LEN = 64


pytestmark = pytest.mark.usefixtures("one_thread")


class HashWordTokenizer:
    """A fast-tokenizer stand-in of another granularity: whitespace-led words, ids hashed into 512."""

    def __call__(self, text: str, return_offsets_mapping: bool = False, add_special_tokens: bool = True) -> dict:
        spans = [m.span() for m in re.finditer(r"\s*\S+", text)]
        out: dict[str, Any] = {"input_ids": [sum(map(ord, text[s:e])) % 512 for s, e in spans]}
        if return_offsets_mapping:
            out["offset_mapping"] = spans
        return out


def _layer_map(target: torch.nn.Module) -> list[int]:
    return [min(i, 3) for i in range(target.config.num_hidden_layers)]


def _evaluate(draft: Draft, p: float, schedule: Any = None) -> Any:
    target = get_tiny("llama")
    ids = torch.tensor([ByteTokenizer().encode(TEXT)[:SEQ_LEN]])
    engine = TeacherForcedEngine(target, SpecAttn(p=p), TorchBackend(), CFG, draft=draft)
    return engine.evaluate(ids, schedule=schedule), engine


def test_a_cross_tokenizer_draft_with_the_targets_tokenizer_is_the_shared_tokenizer_draft() -> None:
    """With the same tokenizer on both sides the mapping is the identity and the schedule feeds one draft
    token per target token, so the cross-tokenizer path must select exactly what the ordinary one does."""
    draft_model = get_tiny("qwen2")
    shared = Draft(draft_model, _layer_map(get_tiny("llama")), "separate")
    cross = CrossTokenizerDraftModel(draft_model, shared.layer_map, "separate", tokenizer=ByteTokenizer(),
                                     target_tokenizer=ByteTokenizer())
    want, _ = _evaluate(shared, 0.8)
    got, _ = _evaluate(cross, 0.8, cross.schedule(TEXT, SEQ_LEN))
    torch.testing.assert_close(got.nll, want.nll, atol=1e-5, rtol=1e-5)
    assert got.kv.read_sparse == want.kv.read_sparse
    assert 0.1 < got.kv.reduction_sparse < 1


def test_a_draft_of_another_granularity_reads_its_own_tokens() -> None:
    """Byte-level target, word-level draft: the draft reads every word that ends within the target's prefix,
    the policy gets mapped attention (it prunes), and p = 1 is exactly dense."""
    draft = CrossTokenizerDraftModel(get_tiny("qwen2"), _layer_map(get_tiny("llama")), "words",
                                     tokenizer=HashWordTokenizer(), target_tokenizer=ByteTokenizer())
    schedule = draft.schedule(TEXT, SEQ_LEN)
    sparse, engine = _evaluate(draft, 0.8, schedule)
    assert 0 < sparse.kv.reduction_sparse < 1
    assert "draft" in sparse.timing
    dense, _ = _evaluate(draft, 1.0, schedule)
    exact = TeacherForcedEngine(get_tiny("llama"), Dense(), TorchBackend(), CFG).evaluate(
        torch.tensor([schedule.target_ids[:SEQ_LEN]]))
    torch.testing.assert_close(dense.nll, exact.nll)
    # The draft's cache after the last step holds every word ending within the last fed target token.
    with engine.session(schedule) as decode:
        decode.prefill(torch.tensor([schedule.target_ids[:10]]))
        for t in range(10, 40):
            decode.step(torch.tensor([[schedule.target_ids[t]]]))
        assert decode.draft_cache.get_seq_length() == schedule.draft_fed(39) > 0
        assert decode.cross_capture.n_draft_tokens == schedule.draft_fed(39)


def test_cross_tokenizer_misuse_gives_clear_errors() -> None:
    draft = CrossTokenizerDraftModel(get_tiny("qwen2"), _layer_map(get_tiny("llama")), "words",
                                     tokenizer=HashWordTokenizer(), target_tokenizer=ByteTokenizer())
    engine = TeacherForcedEngine(get_tiny("llama"), SpecAttn(), TorchBackend(), CFG, draft=draft)
    ids = torch.tensor([ByteTokenizer().encode(TEXT)[:SEQ_LEN]] * 2)
    with pytest.raises(UsageError, match="--batch-size 1"):
        engine.evaluate(ids)
    with pytest.raises(UsageError, match="its own tokenizer"), engine.session():
        pass

    class NoOffsets:
        def __call__(self, text: str, **kwargs: object) -> dict:
            return {"input_ids": [1, 2]}

    with pytest.raises(UsageError, match=r"draft 'some-draft'.*NoOffsets"):
        check_offsets(NoOffsets(), "draft", "some-draft")


def test_document_schedule_covers_the_evaluated_tokens() -> None:
    book = TEXT * 40
    schedule = document_schedule(HashWordTokenizer(), ByteTokenizer(), book, 900)
    assert len(schedule.target_ids) > 900
    assert schedule.target_ids[:900] == ByteTokenizer().encode(book)[:900]


# --------------------------------------------------------------------------------------------------
# speculative decoding across tokenizers


def _real_tokenizer(alias: str) -> Any:
    from sparsebench.models.registry import is_cached, model_dir

    if not is_cached(alias):
        pytest.skip(f"{alias} is not cached (sparsebench fetch {alias})")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir(alias))


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, Any, CrossTokenizerDraftModel]:
    """A target with smollm2's real BPE tokenizer and a byte-level draft: two vocabularies, offline."""
    tokenizer = _real_tokenizer("smollm2-135m")
    target = scaled_lm("llama", 1, len(tokenizer))
    draft = CrossTokenizerDraftModel(scaled_lm("qwen2", 2, 512), [], "bytes", tokenizer=ByteTokenizer(),
                                     target_tokenizer=tokenizer)
    return target, tokenizer, draft


def _decoder(pair: tuple, gamma: int) -> CrossTokenizerSpeculativeDecoder:
    target, _, draft = pair
    return CrossTokenizerSpeculativeDecoder(target, draft, Dense(), TorchBackend(), CFG, SpeculationConfig(gamma=gamma))


@pytest.mark.parametrize("gamma", [1, 4])
def test_cross_tokenizer_speculation_equals_the_targets_greedy_output(pair: tuple, gamma: int) -> None:
    target, tokenizer, _ = pair
    prompt = tokenizer.encode(TEXT[:60])
    out = _decoder(pair, gamma).generate(prompt, max_new_tokens=24, stop_ids=set())
    assert out.ids == plain_greedy(target, prompt, 24)
    assert all(p <= gamma for p, _ in out.rounds)


class OracleDraft(CrossTokenizerSpeculativeDecoder):
    """Proposes the text the target will produce next (as bytes, the draft's vocabulary), so rounds accept."""

    future: list[int]

    def propose_text(self, committed: list[int], gamma: int) -> str:
        super().propose_text(committed, gamma)  # the draft still runs and rolls back
        done = len(committed) - self.n_prompt
        return self.cross_draft.target_tokenizer.decode(self.future[done: done + gamma])


def test_a_draft_proposing_the_right_text_is_accepted_in_target_tokens(pair: tuple) -> None:
    target, tokenizer, draft = pair
    prompt = tokenizer.encode(TEXT[:60])
    expected = plain_greedy(target, prompt, 24)
    decoder = OracleDraft(target, draft, Dense(), TorchBackend(), CFG, SpeculationConfig(gamma=4))
    decoder.future, decoder.n_prompt = [*expected], len(prompt)
    out = decoder.generate(prompt, max_new_tokens=24, stop_ids=set())
    assert out.ids == expected
    assert out.acceptance_rate > 0.5  # re-tokenising the target's own text mostly gives its own tokens back
    # The byte draft's cache holds a prefix of its tokenization of the committed text.
    text_ids = ByteTokenizer().encode(tokenizer.decode(prompt + out.ids[:-1]))
    assert decoder.draft_tokens == text_ids[: len(decoder.draft_tokens)]
    assert decoder.draft_cache.get_seq_length() == len(decoder.draft_tokens)


def test_cross_tokenizer_speculation_refuses_what_it_cannot_do(pair: tuple) -> None:
    target, _, draft = pair
    with pytest.raises(UsageError, match="greedy"):
        CrossTokenizerSpeculativeDecoder(target, draft, Dense(), TorchBackend(), CFG,
                                         SpeculationConfig(sampling=True))


class PairTokenizer:
    """A target tokenizer of another granularity that needs no download: UTF-8 bytes two per token
    (``256 * b0 + b1``), an odd last byte as ``65536 + b``. Decoding any id sequence gives text, so a random
    target's generations can be re-encoded by the draft."""

    eos_token_id = None
    all_special_ids: ClassVar[list[int]] = []

    def __len__(self) -> int:
        return 65536 + 256

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        data = text.encode()
        ids = [256 * data[i] + data[i + 1] for i in range(0, len(data) - 1, 2)]
        return ids + ([65536 + data[-1]] if len(data) % 2 else [])

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        data = b"".join(bytes([i - 65536]) if i >= 65536 else bytes([i // 256, i % 256]) for i in ids)
        return data.decode(errors="replace")


@pytest.fixture(scope="module")
def pair_guided() -> tuple[torch.nn.Module, PairTokenizer, CrossTokenizerDraftModel]:
    """A 4-layer target over byte pairs and a byte-level draft whose attention guides it (layer map i -> i)."""
    tokenizer = PairTokenizer()
    target = scaled_lm("llama", 3, len(tokenizer))
    draft = CrossTokenizerDraftModel(scaled_lm("qwen2", 4, 259), [0, 1, 2, 3], "bytes",
                                     tokenizer=ByteTokenizer(vocab_size=259), target_tokenizer=tokenizer)
    return target, tokenizer, draft


def test_specattn_guided_cross_tokenizer_verification(pair_guided: tuple) -> None:
    """The draft's attention, mapped per verified row onto the target's blocks, guides SpecAttn: at p = 1 the
    output is the target's greedy decoding; at p = 0.5 blocks are skipped, and every row's guide is a
    distribution over exactly the blocks that row can see."""
    target, tokenizer, draft = pair_guided
    prompt = tokenizer.encode(TEXT[:90])
    want = plain_greedy(target, prompt, 20)
    exact = CrossTokenizerSpeculativeDecoder(target, draft, SpecAttn(p=1.0), TorchBackend(), CFG,
                                             SpeculationConfig(gamma=3))
    assert exact.generate(prompt, max_new_tokens=20, stop_ids=set()).ids == want

    decoder = CrossTokenizerSpeculativeDecoder(target, draft, SpecAttn(p=0.5), TorchBackend(), CFG,
                                               SpeculationConfig(gamma=3))
    seen: list[tuple[int, list[dict[int, torch.Tensor]]]] = []
    original = decoder._row_attention

    def record(sequence: list[int], proposed: list[int]) -> list[dict[int, torch.Tensor]]:
        rows = original(sequence, proposed)
        seen.append((len(sequence), rows))
        return rows

    decoder._row_attention = record  # type: ignore[method-assign]
    out = decoder.generate(prompt, max_new_tokens=20, stop_ids=set())
    assert len(out.ids) == 20 and out.kv.reduction_sparse > 0.1
    assert seen and all(len(rows) >= 1 for _, rows in seen)
    for n_committed, rows in seen:
        for r, guide in enumerate(rows):
            assert set(guide) == {1, 2, 3}  # the sparse layers' draft layers
            for mass in guide.values():
                assert mass.shape[-1] == -(-(n_committed + r) // CFG.block_size)
                assert torch.all(mass >= 0) and 0.5 < float(mass.sum(-1).max()) <= 1 + 1e-5
    # The draft read its last proposal too: its cache ends with a proposal whenever a round proposed any.
    assert decoder.draft_cache.get_seq_length() == len(decoder.draft_tokens)
