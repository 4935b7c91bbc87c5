"""Small C kernels for the CPU, built with the system C compiler at first use.

A kernel is one C source file in the package, built into a shared library per set of
``-D`` defines (a compute type, a key type) and cached on disk, so a process pays the
compiler once per variant (about half a second) and later processes not at all. The
cache lives in torch inductor's cache directory (``TORCHINDUCTOR_CACHE_DIR``, by default
``<tmp>/torchinductor_<user>``), under ``tokenprune/``, so clearing inductor's cache clears
it; ``TOKENPRUNE_CACHE_DIR`` overrides it. The compiler is ``$CC``, else ``cc``.

`load` raises `NativeBuildError` when no library can be built (no compiler, a compiler
error); callers then run their torch code instead.
"""

from __future__ import annotations

import ctypes
import getpass
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["NativeBuildError", "cache_dir", "load"]

#: Tried in order: the first set the compiler accepts is used.
FLAG_SETS = (
    ("-O3", "-march=native"),
    ("-O3",),
)

_loaded: dict[tuple[Path, tuple[str, ...]], ctypes.CDLL] = {}


class NativeBuildError(RuntimeError):
    """No shared library could be built from a kernel's C source."""


def cache_dir() -> Path:
    """Where built libraries are kept (see the module docstring)."""
    if os.environ.get("TOKENPRUNE_CACHE_DIR"):
        return Path(os.environ["TOKENPRUNE_CACHE_DIR"])
    inductor = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not inductor:
        user = re.sub(r"[\\/:*?\"<>|]", "_", _user())
        inductor = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")
    return Path(inductor) / "tokenprune"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        return str(os.getuid()) if hasattr(os, "getuid") else "user"


def _cpu_flags() -> str:
    # -march=native code must not be reused on another CPU model with a shared cache.
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def load(source: Path, defines: tuple[str, ...] = ()) -> ctypes.CDLL:
    """The shared library built from ``source`` with ``defines`` (``"-DNAME=1"``), built
    and cached at the first call, loaded once per process.

    Raises:
        NativeBuildError: no C compiler, or every flag set failed to compile.
    """
    key = (source, defines)
    if key in _loaded:
        return _loaded[key]
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise NativeBuildError(f"no C compiler: {compiler!r} is not on PATH (set CC to one)")
    text = source.read_bytes()
    digest = hashlib.sha256(
        b"\0".join([text, " ".join(defines).encode(), compiler.encode(), platform.machine().encode(), _cpu_flags().encode()])
    ).hexdigest()[:20]
    target = cache_dir() / f"{source.stem}-{digest}.so"
    if not target.exists():
        _build(compiler, source, defines, target)
    library = ctypes.CDLL(str(target))
    _loaded[key] = library
    return library


def _build(compiler: str, source: Path, defines: tuple[str, ...], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in FLAG_SETS:
        # A private file renamed into place: a concurrent process never loads half a library.
        fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=".so")
        os.close(fd)
        cmd = [compiler, *flags, "-fPIC", "-shared", "-pthread", *defines, "-o", partial, str(source), "-lm"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0:
                os.replace(partial, target)
                return
            errors.append(f"{' '.join(cmd)}: {proc.stderr.strip()[:500]}")
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    raise NativeBuildError("; ".join(errors))
