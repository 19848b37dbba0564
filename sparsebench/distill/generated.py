"""Training text written by the target itself: continuations of training-text prompts.

Why: a draft is judged on the text the target generates (greedy acceptance scores the draft's proposals
against the target's own continuations), yet book text is what the offline corpora hold, and a draft
trained many epochs over a few million book tokens overfits (the fifth session's run: training KL 0.30,
held-out KL 0.42). The target can write as much fresh text as training needs, in its own distribution:
the contexts the draft will meet when it drafts for this target. Distillation papers (DistillSpec,
Medusa-2's self-distillation) train drafts on target-generated text for this reason.

What is made. Prompts are windows of ``prompt_len`` tokens of the training stream (never the held-out
documents), drawn without replacement by ``seed``; the target continues each by ``new_len`` tokens,
row ``i`` at temperature ``temperatures[i % len(temperatures)]`` (0: greedy). Only the continuations
join the training stream, each as its own document: the prompts are book text the stream already holds.
Sampling uses Gumbel-max with a seeded generator, so one device, seed and target give the same text.
A continuation runs its full length even past an end-of-sequence token: what follows is still the
target's own distribution, which is all the KL objective needs.

The result is cached under the distillation token cache, keyed by the target's identity, the training
stream's fingerprint, the settings (the batch size too: it decides how the random stream is consumed) and
the seed: a resumed run (whose data must match its checkpoint) and later drafts of the same target reuse
it instead of generating again.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sparsebench.distill.data import TokenData, cut_windows
from sparsebench.distill.store import save_atomic
from sparsebench.errors import UsageError


@dataclass(frozen=True)
class GenerationSpec:
    """How much target-written text to add to the training stream, and how to write it."""

    tokens: int
    """New tokens to generate in all (rounded up to whole continuations); 0: none."""
    prompt_len: int = 512
    new_len: int = 512
    temperatures: tuple[float, ...] = (0.0, 0.8)
    batch_size: int = 512

    def __post_init__(self) -> None:
        for flag, value in (("--generate-prompt-len", self.prompt_len), ("--generate-len", self.new_len),
                            ("--generate-batch", self.batch_size)):
            if value < 1:
                raise UsageError(f"{flag} must be >= 1, got {value}")
        if self.tokens < 0:
            raise UsageError(f"--generate-tokens must be >= 0, got {self.tokens}")
        if not self.temperatures or any(not (t >= 0 and math.isfinite(t)) for t in self.temperatures):
            raise UsageError(f"--generate-temperature takes temperatures >= 0 (0: greedy), comma-separated; got "
                             f"{','.join(map(str, self.temperatures)) or 'none'}")

    @property
    def continuations(self) -> int:
        return math.ceil(self.tokens / self.new_len)


def choose_prompts(data: TokenData, spec: GenerationSpec, seed: int) -> torch.Tensor:
    """``[spec.continuations, prompt_len]`` prompt windows of the training stream, drawn by ``seed``."""
    windows = cut_windows(data.train, spec.prompt_len, data.start)
    if windows.shape[0] < spec.continuations:
        raise UsageError(f"--generate-tokens {spec.tokens} needs {spec.continuations} prompts of "
                         f"{spec.prompt_len} tokens, but the training text holds {windows.shape[0]}; lower "
                         "--generate-tokens or --generate-prompt-len, or raise --generate-len")
    order = torch.randperm(windows.shape[0], generator=torch.Generator().manual_seed(seed))
    return windows[order[: spec.continuations]]


def _next_tokens(logits: torch.Tensor, temperature: torch.Tensor, generator: torch.Generator, *,
                 sample: bool = True) -> torch.Tensor:
    """Greedy where ``temperature`` is 0, else a sample from softmax(logits / T) (Gumbel-max).

    ``sample=False`` (every temperature 0, known on the host) skips the ``[B, V]`` uniform draw each step.
    """
    logits = logits.float()
    greedy = logits.argmax(-1)
    if not sample:
        return greedy
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-20, 1.0)
    sampled = (logits / temperature.clamp_min(1e-6)[:, None] - torch.log(-torch.log(uniform))).argmax(-1)
    return torch.where(temperature == 0, greedy, sampled)


@torch.no_grad()
def continue_prompts(model: torch.nn.Module, prompts: torch.Tensor, spec: GenerationSpec, *, seed: int,
                     device: torch.device, autocast: Callable[[], AbstractContextManager[Any]],
                     progress: bool = False) -> torch.Tensor:
    """``[P, new_len]``: the target's continuation of each prompt (a plain KV-cached decode loop).

    ``logits_to_keep=1`` keeps the prefill from materialising a vocabulary-wide row per prompt token
    (512 prompts x 512 tokens x 49152 ids would be 50 GB in float32).
    """
    from transformers import DynamicCache

    from sparsebench.hf_attention import cache_kwarg

    cache_arg = cache_kwarg(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    temps = torch.tensor(spec.temperatures, device=device)
    sample = any(t > 0 for t in spec.temperatures)
    out = []
    bar = tqdm(total=prompts.shape[0] * spec.new_len, unit="tok", unit_scale=True, desc="target text",
               disable=not progress)
    for first in range(0, prompts.shape[0], spec.batch_size):
        ids = prompts[first : first + spec.batch_size].to(device)
        temperature = temps[torch.arange(first, first + ids.shape[0], device=device) % temps.numel()]
        cache = {cache_arg: DynamicCache(config=model.config)}
        rows: list[torch.Tensor] = []
        while True:
            with autocast():
                logits = model(input_ids=ids, use_cache=True, logits_to_keep=1, **cache).logits[:, -1]
            rows.append(_next_tokens(logits, temperature, generator, sample=sample))
            if len(rows) == spec.new_len:
                break
            ids = rows[-1][:, None]
        out.append(torch.stack(rows, 1).cpu())
        bar.update(len(rows[0]) * spec.new_len)
        del cache, logits
    bar.close()
    return torch.cat(out)


def with_target_text(data: TokenData, model: torch.nn.Module, spec: GenerationSpec, *, identity: dict[str, Any],
                     eos: int | None, seed: int, device: torch.device,
                     autocast: Callable[[], AbstractContextManager[Any]], log: Callable[[str], None],
                     cache_dir: Path | None, progress: bool = False) -> TokenData:
    """``data`` with the target's continuations appended to its training stream (see the module docstring)."""
    if spec.tokens == 0:
        return data
    key = _cache_key(data, spec, identity, seed)
    cached = cache_dir / f"generated-{key}.pt" if cache_dir is not None else None
    info: dict[str, Any]
    if cached is not None and cached.is_file():
        saved = torch.load(cached, weights_only=False)
        text, info = saved["tokens"], saved["info"]
        log(f"sparsebench: target-written text: {text.numel()} tokens from the cache ({cached.name})")
    else:
        prompts = choose_prompts(data, spec, seed)
        log(f"sparsebench: the target writes {prompts.shape[0]} continuations of {spec.new_len} tokens after "
            f"{spec.prompt_len}-token training prompts (temperatures {list(spec.temperatures)})")
        start = time.perf_counter()
        text = continue_prompts(model, prompts, spec, seed=seed, device=device, autocast=autocast,
                                progress=progress)
        seconds = time.perf_counter() - start
        info = {**asdict(spec), "temperatures": list(spec.temperatures), "continuations": int(text.shape[0]),
                "tokens": int(text.numel()), "seconds": seconds, "device": str(device), "seed": seed,
                "prompts_from": "training stream (held-out documents excluded)",
                "distinct_ids": int(text.unique().numel())}
        log(f"sparsebench: target-written text: {text.numel()} tokens in {seconds:.1f} s "
            f"({text.numel() / max(seconds, 1e-9):.0f} tokens/s)")
        if cached is not None:
            save_atomic({"tokens": text, "info": info}, cached)
    sep = torch.full((text.shape[0], 1), eos, dtype=torch.long) if eos is not None else text[:, :0]
    appended = torch.cat([text, sep], 1).flatten()
    merged = {**data.info, "generated": info,
              "train_tokens": int(data.train.numel() + appended.numel()),
              "corpus_train_tokens": int(data.train.numel())}
    return TokenData(torch.cat([data.train, appended]), data.heldout, data.start, merged)


def _cache_key(data: TokenData, spec: GenerationSpec, identity: dict[str, Any], seed: int) -> str:
    blob = json.dumps({"format": 1, "identity": identity, "data": data.fingerprint(), "seed": seed,
                       "spec": asdict(spec)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
