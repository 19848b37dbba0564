"""Which drafted tokens the target keeps: the greedy rule and the Leviathan/Chen rejection scheme.

Both rules see one speculation round: ``gamma`` drafted tokens and the target's logits at the
``gamma + 1`` verified positions (row ``i`` predicts the token after drafted token ``i``; row 0 follows
the last committed token). Both return how many drafted tokens were accepted and the one token the
target adds itself: the correction at the first rejected position, or the bonus token after all of them.

Why these are separate functions: they are the whole of what makes speculative decoding exact, so they
are tested apart from any model (a statistical test on a 4-token vocabulary, see the tests).
"""

from __future__ import annotations

import torch


def accept_greedy(target_logits: torch.Tensor, drafted: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Greedy verification: keep the longest drafted prefix equal to the target's argmax.

    ``target_logits`` is ``[gamma + 1, V]``, ``drafted`` ``[gamma]`` token ids. Returns ``(accepted,
    next_token)`` with ``next_token`` a 0-d long tensor: the target's argmax at the first mismatch, or at
    the bonus position when every drafted token matched. The output is then exactly the target's own
    greedy continuation, whatever the draft proposed.
    """
    best = target_logits.argmax(dim=-1)  # [gamma + 1]
    gamma = drafted.shape[0]
    matches = (best[:gamma] == drafted).to(torch.long)
    accepted = int(matches.cumprod(0).sum()) if gamma else 0  # one host sync: the cache crop needs it
    return accepted, best[accepted]


def accept_sampling(target_probs: torch.Tensor, draft_probs: torch.Tensor, drafted: torch.Tensor,
                    generator: torch.Generator) -> tuple[int, torch.Tensor]:
    """Speculative sampling (Leviathan et al. 2023; Chen et al. 2023): output tokens follow the target.

    ``target_probs`` ``p`` is ``[gamma + 1, V]``, ``draft_probs`` ``q`` is ``[gamma, V]`` (the distributions
    the drafted tokens were sampled from), ``drafted`` ``[gamma]``. Drafted token ``x_i`` is accepted with
    probability ``min(1, p_i(x_i) / q_i(x_i))``; at the first rejection the target's token is drawn from
    ``norm(max(0, p_i - q_i))``; when all are accepted a bonus token is drawn from ``p_gamma``. All
    randomness comes from ``generator`` (``gamma`` uniforms, then one categorical draw), so a seed fixes
    the output.
    """
    gamma = drafted.shape[0]
    accepted = gamma
    if gamma:
        rows = torch.arange(gamma, device=drafted.device)
        p_x = target_probs[rows, drafted]
        q_x = draft_probs[rows, drafted]
        uniform = torch.rand(gamma, generator=generator, device=target_probs.device)
        keep = (uniform * q_x < p_x).to(torch.long)  # u < p/q without dividing by a tiny q
        accepted = int(keep.cumprod(0).sum())
    if accepted == gamma:
        dist = target_probs[gamma]
    else:
        residual = (target_probs[accepted] - draft_probs[accepted]).clamp(min=0)
        # A rejection implies p(x) < q(x) for the drafted x, so some mass is left; the fallback only
        # guards rounding (p == q up to float error).
        dist = residual if float(residual.sum()) > 0 else target_probs[accepted]
    token = torch.multinomial(dist / dist.sum(), 1, generator=generator)[0]
    return accepted, token


def probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(logits / temperature)`` in fp32 (both models' distributions are compared in it)."""
    return torch.softmax(logits.float() / temperature, dim=-1)
