"""The distillation loop: AdamW with warmup and decay, bf16 autocast on a GPU, atomic checkpoints, resume.

The training text is the corpora's stream, optionally followed by continuations the target writes itself
(``generate_tokens``, :mod:`.generated`): the text a draft is judged on is the target's own.

One step: a batch of training windows goes through the target (no gradients) and the draft; the loss is
KL(target || draft) on the next-token logits plus ``attention_weight`` times the block-attention KL of
draft layer ``j`` against the target layer it was initialised from (see :mod:`.losses`).

With a reduced head (``head_vocab`` ``K``, see :mod:`.headvocab`) both models compute logits for the ``K``
head ids only, and the logit term is KL(p_S || q_S): the target's distribution renormalised over the ids
against the draft's softmax over them. Why this one: the draft can put no mass outside the ids, so the
full-vocabulary KL is infinite and useless; p_S is exactly what the draft should propose from, since
greedy acceptance needs the draft's argmax to be the target's (the argmax of p_S whenever the target's
lies inside the ids; when it lies outside nothing the draft does is accepted), and for speculative
sampling q = p_S maximises the acceptance probability sum_i min(p_i, q_i) = p(S) among drafts confined
to the ids. Renormalising also weights every position alike, as the full-vocabulary loss does. The
target's head is cut to the same ids, which saves its (V - K) rows too; the attention term is unchanged.

Checkpoints (``<draft dir>/training/checkpoint.pt``, written to a temporary file and renamed) hold the
trainable weights, the optimizer, the step, the RNG states, the data position (batches consumed; see
:class:`~sparsebench.distill.data.WindowSampler`) and the loss history. Ctrl-C or SIGTERM finishes the
current step, writes a checkpoint and stops; ``--resume`` continues from it. On the CPU in float32 a
resumed run reproduces an uninterrupted one exactly (the test checks the weights bit for bit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sparsebench.distill import store
from sparsebench.distill.data import WindowSampler, load_token_data
from sparsebench.distill.evaluate import greedy_acceptance, heldout_metrics
from sparsebench.distill.generated import GenerationSpec, with_target_text
from sparsebench.distill.headvocab import check_head_vocab, choose_head_vocab, coverage, installed_head, special_ids
from sparsebench.distill.losses import AttentionTap, attention_kl, logits_kl
from sparsebench.distill.model import INITS, BuiltDraft, build_draft, cost_ratio
from sparsebench.errors import UsageError

CHECKPOINT_FORMAT = 1
SCHEDULES = ("cosine", "linear")
AUTOCAST_DTYPES = {"fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
CPU_PROBE_STEPS = 3
"""Steps timed on the CPU before warning how long the whole run will take."""

#: Fields a resumed run must share with its checkpoint (they define the model, its data or its updates).
#: ``steps`` may grow (the schedule then stretches), and where outputs go or how they are evaluated may change.
RESUME_FIELDS = ("target", "layers", "init", "share_embeddings", "seq_len", "batch_size", "lr", "min_lr_frac",
                 "warmup", "schedule", "weight_decay", "grad_clip", "attention_weight", "attention_rows",
                 "attention_block_size", "datasets", "holdout_docs", "seed", "head_vocab", "generate_tokens",
                 "generate_prompt_len", "generate_len", "generate_temperatures", "generate_batch")


@dataclass(frozen=True)
class DistillConfig:
    """Everything ``sparsebench distill`` was asked (recorded in the checkpoint, manifest and report)."""

    target: str
    layers: int = 4
    init: str = "subset"
    share_embeddings: bool = True
    steps: int = 1000
    seq_len: int = 1024
    batch_size: int = 8
    lr: float = 5e-4
    min_lr_frac: float = 0.1
    """The learning rate decays to ``lr * min_lr_frac`` at the last step."""
    warmup: int | None = None
    """Linear warmup steps (None: 5% of ``steps``)."""
    schedule: str = "cosine"
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    attention_weight: float = 0.0
    attention_rows: int = 32
    attention_block_size: int = 16
    datasets: tuple[str, ...] = ("pg19",)
    holdout_docs: int = 4
    data_dir: str | None = None
    data_source: str = "auto"
    seed: int = 0
    checkpoint_every: int = 100
    name: str | None = None
    out: str | None = None
    device: str = "auto"
    dtype: str | None = None
    """Autocast dtype: bf16 or fp32 (None: bf16 on a GPU, fp32 on the CPU)."""
    eval_tokens: int = 16384
    eval_acceptance: bool = False
    gamma: int = 4
    acceptance_prompts: int = 4
    acceptance_context: int = 512
    acceptance_tokens: int = 128
    head_vocab: int | None = None
    """Rows of the draft's reduced output head (:mod:`.headvocab`); None: the full vocabulary."""
    generate_tokens: int = 0
    """Target-written tokens added to the training text (:mod:`.generated`); 0: none."""
    generate_prompt_len: int = 512
    generate_len: int = 512
    generate_temperatures: tuple[float, ...] = (0.0, 0.8)
    generate_batch: int = 512

    def __post_init__(self) -> None:
        positive = {"--layers": self.layers, "--steps": self.steps, "--batch-size": self.batch_size,
                    "--checkpoint-every": self.checkpoint_every, "--attention-rows": self.attention_rows,
                    "--attention-block-size": self.attention_block_size, "--eval-tokens": self.eval_tokens,
                    "--gamma": self.gamma, "--acceptance-prompts": self.acceptance_prompts,
                    "--acceptance-context": self.acceptance_context, "--acceptance-tokens": self.acceptance_tokens}
        for flag, value in positive.items():
            if value < 1:
                raise UsageError(f"{flag} must be >= 1, got {value}")
        if self.head_vocab is not None and self.head_vocab < 1:
            raise UsageError(f"--head-vocab must be >= 1 (rows of the draft's output head), got {self.head_vocab}")
        if self.seq_len < 2:
            raise UsageError(f"--seq-len must be >= 2, got {self.seq_len}")
        if not self.lr > 0 or not 0 <= self.min_lr_frac <= 1:
            raise UsageError(f"--lr must be > 0 and --min-lr-frac in [0, 1], got {self.lr} and {self.min_lr_frac}")
        for flag, value in (("--weight-decay", self.weight_decay), ("--grad-clip", self.grad_clip),
                            ("--attention-weight", self.attention_weight), ("--holdout-docs", self.holdout_docs)):
            if value < 0:
                raise UsageError(f"{flag} must be >= 0, got {value}")
        if self.warmup is not None and not 0 <= self.warmup <= self.steps:
            raise UsageError(f"--warmup must be between 0 and --steps ({self.steps}), got {self.warmup}")
        if self.init not in INITS:
            raise UsageError(f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.dtype is not None and self.dtype not in AUTOCAST_DTYPES:
            raise UsageError(f"--dtype for distillation must be bf16 or fp32, got {self.dtype!r}")
        if not self.datasets:
            raise UsageError("--dataset needs at least one corpus")
        if self.name is not None:
            store.check_name(self.name)
        self.generation()  # validates the --generate-* flags now, not after the target has loaded

    def generation(self) -> GenerationSpec:
        """What target-written text to add (:mod:`.generated`)."""
        return GenerationSpec(self.generate_tokens, self.generate_prompt_len, self.generate_len,
                              tuple(self.generate_temperatures), self.generate_batch)

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else max(0, round(0.05 * self.steps))

    def draft_name(self) -> str:
        return self.name or store.default_name(self.target, self.layers, self.head_vocab)

    def out_dir(self) -> Path:
        return Path(self.out).expanduser() if self.out else store.drafts_root() / self.draft_name()


def learning_rate(cfg: DistillConfig, step: int) -> float:
    """The learning rate of (0-based) ``step``: linear warmup, then cosine or linear decay to ``min_lr_frac``."""
    warm = cfg.warmup_steps
    if step < warm:
        return cfg.lr * (step + 1) / warm
    span = max(1, cfg.steps - warm)
    progress = min(1.0, (step - warm) / span)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * shape)


