"""The ``lcm`` command: one table of subcommands, each a typed function (its signature and
docstring are the options and ``--help``, through jsonargparse) or the LightningCLI.

    lcm prepare --inputs docs.jsonl --output_dir shards/ --codec encoders.minilm.MiniLMCodec
    lcm fit --config configs/trainer/default.yaml --config configs/two_tower/tiny.yaml ...
    lcm summarize --checkpoint runs/x/checkpoints/last.ckpt --inputs docs.jsonl --output out.jsonl

A failing command prints one line (``lcm <command>: error: ...``) and exits with status 1;
``--debug`` anywhere on the command line shows the traceback instead. :func:`run` (for tests and
scripts) raises the exception itself. Modules are imported only when their command runs.
"""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass, field
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


def run(argv: list[str] | None = None) -> object:
    """Run one ``lcm`` command and return its result; errors propagate (used by tests and
    scripts)."""
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return None
    name, rest = argv[0], argv[1:]
    command = COMMANDS.get(name)
    if command is None:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"lcm: unknown command {name!r}{hint}\n\n{_usage()}", file=sys.stderr)
        raise SystemExit(2)
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
