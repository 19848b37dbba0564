"""How good a distilled draft is: held-out perplexity and KL, and greedy acceptance under speculative decoding."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from sparsebench.distill.data import cut_windows
from sparsebench.distill.losses import logits_kl


@torch.no_grad()
def heldout_metrics(target: torch.nn.Module, draft: torch.nn.Module, stream: torch.Tensor, start: list[int], *,
                    seq_len: int, max_tokens: int, batch_size: int, device: torch.device,
                    autocast: Callable[[], AbstractContextManager[Any]]) -> dict[str, Any]:
    """Perplexity of both models and KL(target || draft) on consecutive held-out windows of ``seq_len``.

    Perplexity is over every next-token prediction inside a window (positions 1 .. seq_len - 1), the same
    for both models, so the two are directly comparable; KL is averaged over every position.
    """
    windows = cut_windows(stream, seq_len, start, limit=max(1, max_tokens // seq_len))
    if windows.shape[0] == 0:
        return {"windows": 0, "tokens": 0, "note": f"held-out text is shorter than one {seq_len}-token window"}
    nll = {"draft": 0.0, "target": 0.0}
    kl_sum, predicted = 0.0, 0
    was_training = draft.training
    draft.eval()
    for first in range(0, windows.shape[0], batch_size):
        ids = windows[first : first + batch_size].to(device)
        with autocast():
            logits = {"target": target(input_ids=ids, use_cache=False).logits,
                      "draft": draft(input_ids=ids, use_cache=False).logits}
        for name, lg in logits.items():
            nll[name] += float(torch.nn.functional.cross_entropy(
                lg[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum"))
        kl_sum += float(logits_kl(logits["target"], logits["draft"])) * ids.numel()
        predicted += ids[:, 1:].numel()
    draft.train(was_training)
    return {"windows": int(windows.shape[0]), "tokens": int(windows.numel()),
            "draft_perplexity": math.exp(nll["draft"] / predicted),
            "target_perplexity": math.exp(nll["target"] / predicted),
            "kl_target_draft": kl_sum / windows.numel()}


def greedy_acceptance(target: torch.nn.Module, draft: torch.nn.Module, stream: torch.Tensor, start: list[int], *,
                      prompts: int, context: int, new_tokens: int, gamma: int) -> dict[str, Any]:
    """Greedy speculative decoding (:mod:`sparsebench.specdec`, dense verification) of ``new_tokens`` tokens
    after each of ``prompts`` held-out prompts of ``context`` tokens; acceptance = accepted / proposed.

    Dense verification: acceptance is a property of the draft and the target alone, not of a sparsity
    policy; greedy output is then exactly the target's own.
    """
    from sparsebench.engine import EngineConfig
    from sparsebench.kernels.torch_backend import TorchBackend
    from sparsebench.policies import Dense
    from sparsebench.specattn.capture import Draft
    from sparsebench.specdec import SpeculationConfig, SpeculativeDecoder

    windows = cut_windows(stream, context, start)
    stride = max(1, windows.shape[0] // max(1, prompts))
    chosen = windows[::stride][:prompts]
    if chosen.shape[0] == 0:
        return {"prompts": 0, "note": f"held-out text is shorter than one {context}-token prompt"}
    was_training = draft.training
    draft.eval()
    decoder = SpeculativeDecoder(target, Draft(draft, [], "distilled draft"), Dense(), TorchBackend(),
                                 EngineConfig(), SpeculationConfig(gamma=gamma))
    proposed = accepted = rounds = 0
    for prompt in chosen:
        result = decoder.generate(prompt.tolist(), max_new_tokens=new_tokens, stop_ids=set())
        proposed, accepted, rounds = proposed + result.proposed, accepted + result.accepted, rounds + len(result.rounds)
    draft.train(was_training)
    return {"prompts": int(chosen.shape[0]), "context_tokens": context, "new_tokens": new_tokens, "gamma": gamma,
            "rounds": rounds, "proposed": proposed, "accepted": accepted,
            "acceptance_rate": accepted / proposed if proposed else float("nan"),
            "tokens_per_round": (accepted + rounds) / rounds if rounds else float("nan")}
