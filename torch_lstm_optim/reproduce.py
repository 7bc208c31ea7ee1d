"""``python -m torch_lstm_optim.reproduce``: the paper's experiments, kept at its documented name.

The reproduction is :mod:`torch_lstm_optim.evaluation.reproduce`; this module only runs it (results.json files
record their command under this name, so every recorded command still runs as written).
"""

from .evaluation.reproduce import main

if __name__ == "__main__":
    main()
