"""Compile a kernel wrapper's launches for a GPU target on a machine without one.

Why: Triton's interpreter (how the CPU tests run the kernels) skips most of the GPU compiler's checks, and
the installed Triton's promotion rules can differ from the device's. Quest's scoring kernel passed every
interpreted test yet failed to compile on the H200 (Triton 3.6 promotes bfloat16 ``tl.maximum`` operands to
float32, so its ``tl.dot`` saw fp32 x bf16). Triton compiles for an NVIDIA target without a GPU (the wheel
ships ``ptxas``), so a test can record the exact arguments a wrapper launches with, on CPU tensors, and
compile them for sm_90: mixed-dtype or too-small ``tl.dot``, non-power-of-two shapes and bad atomics all
fail here as they would on the device.

Usage (tests): replace a kernel module's ``_jit`` with a :class:`LaunchRecorder`, call the wrapper, then
:func:`compile_launch` each recorded launch.

The NVRTC-compiled CUDA kernels (:mod:`sparsebench.kernels.nvrtc`) get the same check from
:func:`nvrtc_compile`, through the NVRTC library of the ``nvidia-cuda-nvrtc-cu12`` wheel (a dev dependency): the
device compiles them only when first launched, so without this a syntax or PTX error costs a GPU run.
:func:`nvrtc_sass` lists the machine code itself, for reading what the compiler made of a hot loop.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import inspect
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["Launch", "LaunchRecorder", "compile_launch", "nvdisasm_path", "nvidia_compiler_available",
           "nvrtc_compile", "nvrtc_library", "nvrtc_sass"]

_POINTER_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float64: "*fp64",
                  torch.int8: "*i8", torch.uint8: "*u8", torch.int16: "*i16", torch.int32: "*i32",
                  torch.int64: "*i64", torch.bool: "*i1"}
#: Keyword arguments of a launch that are compiler options, not kernel parameters.
_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg", "launch_pdl")


@dataclass
class Launch:
    """One recorded launch: the plain kernel function, its grid and its arguments as the wrapper passed them."""

    fn: Callable[..., Any]
    grid: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class LaunchRecorder:
    """Stands in for a kernel module's ``_jit(fn)[grid](*args, **kwargs)``: records instead of running."""

    launches: list[Launch] = field(default_factory=list)

    def __call__(self, fn: Callable[..., Any]) -> Any:
        recorder = self

        class _Gridded:
            def __getitem__(self, grid: Any) -> Callable[..., None]:
                def launch(*args: Any, **kwargs: Any) -> None:
                    recorder.launches.append(Launch(fn, grid, args, kwargs))

                return launch

        return _Gridded()


def nvidia_compiler_available() -> bool:
    """Whether the installed Triton carries the NVIDIA backend (and so can compile for sm_90 here)."""
    try:
        from triton.backends import backends
    except ImportError:
        return False
    return "nvidia" in backends


def _arg_type(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return _POINTER_TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton signature type for a {type(value).__name__} argument")


def compile_launch(launch: Launch, capability: int = 90) -> Any:
    """Compile ``launch`` for an NVIDIA GPU of compute ``capability`` (Hopper by default) and return the
    compiled kernel; raises Triton's CompilationError where the device's compiler would."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    jit = JITFunction(launch.fn)
    kernel_kwargs = {k: v for k, v in launch.kwargs.items() if k not in _OPTIONS}
    bound = inspect.signature(launch.fn).bind(*launch.args, **kernel_kwargs)
    bound.apply_defaults()
    signature: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    for param in jit.params:
        value = bound.arguments[param.name]
        if param.is_constexpr or value is None:
            signature[param.name] = "constexpr"
            constexprs[param.name] = value
        else:
            signature[param.name] = _arg_type(value)
    options = {k: v for k, v in launch.kwargs.items() if k in _OPTIONS}
    source = ASTSource(fn=jit, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)


@functools.cache
def nvrtc_library() -> Any:
    """The NVRTC shared library of the installed ``nvidia-cuda-nvrtc-cu12`` wheel (``ctypes``), or None."""
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for lib in sorted((Path(root) / "cuda_nvrtc" / "lib").glob("libnvrtc.so*")):
            try:
                return ctypes.CDLL(str(lib))
            except OSError:
                continue
    return None


def _nvrtc_program(source: str, arch: str, options: tuple[str, ...], want_cubin: bool) -> tuple[str, bytes]:
    """Compile ``source`` with the wheel's NVRTC: the compiler log (``ptxas -v``) and, if asked, the cubin."""
    lib = nvrtc_library()
    if lib is None:
        raise RuntimeError("no NVRTC library: pip install nvidia-cuda-nvrtc-cu12")
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"kernel.cu", 0, None, None) != 0:
        raise RuntimeError("nvrtcCreateProgram failed")
    cubin = b""
    try:
        opts = [f"--gpu-architecture={arch}".encode(), b"--ptxas-options=-v", *(o.encode() for o in options)]
        status = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        if status == 0 and want_cubin:
            lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetCUBIN(prog, buf)
            cubin = buf.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    text = log.value.decode(errors="replace")
    if status != 0:
        raise RuntimeError(f"NVRTC compile failed:\n{text}")
    return text, cubin


def nvrtc_compile(source: str, *, arch: str = "sm_90", options: tuple[str, ...] = ("-std=c++17",)) -> str:
    """Compile CUDA ``source`` to ``arch`` machine code (through ``ptxas``) with the wheel's NVRTC; return the
    compiler log (``ptxas -v``: registers, spills, shared memory). Raises ``RuntimeError`` with the log on a compile
    error, and when no NVRTC library is installed."""
    return _nvrtc_program(source, arch, options, want_cubin=False)[0]


def nvdisasm_path() -> Path | None:
    """The ``nvdisasm`` that Triton's NVIDIA backend ships, or None where Triton or that backend is missing."""
    try:
        import triton
    except ImportError:
        return None
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    return path if path.exists() else None


def nvrtc_sass(source: str, *, arch: str = "sm_90", options: tuple[str, ...] = ("-std=c++17",)) -> list[str]:
    """The SASS instructions of CUDA ``source`` compiled for ``arch``, one line each (``nvdisasm`` of the NVRTC
    cubin, the disassembler from Triton's NVIDIA backend). Why: what the compiler made of a kernel's hot loop (an
    address rebuilt at every unrolled step, say) can be read and counted here, with no GPU. Raises
    ``RuntimeError`` where NVRTC or the disassembler is missing, and with the log on a compile error."""
    nvdisasm = nvdisasm_path()
    if nvdisasm is None:
        raise RuntimeError("no nvdisasm: it comes with Triton's NVIDIA backend (pip install triton)")
    cubin = _nvrtc_program(source, arch, options, want_cubin=True)[1]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        listing = subprocess.run([str(nvdisasm), "-c", str(path)], capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in listing.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,}\*/", line)]
