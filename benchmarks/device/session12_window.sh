#!/usr/bin/env bash
# Session 12, on branch topp-window: the CUDA top-p with the first pass's window (bins over [base, max], base half the
# (1 - p) T / n lower bound of the threshold) and vector loads and stores of 4 entries in one CTA.
# Call 1 (results window1/): the window as prepared in session 11 was slower at the benchmark's peakedness (entries
# under base, a fifth of them, added to one shared word; its load phase was also longer, with a bounds branch a
# vector group).
# Call 2 (window2/): bin 0 summed in registers and once a warp; one uniform vector branch. Kernels compared: main's
# ("old", an untracked copy in old_kernel/), call 2's without vectors ("novec", var_novec/: VEC forced to 1), call 2's.
# Call 3 (window3/): the vectors dropped (no gain in call 2); in one CTA the warps' bin-0 sums go to shared slots
# that bin 0's owner adds up (no atomics on one word); the window only in shapes of at most 512 threads (1024-thread
# shapes spilled with it). Kernels: old, novec (call 2's kernel without vectors, kept in var_novec/), this one.
# Call 4 (window4/): the first pass without an if / else an entry (predicated adds, one atomic branch). Kernels: old,
# slots (call 3's kernel, copied to var_slots/), this one.
#   git show main:sparsebench/kernels/cuda_topp.py > old_kernel/cuda_topp.py   (and nvrtc.py likewise)
#   mkdir var_novec && cp sparsebench/kernels/nvrtc.py var_novec/ && sed 's/^#if CLUSTER == 1 && ITEMS % 4 == 0$/#if 0/;
#     s/^#elif CLUSTER == 1 && ITEMS % 2 == 0$/#elif 0/' sparsebench/kernels/cuda_topp.py > var_novec/cuda_topp.py
#   bash benchmarks/device/session12_window.sh
R=/tmp/s12w TESTS="tests/test_topp.py tests/test_specattn.py -k \"cuda or auto or gpu or aligned\"" \
  TIMELINE=1 TIMELINE_ARGS="--temperature 2.0" VARIANTS="old=old_kernel slots=var_slots" \
  bash benchmarks/device/topp_ab.sh
