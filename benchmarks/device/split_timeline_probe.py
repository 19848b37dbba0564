"""When does each program of the 128K split kernel start and finish? A timeline from the GPU's global timer.

Why: the split kernel reads 118 MB at 128K in 35.9 µs (3.3 TB/s) while its marginal speed between 32K and 128K is
about 4.4 TB/s, so several µs of the step are not spent streaming. They are either at the start (launch, the first
dependent loads: counts, block ids, then K), or at the end (programs finishing at different times, the grid waiting
for its slowest). The split kernel's loop rebuilt in ``gather_bandwidth_probe._attend`` (35.6 µs, the same speed)
records each program's start and end with ``%globaltimer``; this probe runs it after an L2 flush and reports, per
run, the kernel's span, how spread the starts and ends are, and the programs' own durations.

    python3 benchmarks/device/split_timeline_probe.py --out DIR
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable

import torch
from gather_bandwidth_probe import _attend
from probe_inputs import _flush_buffer, decode_problem, probe_args

from sparsebench.bench.common import save_probe

#: Runs per configuration; each is one launch after a flush, its timeline read back.
RUNS = 20


def timeline(fn: Callable[[], None], times: torch.Tensor, raw: list | None = None) -> dict[str, float]:
    """One flushed launch of ``fn`` (which writes ``times`` [programs, 3]); its spans in µs from the first start.
    ``raw`` gets each program's (start µs, end µs, multiprocessor), programs in (kv head, split) order."""
    _flush_buffer().sum()
    fn()
    torch.cuda.synchronize()
    t = times.cpu().double()
    start, end = t[:, 0], t[:, 1]
    t0 = float(start.min())
    dur = (end - start) / 1e3
    ends = ((end - t0) / 1e3).sort().values
    if raw is not None:
        raw.append([[round((a - t0) / 1e3, 3), round((b - t0) / 1e3, 3), int(sm)] for a, b, sm in t.tolist()])
    return dict(span=float(end.max() - t0) / 1e3, last_start=float(start.max() - t0) / 1e3,
                first_end=float(ends[0]), end_p10=float(ends[int(0.1 * len(ends))]),
                end_p50=float(ends[len(ends) // 2]), end_p90=float(ends[int(0.9 * len(ends))]),
                dur_min=float(dur.min()), dur_med=float(dur.median()), dur_max=float(dur.max()),
                programs_per_sm=float(torch.bincount(t[:, 2].long()).max()))


def slow_programs(raw: list, splits: int) -> str:
    """Is a program's duration a property of its place (multiprocessor, split, kv head) or of the run? The
    correlation, over programs, of each program's duration in one run with its duration in the next run, and the
    durations averaged over runs per multiprocessor, split and head (their spread: max - min, µs)."""
    dur = torch.tensor([[b - a for a, b, _ in run] for run in raw])  # [runs, programs]
    sms = torch.tensor([[sm for _, _, sm in run] for run in raw])
    a, b = dur[:-1] - dur[:-1].mean(1, keepdim=True), dur[1:] - dur[1:].mean(1, keepdim=True)
    corr = float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean())
    split = torch.arange(dur.shape[1]) % splits
    head = torch.arange(dur.shape[1]) // splits

    def spread(key: torch.Tensor) -> float:
        means = [float(dur[key == k].mean()) for k in key.unique()]
        return max(means) - min(means)

    return (f"run-to-run duration correlation {corr:.2f}; spread of mean duration by SM {spread(sms):.2f}, "
            f"by split {spread(split.expand_as(dur)):.2f}, by head {spread(head.expand_as(dur)):.2f} µs")


def main() -> None:
    args = probe_args(__doc__)
    dev, bs, group = "cuda", 16, 4
    rows = []
    for n_tokens in (int(c) for c in args.contexts.split(",")):
        pb, _, idx, cnt = decode_problem(n_tokens, device=dev)
        hkv, d = pb.k.shape[1], pb.k.shape[-1]
        k, v = pb.k[0].contiguous(), pb.v[0].contiguous()  # [Hkv, T, D], as _attend addresses them
        q = pb.q[0, :, 0].contiguous()  # [Hq, D]: group-major, as _attend reads them
        for splits in (33, 66):
            out = torch.empty(hkv * splits * 16, d, device=dev)
            times = torch.zeros(hkv * splits, 3, dtype=torch.int64, device=dev)
            for math in (False, True):
                launch = functools.partial(
                    _attend[(hkv, splits)], q, k, v, idx, cnt, out, n_tokens, idx.shape[-1], d**-0.5 * 1.4427, BS=bs,
                    D=d, BPT=4, GROUP=group, PREFETCH=True, MATH=math, times_ptr=times, TIMES=True, num_warps=4,
                    num_stages=3)
                launch()  # compile
                raw: list = []
                runs = [timeline(launch, times, raw if math and splits == 33 else None) for _ in range(RUNS)]
                summary = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                rows.append(dict(context=n_tokens, splits=splits, loop="math" if math else "copy", runs=runs,
                                 programs=raw, **summary))
                print(f"{n_tokens:>7} splits {splits:>2} {'math' if math else 'copy'}: " + ", ".join(
                    f"{key} {val:.2f}" for key, val in summary.items()), flush=True)
                if raw:
                    print(f"        {slow_programs(raw, splits)}", flush=True)
    save_probe(args.out, "split_timeline.json", rows,
               "one launch after reading 256 MB, %globaltimer at each program's start and end (µs from the first "
               "start), median over 20 runs; 22% of 16-token blocks, 8 kv heads x 128, bf16, 4 blocks a tile, "
               "3 stages, 4 warps")


if __name__ == "__main__":
    main()
