"""The workshop that judges weights: evaluation against tuned baselines and against other weights.

- :mod:`~torch_lstm_optim.evaluation.evaluate`: one task, the learned optimizer against tuned baselines
  (``python -m torch_lstm_optim.evaluate``);
- :mod:`~torch_lstm_optim.evaluation.suite`: the generalization suite over :mod:`~torch_lstm_optim.evaluation.heldout`,
  problems kept out of meta-training (``python -m torch_lstm_optim.evaluate --suite generalization``);
- :mod:`~torch_lstm_optim.evaluation.compare`: weights against weights (``python -m torch_lstm_optim.compare``);
- :mod:`~torch_lstm_optim.evaluation.reproduce`: the paper's experiments (``python -m torch_lstm_optim.reproduce``).

Imports run one way: this package uses meta-training's tasks and unroll and the optimizer's modules; nothing below
it imports it.
"""
