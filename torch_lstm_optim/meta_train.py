"""``python -m torch_lstm_optim.meta_train``: the meta-trainer's command, kept at its documented name.

The trainer is :mod:`torch_lstm_optim.meta.train`; this module only runs it.
"""

from .meta.train import main

if __name__ == "__main__":
    main()
