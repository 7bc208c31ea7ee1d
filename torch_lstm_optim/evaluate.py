"""``python -m torch_lstm_optim.evaluate``: the evaluation command, kept at its documented name.

The evaluation is :mod:`torch_lstm_optim.evaluation.evaluate`; this module only runs it.
"""

from .evaluation.evaluate import main

if __name__ == "__main__":
    main()
