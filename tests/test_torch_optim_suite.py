"""PyTorch's generic optimizer tests (``TestOptimRenewed`` of upstream ``test/test_optim.py``) on ``LSTMOptimizer``.

torch's own optimizers are held to one suite: every optimizer in ``optim_db`` gets the same generic tests, driven by
its ``OptimizerInfo`` (``torch/testing/_internal/common_optimizers.py``, installed with torch). Here
``LSTMOptimizer`` gets an ``OptimizerInfo`` and the same tests, as a user's framework would run them.

Upstream's ``test/test_optim.py`` is not in the wheel and is not copied here: each test below is written for this
project, one per upstream test and under the same name, checking what the upstream test checks (read from upstream
``test/test_optim.py`` of the torch 2.6-2.14 series: the version whose ``test_tensor_lr`` is parametrized over
``num_dim``), with torch's installed harness: ``OptimizerInfo``, ``@optims``, ``@parametrize``,
``_get_optim_inputs_including_global_cliquey_kwargs``, ``TensorTracker``, ``instantiate_device_type_tests``.
Generated names read ``TestOptimRenewedCPU::test_<upstream name>[_<params>]_LSTMOptimizer_cpu_<dtype>``.
Tests whose results do not depend on the parameters' dtype run in float32 (as upstream); the numerical ones run in
float32 and float64 (complex64 and complex128 for the complex ones), which costs a few seconds.

Upstream tests not run, and why. Upstream filters most of them itself: a test of foreach, fused, sparse or
closure-requiring optimizers is generated only for an ``OptimizerInfo`` declaring that support, which this one
truthfully does not (``supported_impls=()``, ``supports_fused_on=()``, ``supports_sparse=False``):

================================================  =====================================================================
Upstream test                                     Why it does not run here
================================================  =====================================================================
test_foreach_matches_forloop                      compares foreach=True with False: there is one implementation
test_set_default_dtype_works_with_foreach         the foreach implementation (there is none); CUDA-only
test_foreach_large_tensor                         the foreach implementation (none); CUDA-only, 2**32 elements (72 GB)
test_peak_memory_foreach                          the foreach implementation (none); CUDA-only
test_defaults_changed_to_foreach                  the foreach implementation (none); CUDA-only
test_mixed_device_dtype                           the foreach/fused implementations (none); needs 2 GPUs
test_fused_matches_forloop                        the fused implementation (none)
test_fused_error_on_params_on_meta                the fused implementation (none)
test_fused_large_tensor                           the fused implementation (none); 2**32 elements (64 GB)
test_fused_does_not_step_if_foundinf              the fused implementation (none); CUDA-only
test_fused_cpu_matches_cuda                       the fused implementation (none); CUDA-only
test_cpu_load_state_dict                          fused/capturable implementations (none); non-CPU devices only
test_rosenbrock_sparse                            sparse gradients are refused by design, with a RuntimeError naming
                                                  the parameter (checked in test_errors here and test_optimizer.py)
test_second_order_optims_return_consistent_types  closure-requiring optimizers (LBFGS); step() here needs no closure
test_adamw_serialization                          about AdamW and Adam only: it takes no OptimizerInfo
test_forloop_goes_right_direction_multigpu        CUDA-only, 2 GPUs; CI and this project's machines have no GPU
test_state_dict_with_cuda_params                  CUDA-only; CI and this project's machines have no GPU
================================================  =====================================================================

Everything else runs: 28 upstream tests, 57 cases with their parametrizations and dtypes, in about 8 s on one CPU
thread (12 s with pytest's start-up). None needed a hand-written closed-form reference (``TestOptimRenewed`` has
none; the learned rule's exact updates are checked against ``CoordinatewiseLSTM.step`` in ``test_optimizer.py``).
"""

from __future__ import annotations

import functools
import tempfile
from copy import deepcopy
from typing import Any

import torch
from torch.nn import Parameter
from torch.optim import SGD, Optimizer
from torch.optim.lr_scheduler import ExponentialLR, ReduceLROnPlateau, StepLR
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.testing._internal.common_device_type import instantiate_device_type_tests, onlyCPU
from torch.testing._internal.common_optimizers import (
    ErrorOptimizerInput,
    OptimizerErrorEnum,
    OptimizerInfo,
    OptimizerInput,
    TensorTracker,
    _get_device_type,
    _get_optim_inputs_including_global_cliquey_kwargs,
    get_error_inputs_for_all_optims,
    optims,
)
from torch.testing._internal.common_utils import TestCase, parametrize

from torch_lstm_optim import LSTMOptimizer

# Dtypes of the numerical tests (upstream runs them in float32 only; float64 is cheap here).
REAL = [torch.float32, torch.float64]
COMPLEX = [torch.complex64, torch.complex128]


