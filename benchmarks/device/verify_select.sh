#!/usr/bin/env bash
# The fused verification selection (sparsebench/kernels/verify_select.py) on the GPU, then the Table 2 analog again.
#
#   OUT=/path bash benchmarks/device/verify_select.sh "$OUT"
#
# 1. GPU tests (tests/test_verify_select.py -k gpu): the kernel at the 8B verification shape (5 rows, 32 draft
#    heads, 8 kv heads, 2048/2049/8192/8193 blocks, p 0.9 and 0.97) against the torch reference, CUDA-graph
#    replays on fresh inputs, and the speculator with and without the fused path (same tokens, same KV reads;
#    the unfused path runs the refactored top-p kernel compiled, so this also checks topp.py's refactor).
# 2. Micro-benchmark (micro.txt): µs per layer of the selection + plan at 32K and 128K context (2049 and 8193
#    blocks), the previous pipeline (mask, SpecAttn.select with the top-p kernel, row limits, transpose,
#    compaction in plan) against the fused kernel (default launch and twice the candidates), 30 layers per CUDA
#    graph, median of 20 replays, and one launch for all 15 draft-layer slots (verify_select_slots, what the
#    speculator now runs) followed by 30 plans; and whether the pipelines select the same blocks.
# 3. bench specdec with exactly specdec_bench.sh's arguments (both source specdec_random.sh) (SpecAttn rows now use the fused
#    selection: compare the "select" column with benchmarks/results/h200_2026-11-28_s3/bench_specdec_random.md).
# Needs python3 with CUDA torch + triton. Budget: under 4 minutes (timeouts 45 + 25 + 165 s).
# Writes 6 files under OUT (one level of folders): gpu.txt, gpu_tests.txt, micro.txt, random.log,
# random/bench_specdec.{json,md}.
set -uo pipefail
out=${1:?usage: verify_select.sh OUTDIR}
mkdir -p "$out/random"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1
timeout 45 python3 -m pytest -q -rs -p no:cacheprovider tests/test_verify_select.py -k gpu 2>&1 | tail -25 \
  > "$out/gpu_tests.txt"
cat "$out/gpu_tests.txt"
timeout 25 python3 - > "$out/micro.txt" 2>&1 <<'EOF'
import statistics

import torch

from sparsebench.kernels.capture import capture
from sparsebench.kernels.triton_backend import TritonBackend
from sparsebench.kernels.verify_select import VerifySelectConfig, default_config, verify_select, verify_select_slots
from sparsebench.policies import SpecAttn
from sparsebench.policy import SelectionContext
from sparsebench.selection import Selection

R, H, HKV, LAYERS, SLOTS, BS, P = 5, 32, 8, 30, 15, 16, 0.97  # 30 sparse target layers over 15 draft layers
backend, policy = TritonBackend(), SpecAttn(p=P)
for context in (32768, 131072):
    n = -(-(context + R) // BS)
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows_mass = torch.softmax(torch.randn(R, SLOTS, 1, H, n, device="cuda", generator=gen) * 4, -1)  # speculator's
    rb = torch.div(torch.arange(R, device="cuda") + context + BS, BS, rounding_mode="floor")
    mb = rb.clone()
    mb[-1] = rb[-2]  # --last-row reuse
    blocks = torch.arange(n, device="cuda").view(1, 1, n)
    valid, newest, mass_valid = blocks < rb.view(R, 1, 1), blocks == rb.view(R, 1, 1) - 1, blocks < mb.view(R, 1, 1)
    query = torch.zeros(R, H, 1, 128, device="cuda")

    def previous():
        for _ in range(LAYERS):
            ctx = SelectionContext(layer=2, query=query, n_tokens=context + R, block_size=BS, n_blocks=n,
                                   num_kv_heads=HKV, scaling=1.0, step=0,
                                   draft_attention=rows_mass[:, 1, 0].masked_fill(~mass_valid, 0.0))
            mask = (policy.select(ctx).mask & valid) | newest
            plan = backend.plan(Selection(mask.transpose(0, 1).unsqueeze(0)), block_size=BS, n_tokens=n * BS)
        return plan

    def fused(cfg):
        def run():
            for _ in range(LAYERS):
                sel = verify_select(rows_mass[:, 1, 0], rb, P, num_kv_heads=HKV, mass_blocks=mb, config=cfg)
                plan = backend.plan(sel, block_size=BS, n_tokens=n * BS)
            return plan
        return run

    def slots():  # one launch for every slot, then each layer plans its slot's selection (what the speculator does)
        sels = verify_select_slots(rows_mass[:, :, 0], rb, P, num_kv_heads=HKV, mass_blocks=mb)
        for layer in range(LAYERS):
            plan = backend.plan(sels[layer % SLOTS], block_size=BS, n_tokens=n * BS)
        return plan

    base = default_config(n)
    variants = {"previous pipeline": previous, f"fused {base}": fused(None),
                "fused, 2x candidates": fused(VerifySelectConfig(base.num_warps, 2 * base.num_candidates)),
                f"one launch for {SLOTS} slots, {LAYERS} plans": slots}
    for name, fn in variants.items():
        graph, _ = capture(fn)
        for _ in range(3):
            graph.replay()
        times = []
        for _ in range(20):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            graph.replay()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) * 1000.0 / LAYERS)
        print(f"context {context} ({n} blocks): {name}: {statistics.median(times):.1f} us per layer", flush=True)
    old, new = previous(), fused(None)()
    same = torch.equal(old.selection.mask, new.selection.mask)
    lists = bool((old.counts == new.counts).all()) and all(
        torch.equal(old.indices[0, h, : old.counts[0, h]], new.indices[0, h, : new.counts[0, h]]) for h in range(HKV))
    one = verify_select_slots(rows_mass[:, :, 0], rb, P, num_kv_heads=HKV, mass_blocks=mb)[1]
    lists = lists and torch.equal(one.mask, new.selection.mask) and torch.equal(one.counts, new.counts)
    kept = new.counts.float().mean().item() / n
    print(f"context {context}: same bitmaps {same}, same union lists {lists}, union keeps {kept:.1%} of blocks",
          flush=True)
EOF
cat "$out/micro.txt"
source benchmarks/device/specdec_random.sh
specdec_random "$out" 165
