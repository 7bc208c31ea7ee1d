"""Start a ``momentum_mix`` network from trained ``direction_magnitude`` weights (``--init-rule transplant``).

Meta-training a new form of the rule from scratch spends its first hundreds of iterations relearning what trained
weights already know. This carries that knowledge over instead: the LSTM layers are copied (a feature the source
lacks, such as the level, enters through zero weights), the log step size is the source's, and each mixing weight
``a_k`` starts as the source direction's constant weight on direction feature ``x_k``. The source direction's
``h``-dependent part and bias, which ``momentum_mix`` cannot express (they move a coordinate whatever its
gradients), are dropped; ``kappa`` starts at ``sigmoid(-3)`` as for a fresh head.

Measured on the second-generation campaign's 16 validation problems (1000 steps, mean log ratio of final over
first loss, floor 1e-12): the bundled generalist -11.64, its transplant -10.42, a fresh Adam-started head -7.44.
"""

from __future__ import annotations

import torch

from ..network import CoordinatewiseLSTM, NetworkConfig


def momentum_mix_from(source: CoordinatewiseLSTM, config: NetworkConfig) -> CoordinatewiseLSTM:
    """A ``momentum_mix`` network of ``config`` that starts from ``source``'s trained weights (see the module)."""
    old = source.config
    if old.output != "direction_magnitude" or config.output != "momentum_mix":
        raise ValueError(f"a transplant goes from output 'direction_magnitude' to 'momentum_mix', found "
                         f"{old.output!r} to {config.output!r}")
    same = ("hidden_size", "num_layers", "preprocessing", "betas", "beta_v", "feature_clip")
    different = [f"{name} {getattr(old, name)!r} (target {getattr(config, name)!r})" for name in same
                 if getattr(old, name) != getattr(config, name)]
    names, old_names = config.feature_names, old.feature_names
    if different or not set(old_names) <= set(names):
        raise ValueError(f"cannot transplant: the weights' {', '.join(different) or 'features'} differ from the "
                         f"network flags (features {old_names} into {names})")
    target = CoordinatewiseLSTM(config)
    h, k = config.hidden_size, config.num_directions
    columns = [names.index(name) for name in old_names]  # where each source feature sits in the target
    with torch.no_grad():
        for index, (new, trained) in enumerate(zip(target.layers, source.layers)):
            new.bias.copy_(trained.bias)
            new.weight.zero_()
            new.weight[:, -h:] = trained.weight[:, -h:]
            inputs = columns if index == 0 else list(range(h))
            new.weight[:, inputs] = trained.weight[:, :-h]
        weight, bias = source.head.weight, source.head.bias
        target.head.weight.zero_()
        target.head.bias.zero_()
        target.head.bias[:k] = weight[0, h:h + k]
        target.head.weight[k, :h] = weight[1, :h]
        target.head.weight[k, [h + c for c in columns]] = weight[1, h:]
        target.head.bias[k] = bias[1]
        if config.level_feature:
            target.head.bias[k + 1] = -3.0
    return target
