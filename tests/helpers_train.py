"""Test helpers: a deterministic toy codec, structured toy corpora, and the real ``lcm``
command in a fresh process (for kill -9 tests).

The corpora have learnable structure: sentence k is always followed by sentence ``(3k + 7) % P``,
so the next concept is a function of the current one and a small model can fit it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import encoders.hashing
from encoders.hashing import text_hash

P = 23  # distinct sentences
ROOT = Path(__file__).resolve().parents[1]


def next_token(k: int) -> int:
    return (3 * k + 7) % P


def sentence(k: int) -> str:
    return f"Token {k} is here."


class HashCodec(encoders.hashing.HashCodec):
    """The toy hash codec (:mod:`encoders.hashing`) with the tests' id and languages; decodes
    by nearest seen. Its seeds are the low 63 bits of the hash (the default takes the high
    ones): the vectors every test here was written with."""

    codec_id = "test-hash-codec-16"
    langs = ("eng_Latn", "fra_Latn")

    def seed(self, sentence: str) -> int:
        return text_hash(sentence) % (2**63)


def write_corpus(
    path: Path,
    n_docs: int,
    seed: int = 0,
    min_len: int = 4,
    max_len: int = 14,
    summaries: bool = False,
) -> Path:
    """jsonl of documents following the token chain; optional ``summary`` field (the chain's
    first three tokens, shifted by 5: a deterministic function of the source)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for j in range(n_docs):
            k = rng.randrange(P)
            toks = []
            for _ in range(rng.randint(min_len, max_len)):
                toks.append(k)
                k = next_token(k)
            row = {"id": f"doc{j}", "lang": "eng_Latn", "text": " ".join(map(sentence, toks))}
            if summaries:
                row["summary"] = " ".join(sentence((t + 5) % P) for t in toks[:3])
            f.write(json.dumps(row) + "\n")
    return path


