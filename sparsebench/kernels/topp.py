"""Sorting-free top-p (nucleus) masks over attention mass, as a Triton kernel plus an exact reference.

Why this exists: SpecAttn keeps, per head, the smallest set of KV blocks whose (draft-predicted)
attention mass reaches ``p``. The textbook way sorts every row, which at decode time costs far more
than the attention read it is meant to prune. A set of the form ``{prob >= t}`` needs no sort, only
the right threshold ``t``, and that can be found by searching with passes that each read the row
once and sum the mass above some candidate thresholds.

Semantics (shared by every backend here)
----------------------------------------
For a row ``x`` (non-negative, not necessarily normalised; total ``T = sum(x)``) and ``p`` in (0, 1]:

* ``M(v) = sum(x[x >= v])`` is the mass at or above ``v``; ``t*`` is the largest *entry value* with
  ``M(t*) >= p * T``. The mask is ``x >= t*``.
* Ties: every entry equal to ``t*`` is kept. The mask is therefore the sort-based prefix (sort
  descending, keep the shortest prefix whose cumulative sum reaches ``p * T``) extended by all entries
  tied with its last element. Apart from those tied entries no strictly smaller set reaches ``p``.
* ``p == 1`` keeps exactly the positive entries; zeros are never kept (they add no mass); a row whose
  total is 0 keeps nothing (the empty set already holds ``p`` of nothing). ``-0.0`` counts as zero.

Exactness and the mass guarantee. The kernel sums masses in float64 (each float32 entry converted
exactly, one add per lane per tile, then a float64 reduction over the lanes) and accepts a candidate
threshold only if its mass clears ``p * T`` by a margin ``delta`` that bounds that rounding
(``delta = 2 (tiles + BLOCK_N + 8) 2**-53``, about 1e-12 at N = 128K, plus 2**-50 absolute on p). Hence
``kept mass >= p * T`` holds in exact arithmetic, not just in floating point, and the mask equals the
float64 sort-based reference's except in a "near-tie": when the reference's set reaches ``p * T`` by
less than ``delta * T``, the kernel also keeps the next lower distinct value(s) whose mass fits in that
margin. (An earlier float32 version needed a margin of ~1e-5 at N = 128K, larger than one entry, and
missed the reference on most rows there; float64 costs little because the kernel is not
arithmetic-bound.) Float32 inputs are compared exactly; bf16/fp16 inputs are converted exactly.

Kernel algorithm
----------------
One program per row. Rows up to ``RESIDENT_MAX`` entries are loaded once into registers and every
search pass runs on them; longer rows are streamed in ``BLOCK_N`` chunks, one read per pass, so N is
bounded only by memory (and by 2**31).

1. Pass 0 reads the row once for ``T`` and ``max``. Then ``t*`` lies in ``[lo, hi]`` with
   ``hi = max`` and ``lo = (1 - p) * T / (2N)`` (every entry below ``lo`` together holds less than
   ``(1 - p) * T``, so ``M(lo) >= p * T`` without computing it).
2. The search works on the int32 bit pattern of the float32 values, which orders non-negative floats
   exactly like their values (including subnormals), so the search is over a finite integer range
   and every comparison is an exact integer compare, immune to flush-to-zero. Each pass places
   ``NUM_CAND`` candidate thresholds evenly in ``(lo, hi]`` and, in one read of the row, computes for
   each candidate ``c`` the mass ``M(c)``; the first rejected candidate ``c_j`` and the accepted one
   before it bracket ``t*``. With ``TIGHTEN`` the same pass also finds the smallest entry ``>= c`` and
   the largest entry ``< c`` per candidate, and the bracket shrinks to actual entry values
   (``lo = min{x >= c_{j-1}}``, ``hi = max{x < c_j}``).
3. The search stops when ``lo == hi``: one value is left, and it is ``t*``. Without tightening that
   takes at most ``ceil(31 / log2(NUM_CAND + 1))`` passes (about 27 for one candidate in practice);
   with it, about log(number of distinct values near ``t*``) passes (about 11 at N = 128K with two
   candidates). A last pass writes ``x >= lo``; ``lo`` is always an accepted threshold (or the
   a-priori valid lower end), so the kept mass reaches p even if the pass cap were hit.

Several candidates per pass cut the passes (each divides the range by ``NUM_CAND + 1``) at the cost
of more arithmetic per entry; which wins depends on whether the pass is a memory read (streamed rows:
two candidates plus tightening) or a register sweep (resident rows: one candidate, no tightening);
:func:`default_config` records what was measured.

Why not the paper's fixed 10 bisection steps on values: after 10 steps the threshold is only known to
about 1/1024 of the max, so the set is neither guaranteed minimal nor exact, and a value-space
bisection cannot tell when it is done. The bit-pattern search is exact and has a hard pass bound.

Performance limits (measured on an H200, see ``sparsebench/bench/topp.py``): with one program per row,
32 rows occupy 32 of 132 SMs, and one SM streams only ~30-50 GB/s, so at N >= 32K each pass over a
row costs ~10-40 us and the ~12 passes dominate. The one-program-per-row design therefore cannot get
near one read of the input at large N; splitting rows across programs (a cross-program reduction per
pass) or compacting the bracket's entries between passes would be the next steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch

from sparsebench.errors import UsageError

try:  # Triton is optional: the torch reference serves every device without it.
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None
    _HAVE_TRITON = False

__all__ = [
    "Backend",
    "default_config",
    "interpreter_enabled",
    "topp_mask",
    "topp_mask_nd",
    "topp_mask_torch",
    "topp_mask_triton",
    "triton_usable",
]

Backend = Literal["auto", "triton", "torch"]

#: Input dtypes the kernel loads directly (each converts exactly to float32).
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Cap on search passes: far above the bound ceil(31 / log2(NUM_CAND + 1)) + 1, only a safety net.
_MAX_PASSES = 64


# ----------------------------------------------------------------------------------------------
# validation


def _check_p(p: float) -> float:
    """Return ``p`` as a float, or raise ``UsageError`` if it is not a number in (0, 1]."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
        raise UsageError(f"top-p threshold p must be a number in (0, 1], got {p!r} ({type(p).__name__})")
    pf = float(p)
    if not (0.0 < pf <= 1.0):  # also rejects NaN
        raise UsageError(f"top-p threshold p must be in (0, 1], got {pf!r}; e.g. p=0.9 keeps 90% of the mass")
    return pf


