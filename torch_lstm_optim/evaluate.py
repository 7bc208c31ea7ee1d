"""``python -m torch_lstm_optim.evaluate``: the evaluation command, kept at its documented name.

One task (:mod:`torch_lstm_optim.evaluation.evaluate`), or with ``--suite`` the generalization suite
(:mod:`torch_lstm_optim.evaluation.suite`, which calls the former): this module only picks which runs, so the two
evaluation modules need not import each other.
"""

from __future__ import annotations

import sys

from .evaluation import evaluate, suite


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(arg == "--suite" or arg.startswith("--suite=") for arg in argv):
        suite.main(argv)
    else:
        evaluate.main(argv)


if __name__ == "__main__":
    main()