def _device(name: str) -> torch.device:
    from sparsebench.config import resolve_device

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return resolve_device(name)


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a request honoured at the next step boundary (a second one
    interrupts at once). Outside the main thread signals cannot be caught; they then act as usual."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            pass
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)


class Checkpointer:
    """``training/checkpoint.pt`` of a draft directory, written atomically."""

    def __init__(self, out: Path) -> None:
        self.path = out / "training" / "checkpoint.pt"

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, state: dict[str, Any]) -> None:
        store.save_atomic(state, self.path)

    def load(self) -> dict[str, Any]:
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a truncated or foreign file: say which and what to do
            raise UsageError(f"cannot read the checkpoint {self.path} ({type(exc).__name__}: {exc}); delete it "
                             "or pass --overwrite to start over") from exc
        if state.get("format") != CHECKPOINT_FORMAT:
            raise UsageError(f"{self.path} is from another sparsebench version; pass --overwrite to start over")
        return state


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_resumable(saved: dict[str, Any], cfg: DistillConfig, fingerprint: str, path: Path) -> None:
    now = dataclasses.asdict(cfg)
    now["datasets"] = list(cfg.datasets)
    # A field the checkpoint lacks was added later; the run that wrote it had that field's default.
    defaults = {f.name: f.default for f in dataclasses.fields(DistillConfig)}
    differing = [f for f in RESUME_FIELDS if saved["config"].get(f, defaults[f]) != now[f]]
    if differing:
        what = ", ".join(f"{f} {saved['config'].get(f)!r} -> {now[f]!r}" for f in differing)
        raise UsageError(f"the checkpoint {path} was trained with other settings ({what}); give the same flags "
                         "to resume, or --overwrite to start over")
    if saved["data"]["fingerprint"] != fingerprint:
        raise UsageError(f"the training text differs from the one the checkpoint {path} saw (another corpus or "
                         "tokenizer); use the same --dataset, or --overwrite to start over")