def _check_probs(probs: torch.Tensor, *, rank2: bool, check_values: bool) -> None:
    """Reject input the kernels would silently mis-handle, with a message saying how to fix it."""
    if not isinstance(probs, torch.Tensor):
        raise UsageError(f"probs must be a torch.Tensor, got {type(probs).__name__}")
    if rank2 and probs.dim() != 2:
        raise UsageError(
            f"probs must be 2-D [rows, entries], got shape {tuple(probs.shape)}; "
            "use topp_mask_nd for a leading batch shape [..., entries]"
        )
    if not rank2 and probs.dim() < 1:
        raise UsageError("probs must have at least one dimension (the entries), got a 0-d tensor")
    if not probs.is_floating_point():
        raise UsageError(f"probs must be a floating-point tensor, got dtype {probs.dtype}; convert with .float()")
    if not check_values or probs.numel() == 0:
        return
    # One host sync for all four checks: this runs in decode loops.
    flags = torch.stack(
        [
            torch.isnan(probs).any(),
            (probs < 0).any(),
            torch.isinf(probs).any(),
            ~torch.isfinite(probs.float().sum(-1)).all(),
        ]
    ).tolist()
    if flags[0]:
        raise UsageError("probs contains NaN; check the attention scores that produced it")
    if flags[1]:
        raise UsageError("probs contains negative values; top-p needs non-negative mass (e.g. softmax output)")
    if flags[2]:
        raise UsageError("probs contains inf; pass finite non-negative mass (e.g. softmax output)")
    if flags[3]:
        raise UsageError("a row of probs sums to inf in float32; rescale the rows (e.g. divide by their max)")


# ----------------------------------------------------------------------------------------------
# exact sort-based reference


