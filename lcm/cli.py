"""The ``lcm`` command: one table of subcommands, each a typed function (its signature and
docstring are the options and ``--help``, through jsonargparse) or the LightningCLI.

    lcm prepare --inputs docs.jsonl --output_dir shards/ --codec encoders.minilm.MiniLMCodec
    lcm fit --config configs/trainer/default.yaml --config configs/two_tower/tiny.yaml ...
    lcm summarize --checkpoint runs/x/checkpoints/last.ckpt --inputs docs.jsonl --output out.jsonl

A failing command prints one line (``lcm <command>: error: ...``) and exits with status 1;
``--debug`` anywhere on the command line shows the traceback instead. :func:`run` (for tests and
scripts) raises the exception itself. Modules are imported only when their command runs.

``lcm <command> --help`` answers from a help cache when it can: the text the command printed
last time, stored under ``$XDG_CACHE_HOME/lcm/help/`` (default ``~/.cache``) and keyed by the
versions of the libraries that build the parsers and the size and modification time of every
source file of the project, so an edit or an upgrade makes the next ``--help`` build it again.
A cached answer takes well under a second; building one imports the command's modules (torch,
Lightning: 5-15 s on 2 cores). The set-up script fills the cache for every command
(``lcm --build-help-cache``); ``LCM_NO_HELP_CACHE=1`` turns the cache off.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class Command:
    """One subcommand.

    Attributes:
        help: One line for ``lcm --help``.
        target: ``module:function`` that runs it.
        kind: ``function`` (a typed function run by jsonargparse, its result printed as JSON),
            ``lightning`` (the LightningCLI subcommand of the same name) or ``main`` (a
            ``main(argv, prog)`` entry point).
        fixed: Options always passed (``--task=continue`` for ``lcm generate``).
        positional: Required arguments may be given without their ``--name``.
        print_result: Print the function's result as JSON (off when it prints its own).
        ok_key: Exit with status 1 when the result's ``ok_key`` is false (a failed check).
    """

    help: str
    target: str
    kind: Literal["function", "lightning", "main"] = "function"
    fixed: tuple[str, ...] = field(default=())
    positional: bool = False
    print_result: bool = True
    ok_key: str | None = None


_TRAIN = "lcm.train.cli:cli_main"
COMMANDS: dict[str, Command] = {
    "prepare": Command(
        "documents -> sentences -> concept shards + normalizer", "lcm.data.prepare:prepare"
    ),
    "check": Command(
        "verify a shard folder: counts, checksums, finite values, alignment (table)",
        "lcm.data.check:check",
        positional=True,
        print_result=False,
        ok_key="ok",
    ),
    "fetch-debian": Command(
        "real data: Debian package descriptions + synopses (DDTP, many languages)",
        "lcm.corpora.debian:fetch_debian_descriptions",
    ),
    "fetch-corpus": Command(
        "real data: English prose from Debian-packaged docs, split by document",
        "lcm.corpora.prose:fetch_corpus",
    ),
    "fit-rvq": Command(
        "fit Quant-LCM's residual quantizer on shards (faiss), report held-out error",
        "lcm.train.rvq:fit_rvq",
    ),
    "summarize": Command(
        "summarize a jsonl of documents with a checkpoint (resumable)",
        "lcm.apps.files:generate_file",
        fixed=("--task=summarize",),
    ),
    "generate": Command(
        "continue a jsonl of documents with a checkpoint (resumable)",
        "lcm.apps.files:generate_file",
        fixed=("--task=continue",),
    ),
    "fit": Command(
        "train (LightningCLI: --config configs/trainer/default.yaml --config <recipe>)",
        _TRAIN,
        "lightning",
    ),
    "validate": Command("evaluate a checkpoint on the validation documents", _TRAIN, "lightning"),
    "test": Command("evaluate a checkpoint on the test documents", _TRAIN, "lightning"),
    "predict": Command(
        "teacher-forced next-concept predictions of a checkpoint, written to files",
        _TRAIN,
        "lightning",
    ),
    "eval": Command(
        "evaluate checkpoints over language pairs and settings (= lcm-eval)",
        "eval.run:main",
        "main",
    ),
}


def _usage() -> str:
    lines = ["usage: lcm <command> [options]   (lcm <command> --help for its options)", ""]
    lines += [f"  {name:<13} {cmd.help}" for name, cmd in COMMANDS.items()]
    lines += ["", "  --debug       show the traceback of an error instead of one line"]
    return "\n".join(lines)


def _load(target: str) -> Any:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


_HELP = ("-h", "--help")
#: Distributions whose versions change what ``--help`` prints (besides the project's sources).
_HELP_DEPENDS_ON = ("lcm-toolkit", "jsonargparse", "lightning", "torch", "docstring-parser")


def _help_cache_file() -> Path:
    """The help cache of this installation: one JSON file per fingerprint of the sources."""
    from importlib import metadata

    digest = hashlib.sha256()
    for dist in _HELP_DEPENDS_ON:
        try:
            digest.update(f"{dist}={metadata.version(dist)};".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{dist}=none;".encode())
    root = Path(__file__).resolve().parent.parent
    digest.update(_source_fingerprint(root).encode())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    # one file per installation (its folder's hash), named by the current fingerprint
    where = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return base / "lcm" / "help" / f"{where}-{digest.hexdigest()[:20]}.json"


def _source_fingerprint(root: Path) -> str:
    """Size and modification time of every source file of the project's packages under root."""
    digest = hashlib.sha256()
    for package in ("lcm", "encoders", "diffusion", "eval"):
        for path in sorted((root / package).rglob("*.py")):
            stat = path.stat()
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def _read_help_cache(path: Path) -> dict[str, str]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # no cache yet (or one cut short): the help is built live


