"""``python -m torch_lstm_optim.compare``: weights against weights, kept at its documented name.

The comparison is :mod:`torch_lstm_optim.evaluation.compare`; this module only runs it (results.json files record
their command under this name, so every recorded command still runs as written).
"""

from .evaluation.compare import main

if __name__ == "__main__":
    main()
