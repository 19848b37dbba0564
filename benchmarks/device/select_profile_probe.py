"""Launch Quest's selection kernels (scoring at 32K/128K, the fused top-k + lists) and the top-p kernel a few
times each: a target for Nsight Compute, to see where a selection's time goes.

  ncu --kernel-name regex:'_topk_kernel|_score_kernel|_topp_kernel' --section SpeedOfLight \
      --section WarpStateStats python3 benchmarks/device/select_profile_probe.py
"""

import torch

from sparsebench.bench.attention import make_problem, parse_args
from sparsebench.kernels.quest_kernels import quest_scores
from sparsebench.kernels.topk import topk_select
from sparsebench.kernels.topp import topp_mask_triton

args = parse_args(["--out", "/tmp/probe"])
for n_tokens in (32768, 131072):
    pb = make_problem(n_tokens, args, "cuda", torch.Generator().manual_seed(0))
    k = round(args.keep * pb.n_blocks)
    for _ in range(2):
        topk_select(quest_scores(pb.q, pb.key_min, pb.key_max, "max"), k)
gen = torch.Generator().manual_seed(1)
probs = torch.softmax(2 * torch.randn(32, 1024, generator=gen), -1).cuda()
for _ in range(2):
    topp_mask_triton(probs, 0.9, check=False)
torch.cuda.synchronize()
