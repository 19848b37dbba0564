"""A compact Llama/Qwen2-family decoder for the speed engine: the model is data, attention is a callback.

Why our own module rather than the Hugging Face model: a CUDA graph per decode step needs a forward pass
with static shapes, a static KV cache and no Python-side cache objects, and the engine must route each
layer's attention (dense, or a policy's blocks through a backend) itself. Here the model only computes
projections, RoPE, norms and MLPs; :meth:`FastModel.run_layers` hands every layer's ``q, k, v`` (after
RoPE) to an ``attend`` callback that owns the cache and returns the attention output.

Supported: ``model_type`` ``llama`` and ``qwen2`` (RMSNorm, rotate-half RoPE with the config's
``rope_theta``, GQA, SwiGLU MLP with ``silu``, q/k/v bias for Qwen2 or Llama's ``attention_bias``, tied or
untied embeddings). RoPE scaling: none (``default``), ``linear`` and ``llama3`` (Llama 3.1/3.2); other
variants (``dynamic``, ``yarn``, ``longrope``, ...) change the frequencies with the sequence length or scale
the logits, and raise a ``UsageError`` rather than decode subtly wrong.

Speed does not depend on the weight values, so :meth:`FastModel.random` builds a preset's shape
(:data:`PRESETS`) directly on the device with random weights: no download, no host copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.errors import UsageError

SUPPORTED_FAMILIES = ("llama", "qwen2")
SUPPORTED_ROPE = ("default", "linear", "llama3")

#: ``attend(slot, q, k, v) -> out``: ``q`` ``[B, Hq, T, D]`` and ``k``/``v`` ``[B, Hkv, T, D]`` after RoPE,
#: ``out`` ``[B, Hq, T, D]``. ``slot`` is the index of the layer within the ``layers`` being run.
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a supported decoder; everything the fast model needs from a transformers config."""

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    tie_embeddings: bool
    qkv_bias: bool = False
    o_bias: bool = False
    rope_scaling: dict[str, Any] = field(default_factory=dict)
    """Empty for plain RoPE, else the config's scaling parameters with ``rope_type``."""
    max_positions: int = 0
    head_rows: int = 0
    """Rows of the output head a step computes: 0 for the whole vocabulary, ``K`` for a draft with a reduced
    head (``sparsebench distill --head-vocab K``, see :meth:`FastModel.restrict_head`)."""

    @property
    def scaling(self) -> float:
        return self.head_dim**-0.5

    @classmethod
    def from_config(cls, config: Any) -> ModelSpec:
        """Read a ``LlamaConfig``/``Qwen2Config`` (transformers 4 or 5 spelling of the RoPE fields)."""
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        family = getattr(config, "model_type", None)
        if family not in SUPPORTED_FAMILIES:
            raise UsageError(f"the fast decode engine supports the {' and '.join(SUPPORTED_FAMILIES)} families "
                             f"(LlamaForCausalLM, Qwen2ForCausalLM), not model_type {family!r}; use the "
                             "teacher-forced engine (sparsebench run) for other models")
        act = getattr(config, "hidden_act", "silu")
        if act != "silu":
            raise UsageError(f"the fast decode engine supports the SwiGLU (silu) MLP, not hidden_act {act!r}")
        if getattr(config, "mlp_bias", False):
            raise UsageError("the fast decode engine does not support mlp_bias=True")
        if family == "qwen2" and getattr(config, "use_sliding_window", False):
            raise UsageError("the fast decode engine does not support Qwen2 sliding-window attention")
        theta, scaling = _rope_fields(config)
        heads = int(config.num_attention_heads)
        attention_bias = bool(getattr(config, "attention_bias", False))
        return cls(
            family=family,
            vocab_size=int(config.vocab_size),
            hidden_size=int(config.hidden_size),
            intermediate_size=int(config.intermediate_size),
            num_layers=int(config.num_hidden_layers),
            num_heads=heads,
            num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads),
            rope_theta=theta,
            rms_norm_eps=float(config.rms_norm_eps),
            tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            qkv_bias=family == "qwen2" or attention_bias,
            o_bias=family == "llama" and attention_bias,
            rope_scaling=scaling,
            max_positions=int(getattr(config, "max_position_embeddings", 0) or 0),
        )

    def inv_freq(self) -> torch.Tensor:
        """RoPE inverse frequencies ``[D/2]`` (fp32), scaled as the config says."""
        base = 1.0 / (self.rope_theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        kind = self.rope_scaling.get("rope_type", "default") if self.rope_scaling else "default"
        if kind == "linear":
            base = base / float(self.rope_scaling["factor"])
        elif kind == "llama3":
            base = _llama3_frequencies(base, self.rope_scaling)
        return base

    def weight_bytes(self, dtype: torch.dtype) -> int:
        """Bytes of every weight a decode step reads (the embedding table counts only as the output head:
        a step gathers just ``B`` of its rows; a reduced head reads its ``head_rows``). Biases are left out
        (under 0.01%)."""
        head = ((self.head_rows or self.vocab_size) + 1) * self.hidden_size * _itemsize(dtype)
        return self.num_layers * self.layer_weight_bytes(dtype) + head

    def layer_weight_bytes(self, dtype: torch.dtype) -> int:
        """Bytes of one decoder layer's weights."""
        h, d = self.hidden_size, self.head_dim
        per_layer = h * (self.num_heads + 2 * self.num_kv_heads) * d + self.num_heads * d * h
        return (per_layer + 3 * h * self.intermediate_size + 2 * h) * _itemsize(dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _rope_fields(config: Any) -> tuple[float, dict[str, Any]]:
    """``(rope_theta, scaling parameters)`` from a v5 ``rope_parameters`` or a v4 ``rope_theta``/``rope_scaling``."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        theta, scaling = float(params["rope_theta"]), dict(params)
    else:
        theta = float(getattr(config, "rope_theta", 10000.0))
        scaling = dict(getattr(config, "rope_scaling", None) or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in SUPPORTED_ROPE:
        raise UsageError(f"RoPE scaling {kind!r} is not supported by the fast decode engine (supported: "
                         f"{', '.join(SUPPORTED_ROPE)})")
    return theta, ({**scaling, "rope_type": kind} if kind != "default" else {})


def _llama3_frequencies(inv_freq: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1's frequency-dependent scaling: long wavelengths divided by ``factor``, short ones kept,
    a smooth blend in between (Meta's reference formula)."""
    factor, low, high = float(p["factor"]), float(p["low_freq_factor"]), float(p["high_freq_factor"])
    original = float(p["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    smooth = ((original / wavelen) - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    middle = (wavelen >= original / high) & (wavelen <= original / low)
    return torch.where(middle, blended, out)


#: Shapes for ``--random-weights`` (speed does not depend on weight values). Sources: the models'
#: published configs (Llama 3 8B without rope scaling, as released; Llama 3.2 1B with its llama3 scaling;
#: Qwen2.5-Coder-0.5B-Instruct as released, tied embeddings).
PRESETS: dict[str, ModelSpec] = {
    "llama-3-8b": ModelSpec(
        family="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
        num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500000.0, rms_norm_eps=1e-5,
        tie_embeddings=False, max_positions=8192,
    ),
    "llama-3.2-1b": ModelSpec(
        family="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16,
        num_heads=32, num_kv_heads=8, head_dim=64, rope_theta=500000.0, rms_norm_eps=1e-5,
        tie_embeddings=True, max_positions=131072,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
    ),
    "qwen2.5-coder-0.5b": ModelSpec(
        family="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
        num_heads=14, num_kv_heads=2, head_dim=64, rope_theta=1000000.0, rms_norm_eps=1e-6,
        tie_embeddings=True, qkv_bias=True, max_positions=32768,
    ),
    # The test suite's tiny llama shape: CPU smoke runs of the benchmark.
    "tiny": ModelSpec(
        family="llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=4, num_heads=4,
        num_kv_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-6, tie_embeddings=True,
        max_positions=4096,
    ),
}


def preset(name: str) -> ModelSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown --random-weights preset {name!r}; known: {', '.join(PRESETS)}") from None


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` computed in fp32, cast back before the weight (as Llama/Qwen2 do)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: ``x`` ``[B, H, T, D]``, ``cos``/``sin`` ``[T, D]`` (fp32, cast to ``x``'s dtype)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def qkv_projection(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, w: torch.Tensor, bias: torch.Tensor | None,
                   cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int,
                   head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pre-attention half of a layer: norm, fused q/k/v projection, RoPE. A pure function of tensors so that
    one ``torch.compile`` serves every layer (weights are arguments, not module state)."""
    b, t, _ = x.shape
    q, k, v = F.linear(rms_norm(x, norm_weight, eps), w, bias).split(
        [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q = q.view(b, t, heads, head_dim).transpose(1, 2)
    k = k.view(b, t, kv_heads, head_dim).transpose(1, 2)
    v = v.view(b, t, kv_heads, head_dim).transpose(1, 2)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def finish_layer(x: torch.Tensor, attn: torch.Tensor, wo: torch.Tensor, wo_bias: torch.Tensor | None,
                 norm_weight: torch.Tensor, eps: float, w_gate_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """Post-attention half: output projection and residual, then the SwiGLU MLP and its residual."""
    b, _, t, _ = attn.shape
    x = x + F.linear(attn.transpose(1, 2).reshape(b, t, -1), wo, wo_bias)
    gate, up = F.linear(rms_norm(x, norm_weight, eps), w_gate_up).chunk(2, dim=-1)
    return x + F.linear(F.silu(gate) * up, w_down)


class LayerFunctions:
    """The two halves of a layer, eager or compiled. Why compile: a decode step at batch 1 launches about
    thirty small kernels per layer (norms, RoPE, casts, residuals); at ~2 µs each, inside a CUDA graph, that
    is milliseconds per step for an 8B model, as much as reading its weights. Inductor fuses them."""

    def __init__(self) -> None:
        self.decode_qkv = qkv_projection
        self.decode_finish = finish_layer
        self.compiled = False

    def compile(self) -> None:
        """Compile the one-token (decode) shapes only; prefill chunks of varying length stay eager."""
        self.decode_qkv = torch.compile(qkv_projection, fullgraph=True, dynamic=False)
        self.decode_finish = torch.compile(finish_layer, fullgraph=True, dynamic=False)
        self.compiled = True

    def qkv(self, x: torch.Tensor, *args: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self.decode_qkv if x.shape[1] == 1 else qkv_projection)(x, *args)

    def finish(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        return (self.decode_finish if x.shape[1] == 1 else finish_layer)(x, *args)


class Block(nn.Module):
    """One decoder layer with fused q/k/v and gate/up projections (one matmul each instead of three/two)."""

    def __init__(self, spec: ModelSpec, functions: LayerFunctions | None = None) -> None:
        super().__init__()
        h, d = spec.hidden_size, spec.head_dim
        self.spec = spec
        self.functions = functions or LayerFunctions()
        self.attn_norm = RMSNorm(h, spec.rms_norm_eps)
        self.wqkv = nn.Linear(h, (spec.num_heads + 2 * spec.num_kv_heads) * d, bias=spec.qkv_bias)
        self.wo = nn.Linear(spec.num_heads * d, h, bias=spec.o_bias)
        self.mlp_norm = RMSNorm(h, spec.rms_norm_eps)
        self.w_gate_up = nn.Linear(h, 2 * spec.intermediate_size, bias=False)
        self.w_down = nn.Linear(spec.intermediate_size, h, bias=False)

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``q`` ``[B, Hq, T, D]``, ``k``/``v`` ``[B, Hkv, T, D]`` with RoPE applied to ``q`` and ``k``."""
        s = self.spec
        return self.functions.qkv(x, self.attn_norm.weight, s.rms_norm_eps, self.wqkv.weight, self.wqkv.bias,
                                  cos, sin, s.num_heads, s.num_kv_heads, s.head_dim)

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Residual after attention (``attn`` ``[B, Hq, T, D]``), then the SwiGLU MLP and its residual."""
        return self.functions.finish(x, attn, self.wo.weight, self.wo.bias, self.mlp_norm.weight,
                                     self.spec.rms_norm_eps, self.w_gate_up.weight, self.w_down.weight)


class FastModel(nn.Module):
    """Embedding, decoder layers, final norm and output head of a supported model (see module docstring). A
    separate draft may compute its head over a subset of the vocabulary (:meth:`restrict_head`)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.functions = LayerFunctions()
        self.layers = nn.ModuleList(Block(spec, self.functions) for _ in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.lm_head = None if spec.tie_embeddings else nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        # A reduced head (see restrict_head): its token ids [K] and its rows [K, H], copied contiguous so a step
        # reads only them; None: the whole vocabulary. Buffers, so they move with the model.
        self.head_ids: torch.Tensor | None
        self.head_weight: torch.Tensor | None
        self.register_buffer("head_ids", None, persistent=False)
        self.register_buffer("head_weight", None, persistent=False)

    @classmethod
    def empty(cls, spec: ModelSpec, *, device: torch.device | str, dtype: torch.dtype) -> FastModel:
        """Uninitialised storage on ``device`` (built on the meta device first: nothing is written twice)."""
        with torch.device("meta"):
            model = cls(spec).to(dtype)  # cast while on meta: no full-precision copy is ever allocated
        return model.to_empty(device=device).requires_grad_(False).eval()

    @classmethod
    def random(cls, spec: ModelSpec, *, device: torch.device | str, dtype: torch.dtype,
               seed: int = 0) -> FastModel:
        """Random weights generated on ``device`` (for speed runs: the values do not change the speed)."""
        model = cls.empty(spec, device=device, dtype=dtype)
        gen = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    p.normal_(0.0, 0.02, generator=gen)
        return model

    @classmethod
    def from_hf(cls, hf_model: nn.Module, *, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> FastModel:
        """The same weights as a loaded ``LlamaForCausalLM``/``Qwen2ForCausalLM`` (copied, q/k/v fused)."""
        spec = ModelSpec.from_config(hf_model.config)
        ref = next(hf_model.parameters())
        model = cls.empty(spec, device=device or ref.device, dtype=dtype or ref.dtype)
        model.load_hf_state_dict(hf_model.state_dict())
        from sparsebench.distill.headvocab import head_ids_of

        ids = head_ids_of(hf_model)  # a distilled draft loaded with its reduced head
        if ids is not None:
            model.restrict_head(ids)
        return model

    def restrict_head(self, ids: torch.Tensor | Sequence[int]) -> None:
        """Compute logits only for the token ids ``ids`` (a draft's reduced head, ``--head-vocab``).

        :meth:`logits` then returns ``[..., K]`` over ``ids`` in order and :meth:`token_ids` maps its
        indices back to token ids; ``spec.head_rows`` becomes ``K`` so the weight-byte count follows. Only
        for a model that proposes (a separate draft): a target's verification needs the whole vocabulary.
        """
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        ids_t = torch.as_tensor(ids, dtype=torch.long, device=weight.device)
        if ids_t.ndim != 1 or ids_t.numel() == 0 or int(ids_t.min()) < 0 or int(ids_t.max()) >= weight.shape[0]:
            raise UsageError(f"a reduced head needs a non-empty list of token ids in 0 .. {weight.shape[0] - 1}")
        self.head_ids = ids_t
        self.head_weight = weight.detach().index_select(0, ids_t).contiguous()
        self.spec = replace(self.spec, head_rows=int(ids_t.numel()))

    def require_full_head(self, role: str) -> None:
        """Refuse a reduced head where the model's logits must cover every token (a decoder or a verifier)."""
        if self.head_ids is not None:
            raise UsageError(f"the {role} has a reduced output head ({self.spec.head_rows} of "
                             f"{self.spec.vocab_size} ids, a distilled draft's --head-vocab); only a draft may "
                             "have one: load the model without it")

    def token_ids(self, index: torch.Tensor) -> torch.Tensor:
        """Token ids of indices into :meth:`logits`' last dimension (the identity without a reduced head).
        A gather on the device, so it runs inside a CUDA graph."""
        return index if self.head_ids is None else self.head_ids[index]

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy Hugging Face parameter names into the fused layout; a missing tensor is a clear error."""
        def get(name: str) -> torch.Tensor:
            if name not in state:
                raise UsageError(f"the model's weights have no {name!r}; is it a {'/'.join(SUPPORTED_FAMILIES)} "
                                 "causal LM?")
            return state[name]

        with torch.no_grad():
            self.embed.weight.copy_(get("model.embed_tokens.weight"))
            self.norm.weight.copy_(get("model.norm.weight"))
            if self.lm_head is not None:
                self.lm_head.weight.copy_(get("lm_head.weight"))
            for i, block in enumerate(self.layers):
                pre = f"model.layers.{i}."
                attn = [f"{pre}self_attn.{p}_proj" for p in "qkv"]
                block.wqkv.weight.copy_(torch.cat([get(f"{a}.weight") for a in attn]))
                if block.wqkv.bias is not None:
                    block.wqkv.bias.copy_(torch.cat([get(f"{a}.bias") for a in attn]))
                block.wo.weight.copy_(get(f"{pre}self_attn.o_proj.weight"))
                if block.wo.bias is not None:
                    block.wo.bias.copy_(get(f"{pre}self_attn.o_proj.bias"))
                block.w_gate_up.weight.copy_(torch.cat([get(f"{pre}mlp.gate_proj.weight"),
                                                        get(f"{pre}mlp.up_proj.weight")]))
                block.w_down.weight.copy_(get(f"{pre}mlp.down_proj.weight"))
                block.attn_norm.weight.copy_(get(f"{pre}input_layernorm.weight"))
                block.mlp_norm.weight.copy_(get(f"{pre}post_attention_layernorm.weight"))

    def compile_layers(self) -> None:
        """Compile the per-layer functions (Inductor fuses norms, RoPE and residuals); decode-only speed-up,
        the first call per shape pays the compilation."""
        self.functions.compile()

    def rope_tables(self, n_positions: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos``/``sin`` ``[n_positions, D]`` (fp32) for positions ``0 .. n_positions - 1``."""
        inv = self.spec.inv_freq().to(device)
        freqs = torch.arange(n_positions, device=device, dtype=torch.float32)[:, None] * inv[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    def run_layers(self, x: torch.Tensor, layers: Sequence[int], cos: torch.Tensor, sin: torch.Tensor,
                   attend: Attend) -> torch.Tensor:
        """Hidden states ``[B, T, H]`` through ``layers`` (in order); ``attend`` serves every attention."""
        for slot, index in enumerate(layers):
            block = self.layers[index]
            q, k, v = block.qkv(x, cos, sin)
            x = block.finish(x, attend(slot, q, k, v))
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Output logits (fp32) of hidden states ``[B, T, H]``: ``[B, T, V]``, or ``[B, T, K]`` over a reduced
        head's ids (map an argmax back with :meth:`token_ids`)."""
        weight = self.head_weight if self.head_weight is not None else \
            self.embed.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(self.norm(x), weight).float()

    def forward(self, tokens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend,
                *, last_only: bool = True) -> torch.Tensor:
        """Logits ``[B, V]`` of the last position (or ``[B, T, V]`` of all) of ``tokens`` ``[B, T]`` (``K``
        instead of ``V`` with a reduced head)."""
        x = self.run_layers(self.embed(tokens), range(self.spec.num_layers), cos, sin, attend)
        return self.logits(x[:, -1:])[:, 0] if last_only else self.logits(x)
