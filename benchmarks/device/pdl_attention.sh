#!/usr/bin/env bash
# Programmatic dependent launch for the Triton decode kernels (KernelConfig(pdl=True)) on the H200, one call:
#   bash benchmarks/device/pdl_attention.sh   (writes under $OUT)
# 1. GPU tests of the PDL path (eager and in a CUDA graph) and of the graph replays.
# 2. `bench attention` at 8K/32K/128K, L2 flushed by reading, without and with `--triton-config pdl=1`,
#    one layer per replay and four (--layers 4).
. benchmarks/device/device_env.sh $OUT/env.txt
timeout 150 python3 -m pytest -q -x -p no:cacheprovider -m gpu tests/test_triton_backend.py \
  -k "programmatic or graph_replay" > $OUT/gpu_tests.txt 2>&1
rc=$?; echo "tests rc $rc"; tail -3 $OUT/gpu_tests.txt
[ $rc -eq 0 ] || exit 1
for layers in 1 4; do
  for pdl in 0 1; do
    cfg=""; [ $pdl -eq 1 ] && cfg="--triton-config pdl=1"
    d=$OUT/l${layers}_pdl${pdl}; mkdir -p $d
    timeout 110 python3 -m sparsebench.cli bench attention --out $d --contexts 8192,32768,131072 \
      --methods triton-indices --selections topk-fused,topk-layers --repeats 50 --flush read --layers $layers \
      $cfg > $d/log.txt 2>&1
    echo "layers $layers pdl $pdl rc $?"
    grep -E "^\| [0-9]" $d/bench_attention.md | grep -E "tensor cores|topk" | grep -v "^| [0-9]* | topk" | cut -c1-150
  done
done
