"""KV reduction of the length-only policies (Quest, StreamingLLM) as a function of their budget fraction.

Why: matching Quest's and StreamingLLM's budgets to SpecAttn's measured KV reduction (`compare
--match-kv-reduction`) bisects by running the model several times per policy. Their reads depend only on
the lengths (sequence length, prefill share, block size, dense layers), not on the model's weights or the
text: each keeps a number of blocks computed from the context length. So the curve can be measured once on
a tiny random model on the CPU and read off for any model with the same lengths; the runs that use it
report the reduction they actually reached next to the one they aimed for.

    PYTHONPATH=$PWD python3 benchmarks/length_budget_table.py --out benchmarks/results/length_budget_2048.json
    PYTHONPATH=$PWD python3 benchmarks/length_budget_table.py --lookup FILE --reduction 0.62   # prints budgets

Defaults: PG-19 offline, 1 document, 2048 tokens, prefill 0.1, block 16, 2 dense layers, tiny:llama, CPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from sparsebench.config import RunConfig
from sparsebench.runner import run_evaluation

POLICIES = {"quest": "budget_frac", "streamingllm": "window_frac"}


def measure(args: argparse.Namespace) -> dict:
    grid = [round(args.start + i * args.step, 6) for i in range(round((args.stop - args.start) / args.step) + 1)]
    table: dict = {"lengths": dict(seq_len=args.seq_len, prefill_frac=args.prefill_frac, block_size=args.block_size,
                                   dense_layers=args.dense_layers),
                   "model": args.model, "docs": 1, "curves": {}}
    for policy, param in POLICIES.items():
        points = []
        for frac in grid:
            cfg = RunConfig(policy=policy, policy_params={param: frac}, model=args.model, dataset="pg19",
                            data_source="offline", docs=1, seq_len=args.seq_len, prefill_frac=args.prefill_frac,
                            block_size=args.block_size, dense_layers=args.dense_layers, device="cpu")
            reduction = run_evaluation(cfg, progress=False, log=lambda m: None).aggregate()["kv_reduction_sparse"]
            points.append([frac, reduction])
            print(f"{policy} {param}={frac}: KV reduction {100 * reduction:.2f}%", flush=True)
        table["curves"][policy] = {"param": param, "points": points}
    return table


def budget_for(table: dict, policy: str, reduction: float) -> float:
    """The budget fraction whose reduction is ``reduction``, by linear interpolation (reduction falls as the
    fraction grows); clamped to the measured range."""
    points = sorted(table["curves"][policy]["points"])
    for (f0, r0), (f1, r1) in itertools.pairwise(points):
        if r1 <= reduction <= r0:
            return f0 if r0 == r1 else round(f0 + (r0 - reduction) / (r0 - r1) * (f1 - f0), 4)
    return points[0][0] if reduction > points[0][1] else points[-1][0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--lookup", type=Path, help="a table written by --out: print budgets for --reduction")
    ap.add_argument("--reduction", type=float)
    ap.add_argument("--model", default="tiny:llama")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--prefill-frac", type=float, default=0.1)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--dense-layers", type=int, default=2)
    ap.add_argument("--start", type=float, default=0.1)
    ap.add_argument("--stop", type=float, default=0.6)
    ap.add_argument("--step", type=float, default=0.025)
    args = ap.parse_args()
    if args.lookup:
        if args.reduction is None:
            sys.exit("--lookup needs --reduction (a fraction, e.g. 0.62)")
        table = json.loads(args.lookup.read_text())
        print(" ".join(f"{p}:{c['param']}={budget_for(table, p, args.reduction)}" for p, c in table["curves"].items()))
        return
    if args.out is None:
        sys.exit("give --out FILE (measure) or --lookup FILE --reduction R")
    table = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