def topp_mask_torch(probs: torch.Tensor, p: float, *, check: bool = True) -> torch.Tensor:
    """Exact sort-based top-p mask of ``probs`` [R, N] (see the module docstring for the semantics).

    Why it exists: it is the definition the kernel is tested against, and the fallback on devices
    Triton does not serve. Sums are done in float64 so that the reference itself has no near-ties
    to speak of at the sizes it is used for.
    """
    pf = _check_p(p)
    _check_probs(probs, rank2=True, check_values=check)
    if probs.numel() == 0:
        return torch.zeros(probs.shape, dtype=torch.bool, device=probs.device)
    x = probs.to(torch.float64)
    positive = x > 0
    if pf >= 1.0:
        return positive
    total = x.sum(-1, keepdim=True)
    sorted_desc, _ = torch.sort(x, dim=-1, descending=True)
    cum = sorted_desc.cumsum(-1)
    # Index of the first prefix reaching p*T = number of prefixes that fall short (cum is monotone).
    k = (cum < pf * total).sum(-1, keepdim=True)
    # Rounding can leave even the full positive prefix a hair short: then keep all positives.
    n_pos = positive.sum(-1, keepdim=True)
    k = torch.minimum(k, (n_pos - 1).clamp(min=0))
    thr = sorted_desc.gather(-1, k)
    return (x >= thr) & positive & (total > 0)


# ----------------------------------------------------------------------------------------------
# Triton kernel

if _HAVE_TRITON:

    def _topp_kernel(
        x_ptr,
        out_ptr,
        n_cols,
        stride_x,
        stride_out,
        p_hi,
        p_lo,
        lb_scale,
        keep_positive,
        passes_ptr,
        BLOCK_N: tl.constexpr,
        NUM_CAND: tl.constexpr,
        TIGHTEN: tl.constexpr,
        RESIDENT: tl.constexpr,
        MAX_PASSES: tl.constexpr,
        WRITE_PASSES: tl.constexpr,
    ):
        """Write ``x >= t*`` for row ``program_id(0)``; see the module docstring for the algorithm.

        ``p_hi + p_lo`` (two float32, summed in float64) is the acceptance level ``p * (1 + delta)``;
        ``lb_scale`` is ``(1 - p) / 2`` rounded down; ``keep_positive`` is 1 for ``p == 1``.
        ``RESIDENT`` (the row fits one tile) keeps the row in registers, so it is read once in all.
        """
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * stride_x
        out_row = out_ptr + row * stride_out
        offs0 = tl.arange(0, BLOCK_N)
        int_max: tl.constexpr = 2147483647

        # Pass 0: total mass (float64) and the max's bit pattern.
        if RESIDENT:
            xr = tl.load(x_row + offs0, mask=offs0 < n_cols, other=0.0).to(tl.float32)
            xr_bits = xr.to(tl.int32, bitcast=True)
            xr64 = xr.to(tl.float64)
            total = tl.sum(xr64, axis=0)
            hi = tl.max(xr_bits, axis=0)
        else:
            tot_acc = tl.zeros([BLOCK_N], dtype=tl.float64)
            max_acc = tl.full([BLOCK_N], -1, dtype=tl.int32)
            for start in range(0, n_cols, BLOCK_N):
                offs = start + offs0
                x = tl.load(x_row + offs, mask=offs < n_cols, other=0.0).to(tl.float32)
                tot_acc += x.to(tl.float64)
                max_acc = tl.maximum(max_acc, x.to(tl.int32, bitcast=True))
            total = tl.sum(tot_acc, axis=0)
            hi = tl.max(max_acc, axis=0)

        # Lower end: entries below (1-p) T / (2N) hold < (1-p) T, so M(lo) >= p T without computing it.
        lb = (total * lb_scale / n_cols).to(tl.float32)
        lo = tl.maximum(lb.to(tl.int32, bitcast=True), 1)  # 1 = smallest subnormal: "x > 0"
        lo = tl.minimum(lo, hi)
        # p == 1 keeps every positive entry; an all-zero row keeps nothing.
        lo = tl.where(keep_positive != 0, 1, lo)
        hi = tl.where(keep_positive != 0, 1, hi)
        lo = tl.where(total > 0.0, lo, int_max)
        hi = tl.where(total > 0.0, hi, int_max)
        target = total * p_hi + total * p_lo  # float64

        ks = tl.arange(0, NUM_CAND)
        n_pass = 0
        while (lo < hi) & (n_pass < MAX_PASSES):
            span = (hi - lo).to(tl.int64)
            # Candidates strictly inside (lo, hi], evenly spaced in bit space, the last one at most hi.
            step = ((ks + 1).to(tl.int64) * span + NUM_CAND) // (NUM_CAND + 1)
            cand = (lo.to(tl.int64) + step).to(tl.int32)
            if RESIDENT:
                ge = xr_bits[:, None] >= cand[None, :]
                m = tl.sum(tl.where(ge, xr64[:, None], 0.0), axis=0)
                if TIGHTEN:
                    min_ge_k = tl.min(tl.where(ge, xr_bits[:, None], int_max), axis=0)
                    max_lt_k = tl.max(tl.where(ge, -1, xr_bits[:, None]), axis=0)
            else:
                mass = tl.zeros([BLOCK_N, NUM_CAND], dtype=tl.float64)
                if TIGHTEN:
                    min_ge = tl.full([BLOCK_N, NUM_CAND], int_max, dtype=tl.int32)
                    max_lt = tl.full([BLOCK_N, NUM_CAND], -1, dtype=tl.int32)
                for start in range(0, n_cols, BLOCK_N):
                    offs = start + offs0
                    x = tl.load(x_row + offs, mask=offs < n_cols, other=0.0).to(tl.float32)
                    xb = x.to(tl.int32, bitcast=True)
                    ge = xb[:, None] >= cand[None, :]
                    mass += tl.where(ge, x.to(tl.float64)[:, None], 0.0)
                    if TIGHTEN:
                        min_ge = tl.minimum(min_ge, tl.where(ge, xb[:, None], int_max))
                        max_lt = tl.maximum(max_lt, tl.where(ge, -1, xb[:, None]))
                m = tl.sum(mass, axis=0)
                if TIGHTEN:
                    min_ge_k = tl.min(min_ge, axis=0)
                    max_lt_k = tl.max(max_lt, axis=0)
            # First rejected candidate (NUM_CAND if all accepted); its predecessor was accepted.
            j = tl.min(tl.where(m >= target, NUM_CAND, ks), axis=0)
            if TIGHTEN:
                lo_new = tl.max(tl.where(ks == j - 1, min_ge_k, -1), axis=0)
                hi_new = tl.max(tl.where(ks == j, max_lt_k, -1), axis=0)
            else:
                lo_new = tl.max(tl.where(ks == j - 1, cand, -1), axis=0)
                hi_new = tl.max(tl.where(ks == j, cand - 1, -1), axis=0)
            lo = tl.where(j > 0, lo_new, lo)
            hi = tl.where(j < NUM_CAND, hi_new, hi)
            n_pass += 1
        if WRITE_PASSES:
            tl.store(passes_ptr + row, n_pass)

        # lo is an accepted threshold (or the a-priori valid lower end), so the kept mass reaches p.
        if RESIDENT:
            tl.store(out_row + offs0, (xr_bits >= lo).to(tl.uint8), mask=offs0 < n_cols)
        else:
            for start in range(0, n_cols, BLOCK_N):
                offs = start + offs0
                x = tl.load(x_row + offs, mask=offs < n_cols, other=0.0).to(tl.float32)
                keep = x.to(tl.int32, bitcast=True) >= lo
                tl.store(out_row + offs, keep.to(tl.uint8), mask=offs < n_cols)

