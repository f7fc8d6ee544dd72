"""The ``lcm`` command: ``lcm prepare`` and the LightningCLI subcommands.

``lcm prepare ...`` turns documents into concept shards (:func:`lcm.data.prepare.prepare`);
its typed signature and docstring are the CLI and its ``--help``.
``lcm fit|validate|test|predict ...`` run :func:`lcm.train.cli.cli_main`.
"""

from __future__ import annotations

import sys

COMMANDS = {
    "prepare": "documents -> sentences -> concept shards + normalizer",
    "fetch-debian": "real data: Debian package descriptions + synopses (DDTP, many languages)",
    "fetch-corpus": "real data: English prose from Debian-packaged docs, split by document",
    "fit-rvq": "fit Quant-LCM's residual quantizer on shards (faiss), report held-out error",
    "summarize": "summarize a jsonl of documents with a checkpoint (resumable)",
    "generate": "continue a jsonl of documents with a checkpoint (resumable)",
    "fit": "train (LightningCLI: --config configs/trainer/default.yaml --config <recipe>)",
    "validate": "evaluate a checkpoint on the validation documents",
    "test": "evaluate a checkpoint on the test documents",
    "predict": "teacher-forced next-concept predictions of a checkpoint",
    "eval": "evaluate checkpoints over language pairs and settings (= lcm-eval)",
}


def _usage() -> str:
    lines = ["usage: lcm <command> [options]   (lcm <command> --help for its options)", ""]
    lines += [f"  {name:<13} {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``lcm``)."""
    run(argv)


def run(argv: list[str] | None = None) -> object:
    """Run one ``lcm`` command and return its result (used by tests and scripts)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return None
    command, rest = argv[0], argv[1:]
    if command == "prepare":
        from jsonargparse import CLI

        from lcm.data.prepare import prepare

        summary = CLI(prepare, args=rest, as_positional=False)
        if summary:
            import json

            print(json.dumps(summary, indent=2))
        return summary
    if command == "fetch-debian":
        import json

        from jsonargparse import CLI

        from lcm.corpora.debian import fetch_debian_descriptions

        result = CLI(fetch_debian_descriptions, args=rest, as_positional=False)
        print(json.dumps(result, indent=2))
        return result
    if command == "fetch-corpus":
        import json

        from jsonargparse import CLI

        from lcm.corpora.prose import fetch_corpus

        result = CLI(fetch_corpus, args=rest, as_positional=False)
        print(json.dumps(result, indent=2))
        return result
    if command == "fit-rvq":
        import json

        from jsonargparse import CLI

        from lcm.train.rvq import fit_rvq

        result = CLI(fit_rvq, args=rest, as_positional=False)
        print(json.dumps(result, indent=2))
        return result
    if command in ("summarize", "generate"):
        import json

        from jsonargparse import CLI

        from lcm.apps.files import generate_file

        task = "summarize" if command == "summarize" else "continue"
        result = CLI(generate_file, args=[*rest, f"--task={task}"], as_positional=False)
        print(json.dumps(result, indent=2))
        return result
    if command in ("fit", "validate", "test", "predict"):
        import warnings

        from lcm.train.cli import cli_main

        # `lcm fit ...` hands sys.argv over as args on purpose; Lightning warns about exactly that.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")

        return cli_main([command, *rest])
    if command == "eval":
        from eval.run import main as eval_main

        return eval_main(rest, prog="lcm eval")
    print(f"lcm: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