def make_shards(
    root: Path, n_docs: int, seed: int = 0, summaries: bool = False, **corpus_kw
) -> Path:
    """Run the real ``lcm prepare`` on a toy corpus with :class:`HashCodec`; returns the folder."""
    root.mkdir(parents=True, exist_ok=True)
    write_corpus(root / "docs.jsonl", n_docs, seed, summaries=summaries, **corpus_kw)
    prepare_shards(root / "shards", max(1, n_docs // 3), summaries)
    return root / "shards"


def prepare_shards(folder: Path, shard_size: int, summaries: bool = False) -> dict:
    """The real ``lcm prepare`` of ``folder.parent / "docs.jsonl"`` into ``folder`` with
    :class:`HashCodec`; returns its summary. On a folder :func:`make_shards` made, with its
    shard size (a third of the documents), this is the rerun that verifies and resumes it."""
    from lcm.data.prepare import prepare

    return prepare(
        inputs=str(folder.parent / "docs.jsonl"),
        output_dir=str(folder),
        codec=HashCodec(),
        target_fields=["summary"] if summaries else None,
        shard_size=shard_size,
        cache=False,
        progress=False,
    )


class FixedHashCodec(HashCodec):
    """HashCodec decoding among a fixed set of sentences (HashCodec's own decode depends on what
    the instance encoded before, which would make two runs differ for the codec's sake)."""

    def __init__(self) -> None:
        super().__init__()
        self.encode([sentence(k) for k in range(P)], "eng_Latn")
        self.fixed = dict(self.seen)

    def decode(self, vectors: torch.Tensor, lang: str) -> list[str]:
        names = list(self.fixed)
        table = torch.stack([self.fixed[n] for n in names])
        return [names[int(i)] for i in torch.cdist(vectors.float(), table).argmin(dim=1)]


def hold_here(count: int) -> None:
    """The kill point of a fresh process: when ``count`` reaches ``LCM_TEST_HOLD_AT`` (if set),
    create the file ``LCM_TEST_HOLD_FILE`` and wait there until the test kills the process
    (:meth:`FreshLcm.kill_when` with :func:`held`). The point is exact, with no sleeps that a
    loaded machine could outrun or a fast one waste."""
    at = os.environ.get("LCM_TEST_HOLD_AT")
    if at is not None and count == int(at):
        Path(os.environ["LCM_TEST_HOLD_FILE"]).touch()
        time.sleep(600)  # killed here; the kill test's timeout ends it sooner otherwise
        raise RuntimeError("held for 600 s and never killed")


def held(path: Path):
    """``ready`` of :meth:`FreshLcm.kill_when`: the process has reached its hold point."""
    return path.exists


class _SlowEncode:
    """Sleeps ``LCM_TEST_ENCODE_SLEEP`` seconds (default 0.2) per encode call: room for a kill
    at a random point of a run in a fresh process (``--codec helpers_train.SlowHashCodec``);
    holds at the ``LCM_TEST_HOLD_AT``-th encode call (1-based) when set (:func:`hold_here`)."""

    calls = 0

    def _encode(self, sentences: list[str], lang: str) -> torch.Tensor:
        _SlowEncode.calls += 1
        hold_here(_SlowEncode.calls)
        time.sleep(float(os.environ.get("LCM_TEST_ENCODE_SLEEP", "0.2")))
        return super()._encode(sentences, lang)


class SlowHashCodec(_SlowEncode, HashCodec):
    """:class:`HashCodec`, slowed down (``lcm prepare`` in a fresh process)."""


class SlowFixedHashCodec(_SlowEncode, FixedHashCodec):
    """:class:`FixedHashCodec`, slowed down (``lcm summarize``/``lcm eval`` in a fresh
    process: each generated batch encodes its documents once)."""


# ------------------------------------------------------------- the CLI in this process
def cli_printed(capsys, argv: list[str], ok: bool = True) -> str:
    """What ``lcm <argv>`` prints when it exits at once (``--print_config``, ``--model.help``),
    run in this process; asserts a clean exit (``ok=False``: a failed one, e.g. a value of the
    wrong type)."""
    import pytest

    from lcm.train.cli import cli_main

    with pytest.raises(SystemExit) as done:
        cli_main(argv)
    if ok:
        assert done.value.code in (0, None), f"lcm {' '.join(argv)} exited {done.value.code}"
    else:
        assert done.value.code not in (0, None), f"lcm {' '.join(argv)} succeeded"
    return capsys.readouterr().out


# ------------------------------------------------------- the real command in a fresh process
def fresh_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh ``lcm`` process: the project and ``tests/`` importable (so
    ``--codec helpers_train.SlowHashCodec`` resolves) and one thread (the same float
    reductions as a test run under ``torch.set_num_threads(1)``)."""
    path = f"{ROOT}{os.pathsep}{ROOT / 'tests'}"
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


# A fresh interpreter that imports the command's modules once, then forks one child per `lcm`
# command it is sent (one JSON line each: args, env, log, out); for each it prints the child's
# pid, then its exit code (negative: the signal that ended it).
_FORKER = r"""
import json, os, sys, traceback
import lcm.cli
for name in sys.argv[1:]:
    __import__(name)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.environ.update(job["env"])
            for fd, path in ((1, job["out"]), (2, job["log"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            sys.argv = ["lcm", *job["args"]]
            lcm.cli.main(job["args"])
            code = 0
        except SystemExit as ex:
            code = ex.code if isinstance(ex.code, int) else int(ex.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class FreshLcm:
    """Runs ``lcm`` commands as a user does, in processes that inherit nothing from the test
    process, paying the interpreter start and the imports (Lightning: 10-25 s on a loaded
    2-core machine) once instead of once per command: a fresh interpreter started with
    ``env`` imports ``lcm.cli`` and ``preload``, then forks one child per command, which runs
    ``lcm.cli.main(args)`` exactly as ``python -m lcm.cli args`` does after its imports. Each
    child is a separate process: a SIGKILL ends it with no handler and no cleanup (``kill
    -9``), and the next command starts from the imported modules only, never from the killed
    one's state."""

    def __init__(self, env: dict[str, str], preload: tuple[str, ...] = ()) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _FORKER, *preload], env=env, cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def __enter__(self) -> FreshLcm:
        return self

    def __exit__(self, *exc) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def _start(self, args: list[str], log: Path, env: dict[str, str]) -> tuple[int, Path]:
        out = log.with_suffix(".out")
        job = {"args": list(map(str, args)), "env": env, "log": str(log), "out": str(out)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the forking interpreter ended (exit code {self.proc.poll()})"
        return int(line), out

    def _exit_code(self) -> int:
        line = self.proc.stdout.readline()
        assert line, f"the forking interpreter ended (exit code {self.proc.poll()})"
        return int(line)

    def run(self, args: list[str], log: Path, **env: str) -> str:
        """Run ``lcm args`` to its end; returns its stdout (asserts it succeeded)."""
        _, out = self._start(args, log, env)
        code = self._exit_code()
        assert code == 0, f"exit code {code}: {log.read_text()[-3000:]}"
        return out.read_text()

    def kill_when(self, args: list[str], ready, log: Path, timeout: float = 240.0, **env: str):
        """Start ``lcm args`` and SIGKILL it as soon as ``ready()`` is true."""
        pid, _ = self._start(args, log, env)
        deadline = time.time() + timeout
        try:
            while not ready():
                try:
                    os.kill(pid, 0)
                    alive = time.time() < deadline
                except ProcessLookupError:
                    alive = False
                assert alive, f"not ready: {log.read_text()[-2000:]}"
                time.sleep(0.01)
        finally:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        code = self._exit_code()
        assert code == -signal.SIGKILL, f"exit code {code}: {log.read_text()[-2000:]}"