else:  # pragma: no cover
    _topp_kernel = None


_KERNEL_CACHE: dict[str, Any] = {}


def interpreter_enabled() -> bool:
    """Whether Triton runs in interpreter mode (CPU emulation) in this process.

    Triton fixes the mode when it is first imported, from ``TRITON_INTERPRET``: its own library
    functions (``tl.zeros``, ``tl.sum``...) are then either compiled or interpreted. So the mode is read
    off the imported library, not from the environment, which may have changed since.
    """
    if not _HAVE_TRITON:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.zeros, InterpretedFunction)


def _kernel() -> Callable[..., Any]:
    """The kernel, wrapped for the mode Triton was imported in.

    Why not ``@triton.jit`` at module level: that reads the environment when this module is imported,
    which can disagree with the mode Triton itself was imported in (the interpreter then fails on
    compiled library functions); wrapping explicitly, lazily, follows the library's mode.
    """
    if "kernel" not in _KERNEL_CACHE:
        if interpreter_enabled():
            from triton.runtime.interpreter import InterpretedFunction

            _KERNEL_CACHE["kernel"] = InterpretedFunction(_topp_kernel)
        else:
            from triton.runtime.jit import JITFunction

            _KERNEL_CACHE["kernel"] = JITFunction(_topp_kernel)
    return _KERNEL_CACHE["kernel"]


