"""Every NVRTC-compiled CUDA kernel compiles for sm_90, on a machine without a GPU.

Why: the device compiles these sources only at their first launch, so a syntax error, a bad inline-PTX operand or a
shared-memory overflow would otherwise first show up as a failed GPU run. The ``nvidia-cuda-nvrtc-cu12`` wheel (a dev
dependency) brings NVRTC with ``ptxas``; without it these tests skip. What is compiled: the launch shapes the
wrappers pick for a spread of row lengths (with and without thread-block clusters for top-p), every input dtype, and
the decode kernel's head dims, groups and tiles.
"""

from __future__ import annotations

import itertools
import re

import pytest

from sparsebench.kernels import cuda_decode, cuda_topk, cuda_topp, cuda_topp_grid, cuda_topp_short
from sparsebench.kernels.compile_check import nvdisasm_path, nvrtc_compile, nvrtc_library, nvrtc_sass

pytestmark = pytest.mark.skipif(nvrtc_library() is None, reason="needs NVRTC: pip install nvidia-cuda-nvrtc-cu12")

#: Static shared memory a CTA may declare.
STATIC_SMEM = 48 * 1024
#: Shared memory a CTA may opt in to on an H200 (compute capability 9.0): 227 KB.
H200_SMEM_OPTIN = 227 * 1024


def compiled(source: str, **kw: object) -> str:
    log = nvrtc_compile(source, **kw)  # type: ignore[arg-type]
    smem = [int(m) for m in re.findall(r"(\d+) bytes smem", log)]
    assert max(smem, default=0) <= STATIC_SMEM, log  # kernels with only dynamic shared memory print none
    return log


@pytest.mark.parametrize("n", [1, 1000, 8192, 32768, 65536, 262144])
def test_topp_launch_shapes_compile(n: int) -> None:
    """The shape :func:`cuda_topp.launch_shape` picks for rows of ``n`` (one CTA a row where it fits, and the
    cluster it uses beyond), in every dtype, with and without the passes output, with the entries where the launch
    keeps them (registers or shared memory); the static shared memory leaves the entries room on an H200."""
    for clusters in (False, True):
        if n > cuda_topp.max_row(clusters):
            continue
        threads, items, cluster = cuda_topp.launch_shape(n, clusters)
        assert cuda_topp.check_shape(n, threads, cuda_topp.DEFAULT_BINS, cluster) is None
        smem_keys = cuda_topp.keys_in_shared(threads, items)
        for dtype_code, passes in itertools.product((0, 1, 2), (False, True)):
            compiled(cuda_topp.source(items=items, dtype_code=dtype_code, write_passes=passes, threads=threads,
                                      cluster=cluster, smem_keys=smem_keys,
                                      pairwise=cuda_topp.pairwise_max(n, threads)))
        assert STATIC_SMEM == cuda_topp._STATIC_SMEM  # the bound the launch assumes is the one checked here
        assert not smem_keys or cuda_topp.keys_bytes(items, threads) <= H200_SMEM_OPTIN - STATIC_SMEM


@pytest.mark.parametrize("cluster", [2, 3, 4, 8])
def test_topp_cluster_shapes_compile(cluster: int) -> None:
    """Clusters at the extremes of ``check_shape``: the fewest bins (one range of bins a CTA), 64 threads (one a
    pairwise candidate) and 1024 threads; three CTAs (bins not divisible among them) with 43 entries a thread in
    shared memory, the shape 32 rows of 128K take."""
    fewest_bins = 1 << (cluster - 1).bit_length()  # a power of two, at least one a CTA
    shapes = [(64, fewest_bins, 4), (512, 2048, 8), (1024, 1024, 4)] + ([(1024, 2048, 43)] if cluster == 3 else [])
    for threads, bins, items in shapes:
        n = cluster * threads * items
        assert cuda_topp.check_shape(n, threads, bins, cluster) is None
        compiled(cuda_topp.source(items=items, dtype_code=0, write_passes=True, bins=bins, threads=threads,
                                  cluster=cluster, smem_keys=cuda_topp.keys_in_shared(threads, items),
                                  pairwise=cuda_topp.pairwise_max(n, threads)))


