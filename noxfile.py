"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s docs``, ``nox -s browser``,
``nox -s bench``, ``nox -s eval``, ``nox -s compat``."""

from __future__ import annotations

import shutil

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

# The CPU wheel of torch on this machine kind; install it before anything that
# depends on torch, or pip resolves a multi-GB CUDA build.
TORCH = "torch==2.13.0"
# The oldest transformers tokenprune is tested on (`nox -s compat`); `nox -s tests` gets the
# newest pip resolves (5.24 when this was written).
OLDEST_TRANSFORMERS = "transformers==5.17.0"
DOCS_TOOLS = ("mkdocs>=1.6", "mkdocs-material>=9", "mkdocstrings[python]>=0.25")
# lmms-eval without its declared dependencies (they pull torchvision, whose PyPI build does
# not load beside the CPU torch above), plus what `lmms-eval --model tokenprune` with a
# Hugging Face LLaVA / InternVL base imports (found by running it).
LMMS_EVAL = "lmms-eval==0.7.3"
LMMS_EVAL_RUNTIME = (
    "accelerate", "datasets", "evaluate", "sacrebleu", "loguru", "pyyaml", "pytz", "tenacity",
    "pytablewriter", "decord",
    # lmms-eval 0.7.3 patches filelock._api, which filelock 4 removed
    "filelock<4",
)


def _install(session: nox.Session, extras: str) -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """The whole test suite, with the example plugins pip-installed from tests/plugin_pkg
    (a transform, a recipe, a cue) and tests/family_pkg (the VipLlava model family)."""
    _install(session, "test")
    session.install("./tests/plugin_pkg", "./tests/family_pkg")
    session.env["HYPOTHESIS_PROFILE"] = "ci"
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session(python="3.11")
def compat(session: nox.Session) -> None:
    """The whole test suite, as ``nox -s tests`` runs it, on the oldest supported
    transformers (`OLDEST_TRANSFORMERS`); not part of CI. Arguments after ``--`` go to
    pytest, e.g. ``nox -s compat -- tests/engine tests/adapters``."""
    session.install(TORCH)
    session.install("-e", ".[test]", OLDEST_TRANSFORMERS)
    session.install("./tests/plugin_pkg", "./tests/family_pkg")
    session.env["HYPOTHESIS_PROFILE"] = "ci"
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff on the package, tests, benchmarks and the training script."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "tokenprune", "tests", "benchmarks", "training", "noxfile.py")


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the documentation with ``mkdocs build --strict``."""
    _install(session, "hf,docs")
    session.env["NO_MKDOCS_2_WARNING"] = "1"
    session.run("mkdocs", "build", "--strict")


@nox.session(python="3.11")
def browser(session: nox.Session) -> None:
    """The built docs site in headless Chromium at 1280 px (tests/docs/test_browser.py).

    Needs Debian's Chromium and ChromeDriver: ``apt-get install -y chromium chromium-driver``.
    mkdocstrings reads the package's source without importing it, so this session installs
    only the docs tools, pytest and selenium (no torch), and runs pytest with
    ``--confcutdir`` so that the suite's top-level conftest (which imports torch) stays out.
    """
    for program in ("chromium", "chromedriver"):
        if shutil.which(program) is None:
            session.error(f"{program} not found: apt-get install -y chromium chromium-driver")
    session.install("pytest>=8", "selenium>=4.10", *DOCS_TOOLS)
    session.env["NO_MKDOCS_2_WARNING"] = "1"
    session.run(
        "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--confcutdir", "tests/docs",
        "-m", "browser", "tests/docs/test_browser.py", *session.posargs,
    )


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Selector and prefill benchmarks (not part of CI)."""
    _install(session, "test")
    session.run("python", "benchmarks/selector_speed.py", *session.posargs)
    session.run("python", "benchmarks/prefill.py", *session.posargs)


@nox.session(python="3.11", name="eval")
def lmms_eval(session: nox.Session) -> None:
    """The real lmms-eval CLI with ``--model tokenprune`` on the shapes model
    (tests/lmms/test_lmms_eval.py, ``pytest -m lmms_eval``); not part of CI.

    lmms-eval is installed with ``--no-deps`` and the packages in `LMMS_EVAL_RUNTIME`, so
    that torchvision stays out (docs/evaluate.md, "Evaluate with lmms-eval").
    """
    session.install(TORCH)
    session.install("--no-deps", LMMS_EVAL)
    session.install("-e", ".[hf]", "safetensors>=0.4", "pytest>=8", "hypothesis>=6.100", *LMMS_EVAL_RUNTIME)
    session.env["HYPOTHESIS_PROFILE"] = "ci"
    session.run("python", "-m", "pytest", "-q", "-s", "-m", "lmms_eval", "tests/lmms", *session.posargs)
