"""A real model on the GPU: every GPU backend, at full budget, decodes the model's own greedy tokens.

Skips without CUDA or without the model in the cache (``sparsebench fetch smollm2-135m``). The prompt is
real text (the packaged PG-19 sample), so the logits have the margins of real decoding, not of random ids.
"""

from __future__ import annotations

import pytest
import torch

from sparsebench.engine import EngineConfig
from sparsebench.plugins import registry

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ALIAS = "smollm2-135m"
STEPS = 64


@pytest.fixture(scope="module")
def loaded():  # type: ignore[no-untyped-def]
    from sparsebench.models import load_model
    from sparsebench.models.registry import is_cached

    if not is_cached(ALIAS):
        pytest.skip(f"{ALIAS} is not in the model cache (sparsebench fetch {ALIAS})")
    return load_model(ALIAS, dtype=torch.bfloat16, device="cuda", progress=False)


@pytest.fixture(scope="module")
def prompt_and_reference(loaded):  # type: ignore[no-untyped-def]
    from sparsebench.data.loaders import load_corpus

    docs = load_corpus("pg19", source="offline", log=lambda _: None).documents
    ids = loaded.tokenizer(docs[0].text[:20000], return_tensors="pt").input_ids[:, :1000].cuda()
    with torch.no_grad():
        out = loaded.model.generate(ids, max_new_tokens=STEPS + 1, do_sample=False, min_new_tokens=STEPS + 1)
    return ids, out[:, ids.shape[1]:].cpu()


@pytest.mark.parametrize("backend_name", ["triton", "flashinfer"])
@pytest.mark.parametrize("policy_name", ["dense", "quest", "streamingllm", "specattn"])
def test_full_budget_greedy_tokens_match_hf(loaded, prompt_and_reference, backend_name: str,  # type: ignore[no-untyped-def]
                                            policy_name: str) -> None:
    from sparsebench.fastdecode import FastDecoder, FastModel, SelfDraft
    from sparsebench.fastdecode.draft import nearest_layer_map

    cls = registry().backends[backend_name]
    reasons = cls.reasons_to_reject(device="cuda", dtype=torch.bfloat16, head_dim=64)
    if reasons:
        pytest.skip("; ".join(reasons))
    ids, reference = prompt_and_reference
    policy_cls = registry().policies[policy_name]
    policy = policy_cls.from_params(dict(policy_cls.full_budget_params or {}))
    model = FastModel.from_hf(loaded.model)
    n_layers = model.spec.num_layers
    draft = None
    if policy.requires.draft_attention:
        layers = list(range(15))
        draft = SelfDraft(layers, nearest_layer_map(layers, n_layers), "self:0-14")
    dec = FastDecoder(model, policy, cls(), EngineConfig(), max_tokens=ids.shape[1] + STEPS + 16, draft=draft)
    first = dec.prefill(ids).argmax(-1).cpu()
    got = torch.cat([first[:, None], dec.generate(STEPS)], dim=1)
    same = int((got == reference).long().cumprod(-1).sum())
    assert same == STEPS + 1, f"{backend_name}/{policy_name}: first {same} of {STEPS + 1} greedy tokens match"