def _write_help_cache(path: Path, texts: dict[str, str]) -> None:
    """Merge ``texts`` into the cache file atomically; drop this installation's caches of older
    fingerprints."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**_read_help_cache(path), **texts}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(merged, indent=0))
        os.replace(tmp, path)
        for old in path.parent.glob(f"{path.name.split('-')[0]}-*.json"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only home: the help still printed, only not cached


def _live_help(name: str) -> str | None:
    """Build ``lcm <name> --help`` with the real parser in this process (where nothing else of
    the project is imported yet); its text, or None if it failed."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            _run_command(name, COMMANDS[name], ["--help"])
    except SystemExit as ex:
        if ex.code not in (0, None):
            return None
    return out.getvalue() or None


def build_help_cache(names: list[str] | None = None, workers: int = 2) -> Path:
    """Build the ``--help`` text of ``names`` (default: every command) into the help cache.

    Each command's help is built in a fresh process, as a user's ``lcm <name> --help`` is: the
    text can depend on what is imported (jsonargparse lists the callback classes it knows).
    """
    import shutil
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    columns = str(shutil.get_terminal_size().columns)  # the width a live --help would use here
    env = {**os.environ, "LCM_NO_HELP_CACHE": "1", "COLUMNS": columns}
    script = "import sys; sys.argv[0] = 'lcm'; from lcm.cli import main; main()"

    def build(name: str) -> tuple[str, str | None]:
        cmd = [sys.executable, "-c", script, name, "--help"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        return name, done.stdout if done.returncode == 0 and done.stdout else None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        texts = {name: text for name, text in pool.map(build, names or list(COMMANDS)) if text}
    path = _help_cache_file()
    _write_help_cache(path, texts)
    return path


def _help(name: str) -> None:
    if os.environ.get("LCM_NO_HELP_CACHE"):
        _run_command(name, COMMANDS[name], ["--help"])
        return
    path = _help_cache_file()
    text = _read_help_cache(path).get(name)
    if text is None:
        text = _live_help(name)
        if text is None:  # the parser itself failed: show that failure, uncaptured
            _run_command(name, COMMANDS[name], ["--help"])
            return
        _write_help_cache(path, {name: text})
    sys.stdout.write(text)
    raise SystemExit(0)


def run(argv: list[str] | None = None) -> object:
    """Run one ``lcm`` command and return its result; errors propagate (used by tests and
    scripts)."""
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--debug"]
    if not argv or argv[0] in _HELP:
        print(_usage())
        return None
    if argv == ["--build-help-cache"]:
        print(f"help cache: {build_help_cache()}")
        return None
    name, rest = argv[0], argv[1:]
    command = COMMANDS.get(name)
    if command is None:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"lcm: unknown command {name!r}{hint}\n\n{_usage()}", file=sys.stderr)
        raise SystemExit(2)
    if len(rest) == 1 and rest[0] in _HELP:
        _help(name)
    return _run_command(name, command, rest)


def _run_command(name: str, command: Command, rest: list[str]) -> object:
    if command.kind == "lightning":
        import warnings

        # `lcm fit ...` hands sys.argv over as args on purpose; Lightning warns about exactly that.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return _load(command.target)([name, *rest])
    if command.kind == "main":
        return _load(command.target)(rest, prog=f"lcm {name}")
    from jsonargparse import CLI

    result = CLI(
        _load(command.target),
        args=[*rest, *command.fixed],
        as_positional=command.positional,
        prog=f"lcm {name}",
    )
    if result is not None and command.print_result:
        print(json.dumps(result, indent=2, default=str))
    if command.ok_key is not None and not result[command.ok_key]:
        raise SystemExit(1)
    return result


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``lcm``): one line per error, the traceback with ``--debug``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        run(argv)
        return
    try:
        run(argv)
    except KeyboardInterrupt:
        print("lcm: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as ex:  # noqa: BLE001 - every error becomes one line for the user
        name = argv[0] if argv else ""
        message = " ".join(str(ex).split()) or type(ex).__name__
        print(
            f"lcm {name}: error: {message} ({type(ex).__name__}; --debug shows the traceback)",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