def test_topp_grid_sources_compile() -> None:
    """The grid top-p kernel (:mod:`cuda_topp_grid`) in the shapes its launch picks (512 and 1024 threads) and the
    probe's (uneven CTAs a row, the phase timeline), every dtype; its static shared memory leaves a full slice room
    on an H200."""
    for (threads, ctas), dtype_code in itertools.product(((512, 4), (1024, 4), (1024, 3), (64, 2)), (0, 1, 2)):
        compiled(cuda_topp_grid.source(threads=threads, ctas=ctas, dtype_code=dtype_code, write_passes=True))
    log = compiled(cuda_topp_grid.source(threads=1024, ctas=4, dtype_code=0, write_passes=False, timeline=True))
    smem = max(int(m) for m in re.findall(r"(\d+) bytes smem", log))
    assert smem + 4 * cuda_topp_grid.MAX_SLICE <= H200_SMEM_OPTIN


def test_topp_short_sources_compile() -> None:
    """The short-row top-p kernel (:mod:`cuda_topp_short`) in every shape of its table at the longest row each takes,
    every dtype, and with the probe's phase marks (``benchmarks/device/topp_short_probe.py --timeline``)."""
    for (up_to, (threads, bins, pairwise)), dtype_code in itertools.product(cuda_topp_short.SHAPE_TABLE, (0, 1, 2)):
        compiled(cuda_topp_short.source(items=-(-up_to // threads), threads=threads, dtype_code=dtype_code,
                                        write_passes=True, bins=bins, pairwise=pairwise))
    marks = ("#define MARK(i) if (threadIdx.x == 0) ((long long*)passes_out)[blockIdx.x * 32 + (i)] = clock64();\n"
             "#define MARK_SCAN(i) if (n_pass == 0) MARK(16 + (i))\n")
    compiled(marks + cuda_topp_short.source(items=2, threads=512, dtype_code=0, write_passes=False, bins=128,
                                            pairwise=64))


def test_topk_sources_compile() -> None:
    for n, rows in ((100, 8), (4096, 8), (8192, 240), (16384, 8)):
        threads, items = cuda_topk.launch_shape(n, rows)
        for dtype_code, per_row_k, keep_last in itertools.product((0, 1), (False, True), (False, True)):
            compiled(cuda_topk.source(threads=threads, items=items, full_row=threads * items == n,
                                      dtype_code=dtype_code, per_row_k=per_row_k, keep_last=keep_last,
                                      last_in_budget=keep_last))


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_decode_sources_compile(head_dim: int) -> None:
    """The decode kernel's default tile and stages at each head dim, over GQA groups, dtypes and options (its
    dynamic shared memory is set at launch, so only the static part is bounded here)."""
    cfg = cuda_decode.default_cuda_config(head_dim, 16)
    for group, bf16, kv_len, softcap in ((1, True, False, False), (4, False, True, True), (8, True, True, False)):
        compiled(cuda_decode.source(group, head_dim, 16, cfg.tile_blocks, cfg.stages, bf16, kv_len, softcap),
                 options=cuda_decode.OPTIONS)


def test_topk_source_rejects_shapes_it_cannot_hold() -> None:
    """The kernel keeps one bit an entry in a word and splits 2048 bins evenly over whole warps: other shapes are
    refused before NVRTC sees them."""
    with pytest.raises(ValueError, match="at most 32 entries a thread"):
        cuda_topk.source(threads=256, items=33, full_row=False, dtype_code=0, per_row_k=False, keep_last=False,
                         last_in_budget=False)
    with pytest.raises(ValueError, match="threads divide 2048"):
        cuda_topk.source(threads=96, items=8, full_row=False, dtype_code=0, per_row_k=False, keep_last=False,
                         last_in_budget=False)


@pytest.mark.skipif(nvdisasm_path() is None, reason="needs nvdisasm, from Triton's NVIDIA backend")
def test_nvrtc_sass_lists_the_instructions() -> None:
    """:func:`nvrtc_sass` returns a kernel's SASS, one instruction a line (how the grid top-p's register gather was
    found rebuilding its store address at every unrolled step), and reports a compile error as such."""
    sass = nvrtc_sass('extern "C" __global__ void k(float* x) { x[threadIdx.x] = 2.0f * x[threadIdx.x]; }')
    assert any(line.split()[1].startswith("LDG") for line in sass), sass
    assert any(line.split()[1].startswith("STG") for line in sass), sass
    assert any(line.split()[1] == "EXIT" for line in sass), sass
    with pytest.raises(RuntimeError, match="NVRTC compile failed"):
        nvrtc_sass("this is not CUDA")
