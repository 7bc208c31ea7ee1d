"""Weight folders: ``save_pretrained``/``from_pretrained`` round trip, resolution of ``weights=``, and every bad file
refused with a :class:`WeightsError` that names the file (issue 5, "Weight files and configs")."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import make_network
from torch_lstm_optim import CoordinatewiseLSTM, LSTMOptimizer, WeightsError, bundled_names, load_network
from torch_lstm_optim.weights import CONFIG_FILE, WEIGHTS_FILE


def assert_same_network(a: CoordinatewiseLSTM, b: CoordinatewiseLSTM) -> None:
    assert a.config == b.config
    a_state, b_state = a.state_dict(), b.state_dict()
    assert a_state.keys() == b_state.keys()
    assert all(torch.equal(a_state[k], b_state[k]) for k in a_state)


# --- round trip and resolution --------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [dict(), dict(preprocessing="scale_free", output="direction_magnitude",
                                                 betas=(0.9, 0.999), num_layers=3, p=5.0)])
def test_save_pretrained_then_from_pretrained_gives_the_same_network(tmp_path: Path, config: dict) -> None:
    network = make_network(seed=7, **config)
    network.save_pretrained(tmp_path)
    assert (tmp_path / CONFIG_FILE).is_file() and (tmp_path / WEIGHTS_FILE).is_file()
    for loaded in (CoordinatewiseLSTM.from_pretrained(tmp_path), CoordinatewiseLSTM.from_pretrained(str(tmp_path)),
                   load_network(tmp_path)):
        assert_same_network(loaded, network)
        assert loaded.source.folder == str(tmp_path)
        grad = torch.randn(6)
        torch.testing.assert_close(loaded.step(grad, loaded.init_state(grad))[0],
                                   network.step(grad, network.init_state(grad))[0], rtol=0, atol=0)


def test_config_json_holds_every_config_field(weights_folder: Path, network: CoordinatewiseLSTM) -> None:
    assert json.loads((weights_folder / CONFIG_FILE).read_text()) == network.config.to_dict()


def test_optimizer_accepts_a_folder_as_str_or_path(weights_folder: Path, network: CoordinatewiseLSTM) -> None:
    for weights in (weights_folder, str(weights_folder)):
        optimizer = LSTMOptimizer([nn.Parameter(torch.zeros(2))], weights=weights)
        assert_same_network(optimizer.network, network)


def test_bundled_names_are_resolved_from_the_bundled_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            network: CoordinatewiseLSTM) -> None:
    monkeypatch.setattr("torch_lstm_optim.weights.bundled_root", lambda: tmp_path)
    network.save_pretrained(tmp_path / "tiny")
    (tmp_path / "not-weights").mkdir()  # a folder without config.json is not a bundled name
    assert bundled_names() == ["tiny"]
    assert_same_network(load_network("tiny"), network)
    assert load_network("tiny").source.weights == "tiny"


def test_default_weights_resolve_to_the_bundled_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        network: CoordinatewiseLSTM) -> None:
    from torch_lstm_optim.weights import DEFAULT_WEIGHTS

    monkeypatch.setattr("torch_lstm_optim.weights.bundled_root", lambda: tmp_path)
    with pytest.raises(WeightsError, match="not bundled"):
        load_network()
    network.save_pretrained(tmp_path / DEFAULT_WEIGHTS)
    for weights in (None, "default"):
        assert_same_network(load_network(weights), network)


@pytest.mark.parametrize("weights", ["no-such-name", "./missing-folder", "/no/such/folder", "folder.safetensors"])
def test_unknown_weights_name_what_was_tried(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, weights: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError, match="unknown weights") as error:
        load_network(weights)
    assert weights in str(error.value) and "bundled" in str(error.value)


@pytest.mark.parametrize("name", ["sub/model.safetensors", "sub/weights"])
def test_a_file_given_as_weights_is_named_not_fetched_from_the_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                   name: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / name).write_bytes(b"weights")
    with pytest.raises(WeightsError, match=f"^{name}: is a file, not a weights folder"):
        load_network(name)


# --- bad files ---------------------------------------------------------------------------------------------------


def rewrite_tensors(folder: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(str(folder / WEIGHTS_FILE))
    change(tensors)
    save_file(tensors, str(folder / WEIGHTS_FILE))


def rewrite_config(folder: Path, change: Callable[[dict[str, object]], None]) -> None:
    config = json.loads((folder / CONFIG_FILE).read_text())
    change(config)
    (folder / CONFIG_FILE).write_text(json.dumps(config))


def truncate(folder: Path) -> None:
    data = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(data[:len(data) // 2])


def nan_in(name: str, value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors[name].view(-1)[0] = value
    return change


WEIGHT_FILE_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing": (lambda f: (f / WEIGHTS_FILE).unlink(), "file not found"),
    "pickle instead": (lambda f: (f / WEIGHTS_FILE).rename(f / "pytorch_model.bin"), "file not found"),
    "empty": (lambda f: (f / WEIGHTS_FILE).write_bytes(b""), "not a valid safetensors"),
    "truncated": (truncate, "not a valid safetensors"),
    "garbage": (lambda f: (f / WEIGHTS_FILE).write_bytes(bytes(range(256)) * 8), "not a valid safetensors"),
    "header claims too much": (lambda f: (f / WEIGHTS_FILE).write_bytes((10**9).to_bytes(8, "little") + b"{}"),
                               "not a valid safetensors"),
    "missing tensor": (lambda f: rewrite_tensors(f, lambda t: t.pop("head.bias")), r"missing \['head.bias'\]"),
    "extra tensor": (lambda f: rewrite_tensors(f, lambda t: t.update(extra=torch.zeros(2))), r"unexpected \['extra'\]"),
    "wrong shape": (lambda f: rewrite_tensors(f, lambda t: t.update({"head.weight": torch.zeros(1, 9)})),
                    "'head.weight' has shape"),
    "float64": (lambda f: rewrite_tensors(f, lambda t: t.update({"head.bias": t["head.bias"].double()})),
                "'head.bias' has dtype torch.float64"),
    "float16": (lambda f: rewrite_tensors(f, lambda t: t.update({"head.bias": t["head.bias"].half()})),
                "'head.bias' has dtype torch.float16"),
    "nan": (lambda f: rewrite_tensors(f, nan_in("layers.0.weight", float("nan"))), "'layers.0.weight' holds NaN"),
    "inf": (lambda f: rewrite_tensors(f, nan_in("layers.1.bias", float("-inf"))), "'layers.1.bias' holds NaN or inf"),
}


@pytest.mark.parametrize("case", list(WEIGHT_FILE_CASES))
def test_bad_weight_file_raises_weights_error_naming_the_file(weights_folder: Path, case: str) -> None:
    corrupt, match = WEIGHT_FILE_CASES[case]
    corrupt(weights_folder)
    with pytest.raises(WeightsError, match=match) as error:
        load_network(weights_folder)
    assert str(weights_folder / WEIGHTS_FILE) in str(error.value)


def write_text(text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / CONFIG_FILE).write_text(text)


def set_field(name: str, value: object) -> Callable[[Path], None]:
    return lambda folder: rewrite_config(folder, lambda config: config.__setitem__(name, value))


CONFIG_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing": (lambda f: (f / CONFIG_FILE).unlink(), "file not found"),
    "not json": (write_text("hidden_size: 20"), "not valid JSON"),
    "truncated json": (write_text('{"hidden_size": 8, '), "not valid JSON"),
    "not utf-8": (lambda f: (f / CONFIG_FILE).write_bytes(b'{"\xff": 1}'), "not valid JSON"),
    "a list": (write_text("[8, 2]"), "expected a JSON object, found list"),
    "unknown field": (set_field("dropout", 0.1), r"unknown fields \['dropout'\]"),
    "missing field": (lambda f: rewrite_config(f, lambda c: c.pop("num_layers")), r"missing fields \['num_layers'\]"),
    "string for int": (set_field("hidden_size", "8"), "'hidden_size' must be int"),
    "float for int": (set_field("num_layers", 2.0), "'num_layers' must be int"),
    "bool for float": (set_field("p", True), "'p' must be float"),
    "null": (set_field("output_scale", None), "'output_scale' must be float"),
    "number for betas": (set_field("betas", 5), "'betas' must be a list"),
    "strings in betas": (set_field("betas", ["a"]), "'betas'"),
    "nan p": (set_field("p", float("nan")), "'p' must be finite"),
    "unknown preprocessing": (set_field("preprocessing", "adam"), "'preprocessing' must be one of"),
    "huge hidden_size": (set_field("hidden_size", 10**9), "'hidden_size' must be in"),
    "huge num_layers": (set_field("num_layers", 10**9), "'num_layers' must be in"),
    "zero hidden_size": (set_field("hidden_size", 0), "'hidden_size' must be in"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_raises_weights_error_naming_the_file_before_reading_weights(
        weights_folder: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    corrupt, match = CONFIG_CASES[case]
    corrupt(weights_folder)

    def must_not_be_called(*args: object) -> None:
        raise AssertionError("the tensors were read (and memory allocated) before the config was validated")

    monkeypatch.setattr("torch_lstm_optim.weights.read_tensors", must_not_be_called)
    monkeypatch.setattr("torch_lstm_optim.weights.CoordinatewiseLSTM", must_not_be_called)
    with pytest.raises(WeightsError, match=match) as error:
        load_network(weights_folder)
    assert str(weights_folder / CONFIG_FILE) in str(error.value)


def test_config_and_weights_of_different_sizes_do_not_load(weights_folder: Path, tmp_path: Path) -> None:
    make_network(hidden_size=5).save_pretrained(tmp_path / "other")
    (tmp_path / "other" / WEIGHTS_FILE).replace(weights_folder / WEIGHTS_FILE)
    with pytest.raises(WeightsError, match="has shape") as error:
        load_network(weights_folder)
    assert str(weights_folder / WEIGHTS_FILE) in str(error.value)


def test_bad_weights_passed_to_the_optimizer_raise_weights_error(weights_folder: Path) -> None:
    truncate(weights_folder)
    with pytest.raises(WeightsError, match=WEIGHTS_FILE):
        LSTMOptimizer([nn.Parameter(torch.zeros(2))], weights=weights_folder)


def append_huge_tensor(folder: Path, name: str, shape: tuple[int, ...]) -> None:
    """Add a float32 tensor ``name`` of ``shape`` to the weights file, its data a sparse hole (no disk, no memory)."""
    path = folder / WEIGHTS_FILE
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header, body = json.loads(data[8:8 + size]), data[8 + size:]
    nbytes = 4 * int(torch.tensor(shape).prod())
    header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [len(body), len(body) + nbytes]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as handle:
        handle.write(len(text).to_bytes(8, "little") + text + body)
        handle.truncate(8 + len(text) + len(body) + nbytes)


@pytest.mark.parametrize("name, match", [("extra", r"unexpected \['extra'\]"), ("head.bias", "'head.bias' has shape")])
def test_a_huge_tensor_is_refused_from_the_header_before_it_is_allocated(weights_folder: Path, name: str,
                                                                         match: str) -> None:
    """A 4 GiB tensor (an unexpected one, or an expected one of the wrong shape) named in a well-formed file."""
    import resource

    if name != "extra":
        rewrite_tensors(weights_folder, lambda t: t.pop(name))
    append_huge_tensor(weights_folder, name, (2**30,))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(WeightsError, match=match) as error:
        load_network(weights_folder)
    assert str(weights_folder / WEIGHTS_FILE) in str(error.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 512 * 1024, "the tensor was read"
