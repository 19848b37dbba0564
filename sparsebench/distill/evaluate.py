"""How good a distilled draft is: held-out perplexity and KL, and greedy acceptance under speculative decoding."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from sparsebench.distill.data import cut_windows
from sparsebench.distill.headvocab import installed_head
from sparsebench.distill.losses import logits_kl


@torch.no_grad()
def heldout_metrics(target: torch.nn.Module, draft: torch.nn.Module, stream: torch.Tensor, start: list[int], *,
                    seq_len: int, max_tokens: int, batch_size: int, device: torch.device,
                    autocast: Callable[[], AbstractContextManager[Any]],
                    head_ids: torch.Tensor | None = None) -> dict[str, Any]:
    """Perplexity of both models and KL(target || draft) on consecutive held-out windows of ``seq_len``.

    Perplexity is over every next-token prediction inside a window (positions 1 .. seq_len - 1), the same
    for both models, so the two are directly comparable; KL is averaged over every position.

    With a reduced head (``head_ids``, ``[K]``) the draft assigns no probability outside its ids, so its
    full-vocabulary perplexity and KL would be infinite. Then KL is the training objective's,
    KL(target renormalised over the ids || draft's softmax over them); both perplexities are over the
    positions whose next token is among the ids, each model's softmax taken over the ids; and ``head``
    says what the subset leaves out: the share of next tokens, of the target's probability mass and of
    the target's argmax inside it (the last bounds greedy acceptance per position).
    """
    windows = cut_windows(stream, seq_len, start, limit=max(1, max_tokens // seq_len))
    if windows.shape[0] == 0:
        return {"windows": 0, "tokens": 0, "note": f"held-out text is shorter than one {seq_len}-token window"}
    nll = {"draft": 0.0, "target": 0.0}
    kl_sum, predicted = 0.0, 0
    target_nll_full = 0.0
    inside = {"next_token": 0.0, "target_mass": 0.0, "target_argmax": 0.0}
    member = position = None
    if head_ids is not None:
        head_ids = head_ids.to(device)
        position = torch.full((draft.get_output_embeddings().weight.shape[0],), -100, device=device)
        position[head_ids] = torch.arange(head_ids.numel(), device=device)  # token id -> its head index
        member = position >= 0
    was_training = draft.training
    draft.eval()
    for first in range(0, windows.shape[0], batch_size):
        ids = windows[first : first + batch_size].to(device)
        with autocast():
            logits = {"target": target(input_ids=ids, use_cache=False).logits,
                      "draft": draft(input_ids=ids, use_cache=False).logits}
        labels = ids[:, 1:].flatten()
        if member is not None:
            assert head_ids is not None and position is not None
            full = logits["target"].float()
            target_nll_full += float(torch.nn.functional.cross_entropy(full[:, :-1].flatten(0, 1), labels,
                                                                       reduction="sum"))
            logits = {name: lg.index_select(-1, head_ids) for name, lg in logits.items()}
            log_mass = torch.logsumexp(logits["target"].float(), -1) - torch.logsumexp(full, -1)
            inside["target_mass"] += float(log_mass.exp().sum())
            inside["target_argmax"] += float(member[full.argmax(-1)].float().sum())
            del full, log_mass
            labels = position[labels]  # head indices; -100 (ignored) where the next token is outside the head
            inside["next_token"] += float((labels >= 0).sum())
        for name, lg in logits.items():
            nll[name] += float(torch.nn.functional.cross_entropy(
                lg[:, :-1].flatten(0, 1).float(), labels, reduction="sum", ignore_index=-100))
        kl_sum += float(logits_kl(logits["target"], logits["draft"])) * ids.numel()
        predicted += int((labels != -100).sum())
    draft.train(was_training)
    n_labels = windows.shape[0] * (windows.shape[1] - 1)
    result: dict[str, Any] = {
        "windows": int(windows.shape[0]), "tokens": int(windows.numel()),
        "draft_perplexity": math.exp(nll["draft"] / predicted) if predicted else float("nan"),
        "target_perplexity": math.exp(nll["target"] / predicted) if predicted else float("nan"),
        "kl_target_draft": kl_sum / windows.numel()}
    if head_ids is not None:
        result |= {"kl_over": f"the draft's {head_ids.numel()} head ids (target renormalised over them)",
                   "perplexity_over": "positions whose next token is a head id, softmax over the head ids",
                   "target_perplexity_full": math.exp(target_nll_full / n_labels),
                   "head": {"rows": int(head_ids.numel()), "next_token_in_head": inside["next_token"] / n_labels,
                            "target_mass_in_head": inside["target_mass"] / windows.numel(),
                            "target_argmax_in_head": inside["target_argmax"] / windows.numel()}}
    return result


def greedy_acceptance(target: torch.nn.Module, draft: torch.nn.Module, stream: torch.Tensor, start: list[int], *,
                      prompts: int, context: int, new_tokens: int, gamma: int,
                      head_ids: torch.Tensor | None = None) -> dict[str, Any]:
    """Greedy speculative decoding (:mod:`sparsebench.specdec`, dense verification) of ``new_tokens`` tokens
    after each of ``prompts`` held-out prompts of ``context`` tokens; acceptance = accepted / proposed.

    Dense verification: acceptance is a property of the draft and the target alone, not of a sparsity
    policy; greedy output is then exactly the target's own. With ``head_ids`` the draft proposes through
    its reduced head, as it does once saved and loaded.
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
    with installed_head(draft, head_ids, expand=True):
        for prompt in chosen:
            result = decoder.generate(prompt.tolist(), max_new_tokens=new_tokens, stop_ids=set())
            proposed, accepted = proposed + result.proposed, accepted + result.accepted
            rounds += len(result.rounds)
    draft.train(was_training)
    return {"prompts": int(chosen.shape[0]), "context_tokens": context, "new_tokens": new_tokens, "gamma": gamma,
            "rounds": rounds, "proposed": proposed, "accepted": accepted,
            "acceptance_rate": accepted / proposed if proposed else float("nan"),
            "tokens_per_round": (accepted + rounds) / rounds if rounds else float("nan")}