def optim_inputs_func_lstm(device: str, dtype: torch.dtype | None = None) -> list[OptimizerInput]:
    """Constructor kwargs the generic tests combine with their parameters (fresh objects on every call, so a Tensor
    lr mutated by a scheduler in one test does not leak into the next)."""
    return [
        OptimizerInput(params=None, kwargs={}, desc="default"),
        OptimizerInput(params=None, kwargs={"lr": 0.5}, desc="non-default lr"),
        OptimizerInput(params=None, kwargs={"lr": torch.tensor(0.5)}, desc="Tensor lr"),
        OptimizerInput(params=None, kwargs={"weight_decay": 0.1}, desc="nonzero weight_decay"),
        OptimizerInput(params=None, kwargs={"maximize": True}, desc="maximize"),
        OptimizerInput(params=None, kwargs={"weight_decay": 0.1, "maximize": True}, desc="maximize, weight_decay"),
        # LSTMOptimizer's own options: several coordinates chunks per step, and half-size state.
        OptimizerInput(params=None, kwargs={"chunk_size": 7}, desc="small chunks"),
        OptimizerInput(params=None, kwargs={"state_dtype": torch.bfloat16}, desc="bfloat16 state"),
    ]


def optim_error_inputs_func_lstm(device: str, dtype: torch.dtype) -> list[ErrorOptimizerInput]:
    """torch's errors for every optimizer (including ``Tensor lr must be 1-element``) plus LSTMOptimizer's own."""
    error_inputs = get_error_inputs_for_all_optims(device, dtype)
    if _get_device_type(device) != "cpu":
        return error_inputs
    sparse = Parameter(torch.randn(2, 2, device=device, dtype=dtype))
    sparse.grad = torch.randn(2, 2, device=device, dtype=dtype).to_sparse()
    return error_inputs + [
        ErrorOptimizerInput(OptimizerInput(params=None, kwargs=dict(lr=-1e-2), desc="negative lr"),
                            error_type=ValueError, error_regex=r"Invalid learning rate: -0\.01"),
        ErrorOptimizerInput(OptimizerInput(params=None, kwargs=dict(lr=torch.tensor(-1.0)), desc="negative Tensor lr"),
                            error_type=ValueError, error_regex="Invalid learning rate: tensor"),
        ErrorOptimizerInput(OptimizerInput(params=None, kwargs=dict(lr=torch.ones(1, 2)), desc="lr of shape (1, 2)"),
                            error_type=ValueError, error_regex="Tensor lr must be 1-element"),
        ErrorOptimizerInput(OptimizerInput(params=None, kwargs=dict(weight_decay=-0.5), desc="negative weight_decay"),
                            error_type=ValueError, error_regex=r"Invalid weight_decay: -0\.5"),
        ErrorOptimizerInput(OptimizerInput(params=[sparse], kwargs={}, desc="sparse gradient"),
                            error_on=OptimizerErrorEnum.STEP_ERROR, error_type=RuntimeError,
                            error_regex="does not support sparse gradients"),
    ]


lstm_optim_info = OptimizerInfo(
    LSTMOptimizer,
    optim_inputs_func=optim_inputs_func_lstm,
    optim_error_inputs_func=optim_error_inputs_func_lstm,
    scheduler_inputs=(
        [lambda opt: StepLR(opt, gamma=0.9, step_size=10), lambda opt: ReduceLROnPlateau(opt)],
        [lambda opt: ExponentialLR(opt, gamma=0.95)],
    ),
    supported_impls=(),  # one implementation: no foreach, fused or differentiable kwargs
    not_og_supported_flags=(),  # lr, weight_decay and maximize were in the first release (commit 3a89106)
    supports_sparse=False,  # sparse gradients raise a RuntimeError naming the parameter
    supports_complex=True,  # stepped as torch.view_as_real(p), as torch's optimizers do
    step_requires_closure=False,
    supports_param_groups=True,
    supports_multiple_devices=True,  # one batch per (network, device)
    supports_fused_on=(),
)
optim_db = [lstm_optim_info]


def _quadratic(weight: torch.Tensor, bias: torch.Tensor, inpt: torch.Tensor) -> torch.Tensor:
    return (weight.mv(inpt) + bias).pow(2).sum()


def _step_all(optim_info: OptimizerInfo, optimizer: Optimizer, closure: Any) -> None:
    if optim_info.step_requires_closure:
        optimizer.step(closure)
    else:
        closure()
        optimizer.step()


# Module-level helpers: torch copies the test class's attributes into the device class, which would bind them.
def _fwd_bwd_model(optim, model, inpt):
    optim.zero_grad()
    loss = model(inpt).sum()
    loss.backward()
    return loss


def _state_dict_pre_hook(optimizer: Optimizer) -> None:
    optimizer.state["test"] = 1


