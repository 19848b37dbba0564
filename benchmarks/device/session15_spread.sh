#!/usr/bin/env bash
# Session 15, last call (a fresh machine start): the attention step at 8K / 32K / 128K three times (top-k over every
# layer, read flush, default configuration), for the run-to-run and start-to-start spread at 128K.
R=${R:-/tmp/s15spread}; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
. benchmarks/device/attention_rounds.sh
attention_rounds $R 3 topk-layers
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