def triton_usable(device: torch.device | str) -> bool:
    """Whether ``backend="auto"`` would run the Triton kernel on ``device``.

    CUDA tensors need only Triton; CPU tensors need Triton imported in interpreter mode
    (``TRITON_INTERPRET=1`` set before the first ``import triton``), which is a correctness tool at
    roughly milliseconds per row, so auto never picks it unless asked for that way.
    """
    dev = torch.device(device)
    if not _HAVE_TRITON:
        return False
    if dev.type == "cuda":
        return True
    return dev.type == "cpu" and interpreter_enabled()


def _f32_up(v: float) -> float:
    """``v`` rounded up to a float32, so that a float32 kernel argument is never below ``v``."""
    f = np.float32(v)
    if float(f) < v:
        f = np.nextafter(f, np.float32(np.inf))
    return float(f)


def _f32_down(v: float) -> float:
    """``v`` rounded down to a float32, so that a float32 kernel argument is never above ``v``."""
    f = np.float32(v)
    if float(f) > v:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def _acceptance_level(p: float, block_n: int, tiles: int) -> tuple[float, float]:
    """``p * (1 + delta)`` as two float32 whose float64 sum is never below it.

    Why: Triton passes Python floats as float32, whose rounding (6e-8) would swamp the float64
    sums' error bound. ``delta`` bounds the relative error of the kernel's float64 sums of M(c) and T
    (per lane one add per tile, then a reduction over BLOCK_N lanes): a = (tiles + BLOCK_N) * 2**-53,
    and M_c >= p (1 + delta) T_c implies M >= p T in exact arithmetic when delta >= 2a + O(a^2).
    """
    a = (tiles + block_n) * 2.0**-53
    level = p * (1.0 + 2.0 * a + 16 * 2.0**-53) + 2.0**-50  # 2**-50 covers the hi/lo split below
    hi = float(np.float32(level))
    lo = _f32_up(level - hi)  # level - hi is exact in float64 (Sterbenz)
    return hi, lo


#: Rows up to this length are held in registers (read from memory once); longer rows are streamed,
#: one read per search pass. At 32K (64 values a thread over 16 warps) the resident kernel measured
#: slower than streaming on an H200 (139 vs 102 us for 32 rows), so the cut is 16K.
RESIDENT_MAX = 16384