def _state_dict_post_hook(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    state_dict["ran_state_dict_pre_hook"] = state_dict["state"].pop("test", None) is not None
    return state_dict


def _load_state_dict_pre_hook1(optimizer: Optimizer, state_dict: dict[str, Any]) -> None:
    state_dict["param_groups"][0]["lr"] = 0.002


def _load_state_dict_pre_hook2(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    state_dict = deepcopy(state_dict)  # a hook may return a new state dict, loaded in place of the one given
    state_dict["param_groups"][0]["lr"] = 0.003
    return state_dict


def _load_state_dict_post_hook(optimizer: Optimizer) -> None:
    optimizer.state["ran_load_state_dict_pre_hook2"] = optimizer.param_groups[0]["lr"] == 0.003
    optimizer.state["ran_load_state_dict_post_hook"] = True


class TestOptimRenewed(TestCase):
    """The generic tests, one per upstream test of the same name (see the module docstring for those not here)."""

    @onlyCPU
    @optims(optim_db)
    def test_optim_infos_do_not_specify_global_cliquey_kwargs(self, device, dtype, optim_info):
        for optim_input in optim_info.optim_inputs_func(device=device):
            self.assertFalse({"foreach", "fused", "differentiable"} & set(optim_input.kwargs))

    @optims([o for o in optim_db if o.optim_error_inputs_func is not None])
    def test_errors(self, device, dtype, optim_info):
        optim_cls = optim_info.optim_cls
        for error_input in optim_info.optim_error_inputs_func(device=device, dtype=dtype):
            optim_input = error_input.optimizer_error_input
            params, kwargs = optim_input.params, optim_input.kwargs
            expect = self.assertWarnsRegex if issubclass(error_input.error_type, Warning) else self.assertRaisesRegex
            if error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
                with expect(error_input.error_type, error_input.error_regex):
                    optim_cls(params, **kwargs)
            elif error_input.error_on == OptimizerErrorEnum.STEP_ERROR:
                optimizer = optim_cls(params, **kwargs)
                with expect(error_input.error_type, error_input.error_regex):
                    optimizer.step()
            else:
                raise NotImplementedError(f"unknown error_on {error_input.error_on}")

    @parametrize("contiguous", [True, False])
    @parametrize("with_lrsched", [True, False])
    @optims(optim_db, dtypes=REAL)
    def test_forloop_goes_right_direction(self, device, dtype, optim_info, contiguous, with_lrsched):
        for schedulers_c in (optim_info.scheduler_inputs if with_lrsched else [[]]):
            for optim_input in optim_info.optim_inputs_func(device=device):  # fresh (Tensor lrs get mutated)
                if contiguous:
                    weight = Parameter(torch.randn(10, 5, device=device, dtype=dtype))
                    bias = Parameter(torch.randn(10, device=device, dtype=dtype))
                else:
                    weight = Parameter(torch.randn(10, 5, 2, device=device, dtype=dtype)[..., 0])
                    bias = Parameter(torch.randn(10, 2, device=device, dtype=dtype)[..., 0])
                inpt = torch.randn(5, device=device, dtype=dtype)
                optimizer = optim_info.optim_cls([weight, bias], **optim_input.kwargs)
                schedulers = [s(optimizer) for s in schedulers_c]

                def closure():
                    optimizer.zero_grad()
                    loss = _quadratic(weight, bias, inpt)
                    loss.backward()
                    return loss

                initial = closure().item()
                for _ in range(20):
                    loss = closure()
                    optimizer.step()
                    for scheduler in schedulers:
                        scheduler.step(loss.item()) if isinstance(scheduler, ReduceLROnPlateau) else scheduler.step()
                final = closure().item()
                if optim_input.kwargs.get("maximize", False):
                    self.assertGreater(final, initial, msg=optim_input.desc)
                else:
                    self.assertLess(final, initial, msg=optim_input.desc)

    @optims(optim_db, dtypes=REAL)
    def test_param_group_with_lrscheduler_goes_right_direction(self, device, dtype, optim_info):
        for schedulers_c in optim_info.scheduler_inputs:
            weight = Parameter(torch.randn(10, 5, device=device, dtype=dtype))
            weight2 = Parameter(torch.randn(10, 5, device=device, dtype=dtype))
            inpt = torch.randn(5, device=device, dtype=dtype)
            optimizer = optim_info.optim_cls([{"params": [weight]}, {"params": [weight2], "lr": 0.01}])
            schedulers = [s(optimizer) for s in schedulers_c]

            def closure():
                optimizer.zero_grad()
                loss = (weight.mv(inpt) + weight2.mv(inpt)).pow(2).sum()
                loss.backward()
                return loss

            initial = closure().item()
            for _ in range(20):
                loss = optimizer.step(closure)
                for scheduler in schedulers:
                    scheduler.step(loss.item()) if isinstance(scheduler, ReduceLROnPlateau) else scheduler.step()
            self.assertLess(closure().item(), initial)

    @parametrize("num_dim", [0, 1, 2])
    @optims(optim_db, dtypes=REAL)
    def test_tensor_lr(self, device, dtype, optim_info, num_dim):
        """A Tensor lr of shape ``[1] * num_dim`` steps exactly as the same float lr."""
        lr_devices = [device] if _get_device_type(device) == "cpu" else [device, "cpu"]
        all_optim_inputs = _get_optim_inputs_including_global_cliquey_kwargs(device, dtype, optim_info,
                                                                             skip=("differentiable",))
        for optim_input in all_optim_inputs:
            for lr_device in lr_devices:
                weight = Parameter(torch.randn(10, 5, device=device, dtype=dtype))
                bias = Parameter(torch.randn(10, device=device, dtype=dtype))
                weight_c = weight.detach().clone().requires_grad_(True)
                bias_c = bias.detach().clone().requires_grad_(True)
                inpt = torch.randn(5, device=device, dtype=dtype)
                kwargs = {**optim_input.kwargs, "lr": 1e-3}
                optimizer_r = optim_info.optim_cls([weight, bias], **kwargs)
                kwargs["lr"] = torch.tensor(1e-3).reshape([1] * num_dim).to(lr_device)
                optimizer = optim_info.optim_cls([weight_c, bias_c], **kwargs)
                for _ in range(5):
                    for optim, w, b in ((optimizer_r, weight, bias), (optimizer, weight_c, bias_c)):
                        optim.zero_grad()
                        _quadratic(w, b, inpt).backward()
                        optim.step()
                    self.assertEqual(weight, weight_c)
                    self.assertEqual(bias, bias_c)

    @optims([o for o in optim_db if o.supports_complex], dtypes=COMPLEX)
    def test_complex(self, device, dtype, optim_info):
        """Complex parameters step exactly as their ``view_as_real`` twins, mixed with a real parameter."""
        real_dtype = torch.float32 if dtype == torch.complex64 else torch.float64
        all_optim_inputs = _get_optim_inputs_including_global_cliquey_kwargs(device, dtype, optim_info,
                                                                             skip=("differentiable", "fused"))
        for optim_input in all_optim_inputs:
            complex_params = [torch.randn(10, 5, device=device, dtype=dtype, requires_grad=True),
                              torch.randn(10, device=device, dtype=dtype, requires_grad=True),
                              torch.randn(10, 5, device=device, dtype=real_dtype, requires_grad=True)]
            real_params = [(torch.view_as_real(p) if p.is_complex() else p).detach().clone().requires_grad_()
                           for p in complex_params]
            complex_optimizer = optim_info.optim_cls(complex_params, **optim_input.kwargs)
            real_optimizer = optim_info.optim_cls(real_params, **optim_input.kwargs)
            real_steps, complex_steps = [], []
            for _ in range(3):
                for real, cplx in zip(real_params, complex_params):
                    grad = torch.randn_like(real)
                    real.grad = grad
                    cplx.grad = torch.view_as_complex(grad.clone()) if cplx.is_complex() else grad.clone()
                    real_steps.append(real.detach().clone())
                    complex_steps.append(torch.view_as_real_copy(cplx.detach()) if cplx.is_complex()
                                         else cplx.detach().clone())
                real_optimizer.step()
                complex_optimizer.step()
            self.assertEqual(real_params, [torch.view_as_real(p) if p.is_complex() else p for p in complex_params])
            self.assertEqual(complex_steps, real_steps)

    @optims([o for o in optim_db if o.supports_complex], dtypes=COMPLEX)
    def test_complex_2d(self, device, dtype, optim_info):
        """A complex parameter steps as its real and imaginary parts given as two real parameters.

        Upstream's premise, an elementwise rule, holds for a rule without tensor-level inputs (``generalist-v1``):
        the default reads each parameter's rms, which for a complex parameter is over both parts together and for
        the two real ones is each part's (``test_complex`` checks the default on the ``view_as_real`` twin)."""
        all_optim_inputs = [OptimizerInput(params=o.params, kwargs={**o.kwargs, "weights": "generalist-v1"},
                                           desc=o.desc)
                            for o in _get_optim_inputs_including_global_cliquey_kwargs(
                                device, dtype, optim_info, skip=("differentiable", "fused"))]

        def rosenbrock(t):
            x, y = t
            return (1 - x) ** 2 + 100 * (y - x ** 2) ** 2

        for optim_input in all_optim_inputs:
            a1 = torch.randn(2, device=device, dtype=dtype, requires_grad=True)
            a1_real = a1.real.detach().clone().requires_grad_()
            a1_imag = a1.imag.detach().clone().requires_grad_()
            optim1 = optim_info.optim_cls([a1], **optim_input.kwargs)
            optim2 = optim_info.optim_cls([a1_real, a1_imag], **optim_input.kwargs)
            trackers = [TensorTracker() for _ in range(5)]
            reals, imags, grad_reals, grad_imags, losses = trackers
            for _ in range(3):
                optim1.zero_grad()
                loss = rosenbrock(a1).abs()
                loss.backward()
                for tracker, value in zip(trackers, (a1.real, a1.imag, a1.grad.real, a1.grad.imag, loss)):
                    tracker.add(value)
                optim2.zero_grad()
                reals.pop_check_set(a1_real, self)
                imags.pop_check_set(a1_imag, self)
                loss2 = rosenbrock(torch.complex(a1_real, a1_imag)).abs()
                losses.pop_check_set(loss2, self)
                loss2.backward()
                grad_reals.pop_check_set(a1_real.grad, self)
                grad_imags.pop_check_set(a1_imag.grad, self)
                optim1.step()
                optim2.step()
                self.assertEqual(a1.real, a1_real)
                self.assertEqual(a1.imag, a1_imag)
            self.assertTrue(all(tracker.all_popped() for tracker in trackers))

    @optims(optim_db, dtypes=REAL)
    def test_param_groups_weight_decay(self, device, dtype, optim_info):
        all_optim_inputs = _get_optim_inputs_including_global_cliquey_kwargs(device, dtype, optim_info,
                                                                             skip=("differentiable",))
        for optim_input in all_optim_inputs:
            weight = Parameter(torch.randn(10, 5, device=device, dtype=dtype))
            bias = Parameter(torch.randn(10, device=device, dtype=dtype))
            inpt = torch.randn(5, device=device, dtype=dtype)
            optimizer = optim_info.optim_cls([dict(params=[weight], **optim_input.kwargs),
                                              dict(params=[bias], **{**optim_input.kwargs, "weight_decay": 0.0})])
            initial = _quadratic(weight, bias, inpt).item()
            for _ in range(20):
                optimizer.zero_grad()
                loss = _quadratic(weight, bias, inpt)
                loss.backward()
                optimizer.step()
            if optim_input.kwargs.get("maximize", False):
                self.assertGreater(loss.item(), initial, msg=optim_input.desc)
            else:
                self.assertLess(loss.item(), initial, msg=optim_input.desc)

    @optims(optim_db, dtypes=REAL)
    def test_param_groups_lr(self, device, dtype, optim_info):
        """A group's own lr is used; a group left with an outer lr of 1e-28 does not move."""
        all_optim_inputs = _get_optim_inputs_including_global_cliquey_kwargs(device, dtype, optim_info,
                                                                             skip=("differentiable",))
        for optim_input in all_optim_inputs:
            kwargs = dict(optim_input.kwargs)
            if "lr" not in kwargs or kwargs["lr"] == 0:
                kwargs["lr"] = 1e-3
            weight = Parameter(torch.randn(10, 5, device=device, dtype=dtype))
            bias = Parameter(torch.randn(10, device=device, dtype=dtype))
            irrelevant = Parameter(torch.randn(2, device=device, dtype=dtype))
            irrelevant_clone = irrelevant.detach().clone()
            inpt = torch.randn(5, device=device, dtype=dtype)
            optimizer = optim_info.optim_cls([dict(params=[weight, bias], **kwargs), dict(params=[irrelevant])],
                                             lr=1e-28)
            initial = _quadratic(weight, bias, inpt).item()
            for _ in range(20):
                optimizer.zero_grad()
                loss = _quadratic(weight, bias, inpt)
                loss.backward()
                irrelevant.grad = torch.rand_like(irrelevant)
                optimizer.step()
            if kwargs.get("maximize", False):
                self.assertGreater(loss.item(), initial, msg=optim_input.desc)
            else:
                self.assertLess(loss.item(), initial, msg=optim_input.desc)
            self.assertEqual(irrelevant, irrelevant_clone)

    @optims(optim_db)
    def test_step_is_noop_when_params_have_no_grad(self, device, dtype, optim_info):
        params = [torch.randn(2, 3, requires_grad=False, device=device, dtype=dtype) for _ in range(2)]
        old_params = [p.detach().clone() for p in params]
        for optim_input in _get_optim_inputs_including_global_cliquey_kwargs(device, dtype, optim_info):
            optimizer = optim_info.optim_cls(params, **optim_input.kwargs)
            optimizer.step(lambda: torch.tensor([1], device=device, dtype=dtype))
        self.assertEqual(old_params, params)

    @optims(optim_db, dtypes=REAL)
    def test_step_is_noop_for_zero_grads(self, device, dtype, optim_info):
        """A fresh optimizer given all-zero gradients (and no weight decay) leaves the parameter where it was."""
        param = torch.randn(5, 1, device=device, dtype=dtype, requires_grad=True)
        old_param = param.detach().clone()
        for optim_input in _get_optim_inputs_including_global_cliquey_kwargs(device, dtype, optim_info):
            if optim_input.kwargs.get("weight_decay", 0) != 0:  # decay moves parameters whatever the gradient
                continue
            optimizer = optim_info.optim_cls([param], **optim_input.kwargs)
            param.grad = torch.zeros_like(param)
            optimizer.step(lambda: torch.tensor([1], device=device, dtype=dtype))
            self.assertEqual(old_param, param, msg=optim_input.desc)

    @optims(optim_db)
    def test_optimizer_can_be_printed(self, device, dtype, optim_info):
        params = [Parameter(torch.randn(2, 3, device=device, dtype=dtype)) for _ in range(2)]
        for optim_input in _get_optim_inputs_including_global_cliquey_kwargs(device, dtype, optim_info):
            self.assertIn("LSTMOptimizer", repr(optim_info.optim_cls(params, **optim_input.kwargs)))

    @parametrize("is_named_optim0", [True, False])
    @parametrize("is_named_optim1", [True, False])
    @optims(optim_db, dtypes=REAL)
    def test_state_dict_deterministic(self, device, dtype, optim_info, is_named_optim0, is_named_optim1):
        """A state dict loaded into a fresh optimizer continues exactly, and both give equal state dicts."""
        all_optim_inputs = _get_optim_inputs_including_global_cliquey_kwargs(device, dtype, optim_info,
                                                                             skip=("differentiable",))
        weight = Parameter(torch.randn(2, 3, device=device, dtype=dtype))
        bias = Parameter(torch.randn(2, device=device, dtype=dtype))
        inpt = torch.randn(3, device=device, dtype=dtype)

        def named(params, is_named):
            return [(f"name{i}", p) for i, p in enumerate(params)] if is_named else params

        def without_param_names(state_dict):
            state_dict = deepcopy(state_dict)
            for group in state_dict["param_groups"]:
                group.pop("param_names", None)
            return state_dict

        def fwd_bwd(optim, w, b):
            optim.zero_grad()
            loss = _quadratic(w, b, inpt)
            loss.backward()
            return loss

        for optim_input in all_optim_inputs:
            optimizer = optim_info.optim_cls(named([weight, bias], is_named_optim0), **optim_input.kwargs)
            closure = functools.partial(fwd_bwd, optimizer, weight, bias)
            for _ in range(10):
                _step_all(optim_info, optimizer, closure)
            with torch.no_grad():
                weight_c, bias_c = Parameter(weight.clone()), Parameter(bias.clone())
            optimizer_c = optim_info.optim_cls(named([weight_c, bias_c], is_named_optim1), **optim_input.kwargs)
            closure_c = functools.partial(fwd_bwd, optimizer_c, weight_c, bias_c)
            optimizer_c.load_state_dict(deepcopy(optimizer.state_dict()))
            for _ in range(10):
                _step_all(optim_info, optimizer, closure)
                _step_all(optim_info, optimizer_c, closure_c)
                self.assertEqual(weight, weight_c)
                self.assertEqual(bias, bias_c)
            self.assertEqual(without_param_names(optimizer.state_dict()),
                             without_param_names(optimizer_c.state_dict()))
            # Repeated parameters have identical representations (upstream #36831).
            optimizer_c.param_groups.extend(optimizer_c.param_groups)
            self.assertEqual(without_param_names(optimizer.state_dict())["param_groups"][-1],
                             without_param_names(optimizer_c.state_dict())["param_groups"][-1])

    def _conv_bn_model(self, device, dtype):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1, stride=2), torch.nn.BatchNorm2d(2, momentum=0.1))
        return model.to(dtype=dtype, device=device), torch.rand(1, 4, 16, 16, device=device, dtype=dtype)

    @optims(optim_db)
    def test_can_load_older_state_dict(self, device, dtype, optim_info):
        """A state dict without the flags added after the first release (``not_og_supported_flags``) loads."""
        all_optim_inputs = _get_optim_inputs_including_global_cliquey_kwargs(device, dtype, optim_info,
                                                                             skip=("differentiable",))
        for optim_input in all_optim_inputs:
            model, inpt = self._conv_bn_model(device, dtype)
            optimizer = optim_info.optim_cls(model.parameters(), **optim_input.kwargs)
            closure = functools.partial(_fwd_bwd_model, optimizer, model, inpt)
            for _ in range(3):
                _step_all(optim_info, optimizer, closure)
            old_state_dict = deepcopy(optimizer.state_dict())
            for group in old_state_dict["param_groups"]:
                for flag in optim_info.not_og_supported_flags:
                    group.pop(flag, None)
            optimizer.load_state_dict(old_state_dict)
            _step_all(optim_info, optimizer, closure)

    @parametrize("is_named_optim0", [True, False])
    @parametrize("is_named_optim1", [True, False])
    @optims([o for o in optim_db if not o.only_supports_sparse_grads])
    def test_can_load_from_to_named_state_dict(self, device, dtype, optim_info, is_named_optim0, is_named_optim1):
        all_optim_inputs = _get_optim_inputs_including_global_cliquey_kwargs(device, dtype, optim_info,
                                                                             skip=("differentiable",))
        for optim_input in all_optim_inputs:
            model, inpt = self._conv_bn_model(device, dtype)
            params = model.named_parameters() if is_named_optim0 else model.parameters()
            optimizer = optim_info.optim_cls(params, **optim_input.kwargs)
            for _ in range(3):
                _step_all(optim_info, optimizer, functools.partial(_fwd_bwd_model, optimizer, model, inpt))
            old_state_dict = deepcopy(optimizer.state_dict())
            params2 = model.named_parameters() if is_named_optim1 else model.parameters()
            optimizer2 = optim_info.optim_cls(params2, **optim_input.kwargs)
            optimizer2.load_state_dict(old_state_dict)
            _step_all(optim_info, optimizer2, functools.partial(_fwd_bwd_model, optimizer2, model, inpt))
            if is_named_optim0 or is_named_optim1:
                self.assertEqual(optimizer2.state_dict()["param_groups"][0]["param_names"],
                                 ["0.weight", "0.bias", "1.weight", "1.bias"])

    @parametrize("is_named_optim", [True, False])
    @optims(optim_db)
    def test_save_load_equality_with_weights_only(self, device, dtype, optim_info, is_named_optim):
        """``torch.save`` then ``torch.load`` (also ``weights_only=True``) gives back an equal state dict."""
        all_optim_inputs = _get_optim_inputs_including_global_cliquey_kwargs(device, dtype, optim_info,
                                                                             skip=("differentiable",))
        weight = Parameter(torch.randn(2, 3, device=device, dtype=dtype))
        bias = Parameter(torch.randn(2, device=device, dtype=dtype))
        inpt = torch.randn(3, device=device, dtype=dtype)
        for optim_input in all_optim_inputs:
            params = [("name0", weight), ("name1", bias)] if is_named_optim else [weight, bias]
            optimizer = optim_info.optim_cls(params, **optim_input.kwargs)

            def closure():
                optimizer.zero_grad()
                loss = _quadratic(weight, bias, inpt)
                loss.backward()
                return loss

            for _ in range(3):
                optimizer.step(closure)
            state_dict = optimizer.state_dict()
            with tempfile.TemporaryFile() as f:
                torch.save(state_dict, f)
                f.seek(0)
                self.assertEqual(torch.load(f), state_dict)
                f.seek(0)
                self.assertEqual(torch.load(f, weights_only=True), state_dict)

    @optims(optim_db)
    def test_load_nontensor_step(self, device, dtype, optim_info):
        """A state dict whose ``step`` entries are Python numbers loads and steps."""
        all_optim_inputs = _get_optim_inputs_including_global_cliquey_kwargs(device, dtype, optim_info,
                                                                             skip=("differentiable",))
        params = [Parameter(torch.randn(2, 3, device=device, dtype=dtype)) for _ in range(2)]
        for p in params:
            p.grad = torch.rand_like(p)
        for optim_input in all_optim_inputs:
            optimizer = optim_info.optim_cls(params, **optim_input.kwargs)
            for _ in range(3):
                optimizer.step()
            state_dict = deepcopy(optimizer.state_dict())
            for p_state in state_dict["state"].values():
                if torch.is_tensor(p_state.get("step")):
                    p_state["step"] = p_state["step"].item()
            optimizer.load_state_dict(state_dict)
            optimizer.step()

    def _one_param_optimizers(self, device, dtype, optim_info):
        for optim_input in _get_optim_inputs_including_global_cliquey_kwargs(device, dtype, optim_info):
            param = torch.rand(2, 3, device=device, dtype=dtype, requires_grad=True)
            yield optim_info.optim_cls([param], **optim_input.kwargs)

    @optims(optim_db)
    def test_state_dict_pre_hook(self, device, dtype, optim_info):
        for optim in self._one_param_optimizers(device, dtype, optim_info):
            optim.register_state_dict_pre_hook(_state_dict_pre_hook)
            self.assertEqual(optim.state_dict()["state"]["test"], 1)

    @optims(optim_db)
    def test_state_dict_post_hook(self, device, dtype, optim_info):
        for optim in self._one_param_optimizers(device, dtype, optim_info):
            optim.register_state_dict_post_hook(_state_dict_post_hook)
            self.assertFalse(optim.state_dict()["ran_state_dict_pre_hook"])

    @optims(optim_db)
    def test_state_dict_pre_post_hook(self, device, dtype, optim_info):
        for optim in self._one_param_optimizers(device, dtype, optim_info):
            optim.register_state_dict_pre_hook(_state_dict_pre_hook)
            optim.register_state_dict_post_hook(_state_dict_post_hook)
            state_dict = optim.state_dict()
            self.assertNotIn("test", state_dict["state"])
            self.assertTrue(state_dict["ran_state_dict_pre_hook"])

    @optims(optim_db)
    def test_load_state_dict_pre_hook_and_prepend(self, device, dtype, optim_info):
        for optim in self._one_param_optimizers(device, dtype, optim_info):
            state_dict = optim.state_dict()
            optim.register_load_state_dict_pre_hook(_load_state_dict_pre_hook1)
            optim.load_state_dict(state_dict)
            self.assertEqual(optim.param_groups[0]["lr"], 0.002)
            # Prepended, hook2 runs first and hook1 then overwrites its lr.
            optim.register_load_state_dict_pre_hook(_load_state_dict_pre_hook2, prepend=True)
            optim.load_state_dict(state_dict)
            self.assertEqual(optim.param_groups[0]["lr"], 0.002)

    @optims(optim_db)
    def test_load_state_dict_post_hook(self, device, dtype, optim_info):
        for optim in self._one_param_optimizers(device, dtype, optim_info):
            optim.register_load_state_dict_post_hook(_load_state_dict_post_hook)
            optim.load_state_dict(optim.state_dict())
            self.assertFalse(optim.state["ran_load_state_dict_pre_hook2"])
            self.assertTrue(optim.state["ran_load_state_dict_post_hook"])

    @optims(optim_db)
    def test_load_state_dict_pre_post_hook(self, device, dtype, optim_info):
        for optim in self._one_param_optimizers(device, dtype, optim_info):
            optim.register_load_state_dict_pre_hook(_load_state_dict_pre_hook2)
            optim.register_load_state_dict_post_hook(_load_state_dict_post_hook)
            optim.load_state_dict(optim.state_dict())
            self.assertTrue(optim.state["ran_load_state_dict_pre_hook2"])
            self.assertTrue(optim.state["ran_load_state_dict_post_hook"])

    def _hook_params(self, device, dtype):
        return [torch.tensor([1, 1], device=device, dtype=dtype)]

    @optims(optim_db)
    def test_step_post_hook(self, device, dtype, optim_info):
        calls = []
        closure = (lambda: 1) if optim_info.step_requires_closure else None
        for optim_input in _get_optim_inputs_including_global_cliquey_kwargs(device, dtype, optim_info):
            optim = optim_info.optim_cls(self._hook_params(device, dtype), **optim_input.kwargs)
            calls.clear()
            handle = optim.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
            optim.step(closure)
            optim.step(closure)
            self.assertEqual(calls, ["post", "post"])
            handle.remove()
            optim.step(closure)
            self.assertEqual(calls, ["post", "post"])

    @optims(optim_db)
    def test_step_pre_hook(self, device, dtype, optim_info):
        calls = []
        closure = (lambda: 1) if optim_info.step_requires_closure else None
        for optim_input in _get_optim_inputs_including_global_cliquey_kwargs(device, dtype, optim_info):
            optim = optim_info.optim_cls(self._hook_params(device, dtype), **optim_input.kwargs)
            calls.clear()
            handle = optim.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
            optim.step(closure)
            optim.step(closure)
            self.assertEqual(calls, ["pre", "pre"])
            handle.remove()
            optim.step(closure)
            self.assertEqual(calls, ["pre", "pre"])

    @optims(optim_db)
    def test_step_all_hooks(self, device, dtype, optim_info):
        """Global pre, local pre, local post, global post: in that order, for this optimizer and for SGD."""
        data = []
        closure = (lambda: 1) if optim_info.step_requires_closure else None
        for optim_input in _get_optim_inputs_including_global_cliquey_kwargs(device, dtype, optim_info):
            params = self._hook_params(device, dtype)
            optim = optim_info.optim_cls(params, **optim_input.kwargs)
            optim2 = SGD(params)
            data.clear()
            handles = [register_optimizer_step_pre_hook(lambda *a: data.append(0)),
                       register_optimizer_step_post_hook(lambda *a: data.append(5))]
            try:
                for o in (optim, optim2):
                    handles += [o.register_step_pre_hook(lambda *a: data.append(1)),
                                o.register_step_post_hook(lambda *a: data.append(2))]
                optim.step(closure)
                self.assertEqual(data, [0, 1, 2, 5])
                optim2.step(closure)
                self.assertEqual(data, [0, 1, 2, 5] * 2)
                optim.step(closure)
                self.assertEqual(data, [0, 1, 2, 5] * 3)
            finally:
                for handle in handles:
                    handle.remove()
            optim.step(closure)
            optim2.step(closure)
            self.assertEqual(data, [0, 1, 2, 5] * 3)

    @optims(optim_db)
    def test_deepcopy_copies_all_public_attrs(self, device, dtype, optim_info):
        all_optim_inputs = _get_optim_inputs_including_global_cliquey_kwargs(device, dtype, optim_info,
                                                                             skip=("differentiable",))
        params = [Parameter(torch.randn(2, 3, device=device, dtype=dtype)) for _ in range(2)]
        for p in params:
            p.grad = torch.rand_like(p)

        def public(obj):
            return {k for k in obj.__dict__ if not k.startswith("_")}

        for optim_input in all_optim_inputs:
            optimizer = optim_info.optim_cls(params, **optim_input.kwargs)
            for _ in range(3):
                optimizer.step()
            self.assertEqual(public(optimizer), public(deepcopy(optimizer)))

    @optims(optim_db)
    def test_non_empty_state(self, device, dtype, optim_info):
        model = torch.nn.Linear(5, 5).to(dtype=dtype, device=device)
        inpt = torch.rand(2, 5, dtype=dtype, device=device)
        for optim_input in optim_info.optim_inputs_func(device=device):
            optim = optim_info.optim_cls(model.parameters(), **optim_input.kwargs)
            optim.zero_grad()
            model(inpt).sum().backward()
            optim.step()
            for state in optim.state.values():
                self.assertGreater(len(state), 0)


# CPU only: the CUDA variants are not checked on this project's machines (see the table above).
instantiate_device_type_tests(TestOptimRenewed, globals(), only_for="cpu")
