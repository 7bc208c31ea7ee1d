"""The coordinatewise LSTM and its ONE functional update rule.

Andrychowicz et al. (2016): ``theta_{t+1} = theta_t + g_t`` with ``[g_t, h_{t+1}] = m(grad_t, h_t, phi)``, where
``m`` is a small LSTM applied to every coordinate independently (a batch of coordinates is a batch of the LSTM),
with its own hidden state per coordinate and one set of weights ``phi`` shared by all of them.

Data flow of :meth:`CoordinatewiseLSTM.step`::

    grad (N,) -> input features (N, F) -> LSTM layer 1 -> ... -> LSTM layer L -> output head -> update (N,)

The same function serves ``LSTMOptimizer.step()`` (under ``torch.no_grad``, state written back in place) and the
meta-trainer's differentiable unroll (autograd on, state carried as plain tensors).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

State = dict[str, Tensor]

PREPROCESSINGS = ("log_sign", "scale_free")
OUTPUTS = ("linear", "direction_magnitude", "momentum_mix")
# Fields added after the first release: a config.json written before them may omit them and gets these values,
# which are the behaviour it was trained with.
# (param_rms_floor: the first networks with param_scale_feature were trained with Adafactor's 1e-3.)
ADDED_FIELDS = {"level_feature": False, "level_beta": 0.9, "warmup_steps": 0, "param_scale_feature": False,
                "param_rms_floor": 1e-3, "lstm_every": 1}
MOMENT_FLOOR = 1e-30  # added to a bias-corrected EMA of g^2 before its root: gradients below 1e-15 are not told apart
MAX_HIDDEN_SIZE = 1024
MAX_LAYERS = 8


@dataclass(frozen=True)
class NetworkConfig:
    """Shape and behaviour of a :class:`CoordinatewiseLSTM`; written to ``config.json``.

    - ``hidden_size``, ``num_layers``: the paper's 2 layers of 20 units.
    - ``preprocessing``: ``"log_sign"`` is the paper's Appendix A, ``(log|g|/p, sign g)`` if ``|g| >= e^-p`` else
      ``(-1, e^p g)``, with ``p``. ``"scale_free"`` feeds the gradient and its momenta at ``betas`` divided by the
      root of an EMA of ``g^2`` (decay ``beta_v``), clipped to ``+-feature_clip``: invariant to the loss's scale.
      The EMA of ``g^2`` is bias-corrected as in Adam (the step count ``t`` is per-coordinate state, so coordinates
      that joined late are corrected right); the momenta are plain EMAs started at zero, whose slow start is SGD
      momentum's built-in warm-up and keeps Nesterov momentum a linear function of the features.
      ``log_rms_feature`` adds ``log`` of that root: the rule may then scale its step with the gradient's size
      (the linear head can express both Adam, weight 0, and momentum SGD, weight 1), at the price of scale-freedom.
      ``log_step_feature`` adds ``log t`` (the coordinate's step count), so the head can express power-law
      warm-ups and decays ``t^c`` directly.
      ``level_feature`` adds ``log rho``, where ``rho = r_t / max_{s<=t} r_s`` and ``r`` is the root of a faster
      bias-corrected EMA of ``g^2`` (decay ``level_beta``): how far the gradient has fallen below its largest size,
      a scale-free measure of progress (0 at the start, -23 once the gradient is 1e-10 of its peak).
      ``param_scale_feature`` adds ``log max(rms(theta), param_rms_floor)``, the root-mean-square of the coordinate's
      whole parameter tensor, floored as Adafactor's relative step is: the gradient features say nothing of the
      parameter's own size, so without it a layer of weights of rms 0.006 (a fan-in of 9216) and a quadratic's
      coordinates of rms 1 get the same step (docs/results.md, "The first steps"). The head can then scale the
      step with the parameter (weight 1 on it is Adafactor's relative step; 0, where it starts, ignores it).
      The caller passes the rms per coordinate (``step(grad, state, param_rms)``). The floor, 0.01, lies just below
      the smallest tensors of the training mixture (a fan-in of 784 gives 0.02), so that a zero-initialised bias
      looks like the smallest tensors a rule was trained on rather than like nothing it has seen; a rule trained
      with no zero tensor collapsed on an attention block's zero biases at either floor, so the mixture's
      ``zero_bias`` option puts them into training (docs/meta-training.md, "The third generation").
    - ``output``: ``"linear"`` is the paper's ``head(h) * output_scale``. The default scale 0.1 is the one of the
      paper's released code: with ``|h| < 1`` a freshly initialised network moves each coordinate by at most a
      few tenths, so early meta-training neither stalls nor blows up.
      ``"direction_magnitude"`` reads ``[h, features]`` and returns
      ``direction * exp(clamp(s, -B, B)) * output_scale`` with ``B = magnitude_bound`` (after Metz et al. 2020):
      the step size spans ``output_scale * e^{+-B}`` and cannot blow up. With ``scale_free`` its direction is
      multiplied by ``[v > 0]``, so a coordinate whose gradients have all been zero (below 1e-19, whose square
      float32 flushes to 0) is not moved.
      ``"momentum_mix"`` (needs ``scale_free``) returns ``(sum_k a_k x_k) * exp(clamp(s, -B, B)) * output_scale
      * rho^kappa``: the head reads ``[h, features]`` and gives per coordinate the mixing weights ``a_k`` of the
      direction features ``x_k`` (the gradient and its momenta over the rms), a log step size ``s`` and, with
      ``level_feature``, ``kappa = sigmoid(.)`` in (0, 1). So the direction is a learned, per-coordinate
      combination of classic update directions (Adam's is ``a = -1`` on the 0.9-momentum), zero whenever the
      gradient history is zero (no drift: a frozen or dead coordinate stays where it is, and near a minimum the
      step vanishes with the gradients); ``rho^kappa`` lets the step shrink with the gradient as SGD's does
      (``kappa = 1`` is SGD with momentum, normalised by the gradient's peak size) down to any precision, while
      ``s`` spans ``output_scale * e^{+-B}`` of stride.
    - ``warmup_steps`` (needs ``scale_free``, whose step count it reads): the update of a coordinate's ``t``-th
      step is multiplied by ``min(1, t / warmup_steps)``; 0 for none. The scale-free rules take first steps of
      about 0.015 per coordinate whatever the parameter's size, which throws a layer of smaller weights (a fan-in of
      thousands) far off; the warm-up lets the gradient statistics form first (docs/results.md, "The first steps").
    - ``lstm_every`` (needs ``momentum_mix``): the LSTM and its head run on a coordinate's steps 1, 1 + K, 1 + 2K,
      ... (K = ``lstm_every``); the steps between apply the head's last outputs (mixing weights, log size, kappa:
      the state ``mix``) to the fresh features. The direction still follows every gradient through the momenta, and
      the size through the level; only the LSTM's corrections are up to K - 1 steps old. Where the LSTM is most of a
      step's cost (on CPU, 90% at 2 x 20 units), a step costs about 1/K of it plus the features (issue 27).
    """

    hidden_size: int = 20
    num_layers: int = 2
    preprocessing: str = "log_sign"
    p: float = 10.0
    betas: tuple[float, ...] = (0.5, 0.9, 0.99)
    beta_v: float = 0.999
    feature_clip: float = 10.0
    log_rms_feature: bool = False
    log_step_feature: bool = False
    output: str = "linear"
    output_scale: float = 0.1
    magnitude_bound: float = 7.0
    level_feature: bool = False
    level_beta: float = 0.9
    warmup_steps: int = 0
    param_scale_feature: bool = False
    param_rms_floor: float = 1e-2
    lstm_every: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.betas, (list, tuple)):
            raise ValueError(f"config field 'betas' must be a list of floats, found {self.betas!r}")
        object.__setattr__(self, "betas", tuple(self.betas))
        for f in fields(self):
            value = getattr(self, f.name)
            expected = {"int": int, "float": (int, float), "str": str, "bool": bool}.get(str(f.type))
            if expected is None:
                continue
            if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
                raise ValueError(f"config field {f.name!r} must be {f.type}, found {value!r}")
        if not 1 <= self.hidden_size <= MAX_HIDDEN_SIZE:
            raise ValueError(f"config field 'hidden_size' must be in 1..{MAX_HIDDEN_SIZE}, found {self.hidden_size}")
        if not 1 <= self.num_layers <= MAX_LAYERS:
            raise ValueError(f"config field 'num_layers' must be in 1..{MAX_LAYERS}, found {self.num_layers}")
        if self.preprocessing not in PREPROCESSINGS:
            raise ValueError(f"config field 'preprocessing' must be one of {PREPROCESSINGS}, "
                             f"found {self.preprocessing!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"config field 'output' must be one of {OUTPUTS}, found {self.output!r}")
        if self.output == "momentum_mix" and self.preprocessing != "scale_free":
            raise ValueError("config field 'output' 'momentum_mix' needs preprocessing 'scale_free' (its direction "
                             f"mixes the gradient's momenta), found preprocessing {self.preprocessing!r}")
        if self.level_feature and self.preprocessing != "scale_free":
            raise ValueError("config field 'level_feature' needs preprocessing 'scale_free'")
        if self.param_scale_feature and self.preprocessing != "scale_free":
            raise ValueError("config field 'param_scale_feature' needs preprocessing 'scale_free'")
        if self.warmup_steps and self.preprocessing != "scale_free":
            raise ValueError("config field 'warmup_steps' needs preprocessing 'scale_free' (its step count)")
        if self.lstm_every < 1:
            raise ValueError(f"config field 'lstm_every' must be >= 1, found {self.lstm_every}")
        if self.lstm_every > 1 and self.output != "momentum_mix":
            raise ValueError("config field 'lstm_every' > 1 needs output 'momentum_mix' (whose head's outputs apply to "
                             f"fresh features), found output {self.output!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"config field 'warmup_steps' must be >= 0, found {self.warmup_steps}")
        if not 0 <= self.level_beta < 1:
            raise ValueError(f"config field 'level_beta' must lie in [0, 1), found {self.level_beta!r}")
        if not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas) or not self.betas \
                or not 0 < self.beta_v < 1:
            raise ValueError(f"config fields 'betas' must lie in [0, 1) and 'beta_v' in (0, 1), "
                             f"found {self.betas}, {self.beta_v}")
        for name in ("p", "feature_clip", "output_scale", "magnitude_bound", "param_rms_floor"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"config field {name!r} must be finite and > 0, found {value!r}")

    @property
    def num_features(self) -> int:
        if self.preprocessing == "log_sign":
            return 2
        return len(self.feature_names)

    @property
    def feature_names(self) -> list[str]:
        """The input features, named, in the order :meth:`CoordinatewiseLSTM.features` stacks them."""
        if self.preprocessing == "log_sign":
            return ["log", "sign"]
        names = ["g"] + [f"m{beta}" for beta in self.betas]
        return names + ["log_rms"] * self.log_rms_feature + ["log_t"] * self.log_step_feature \
            + ["level"] * self.level_feature + ["log_param_rms"] * self.param_scale_feature

    @property
    def num_directions(self) -> int:
        """How many features are update directions (the gradient and its momenta, over the rms): the first ones."""
        return 1 + len(self.betas)

    @property
    def num_outputs(self) -> int:
        """The head's outputs: the update, (direction, log size), or (mixing weights, log size[, kappa])."""
        if self.output == "linear":
            return 1
        if self.output == "direction_magnitude":
            return 2
        return self.num_directions + 1 + self.level_feature

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkConfig:
        """Build from a ``config.json`` dict; unknown and missing fields are errors (nothing is guessed), except
        fields added after the first release (:data:`ADDED_FIELDS`), which older files lack."""
        data = {**ADDED_FIELDS, **data}
        names = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(data) - names), sorted(names - set(data))
        if unknown or missing:
            raise ValueError(f"config has unknown fields {unknown} and is missing fields {missing}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data


def state_names(config: NetworkConfig) -> tuple[str, ...]:
    """The per-coordinate state tensors the rule carries, in a fixed order."""
    lstm = tuple(f"{k}{layer}" for layer in range(config.num_layers) for k in ("h", "c"))
    if config.preprocessing == "scale_free":
        level = ("u", "r") if config.level_feature else ()
        mix = ("mix",) if config.lstm_every > 1 else ()
        return lstm + tuple(f"m{i}" for i in range(len(config.betas))) + ("v", "t") + level + mix
    return lstm


def lstm_due(config: NetworkConfig, t: int | Tensor) -> bool | Tensor:
    """Whether the LSTM runs on a coordinate's ``t``-th step (counted from 1): steps 1, 1 + K, 1 + 2K, ... for K =
    ``lstm_every``; elementwise for a tensor of step counts. The one definition of the rhythm, read by the rule and by
    the optimizer's choice of chunk size."""
    return (t - 1) % config.lstm_every == 0


def state_width(config: NetworkConfig, name: str) -> tuple[int, ...]:
    """The shape of state tensor ``name`` per coordinate: ``(H,)`` for the LSTM's ``h``/``c``, ``(outputs,)`` for
    the head's last outputs ``mix``, ``()`` for the feature accumulators."""
    if name == "mix":
        return (config.num_outputs,)
    return (config.hidden_size,) if name[0] in "hc" else ()


def state_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype state tensor ``name`` is kept in when the state is asked for in ``dtype``.

    The step count ``t`` stays float32 whatever ``dtype``: bfloat16 counts only to 256. The EMA of ``g^2`` (``v``)
    is kept in at least float32: with its decay 0.999 one step moves it by 0.1% of ``g^2 - v``, less than half of
    bfloat16's resolution, so in bfloat16 it could only grow (measured: 30% too high after 3000 steady steps, and
    5.6x too high after the gradients shrank tenfold). The level's moment and peak (``u``, ``r``) go with it, so
    that ``log rho`` is exactly 0 at a peak (a bfloat16 peak could sit below the float32 value it is compared to).
    The head's last outputs (``mix``) hold a log step size, which bfloat16 would round by up to 3% of the step.
    """
    if name == "t" or (name in ("v", "u", "r", "mix") and dtype.itemsize < 4):
        return torch.float32
    return dtype


class CoordinatewiseLSTM(nn.Module, PyTorchModelHubMixin, library_name="torch_lstm_optim",
                         tags=["learned-optimizer", "learning-to-learn"]):
    """A stack of LSTM cells shared by every coordinate, plus a linear output head.

    Weights: ``layers.{l}.weight`` of shape ``(4H, in_l + H)`` (input and recurrent matrices fused into one
    matmul, gate order i, f, g, o), ``layers.{l}.bias`` ``(4H,)``, and ``head.weight``/``head.bias``.
    """

    def __init__(self, config: NetworkConfig | dict[str, Any] | None = None) -> None:
        super().__init__()
        if config is None:
            config = NetworkConfig()
        elif isinstance(config, dict):
            config = NetworkConfig.from_dict(config)
        self.config = config
        h = config.hidden_size
        sizes = [config.num_features] + [h] * (config.num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n + h, 4 * h) for n in sizes)
        skip = config.num_features if config.output != "linear" else 0
        self.head = nn.Linear(h + skip, config.num_outputs)
        # 2 for the cell input's gate rows, 1 elsewhere (see step); not saved with the weights.
        self.register_buffer("gate_scale", torch.ones(4 * h).index_fill_(0, torch.arange(2 * h, 3 * h), 2.0),
                             persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's LSTM initialisation, a forget-gate bias of 1, and a head that starts as a sound rule.

        For ``direction_magnitude`` and ``momentum_mix`` the head starts at ``-(m_0.9 / rms) * output_scale``
        (Adam's step direction, ignoring ``h``), so meta-training begins from a working optimizer; for ``linear`` it
        starts small.
        """
        h = self.config.hidden_size
        bound = 1 / math.sqrt(h)
        with torch.no_grad():
            for layer in self.layers:
                nn.init.uniform_(layer.weight, -bound, bound)
                nn.init.uniform_(layer.bias, -bound, bound)
                layer.bias[h:2 * h] += 1.0
            if self.config.output == "linear":
                nn.init.uniform_(self.head.weight, -bound, bound)
                self.head.bias.zero_()
        if self.config.output != "linear":
            self.init_head("adam", self.config.output_scale)

    def init_head(self, rule: str, lr: float) -> None:
        """Set the head so that the network, ignoring its LSTM, IS a classic rule at learning rate ``lr``.

        With ``b`` the momentum of ``betas`` nearest 0.9 and ``m`` its EMA: ``"adam"`` is ``-lr * m / rms`` (Adam's
        direction; the EMA's zero start acts as a short warm-up); ``"nag"`` is ``-lr * (g + b/(1-b) m)``, i.e. SGD
        with Nesterov momentum ``b`` (``buf = b buf + g``, ``step = g + b buf``), written as
        ``rms * (g/rms + b/(1-b) m/rms)``; it needs ``log_rms_feature``. Meta-training then starts from a working
        optimizer and learns corrections through ``h``. With ``level_feature`` (``momentum_mix``), ``kappa`` starts
        at ``sigmoid(-3) = 0.05``: nearly the classic rule, with a gradient to learn how the step follows the level.
        """
        cfg = self.config
        if cfg.output == "linear":
            raise ValueError("init_head needs output='direction_magnitude' or 'momentum_mix'")
        if rule not in ("adam", "nag") or (rule == "nag" and not cfg.log_rms_feature):
            raise ValueError(f"unknown rule {rule!r} for this config: 'adam', or 'nag' with log_rms_feature")
        index = min(range(len(cfg.betas)), key=lambda i: abs(cfg.betas[i] - 0.9))
        beta, h = cfg.betas[index], cfg.hidden_size
        # the direction's weight on each direction feature (gradient, momenta), as the classic rule has them
        weights = {1 + index: -1.0} if rule == "adam" else {0: -1.0, 1 + index: -beta / (1 - beta)}
        size = 1 if cfg.output == "direction_magnitude" else cfg.num_directions  # the log size's output
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.head.bias[size] = math.log(lr / cfg.output_scale)
            for feature, weight in weights.items():
                if cfg.output == "direction_magnitude":
                    self.head.weight[0, h + feature] = weight
                else:
                    self.head.bias[feature] = weight
            if rule == "nag":
                self.head.weight[size, h + cfg.num_directions] = 1.0  # the step scales with rms: exp(log rms)
            if cfg.level_feature:
                self.head.bias[size + 1] = -3.0

    def _save_pretrained(self, save_directory: Path) -> None:
        from safetensors.torch import save_model

        save_model(self, str(Path(save_directory) / "model.safetensors"))

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> Any:
        """Write ``config.json`` + ``model.safetensors`` (``huggingface_hub``'s mixin does the work)."""
        kwargs.setdefault("config", self.config.to_dict())
        return super().save_pretrained(save_directory, **kwargs)

    # torch_lstm_optim.weights.load_network, set by that module (the package imports it): the network is what
    # weights build, so this module imports neither the reader nor the hub.
    _loader: ClassVar[Callable[..., CoordinatewiseLSTM]]

    @classmethod
    def from_pretrained(cls, weights: str | Path, *, revision: str | None = None,
                        **hub_kwargs: Any) -> CoordinatewiseLSTM:
        """Load a bundled name, a local folder or a hub repo id, validated (see :mod:`torch_lstm_optim.weights`).

        Overrides the mixin's loader, which would accept pickles and silently ignore unknown config fields.
        """
        return cls._loader(weights, revision=revision, **hub_kwargs)

    def init_state(self, grad: Tensor, dtype: torch.dtype = torch.float32) -> State:
        """Fresh (all-zero) per-coordinate state for a flat gradient ``grad`` of N coordinates."""
        return {name: grad.new_zeros((grad.numel(), *state_width(self.config, name)), dtype=state_dtype(name, dtype))
                for name in state_names(self.config)}

    def features(self, grad: Tensor, state: State, param_rms: Tensor | None = None) -> tuple[Tensor, State]:
        """Input features ``(N, F)`` of a flat gradient, and the updated feature accumulators (if any).

        ``param_rms`` ``(N,)``: the rms of each coordinate's parameter tensor, needed by ``param_scale_feature``.
        """
        cfg = self.config
        if cfg.preprocessing == "log_sign":
            magnitude = grad.abs()
            big = magnitude >= math.exp(-cfg.p)
            log_part = torch.where(big, magnitude.clamp_min(math.exp(-cfg.p)).log() / cfg.p, -1.0)
            sign_part = torch.where(big, grad.sign(), grad * math.exp(cfg.p))
            return torch.stack([log_part, sign_part], 1), {}
        return self._assemble(self._scale_free(grad, state), param_rms)

    def _assemble(self, parts: tuple[Tensor, Tensor, Tensor | None, State],
                  param_rms: Tensor | None) -> tuple[Tensor, State]:
        """``features`` from the parts :meth:`_scale_free` returns: the direction features, then the extras."""
        cfg = self.config
        directions, rms, level, acc = parts
        extras = ([rms.log()] if cfg.log_rms_feature else []) + ([acc["t"].log()] if cfg.log_step_feature else [])
        if level is not None:
            extras.append(level)
        if cfg.param_scale_feature:
            if param_rms is None:
                raise ValueError("this network has param_scale_feature: pass the rms of each coordinate's parameter "
                                 "tensor (step(grad, state, param_rms))")
            extras.append(param_rms.to(directions.dtype).clamp_min(cfg.param_rms_floor).log())
        x = torch.cat([directions, torch.stack(extras, 1)], 1) if extras else directions
        return x, acc

    def _scale_free(self, grad: Tensor, state: State) -> tuple[Tensor, Tensor, Tensor | None, State]:
        """The ``scale_free`` features the update's direction and size are made of: the direction features
        ``(N, num_directions)`` (the gradient and its momenta over the rms, clipped), the rms, the level ``log rho``
        (``None`` without ``level_feature``), and the updated accumulators."""
        cfg = self.config
        g = _bounded(grad)
        acc = {f"m{i}": torch.lerp(state[f"m{i}"], g, 1 - b) for i, b in enumerate(cfg.betas)}
        acc["v"] = torch.lerp(state["v"], g * g, 1 - cfg.beta_v)
        acc["t"] = t = state["t"] + 1
        rms = _corrected_root(acc["v"], t, cfg.beta_v)
        directions = torch.stack([g] + [acc[f"m{i}"] for i in range(len(cfg.betas))], 1) / rms.unsqueeze(1)
        directions = directions.clamp(-cfg.feature_clip, cfg.feature_clip)
        level = None
        if cfg.level_feature:
            acc["u"] = torch.lerp(state["u"], g * g, 1 - cfg.level_beta)
            root = _corrected_root(acc["u"], t, cfg.level_beta)
            acc["r"] = torch.maximum(state["r"], root)
            level = root.log() - acc["r"].log()
        return directions, rms, level, acc

    def step(self, grad: Tensor, state: State, param_rms: Tensor | None = None) -> tuple[Tensor, State]:
        """The update rule: ``update, new_state = net.step(grad, state)`` for a 1-D batch of N coordinates.

        ``param_rms`` ``(N,)`` is the rms of each coordinate's parameter tensor (:func:`param_rms`), read only by
        a network with ``param_scale_feature`` (callers pass it when the config asks for it).

        Pure: returns new tensors and never writes into ``state``, so it runs under autograd (meta-training)
        and under ``torch.no_grad`` (the optimizer, which copies ``new_state`` back into its buffers). The one
        exception is harmless: with ``lstm_every`` > 1, a step on which no coordinate's LSTM runs returns the LSTM's
        state tensors and ``mix`` themselves, unchanged (the optimizer then skips copying them).
        """
        dtype = self.layers[0].weight.dtype
        state = {k: v.to(dtype) for k, v in state.items()}
        if self.config.lstm_every == 1:
            x, new_state = self.features(grad.to(dtype), state, param_rms)
            due = None
        else:
            parts = self._scale_free(grad.to(dtype), state)
            directions, _, level, new_state = parts
            due = lstm_due(self.config, new_state["t"])
            held = [k for k in state_names(self.config) if k[0] in "hc" or k == "mix"]  # kept between the LSTM's steps
            if not bool(due.any()):  # no coordinate's LSTM runs: the head's last outputs, on the fresh features
                new_state.update({k: state[k] for k in held})
                return self._mixed(state["mix"], directions, level, new_state), new_state
            x, new_state = self._assemble(parts, param_rms)
        hidden = x
        hs = self.config.hidden_size
        for layer_index, layer in enumerate(self.layers):
            h, c = state[f"h{layer_index}"], state[f"c{layer_index}"]
            # The cell input's rows come out doubled (exact in floating point), so that ONE sigmoid over all four
            # gates also gives tanh(g) = 2 sigmoid(2g) - 1, and tanh(c) is taken the same way: on CPU torch's tanh
            # costs 3.4x its sigmoid per element, and three sigmoids of strided slices cost 1.5x one of the whole.
            # A layer's step is 1.4x faster (2048 coordinates, one core); the results differ from torch.tanh's by
            # at most 2e-7 (tests/test_network.py).
            scale = self.gate_scale.to(layer.weight.dtype)
            gates = torch.addmm(layer.bias * scale, torch.cat([hidden, h], 1), (layer.weight * scale[:, None]).t())
            i, f, g, o = torch.sigmoid(gates).split(hs, 1)
            c = f * c + i * (2 * g - 1)
            hidden = o * (2 * torch.sigmoid(2 * c) - 1)
            new_state[f"h{layer_index}"], new_state[f"c{layer_index}"] = hidden, c
        out = self._head(hidden, x)
        if due is not None:
            new_state["mix"] = out
            if not bool(due.all()):  # coordinates that joined at other steps: only the due ones change
                new_state.update({k: torch.where(due.view(-1, 1), new_state[k], state[k]) for k in held})
                out = new_state["mix"]
        return self._output(out, x, new_state), new_state

    def _head(self, hidden: Tensor, x: Tensor) -> Tensor:
        """The head's outputs from the last layer's ``hidden`` (and, but for ``linear``, the features ``x``)."""
        return self.head(hidden if self.config.output == "linear" else torch.cat([hidden, x], 1))

    def _output(self, out: Tensor, x: Tensor, state: State) -> Tensor:
        """The update from the head's outputs ``out`` and the features ``x`` (the direction's ingredients)."""
        cfg = self.config
        if cfg.output == "linear":
            return self._warmed_up(out.squeeze(1) * cfg.output_scale, state)
        if cfg.output == "momentum_mix":
            level = x[:, cfg.feature_names.index("level")] if cfg.level_feature else None
            return self._mixed(out, x[:, :cfg.num_directions], level, state)
        direction, s = out.unbind(1)
        if cfg.preprocessing == "scale_free":  # a coordinate that never had a gradient is not moved
            direction = direction * (state["v"] > 0)
        s = s.clamp(-cfg.magnitude_bound, cfg.magnitude_bound)
        return self._warmed_up(direction * torch.exp(s) * cfg.output_scale, state)

    def _mixed(self, out: Tensor, directions: Tensor, level: Tensor | None, state: State) -> Tensor:
        """``momentum_mix``'s update: ``(sum_k a_k x_k) * exp(clamp(s, -B, B) + kappa log rho) * output_scale``,
        with ``a``, ``s`` and ``kappa`` the head's outputs ``out`` and ``x`` the direction features."""
        cfg = self.config
        k = cfg.num_directions
        s = out[:, k].clamp(-cfg.magnitude_bound, cfg.magnitude_bound)
        if level is not None:  # rho^kappa
            s = s + torch.sigmoid(out[:, k + 1]) * level
        return self._warmed_up((out[:, :k] * directions).sum(1) * torch.exp(s) * cfg.output_scale, state)

    def _warmed_up(self, update: Tensor, state: State) -> Tensor:
        """``update * min(1, t / warmup_steps)``, ``t`` the coordinate's step count (``warmup_steps``)."""
        if not self.config.warmup_steps:
            return update
        return update * (state["t"] / self.config.warmup_steps).clamp(max=1.0)


def param_rms(param: Tensor) -> Tensor:
    """The root-mean-square of a parameter tensor (0-dim, float32, no graph): the scale ``param_scale_feature``
    reads, taken before the update."""
    return param.detach().float().square().mean().sqrt()


def _corrected_root(ema: Tensor, t: Tensor, beta: float) -> Tensor:
    """The root of a zero-started EMA of ``g^2`` with decay ``beta`` after ``t`` steps, bias-corrected as in Adam."""
    return (ema / -torch.expm1(t * math.log(beta)) + MOMENT_FLOOR).sqrt()


def _bounded(grad: Tensor) -> Tensor:
    """Clamp so that ``g^2`` stays finite in float32 (the features are ratios, so this changes nothing else)."""
    return grad.clamp(-1e18, 1e18)
