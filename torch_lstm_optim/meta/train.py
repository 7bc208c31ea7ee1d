"""Meta-training: fit a :class:`CoordinatewiseLSTM` by unrolling the optimisation of sampled problems.

``python -m torch_lstm_optim.meta_train --task quadratic --out runs/quadratic``

Each meta-iteration samples ``meta_batch`` problems, optimises them for ``horizon`` steps with the network, and
after every ``truncation`` steps back-propagates the meta-objective of those steps into the network (Adam, meta-
gradient clipping), then detaches parameters and state (truncated BPTT, Andrychowicz et al. 2016). Every
``eval_every`` iterations the network runs on fixed validation problems for ``horizon`` steps and the best weights
are kept (early stopping); with ``average_decay`` an exponential moving average of the weights (Polyak averaging)
is what is validated and kept, which smooths the swings of the raw weights between checks. With a ``curriculum`` of
shorter horizons, episodes start at the first and move to the next each time validation has not improved for
``patience`` validations (Chen et al. 2020), up to ``horizon``. A
checkpoint is written atomically after every meta-iteration; ``--resume`` continues from it and gives the same
result as an uninterrupted run (problems are drawn from (seed, iteration), so no RNG state is needed). Under
``torchrun --nproc-per-node N`` each process unrolls an equal share of the meta-batch and the meta-gradients are
averaged (:mod:`torch_lstm_optim.meta.distributed`): the same result as one process, within float rounding; rank 0
writes the files. The output folder holds ``config.json`` + ``model.safetensors`` (the best weights), a model card
``README.md``, ``log.jsonl`` and ``checkpoint.pt``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import shlex
import shutil
import sys
import time
import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..hub import PushError, check_repo_id, push_to_hub
from ..network import ADDED_FIELDS, CoordinatewiseLSTM, NetworkConfig
from ..weights import WEIGHTS_FILE, WeightsError, load_network
from . import distributed
from .outputs import OutputError, atomic_write, machine_description
from .tasks import MAX_SEED, Task, TaskError, make_task
from .tasks.base import SPLIT_STRIDE, SPLITS, parse_task_args
from .transplant import momentum_mix_from
from .unroll import SINGLE, Networks, Rule, Unroll, advance, as_classes, meta_loss, param_labels

# Settings that shape the trajectory: resuming with other values would silently make another run. (``iterations``,
# ``eval_every``, ``threads`` and the like may change between a run and its resumption.)
RESUME_FIXED = ("task", "task_arg", "param_classes", "init_weights", "init_warmup_steps", "init_lstm_every",
                "init_rule", "init_lr",
                "horizon", "truncation", "meta_batch", "meta_lr", "head_lr", "clip", "objective", "seed", "val_split",
                "val_problems", "val_metric", "curriculum", "patience", "average_decay", "log_floor")


class DivergedError(RuntimeError):
    """Too many meta-iterations in a row had a non-finite meta-loss; the run stopped, the best weights kept."""


class CheckpointError(ValueError):
    """The output folder's checkpoint cannot be used as asked: damaged, made with other settings, or there without
    ``--resume`` (a new run would overwrite it)."""


@dataclass
class MetaTrainConfig:
    """What to train on and how; every field is a command-line flag (``--meta-batch`` for ``meta_batch``)."""

    task: str = field(default="quadratic", metadata={"help": "task name or package.module:factory"})
    task_arg: list[str] = field(default_factory=list, metadata={"help": "task option key=value (repeatable)"})
    param_classes: list[str] = field(default_factory=list, metadata={
        "help": "one network per parameter class, e.g. 'conv other' for cifar10-conv (the paper's CIFAR-10 setup): "
                "the task labels its parameters (Problem.param_classes); class C's weights go to OUT/C. Default: "
                "one network for all parameters, written to OUT"})
    data_dir: str = field(default="data", metadata={"help": "data folder for tasks with data (MNIST under it)"})
    horizon: int = field(default=100, metadata={"help": "optimisation steps per problem (T), and of validation"})
    curriculum: list[int] = field(default_factory=list, metadata={
        "help": "shorter horizons to train at first, increasing (e.g. 100 200 500): episodes move to the next, and "
                "finally to --horizon, each time validation has not improved for --patience validations"})
    patience: int = field(default=3, metadata={"help": "validations without improvement before the curriculum's "
                                                       "next horizon"})
    truncation: int = field(default=20, metadata={"help": "steps per truncated-BPTT meta-update"})
    meta_batch: int = field(default=8, metadata={"help": "problems optimised in parallel per meta-iteration"})
    meta_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the meta-optimizer"})
    head_lr: float | None = field(default=None, metadata={
        "help": "Adam learning rate of the output head, whose few weights set the step size and its schedule "
                "(default: meta_lr)"})
    iterations: int = field(default=300, metadata={"help": "meta-iterations (each a full horizon)"})
    clip: float = field(default=1.0, metadata={"help": "meta-gradient norm clipping"})
    average_decay: float = field(default=0.0, metadata={
        "help": "if > 0: validate and keep an exponential moving average of the weights, updated after every "
                "meta-update with this decay (e.g. 0.999: about the last 1,000 meta-updates), instead of the raw "
                "weights, whose validation can swing widely from one check to the next"})
    objective: str = field(default="sum", metadata={
        "help": "meta-objective: 'sum' (paper), 'log' (mean log loss) or 'final' (log loss of the last tenth of "
                "each truncation)"})
    log_floor: float = field(default=0.0, metadata={
        "help": "if > 0 (e.g. 1e-4): with --objective log or final, a problem's loss counts as at least this "
                "fraction of its loss at the start of the episode, and with --val-metric log_ratio its score as "
                "at least log(this). A few problems driven far towards zero loss then stop outweighing the many "
                "whose loss falls by a factor of 2 to 10 (a mixture's mean log ratio is otherwise decided by them)"})
    seed: int = field(default=0, metadata={
        "help": "seed of the network's init and of the problems sampled (not 1 or 2 for tasks without a data set: "
                "their training problems would be val and test problems; the run warns)"})
    eval_every: int = field(default=10, metadata={"help": "iterations between validations"})
    keep_checks: bool = field(default=False, metadata={
        "help": "also write the weights of every validation to OUT/checks/iteration-N, so that a choice can be "
                "made later on more problems than validation uses (python -m torch_lstm_optim.compare)"})
    val_problems: int = field(default=16, metadata={"help": "validation problems"})
    val_metric: str = field(default="loss", metadata={
        "help": "validation score: 'loss' (mean final loss) or 'log_ratio' (mean log of final over initial loss: "
                "comparable across problems whose losses differ by orders of magnitude, as in a mixture)"})
    val_split: str = field(default="val", metadata={
        "help": "where validation problems come from: 'val' (held-out data) or 'train' (held-out seeds: new "
                "initialisations and minibatch orders on the training data, for tasks whose val data is much "
                "smaller than their test data, which changes the regime: MNIST's 2,000 val digits are seen 6 "
                "times in 100 steps, the 10,000 test digits 1.3 times)"})
    out: str = field(default="runs/meta", metadata={"help": "output folder"})
    resume: bool = field(default=False, metadata={"help": "continue from OUT/checkpoint.pt"})
    init_weights: str | None = field(default=None, metadata={"help": "start from these weights (name/folder/hub)"})
    init_warmup_steps: int | None = field(default=None, metadata={
        "help": "with --init-weights: train them with this warm-up instead of their config's warmup_steps (the "
                "update's first steps scaled by t / N; a rule's early strides are damped without retraining it "
                "from scratch; iteration 0 is those weights with the new warm-up)"})
    init_lstm_every: int | None = field(default=None, metadata={
        "help": "with --init-weights: train them with the LSTM run every N steps instead of their config's lstm_every "
                "(a cheaper step; iteration 0 is those weights with the new interval)"})
    init_rule: str = field(default="adam", metadata={
        "help": "for a fresh direction_magnitude or momentum_mix network: the classic rule its head starts as, "
                "'adam' or 'nag'; or 'transplant': with --init-weights of a direction_magnitude network, start the "
                "momentum_mix network of the network flags from them (meta/transplant.py)"})
    init_lr: float | None = field(default=None, metadata={
        "help": "learning rate of that starting rule (default: output_scale)"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    compile: bool = field(default=True, metadata={"help": "torch.compile the update rule (2.5x faster on CPU)"})
    max_nonfinite: int = field(default=20, metadata={"help": "stop after this many non-finite episodes in a row"})
    push_to_hub: str | None = field(default=None, metadata={"help": "publish the result to this hub repo id"})


def parse_args(argv: list[str] | None = None) -> tuple[MetaTrainConfig, NetworkConfig]:
    """Flags map one-to-one onto the fields of :class:`MetaTrainConfig` and :class:`NetworkConfig`."""
    parser = argparse.ArgumentParser(prog="python -m torch_lstm_optim.meta_train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    network_title = "network (ignored with --init-weights, except by --init-rule transplant)"
    for cls, title in ((MetaTrainConfig, "meta-training"), (NetworkConfig, network_title)):
        group = parser.add_argument_group(title)
        for f in fields(cls):
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            flag = "--" + f.name.replace("_", "-")
            help_text = f.metadata.get("help", f"see NetworkConfig.{f.name}") + f" (default: {default})"
            if f.type == "bool":
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            elif f.name == "task_arg":
                group.add_argument(flag, action="append", default=default, help=help_text)
            elif f.name == "curriculum":
                group.add_argument(flag, type=int, nargs="*", default=default, help=help_text)
            elif f.name == "param_classes":
                group.add_argument(flag, nargs="*", default=default, help=help_text)
            elif f.name == "betas":
                group.add_argument(flag, type=float, nargs="+", default=default, help=help_text)
            else:
                kind = {"int": int, "int | None": int, "float": float, "float | None": float}.get(str(f.type), str)
                group.add_argument(flag, type=kind, default=default, help=help_text)
    args = vars(parser.parse_args(argv))
    config = MetaTrainConfig(**{f.name: args[f.name] for f in fields(MetaTrainConfig)})
    try:
        network = NetworkConfig(**{f.name: args[f.name] for f in fields(NetworkConfig)})
    except ValueError as error:
        parser.error(str(error))
    for name in ("horizon", "truncation", "meta_batch", "iterations", "eval_every", "val_problems", "threads",
                 "patience"):
        if getattr(config, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, found {getattr(config, name)}")
    for flag, horizon in [("--curriculum", h) for h in config.curriculum] + [("--horizon", config.horizon)]:
        if horizon < 1 or horizon % config.truncation:
            parser.error(f"{flag} ({horizon}) must be a multiple of --truncation ({config.truncation})")
    if sorted(set(config.curriculum)) != config.curriculum or any(h >= config.horizon for h in config.curriculum):
        parser.error(f"--curriculum must increase and stay below --horizon ({config.horizon}), found "
                     f"{config.curriculum}")
    if len(set(config.param_classes)) != len(config.param_classes) or any(
            not c or "." in c or "/" in c for c in config.param_classes):
        parser.error(f"--param-classes must be distinct names without '.' or '/', found {config.param_classes}")
    # A meta-learning rate of 0 freezes the weights (validation of fixed weights); clip and init-lr must be > 0.
    for name, zero_ok in (("meta_lr", True), ("head_lr", True), ("clip", False), ("init_lr", False)):
        value = getattr(config, name)
        if value is not None and not (math.isfinite(value) and (value >= 0 if zero_ok else value > 0)):
            parser.error(f"--{name.replace('_', '-')} must be a finite number {'>=' if zero_ok else '>'} 0, "
                         f"found {value}")
    if not 0 <= config.seed < MAX_SEED or config.max_nonfinite < 1:
        parser.error(f"--seed must be in [0, {MAX_SEED}) and --max-nonfinite >= 1, found {config.seed} and "
                     f"{config.max_nonfinite}")
    if config.init_rule not in ("adam", "nag", "transplant"):
        parser.error(f"--init-rule must be 'adam', 'nag' or 'transplant', found {config.init_rule!r}")
    if config.init_rule == "transplant" and not config.init_weights:
        parser.error("--init-rule transplant needs --init-weights (the trained weights to start from)")
    if config.init_warmup_steps is not None and (not config.init_weights or config.init_warmup_steps < 0):
        parser.error(f"--init-warmup-steps needs --init-weights and a count >= 0, found {config.init_warmup_steps}")
    if config.init_lstm_every is not None and (not config.init_weights or config.init_lstm_every < 1):
        parser.error(f"--init-lstm-every needs --init-weights and a count >= 1, found {config.init_lstm_every}")
    if not config.out.strip():
        parser.error("--out must name a folder")
    if config.push_to_hub is not None:
        try:
            check_repo_id(config.push_to_hub)  # now, not after hours of training
        except WeightsError as error:
            parser.error(f"--push-to-hub: {error}")
    if not 0.0 <= config.average_decay < 1.0:
        parser.error(f"--average-decay must be in [0, 1), found {config.average_decay}")
    if config.val_metric not in ("loss", "log_ratio"):
        parser.error(f"--val-metric must be 'loss' or 'log_ratio', found {config.val_metric!r}")
    if config.val_split not in ("val", "train"):
        parser.error(f"--val-split must be 'val' or 'train', found {config.val_split!r}")
    if config.objective not in ("sum", "log", "final"):
        parser.error(f"--objective must be 'sum', 'log' or 'final', found {config.objective!r}")
    if not 0.0 <= config.log_floor < 1.0:
        parser.error(f"--log-floor must be in [0, 1), found {config.log_floor}")
    if config.log_floor and config.objective == "sum":
        parser.error("--log-floor needs a log objective: --objective log or final")
    processes = distributed.launched_processes()
    if config.meta_batch % processes:
        parser.error(f"--meta-batch ({config.meta_batch}) must be a multiple of the number of processes "
                     f"({processes}): each process unrolls an equal share of the meta-batch")
    try:
        parse_task_args(config.task_arg)
    except ValueError as error:
        parser.error(str(error))
    return config, network


def build_task(config: MetaTrainConfig) -> Task:
    return make_task(config.task, data_dir=config.data_dir, **parse_task_args(config.task_arg))


def training_seeds(config: MetaTrainConfig, iteration: int) -> list[int]:
    """Seeds of the ``train`` problems of meta-iteration ``iteration``."""
    first = config.seed * 10_000_019 + iteration * config.meta_batch
    return list(range(first, first + config.meta_batch))


def warn_if_seeds_meet_other_splits(config: MetaTrainConfig) -> None:
    """Warn if this run's training seeds reach ``SPLIT_STRIDE``: a task without a data set (quadratic, teacher,
    mixture) draws ``train`` problem ``SPLIT_STRIDE + k`` from the same generator seed as ``val`` problem ``k``
    (and ``2 SPLIT_STRIDE + k`` as ``test`` problem ``k``), so the run would train on held-out problems. Only
    ``--seed`` 1 and 2 do; changing the seeds would change the problems of every run made with them."""
    first, stop = training_seeds(config, 0)[0], training_seeds(config, config.iterations)[0]
    if first < len(SPLITS) * SPLIT_STRIDE and stop > SPLIT_STRIDE:
        warnings.warn(f"--seed {config.seed} draws training problems from seeds {first} to {stop - 1}; for tasks "
                      f"without a data set these are the same problems as val or test problems (seed - "
                      f"{SPLIT_STRIDE:,} or - {2 * SPLIT_STRIDE:,}), which would then be trained on. Use --seed 0 "
                      "or >= 3 for them (tasks with data, like mnist-mlp, keep their splits' data apart).",
                      UserWarning, stacklevel=2)


def validation_seeds(config: MetaTrainConfig) -> range:
    """Seeds of the validation problems; on the train split, far from those meta-training samples."""
    offset = 2**40 if config.val_split == "train" else 0
    return range(offset, offset + config.val_problems)


def validation_scores(finals: torch.Tensor, initial: torch.Tensor, metric: str, floor: float = 0.0) -> torch.Tensor:
    """Per-problem validation scores: the final losses, or for ``"log_ratio"`` the log of final over initial loss,
    floored at log(``floor``) (``--log-floor``), and at least at log(1e-30) (as the log meta-objectives floor the
    loss): a run that reaches a loss of exactly 0 would otherwise score -inf, and the mean with it, and that
    checkpoint would stay the best whatever followed."""
    return finals if metric == "loss" else (finals / initial).clamp_min(max(floor, 1e-30)).log()


def validate(network: Networks, task: Task, config: MetaTrainConfig,
             rule: Rule | dict[str, Rule] | None = None) -> float:
    """The network's score on the fixed validation problems after ``horizon`` steps (no meta-gradient): their mean
    final loss, or with ``val_metric="log_ratio"`` the mean log of final over initial loss (see
    :func:`validation_scores`); ``inf`` if a final loss is not finite. Each process runs its share of the
    problems; all get the same score."""
    seeds, scores, finite = distributed.share(validation_seeds(config)), torch.zeros(0), True
    if seeds:
        run = Unroll.start([task.sample(seed, config.val_split) for seed in seeds])
        initial = run.final_losses()
        with torch.no_grad():
            advance(network, run, config.horizon, rule=rule)
            finals = run.final_losses()
        finite = bool(torch.isfinite(finals).all())
        scores = validation_scores(finals, initial, config.val_metric, config.log_floor)
    if not distributed.all_true(finite):
        return math.inf
    return float(distributed.mean(scores))


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def save_weights(network: CoordinatewiseLSTM, out: Path) -> None:
    """Write ``config.json`` + ``model.safetensors`` into ``out`` through a temporary folder, each file atomically."""
    out.mkdir(exist_ok=True)
    tmp = out / ".weights.tmp"
    network.save_pretrained(tmp)
    for name in ("config.json", "model.safetensors"):
        os.replace(tmp / name, out / name)
    for leftover in tmp.iterdir():
        leftover.unlink()
    tmp.rmdir()


def resume_from(path: Path, config: MetaTrainConfig, network: torch.nn.Module, meta_optimizer: torch.optim.Optimizer,
                averaged: AveragedModel | None) -> dict[str, Any]:
    """Load the checkpoint ``path`` into ``network``, ``meta_optimizer`` (and the weight average); return its
    progress.

    Raises :class:`CheckpointError` (before anything is written) if the file is damaged or was made with other
    settings.
    """
    try:
        checkpoint = torch.load(path, weights_only=True)
        saved, saved_network, progress = checkpoint["config"], checkpoint["network_config"], checkpoint["progress"]
        if not all(isinstance(part, dict) for part in (saved, saved_network, progress)):
            raise TypeError("its config, network_config and progress must be dicts")
        missing = sorted({"iteration", "meta_updates", "skipped", "best_val", "best_iteration", "elapsed"}
                         - set(progress))
        if missing or any(not torch.isfinite(v).all() for v in checkpoint["network"].values()):
            raise ValueError(f"progress misses {missing}" if missing else "the network holds NaN or inf")
    except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as error:
        reason = str(error).splitlines()[0] if str(error) else ""
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(error).__name__}: {reason}); move it "
                              "away to start over") from None
    now = {**{k: getattr(config, k) for k in RESUME_FIXED}, **network_config_of(network).to_dict()}
    defaults = asdict(MetaTrainConfig())  # for settings added after the checkpoint was written
    # network config fields added after the checkpoint was written: the values it was trained with
    then = {**{k: saved.get(k, defaults[k]) for k in RESUME_FIXED}, **ADDED_FIELDS, **saved_network}
    different = [f"{k} {then.get(k)!r} (now {value!r})" for k, value in now.items() if then.get(k) != value]
    if different:
        raise CheckpointError(f"{path}: was made with other settings: {', '.join(different)}; resume with the "
                              "flags of that run, or pass another --out")
    try:
        network.load_state_dict(checkpoint["network"])
        meta_optimizer.load_state_dict(checkpoint["meta_optimizer"])
        if averaged is not None:
            averaged.load_state_dict(checkpoint["averaged"])
    except (RuntimeError, KeyError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({error}); move it away to start "
                              "over") from None
    return progress


def check_run_folder(out: Path, config: MetaTrainConfig, resumed: bool) -> None:
    """Refuse an ``--out`` whose files a run would overwrite without having made them: weights, a card or a log with
    no checkpoint beside them (``--resume`` continues a checkpoint, never adopts a folder), or the folder that
    ``--init-weights`` reads the starting weights from."""
    if config.init_weights and Path(config.init_weights).resolve() == out.resolve():
        raise OutputError(f"--out {out} is the --init-weights folder: the run would overwrite the weights it "
                          "starts from; pass another --out")
    if out.is_dir() and not resumed and not (out / "checkpoint.pt").exists():
        written = {"config.json", "model.safetensors", "README.md", "log.jsonl", "checks", *config.param_classes}
        found = sorted(p.name for p in out.iterdir() if p.name in written)
        if found:
            raise OutputError(f"--out {out} holds {', '.join(found)} but no checkpoint.pt of a run to resume: "
                              "writing there would replace them; pass another --out")


def trim_log(path: Path, iteration: int) -> None:
    """Keep the log's records up to ``iteration`` (the checkpoint's; -1 for a fresh run): the later ones are about
    to be run again."""
    if path.exists():
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = []
        for number, line in enumerate(lines, 1):
            if not line.endswith("\n"):
                continue  # the last record, cut short by a kill
            try:
                record = json.loads(line)
                keep = record["iteration"] <= iteration
            except (json.JSONDecodeError, KeyError, TypeError):
                raise OutputError(f"{path}: line {number} is not a record of this meta-trainer's log; move the file "
                                  "away, or pass another --out") from None
            if keep:
                kept.append(line)
        atomic_write(path, lambda handle: handle.write("".join(kept).encode("utf-8")))


def network_config_of(model: torch.nn.Module) -> NetworkConfig:
    """The config of the network (or of the first of the per-class networks, which all share it)."""
    return next(iter(as_classes(model).values())).config


def start_networks(config: MetaTrainConfig, network_config: NetworkConfig) -> torch.nn.Module:
    """The network(s) meta-training starts from: one, or an ``nn.ModuleDict`` of one per ``--param-classes``."""
    networks = {}
    for label in config.param_classes or [SINGLE]:
        if config.init_weights:
            network = load_network(config.init_weights)
            if config.init_rule == "transplant":
                network = momentum_mix_from(network, network_config)
            if config.init_warmup_steps is not None:
                network = with_changes(network, "--init-warmup-steps", warmup_steps=config.init_warmup_steps)
            if config.init_lstm_every is not None:
                network = with_changes(network, "--init-lstm-every", lstm_every=config.init_lstm_every)
        else:
            network = CoordinatewiseLSTM(network_config)
            if network_config.output != "linear":
                network.init_head(config.init_rule, config.init_lr or network_config.output_scale)
        networks[label] = network
    return networks[SINGLE] if not config.param_classes else torch.nn.ModuleDict(networks)


def with_changes(network: CoordinatewiseLSTM, flag: str, **changes: Any) -> CoordinatewiseLSTM:
    """The same weights with the config fields ``changes`` set (``--init-warmup-steps``, ``--init-lstm-every``); a
    :class:`WeightsError` naming ``flag`` if the network's form does not allow them."""
    try:
        changed = CoordinatewiseLSTM(replace(network.config, **changes))
    except ValueError as error:
        raise WeightsError(f"{flag} {' '.join(map(str, changes.values()))}: {error}") from None
    changed.load_state_dict(network.state_dict())
    return changed


