"""``python -m eval ...``: the evaluation runner (:func:`eval.run.evaluate`; ``--help``)."""

from eval.run import main

if __name__ == "__main__":
    main(prog="python -m eval")
