"""The workshop that makes weights: meta-training.

- :mod:`~torch_lstm_optim.meta.tasks`: the optimizee families meta-training samples problems from (one file each, a
  registry in ``__init__``), and the task interface a user's own family implements;
- :mod:`~torch_lstm_optim.meta.unroll`: the differentiable unrolled optimisation (truncated BPTT), also run by the
  evaluation;
- :mod:`~torch_lstm_optim.meta.train`: the meta-trainer (``python -m torch_lstm_optim.meta_train``);
- :mod:`~torch_lstm_optim.meta.distributed`: data-parallel meta-training under ``torchrun``;
- :mod:`~torch_lstm_optim.meta.outputs`: how every command-line tool writes its results (shared with evaluation).

Imports run one way: this package uses the optimizer's modules (``network``, ``weights``, ``hub``); evaluation uses
this package; nothing here imports evaluation, and the optimizer imports neither.
"""
