"""``LSTMOptimizer(compile=True)`` runs the same rule as eager, through ``torch.compile(network.step)``.

Compiling takes tens of seconds, so the test is ``slow`` (run it with ``python -m pytest -m slow``).
"""

from __future__ import annotations

import pytest
import torch

from conftest import make_network
from test_optimizer import make_params, run
from torch_lstm_optim import LSTMOptimizer


def _compile_unavailable() -> str | None:
    """Why ``torch.compile`` cannot run here (unsupported Python, no C++ compiler for inductor), or ``None``."""
    import torch._dynamo
    from torch._inductor.cpp_builder import get_cpp_compiler

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile is not supported on this Python"
    try:
        get_cpp_compiler()
    except RuntimeError as error:
        return f"inductor finds no C++ compiler: {error}"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("preprocessing", ["log_sign", "scale_free"])
def test_compiled_steps_agree_with_eager(preprocessing: str) -> None:
    reason = _compile_unavailable()
    if reason is not None:
        pytest.skip(reason)
    network = make_network(preprocessing=preprocessing, log_rms_feature=preprocessing == "scale_free")
    results = []
    for compile_ in (False, True):
        params = make_params()
        # chunk_size=7 mixes chunks of several small parameters (concatenated) with slices of one, and a short last
        # chunk, so the compiled rule sees every kind of input the optimizer feeds it.
        optimizer = LSTMOptimizer(params, network, chunk_size=7, compile=compile_)
        run(optimizer, params, range(4))
        results.append((params, optimizer))
    (eager, eager_opt), (compiled, compiled_opt) = results
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=0, atol=1e-5)
    for a, b in zip(eager, compiled, strict=True):
        for key, value in eager_opt.state[a].items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(compiled_opt.state[b][key], value, rtol=0, atol=1e-5)
            else:
                assert compiled_opt.state[b][key] == value