class Distiller:
    """One distillation run (see the module docstring); :meth:`run` trains, evaluates, saves and reports."""

    def __init__(self, cfg: DistillConfig, *, log: Callable[[str], None] | None = None, progress: bool = True,
                 resume: bool = False, overwrite: bool = False,
                 on_step: Callable[[int, dict[str, float]], None] | None = None) -> None:
        self.cfg = cfg
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.progress = progress
        self.resume = resume
        self.overwrite = overwrite
        self.on_step = on_step
        self.device = _device(cfg.device)
        dtype_name = cfg.dtype or ("fp32" if self.device.type == "cpu" else "bf16")
        self.autocast_dtype = AUTOCAST_DTYPES[dtype_name]
        self.out = cfg.out_dir()
        self.checkpoints = Checkpointer(self.out)
        self.head_ids: torch.Tensor | None = None
        """The reduced head's ids (``[K]``, sorted), chosen once the training text is known; None: full head."""

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------------------------------------

    def _load_target(self) -> Any:
        from sparsebench.models import load_model

        # float32 master weights: the draft copies them exactly; autocast runs the matmuls in bf16.
        target = load_model(self.cfg.target, dtype=torch.float32, device=str(self.device), progress=self.progress)
        for param in target.model.parameters():
            param.requires_grad_(False)
        n_target = target.model.config.get_text_config().num_hidden_layers
        if self.cfg.layers >= n_target:
            self.log(f"sparsebench: warning: a {self.cfg.layers}-layer draft is not smaller than the "
                     f"{n_target}-layer target {self.cfg.target}; a draft is meant to be cheaper"
                     + ("; target layers repeat in its initialisation" if self.cfg.layers > n_target else ""))
        if self.cfg.seq_len > target.max_positions > 0:
            raise UsageError(f"--seq-len {self.cfg.seq_len} exceeds {self.cfg.target}'s maximum of "
                             f"{target.max_positions} positions")
        return target

    def _optimizer(self, draft: torch.nn.Module) -> torch.optim.Optimizer:
        trainable = [(n, p) for n, p in draft.named_parameters() if p.requires_grad]
        # No weight decay on norms and biases (vectors): decaying a norm's gain towards 0 only hurts.
        groups = [{"params": [p for _, p in trainable if p.ndim >= 2], "weight_decay": self.cfg.weight_decay},
                  {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0}]
        fused = {"fused": True} if self.device.type == "cuda" else {}
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=self.cfg.lr, betas=(0.9, 0.95), **fused)

    def _check_head_vocab(self, target: Any) -> list[int]:
        """A clear error now, before the text is tokenized, when ``--head-vocab`` cannot fit the target;
        returns the tokenizer's special ids (always in the head)."""
        vocab = int(target.model.get_output_embeddings().weight.shape[0])
        specials = special_ids(target.tokenizer, vocab)
        if self.cfg.head_vocab is not None:
            check_head_vocab(self.cfg.head_vocab, vocab, specials)
        return specials

    def _head_vocab(self, target: Any, sampler: WindowSampler,
                    specials: list[int]) -> tuple[torch.Tensor | None, dict[str, Any] | None]:
        """The reduced head's ids (None: the full head) and how they were chosen, from the training windows."""
        k = self.cfg.head_vocab
        vocab = int(target.model.get_output_embeddings().weight.shape[0])
        if k is None:
            return None, None
        if k == vocab:
            self.log(f"sparsebench: --head-vocab {k} is the whole vocabulary; the draft keeps its full head")
            return None, None
        ids = choose_head_vocab(sampler.windows, vocab, k, specials)
        info = {"vocab_size": vocab, "specials": specials, "datasets": list(self.cfg.datasets),
                "method": f"the tokenizer's special ids {specials}, then the most frequent ids of the training "
                          f"windows (seq_len {self.cfg.seq_len}; held-out documents not counted; ties: lower id), "
                          f"{k} in all, sorted",
                "counted_tokens": int(sampler.windows.numel()),
                "train_token_coverage": coverage(sampler.windows, ids, vocab)}
        return torch.tensor(ids, dtype=torch.long), info

    def _checkpoint_state(self, built: BuiltDraft, optimizer: torch.optim.Optimizer, step: int,
                          history: list[dict[str, float]], fingerprint: str, seconds: float) -> dict[str, Any]:
        config = dataclasses.asdict(self.cfg)
        config["datasets"] = list(self.cfg.datasets)
        trainable = {n: p.detach().cpu().clone() for n, p in built.model.named_parameters() if p.requires_grad}
        return {"format": CHECKPOINT_FORMAT, "step": step, "config": config, "model": trainable,
                "optimizer": optimizer.state_dict(), "rng": _rng_state(),
                "data": {"batches_consumed": step, "fingerprint": fingerprint},
                "history": history, "train_seconds": seconds, "source_layers": built.source_layers,
                "head_ids": None if self.head_ids is None else self.head_ids.tolist()}

    def _step(self, built: BuiltDraft, target: torch.nn.Module, ids: torch.Tensor,
              taps: tuple[AttentionTap, AttentionTap] | None) -> tuple[torch.Tensor, dict[str, float]]:
        from sparsebench.hf_attention import use_router

        with torch.no_grad(), self.autocast(), use_router(taps[0] if taps else None):
            target_logits = target(input_ids=ids, use_cache=False).logits
        with self.autocast(), use_router(taps[1] if taps else None):
            draft_logits = built.model(input_ids=ids, use_cache=False).logits
        kl = logits_kl(target_logits, draft_logits)
        loss = kl
        parts = {"kl": kl}
        if taps is not None:
            attn = attention_kl(taps[0].mass, taps[1].mass, list(enumerate(built.source_layers)))
            loss = loss + self.cfg.attention_weight * attn
            parts["attention_kl"] = attn
            taps[0].mass.clear()
            taps[1].mass.clear()
        return loss, {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}}

    def _restore(self, built: BuiltDraft, optimizer: torch.optim.Optimizer,
                 fingerprint: str) -> tuple[int, list[dict[str, float]], float]:
        """With ``--resume`` and a checkpoint: load it into the draft and optimizer, restore the RNGs, and
        return (step, loss history, training seconds so far); otherwise a fresh start."""
        if not self.resume:
            return 0, [], 0.0
        if not self.checkpoints.exists():
            self.log(f"sparsebench: nothing to resume in {self.out}; starting from step 0")
            return 0, [], 0.0
        saved = self.checkpoints.load()
        _check_resumable(saved, self.cfg, fingerprint, self.checkpoints.path)
        if saved.get("head_ids") != (None if self.head_ids is None else self.head_ids.tolist()):
            raise UsageError(f"the checkpoint {self.checkpoints.path} was trained with other reduced-head ids (the "
                             "training text changed); use the same --dataset, or --overwrite to start over")
        lacking = set(built.model.load_state_dict(saved["model"], strict=False).missing_keys) - set(built.frozen)
        if lacking:
            raise UsageError(f"the checkpoint {self.checkpoints.path} lacks {sorted(lacking)}; pass --overwrite")
        optimizer.load_state_dict(saved["optimizer"])
        _set_rng_state(saved["rng"])
        self.log(f"sparsebench: resuming {self.out} at step {saved['step']} of {self.cfg.steps}")
        return saved["step"], saved["history"], saved["train_seconds"]

    def run(self) -> dict[str, Any]:
        """Train (or resume), evaluate, save the draft directory; returns the report."""
        from sparsebench.hf_attention import attached

        cfg = self.cfg
        if self.checkpoints.exists() and not (self.resume or self.overwrite):
            raise UsageError(f"{self.out} already holds a training run ({self.checkpoints.path}); pass --resume to "
                             "continue it or --overwrite to start over")
        target = self._load_target()
        specials = self._check_head_vocab(target)
        built = build_draft(target.model, cfg.layers, init=cfg.init, share_embeddings=cfg.share_embeddings,
                            seed=cfg.seed)
        data = load_token_data(cfg.datasets, target.tokenizer, holdout=cfg.holdout_docs, data_dir=cfg.data_dir,
                               data_source=cfg.data_source, log=self.log, cache_dir=store.tokens_cache_dir())
        eos = getattr(target.tokenizer, "eos_token_id", None)
        data = with_target_text(data, target.model, cfg.generation(), identity=target.identity,
                                eos=eos if isinstance(eos, int) else None, seed=cfg.seed, device=self.device,
                                autocast=self.autocast, log=self.log, cache_dir=store.tokens_cache_dir(),
                                progress=self.progress)
        sampler = WindowSampler(data, cfg.seq_len, cfg.batch_size, cfg.seed)
        fingerprint = data.fingerprint()
        self.head_ids, head_info = self._head_vocab(target, sampler, specials)
        optimizer = self._optimizer(built.model)
        step, history, seconds = self._restore(built, optimizer, fingerprint)
        trainable = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
        self.log(f"sparsebench: distilling {cfg.target} into a {cfg.layers}-layer draft (target layers "
                 f"{built.source_layers}, init {cfg.init}, {trainable / 1e6:.2f}M trainable parameters, embeddings/"
                 f"norm/head {'frozen copies' if cfg.share_embeddings else 'trained'}) on {self.device} | "
                 f"{data.info['train_tokens']} training tokens, {sampler.per_epoch} windows of {cfg.seq_len} | "
                 f"{cfg.steps} steps of {cfg.batch_size} windows")
        if head_info is not None:
            self.log(f"sparsebench: reduced head: {cfg.head_vocab} of {head_info['vocab_size']} ids, covering "
                     f"{100 * head_info['train_token_coverage']:.2f}% of the training tokens")
        taps = None
        if cfg.attention_weight > 0:
            taps = (AttentionTap(set(built.source_layers), cfg.attention_rows, cfg.attention_block_size),
                    AttentionTap(range(cfg.layers), cfg.attention_rows, cfg.attention_block_size))
        built.model.train()
        stop = StopRequest()
        bar = tqdm(total=cfg.steps, initial=step, unit="step", desc="distill", disable=not self.progress,
                   file=sys.stderr)
        probe_start, probe_from = None, step
        with (stop.installed(), attached(target.model, built.model) if taps else contextlib.nullcontext(),
              installed_head(target.model, self.head_ids, expand=False),
              installed_head(built.model, self.head_ids, expand=False)):
            while step < cfg.steps:
                t0 = time.perf_counter()
                if probe_start is None:
                    probe_start = t0
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(cfg, step)
                ids = sampler.batch(step).to(self.device)
                loss, metrics = self._step(built, target.model, ids, taps)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    [p for p in built.model.parameters() if p.requires_grad],
                    cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                took = time.perf_counter() - t0
                seconds += took
                metrics |= {"step": step, "lr": optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm),
                            "seconds": took}
                history.append(metrics)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", kl=f"{metrics['kl']:.4f}")
                if self.device.type == "cpu" and step - probe_from == min(CPU_PROBE_STEPS, cfg.steps - probe_from):
                    self._warn_cpu(time.perf_counter() - probe_start, step - probe_from, cfg.steps - probe_from)
                if self.on_step is not None:
                    self.on_step(step, metrics)
                if stop.signal is not None:
                    self.checkpoints.save(self._checkpoint_state(built, optimizer, step, history, fingerprint,
                                                                 seconds))
                    bar.close()
                    self.log(f"sparsebench: stopped at step {step} of {cfg.steps}; checkpoint saved to "
                             f"{self.checkpoints.path}; rerun with --resume to continue")
                    raise KeyboardInterrupt
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    self.checkpoints.save(self._checkpoint_state(built, optimizer, step, history, fingerprint,
                                                                 seconds))
        bar.close()
        return self._finish(target, built, data, history, seconds, head_info)

    def _warn_cpu(self, elapsed: float, timed: int, remaining: int) -> None:
        per_step = elapsed / max(1, timed)
        why = "no GPU found" if not torch.cuda.is_available() else "--device cpu"
        self.log(f"sparsebench: warning: distilling on the CPU ({why}): the first {timed} step(s) took "
                 f"{per_step:.2f} s each, so {remaining} steps will take about {_duration(per_step * remaining)}; "
                 "a GPU (--device cuda) is much faster")

    def _finish(self, target: Any, built: BuiltDraft, data: Any, history: list[dict[str, float]],
                seconds: float, head_info: dict[str, Any] | None) -> dict[str, Any]:
        cfg = self.cfg
        built.model.eval()
        self.log("sparsebench: evaluating the draft on held-out text")
        heldout = heldout_metrics(target.model, built.model, data.heldout, data.start, seq_len=cfg.seq_len,
                                  max_tokens=cfg.eval_tokens, batch_size=cfg.batch_size, device=self.device,
                                  autocast=self.autocast, head_ids=self.head_ids)
        report: dict[str, Any] = {
            "name": cfg.draft_name(), "path": str(self.out), "target": cfg.target,
            "draft_spec": store.PREFIX + cfg.draft_name() if cfg.out is None else str(self.out),
            "layers": cfg.layers, "source_layers": built.source_layers, "init": cfg.init,
            "share_embeddings": cfg.share_embeddings, "steps": len(history), "train_seconds": seconds,
            "tokens_seen": len(history) * cfg.batch_size * cfg.seq_len,
            "device": str(self.device), "autocast": str(self.autocast_dtype or torch.float32).removeprefix("torch."),
            "final_train_loss": history[-1]["loss"] if history else None,
            "final_train_kl": _tail_mean([h["kl"] for h in history]),
            "heldout": heldout,
            "head_vocab": None if head_info is None else {"rows": cfg.head_vocab, **head_info},
            "cost": cost_ratio(built.model, target.model, sorted({0, cfg.seq_len}),
                               draft_head_rows=None if self.head_ids is None else int(self.head_ids.numel())),
            "parameters": {"draft": sum(p.numel() for p in built.model.parameters()),
                           "draft_trainable": sum(p.numel() for p in built.model.parameters() if p.requires_grad),
                           "target": sum(p.numel() for p in target.model.parameters())},
            "data": data.info,
            "config": {**dataclasses.asdict(cfg), "datasets": list(cfg.datasets),
                       "generate_temperatures": list(cfg.generate_temperatures)},
            "history": history,
        }
        if cfg.eval_acceptance:
            self.log(f"sparsebench: measuring greedy acceptance at gamma {cfg.gamma}")
            report["acceptance"] = greedy_acceptance(
                target.model, built.model, data.heldout, data.start, prompts=cfg.acceptance_prompts,
                context=cfg.acceptance_context, new_tokens=cfg.acceptance_tokens, gamma=cfg.gamma,
                head_ids=self.head_ids)
        manifest = {"name": cfg.draft_name(), "target": {"name": cfg.target, "identity": target.identity},
                    "layers": cfg.layers, "source_layers": built.source_layers, "init": cfg.init,
                    "frozen": built.frozen, "frozen_storage": "copied (the directory loads on its own)",
                    "steps": len(history)}
        head = None if self.head_ids is None or head_info is None else (self.head_ids.tolist(), head_info)
        store.save_draft(built.model, target.tokenizer, self.out, manifest, report, progress=self.progress,
                         head_vocab=head)
        return report


def _tail_mean(values: list[float], n: int = 20) -> float | None:
    """Mean of the last ``n`` values: one step's loss is noisy, this is what 'final' means here."""
    tail = values[-n:]
    return sum(tail) / len(tail) if tail else None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