def compiled_rule(model: torch.nn.Module) -> dict[str, Rule]:
    """``torch.compile`` of each network's update rule (2.5x faster meta-iterations on CPU), by parameter class."""
    return {label: torch.compile(net.step, dynamic=True) for label, net in as_classes(model).items()}


def weight_folders(model: torch.nn.Module, out: Path) -> dict[Path, CoordinatewiseLSTM]:
    """Where each network's weights go: ``out`` for one network, ``out/<class>`` for per-class ones."""
    return {out if label == SINGLE else out / label: network for label, network in as_classes(model).items()}


def train(config: MetaTrainConfig, network_config: NetworkConfig, command: str) -> dict[str, Any]:
    """Run (or resume) meta-training; returns a summary (also written into the model card).

    Under torchrun every process runs this; rank 0 alone writes the output folder and shows progress."""
    torch.set_num_threads(config.threads)
    warn_if_seeds_meet_other_splits(config)
    writer = distributed.rank() == 0
    out = Path(config.out)
    task = build_task(config)  # before anything is written: a bad task or missing data leaves no trace
    torch.manual_seed(config.seed)
    network = start_networks(config, network_config)  # one network, or a ModuleDict of one per class
    param_labels([task.sample(0, "train")], as_classes(network))  # every parameter has a network, or say which
    network.train()
    head = [p for net in weight_folders(network, out).values() for p in net.head.parameters()]
    meta_optimizer = torch.optim.Adam([
        {"params": [p for p in network.parameters() if all(p is not q for q in head)]},
        {"params": head, "lr": config.meta_lr if config.head_lr is None else config.head_lr}], lr=config.meta_lr)
    rule = compiled_rule(network) if config.compile else None
    # What is validated and kept: the network itself, or the moving average of its weights.
    averaged = AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(config.average_decay)) \
        if config.average_decay else None
    candidate = averaged.module if averaged is not None else network
    candidate_rule = compiled_rule(candidate) if config.compile and averaged is not None else rule
    progress = {"iteration": 0, "meta_updates": 0, "skipped": 0, "in_a_row": 0, "best_val": math.inf,
                "best_iteration": -1, "elapsed": 0.0, "stage": 0, "since_best": 0}
    horizons = [*config.curriculum, config.horizon]
    checkpoint_path = out / "checkpoint.pt"
    resumed = config.resume and checkpoint_path.exists()
    check_run_folder(out, config, resumed)
    parent = parent_record(load_network(config.init_weights)) if config.init_weights else None
    if resumed:
        progress = {**progress, **resume_from(checkpoint_path, config, network, meta_optimizer, averaged)}
    elif checkpoint_path.exists():
        raise CheckpointError(f"{checkpoint_path}: {out} holds a run already; pass --resume to continue it, or "
                              "another --out (nothing is overwritten)")
    distributed.all_true(True)  # every process has looked at the folder before rank 0 writes into it
    if config.resume and not resumed and writer:  # --resume on a first run is a habit; a typo in --out shows here
        print(f"--resume: no checkpoint in {out}: starting a new run", file=sys.stderr)

    def save_checkpoint() -> None:
        if writer:
            atomic_save({"network": network.state_dict(), "meta_optimizer": meta_optimizer.state_dict(),
                         "averaged": averaged.state_dict() if averaged is not None else None,
                         "progress": progress, "config": asdict(config),
                         "network_config": network_config_of(network).to_dict()},
                        checkpoint_path)

    try:
        if writer:
            out.mkdir(parents=True, exist_ok=True)
            if not resumed:
                save_checkpoint()  # before any other file: every folder a run wrote to holds a checkpoint to resume
            trim_log(out / "log.jsonl", progress["iteration"] if resumed else -1)
        log = open(out / "log.jsonl" if writer else os.devnull, "a", encoding="utf-8")
    except OSError as error:
        reason = "it is a file" if out.is_file() else error.strerror
        raise OSError(f"cannot write to the output folder {out}: {reason}") from None
    # What a kill in the middle of a write left behind (the files they were to replace are intact).
    if writer:
        checkpoint_path.with_name(checkpoint_path.name + ".tmp").unlink(missing_ok=True)
        for folder in weight_folders(candidate, out):
            shutil.rmtree(folder / ".weights.tmp", ignore_errors=True)

    def save_best() -> None:
        if writer:
            for folder, net in weight_folders(candidate, out).items():
                save_weights(net, folder)

    def keep_check(iteration: int) -> None:
        if writer and config.keep_checks:
            for folder, net in weight_folders(candidate, out / "checks" / f"iteration-{iteration}").items():
                folder.parent.mkdir(parents=True, exist_ok=True)
                save_weights(net, folder)

    if progress["best_iteration"] < 0:  # a fresh run: the starting network is the first candidate
        progress["best_val"], progress["best_iteration"] = validate(candidate, task, config, candidate_rule), 0
        save_best()
        keep_check(0)
        log.write(json.dumps({"iteration": 0, "elapsed": 0.0, "skipped": 0, "val": progress["best_val"]}) + "\n")

    from tqdm import tqdm

    bar = tqdm(range(progress["iteration"], config.iterations), initial=progress["iteration"],
               total=config.iterations, desc="meta-train", dynamic_ncols=True, disable=not writer)
    started = time.time() - progress["elapsed"]
    try:
        for iteration in bar:
            seeds = training_seeds(config, iteration)
            run = Unroll.start([task.sample(s, "train") for s in distributed.share(seeds)])
            horizon = horizons[progress["stage"]]
            with torch.no_grad():  # the episode's first minibatch loss sets each problem's floor
                floor = run.losses() * config.log_floor if config.log_floor else None
            episode = []
            for _ in range(horizon // config.truncation):
                loss = meta_loss(advance(network, run, config.truncation, rule=rule), config.objective, floor)
                overall = distributed.mean(loss.detach().reshape(1))  # non-finite if any process's loss is
                if not torch.isfinite(overall):
                    break
                meta_optimizer.zero_grad()
                loss.backward()
                distributed.average_gradients(network.parameters())  # all networks' weights, in one buffer
                grads_ok = all(torch.isfinite(p.grad).all() for p in network.parameters() if p.grad is not None)
                if not grads_ok:
                    break
                torch.nn.utils.clip_grad_norm_(network.parameters(), config.clip)
                meta_optimizer.step()
                if averaged is not None:
                    averaged.update_parameters(network)
                progress["meta_updates"] += 1
                episode.append(overall.item())
                run.detach()
            else:
                progress["in_a_row"] = 0
            if len(episode) < horizon // config.truncation:
                progress["skipped"] += 1
                progress["in_a_row"] += 1
                if progress["in_a_row"] >= config.max_nonfinite:
                    kept = (f"the best weights so far (iteration {progress['best_iteration']}) are in {out}"
                            if progress["best_iteration"] >= 0 else "no weights were saved (no validation yet)")
                    raise DivergedError(f"{config.max_nonfinite} meta-iterations in a row had a non-finite "
                                        f"meta-loss; stopped: {kept}. Try a new run with a lower --meta-lr, or "
                                        "--resume with a higher --max-nonfinite")
            progress["iteration"] = iteration + 1
            progress["elapsed"] = time.time() - started
            record = {"iteration": iteration + 1, "meta_loss": sum(episode) / max(len(episode), 1),
                      "elapsed": round(progress["elapsed"], 1), "skipped": progress["skipped"], "horizon": horizon}
            if (iteration + 1) % config.eval_every == 0 or iteration + 1 == config.iterations:
                candidate.eval()
                record["val"] = validate(candidate, task, config, candidate_rule)
                candidate.train()
                keep_check(iteration + 1)
                progress["since_best"] += 1
                if record["val"] < progress["best_val"]:
                    progress["best_val"], progress["best_iteration"] = record["val"], iteration + 1
                    progress["since_best"] = 0
                    save_best()
                if progress["since_best"] >= config.patience and progress["stage"] + 1 < len(horizons):
                    progress["stage"] += 1
                    progress["since_best"] = 0
                bar.set_postfix(meta=f"{record['meta_loss']:.3g}", val=f"{record['val']:.4g}",
                                best=f"{progress['best_val']:.4g}")
            log.write(json.dumps(record) + "\n")
            log.flush()
            save_checkpoint()  # every iteration (a small file): a kill loses at most the iteration under way
    except KeyboardInterrupt:
        # Not saved now: mid-iteration the network is partly updated, and resuming from it would not reproduce
        # an uninterrupted run. The checkpoint of the last whole iteration is on disk.
        if writer:
            print(f"\ninterrupted: the last complete meta-iteration is saved in {checkpoint_path}; continue with "
                  "--resume", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        log.close()
    summary = {**progress, "command": command, "config": asdict(config), "machine": machine_description(),
               "processes": distributed.world_size(),
               "wall_seconds": round(progress["elapsed"], 1),
               "parent": parent}
    if writer:
        write_card(out, summary)
    return summary


def parent_record(network: CoordinatewiseLSTM) -> dict[str, str | None]:
    """What ``--init-weights`` loaded, for the model card: the name given, the folder read, the hub commit (``None``
    for bundled and local weights) and the sha256 of the parent's weights file, which identifies them whatever
    their source."""
    source = network.source
    digest = hashlib.sha256((Path(source.folder) / WEIGHTS_FILE).read_bytes()).hexdigest()
    return {**asdict(source), "sha256": digest}


def write_card(out: Path, summary: dict[str, Any]) -> None:
    """The model card: task, every flag, seed, data, wall time, machine, the parent weights of a fine-tuning run
    (also as the hub's ``base_model`` when they came from the hub); ``evaluate`` appends its table."""
    config, parent = summary["config"], summary.get("parent")
    lineage = "" if parent is None else (
        f"- fine-tuned from `{parent['weights']}` at revision `{parent['revision'] or 'none (bundled or local)'}`"
        f", {WEIGHTS_FILE} sha256 `{parent['sha256']}`\n")
    base_model = f"base_model: {parent['weights']}\n" if parent and parent["revision"] else ""
    data = f"`{config['data_dir']}`" if config["task"] != "quadratic" else "generated"
    horizons = [*config["curriculum"], config["horizon"]]
    run = (f"- seed {config['seed']}; {summary['iteration']} meta-iterations, {summary['meta_updates']} meta-updates, "
           f"{summary['skipped']} skipped (non-finite)")
    best = (f"- best validation {config['val_metric'].replace('_', ' ')} {summary['best_val']:.4f} at iteration "
            f"{summary['best_iteration']} ({config['val_problems']} val problems, {config['horizon']} steps)"
            f"{averaging_note(config)}")
    stages = (f"- horizons {horizons}, truncations of {config['truncation']} steps; the last stage reached: "
              f"{horizons[summary['stage']]} steps")
    text = f"""---
library_name: torch_lstm_optim
tags: [learned-optimizer, learning-to-learn, pytorch]
{base_model}---
# {Path(config['out']).name}: a coordinatewise LSTM optimizer meta-trained on `{config['task']}`

Produced by the project's meta-trainer with:

```
{summary['command']}
```

- task: `{config['task']}` {config['task_arg'] or ''}; data: {data}
{lineage}{run}
{best}
{stages}
- wall time {summary['wall_seconds'] / 60:.1f} min on {summary['machine']}{processes_note(summary, config)}

Load it with `LSTMOptimizer(model.parameters(), weights="<this folder or name>")`.

## Flags

```json
{json.dumps(config, indent=1)}
```
"""
    atomic_write(out / "README.md", lambda handle: handle.write(text.encode("utf-8")))


def averaging_note(config: dict[str, Any]) -> str:
    """The model card's note on what was kept when the weights were averaged (nothing without averaging)."""
    decay = config["average_decay"]
    return f"; the weights kept are the moving average of the trained ones (decay {decay} per meta-update)" \
        if decay else ""


def processes_note(summary: dict[str, Any], config: dict[str, Any]) -> str:
    """The model card's note on distributed meta-training (nothing for one process)."""
    n = summary.get("processes", 1)
    return "" if n == 1 else (f", {n} processes (torchrun, gloo), {config['meta_batch'] // n} problems of the "
                              "meta-batch each, meta-gradients averaged")


def main(argv: list[str] | None = None) -> None:
    """The CLI. Bad flags, task, data, weights or checkpoint exit with code 2, a failed run (diverged, or an
    output folder that cannot be written) with 1: one ``error:`` line on stderr, no traceback."""
    config, network_config = parse_args(argv)
    processes = distributed.launched_processes()
    launcher = "python -m" if processes == 1 else f"torchrun --nproc-per-node {processes} -m"  # for the card
    command = f"{launcher} torch_lstm_optim.meta_train " + shlex.join(argv if argv is not None else sys.argv[1:])
    try:
        with distributed.process_group():
            summary = train(config, network_config, command)
            if distributed.rank() != 0:
                return
        print(f"best validation {config.val_metric} {summary['best_val']:.4f} at iteration "
              f"{summary['best_iteration']}; "
              f"weights in {config.out}")
        if config.push_to_hub:
            try:
                push_to_hub(config.out, config.push_to_hub)
            except PushError as error:
                print(f"error: {error}; the weights are in {config.out}: push them later with python -m "
                      f"torch_lstm_optim.hub push {config.out} {config.push_to_hub}", file=sys.stderr)
                raise SystemExit(1) from None
    except (TaskError, WeightsError, CheckpointError, OutputError, DivergedError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1 if isinstance(error, (DivergedError, OSError)) else 2) from None


if __name__ == "__main__":
    main()
