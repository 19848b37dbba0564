"""Nsight Compute warp-state samples of one kernel, summed over the stretches of SASS between executed block barriers.

Why: the source page (``ncu -i REP --page source --csv --print-source sass``) lists thousands of instructions; the
grid top-p kernel's phases are separated by ``BAR.SYNC``, so per-stretch sums say which phase the warps spend their
time in and why (a warp waiting at a barrier is sampled on the instruction after it, so a barrier's wait shows in the
stretch that follows it).

    python3 benchmarks/device/ncu_segments.py SASS.csv > segments.txt
"""

from __future__ import annotations

import csv
import sys

#: Operations listed per stretch (memory, barriers, warp-wide, float64, bit counts): enough to tell the phases apart.
NOTABLE_OPS = ("ATOMS", "ATOMG", "RED", "SHFL", "LDG", "STG", "LDS", "STS", "BAR", "CCTL", "MEMBAR", "VOTE", "REDUX",
              "DADD", "DMUL", "DFMA", "F2I", "I2F", "POPC", "FLO", "LDGSTS")


def _int(v: str) -> int:
    return int(v) if v.isdigit() else 0


def main(path: str) -> None:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    hdr, data = rows[1], rows[2:]
    src, executed = hdr.index("Source"), hdr.index("Instructions Executed")
    samples = hdr.index("Warp Stall Sampling (All Samples)")
    stalls = [(i, c[len("stall_"):]) for i, c in enumerate(hdr) if c.startswith("stall_") and "Not Issued" not in c]
    total = sum(_int(r[samples]) for r in data)
    print(f"{path}: {len(data)} instructions, {total} samples")
    print("| SASS lines | samples | share | instructions executed | notable ops | top stall reasons |")
    print("|---|---:|---:|---:|---|---|")
    start, acc, ops, why, ex = 0, 0, set(), {}, 0
    for k, r in enumerate(data):
        text = r[src].strip()
        acc += _int(r[samples])
        ex += _int(r[executed])
        for i, name in stalls:
            why[name] = why.get(name, 0) + _int(r[i])
        op = (text.split()[1] if text.startswith("@") else text.split()[0]).split(".")[0] if text else ""
        if op in NOTABLE_OPS:
            ops.add(op)
        if ("BAR.SYNC" in text and _int(r[executed]) > 0) or k == len(data) - 1:
            top = ", ".join(f"{n} {v}" for n, v in sorted(why.items(), key=lambda x: -x[1])[:4] if v)
            share = 100 * acc / max(total, 1)
            print(f"| {start}-{k} | {acc} | {share:.1f}% | {ex} | {' '.join(sorted(ops))} | {top} |")
            start, acc, ops, why, ex = k + 1, 0, set(), {}, 0


if __name__ == "__main__":
    main(sys.argv[1])