def default_config(n_cols: int) -> dict[str, int | bool]:
    """Kernel configuration used for rows of ``n_cols`` entries.

    Chosen from sweeps on an H200 (32 rows, fp32, softmax(2 * randn), p = 0.9, CUDA-graph replays,
    L2 flushed): register-resident rows of 4K-16K do best with one candidate per pass and no
    tightening (each pass is one float64 sum over registers, about 1 us, so ~27 cheap passes beat
    ~14 passes with three reductions each); below that all variants are within ~2 us of each other,
    dominated by the first read; streamed rows, where every pass re-reads the row, do best with two
    candidates, tightening and 4K tiles over 16 warps (fewest passes).
    """
    if n_cols <= 2048:
        block = triton.next_power_of_2(max(n_cols, 16))
        return dict(block_n=block, num_candidates=2, num_warps=4, tighten=True)
    if n_cols <= RESIDENT_MAX:
        block = triton.next_power_of_2(n_cols)
        return dict(block_n=block, num_candidates=1, num_warps=max(4, min(16, block // 1024)), tighten=False)
    return dict(block_n=4096, num_candidates=2, num_warps=16, tighten=True)


def topp_mask_triton(
    probs: torch.Tensor,
    p: float,
    *,
    check: bool = True,
    block_n: int | None = None,
    num_candidates: int | None = None,
    num_warps: int | None = None,
    tighten: bool | None = None,
    passes_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Top-p keep-mask of ``probs`` [R, N] with the sorting-free Triton kernel (one program per row).

    Runs compiled on CUDA tensors and under Triton's interpreter on CPU tensors. ``check=False`` skips
    the value checks (NaN, negatives, inf), which cost a host sync; do that only on trusted input.
    ``block_n`` (power of two), ``num_candidates`` (power of two: thresholds tried per pass),
    ``num_warps`` and ``tighten`` are tuning knobs for benchmarks; the defaults suit most shapes.
    ``passes_out``, an int32 tensor [R] on the same device, receives each row's number of search
    passes (each one read of the row), for benchmarks and tests of the pass bound.
    """
    if not _HAVE_TRITON:
        raise UsageError("topp_mask_triton needs triton; install it (pip install 'sparsebench[triton]') "
                         "or use backend='torch'")
    pf = _check_p(p)
    _check_probs(probs, rank2=True, check_values=check)
    if probs.dtype not in _KERNEL_DTYPES:
        raise UsageError(f"the Triton top-p kernel takes float32, bfloat16 or float16, got {probs.dtype}; "
                         "convert with .float() or use backend='torch'")
    rows, n_cols = probs.shape
    if n_cols >= 2**31:
        raise UsageError(f"rows of {n_cols} entries are too long for the kernel (limit 2**31 - 1)")
    cfg = default_config(n_cols)
    block = int(cfg["block_n"] if block_n is None else block_n)
    cand = int(cfg["num_candidates"] if num_candidates is None else num_candidates)
    warps = int(cfg["num_warps"] if num_warps is None else num_warps)
    tighten = bool(cfg["tighten"] if tighten is None else tighten)
    for name, v in (("block_n", block), ("num_candidates", cand), ("num_warps", warps)):
        if v < 1 or v & (v - 1):
            raise UsageError(f"{name} must be a power of two, got {v}")
    if passes_out is not None and (
        tuple(passes_out.shape) != (rows,) or passes_out.dtype != torch.int32 or passes_out.device != probs.device
    ):
        raise UsageError(f"passes_out must be an int32 tensor of shape ({rows},) on {probs.device}")
    if not triton_usable(probs.device):
        raise UsageError(
            f"the Triton top-p kernel runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was "
            f"set before triton was first imported; got a {probs.device} tensor: use backend='torch'"
        )
    if rows == 0 or n_cols == 0:
        return torch.zeros(probs.shape, dtype=torch.bool, device=probs.device)
    x = probs if probs.stride(-1) == 1 else probs.contiguous()
    out = torch.empty((rows, n_cols), dtype=torch.uint8, device=probs.device)
    tiles = -(-n_cols // block)
    p_hi, p_lo = _acceptance_level(pf, block, tiles)
    _kernel()[(rows,)](
        x, out, n_cols, x.stride(0), out.stride(0), p_hi, p_lo, _f32_down((1.0 - pf) / 2.0), int(pf >= 1.0),
        out if passes_out is None else passes_out,
        BLOCK_N=block, NUM_CAND=cand, TIGHTEN=tighten, RESIDENT=tiles == 1, MAX_PASSES=_MAX_PASSES,
        WRITE_PASSES=passes_out is not None, num_warps=warps,
    )
    return out.view(torch.bool)


# ----------------------------------------------------------------------------------------------
# dispatch


def topp_mask(probs: torch.Tensor, p: float, backend: Backend = "auto", *, check: bool = True) -> torch.Tensor:
    """Top-p keep-mask of ``probs`` [R, N]: per row the smallest set ``{x >= t}`` holding ``p`` of the mass.

    ``backend="auto"`` uses the Triton kernel where :func:`triton_usable` says so and the dtype suits
    it, else the exact torch reference. Both follow the semantics in the module docstring.
    """
    if backend not in ("auto", "triton", "torch"):
        raise UsageError(f"unknown top-p backend {backend!r}; choose 'auto', 'triton' or 'torch'")
    if backend == "auto":
        use_triton = (
            isinstance(probs, torch.Tensor) and triton_usable(probs.device) and probs.dtype in _KERNEL_DTYPES
        )
        backend = "triton" if use_triton else "torch"
    if backend == "triton":
        return topp_mask_triton(probs, p, check=check)
    return topp_mask_torch(probs, p, check=check)


def topp_mask_nd(probs: torch.Tensor, p: float, backend: Backend = "auto", *, check: bool = True) -> torch.Tensor:
    """:func:`topp_mask` over the last dimension of ``probs`` [..., N] (e.g. [batch, heads, blocks]).

    Why a separate entry point: the 2-D function rejects other ranks so that a transposed or
    mis-shaped score tensor is caught; this one states that a leading batch shape is intended.
    """
    _check_probs(probs, rank2=False, check_values=False)
    if probs.dim() == 2:
        return topp_mask(probs, p, backend, check=check)
    lead, n_cols = tuple(probs.shape[:-1]), probs.shape[-1]
    flat = probs.reshape(math.prod(lead), n_cols)
    return topp_mask(flat, p, backend, check=check).reshape(*lead, n_cols)
