"""The hub integration over real HTTP: a local server plays the Hugging Face hub for ``huggingface_hub``.

:class:`FakeHub` answers the requests ``huggingface_hub`` makes, with the headers it requires:
``HEAD``/``GET /{repo_id}/resolve/{revision}/{filename}`` with ``X-Repo-Commit``, ``ETag`` and ``Content-Length``
(and ``X-Error-Code`` on a 404, which the client turns into repo / revision / file not found), and for uploads
``POST /api/repos/create``, ``/api/validate-yaml``, ``/api/models/{repo_id}/preupload/{revision}`` (every file is
"regular", so its content travels base64 in the commit) and ``/api/models/{repo_id}/commit/{revision}``. It records
every request, so the tests check what goes over the wire, with no mock of the client. ``huggingface_hub`` reads
``HF_ENDPOINT``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` once, at import, into ``huggingface_hub.constants``: the
fixture sets those constants, which is what the environment variables would do in a fresh process.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import torch
from huggingface_hub import ModelCard, constants

from torch_lstm_optim import CoordinatewiseLSTM, LSTMOptimizer, NetworkConfig, WeightsError, bundled_names
from torch_lstm_optim.hub import main, push_to_hub


@dataclass(frozen=True)
class Request:
    """One request the fake hub answered."""

    method: str
    path: str
    authorization: str | None


class FakeHub:
    """An in-memory hub: repos with commits (file name -> content) and branches; every request is recorded."""

    def __init__(self) -> None:
        self.commits: dict[str, dict[str, dict[str, bytes]]] = {}
        self.branches: dict[str, dict[str, str]] = {}
        self.private: dict[str, bool] = {}
        self.messages: dict[str, str] = {}
        self.requests: list[Request] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def stop(self) -> None:
        """Shut the server down: from now on a connection is refused."""
        self._server.shutdown()
        self._server.server_close()

    def commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main", message: str = "") -> str:
        """Add or replace ``files`` on ``branch`` (creating the repo if needed); return the new commit hash."""
        commits = self.commits.setdefault(repo_id, {})
        parent = self.branches.setdefault(repo_id, {}).get(branch)
        tree = {**commits.get(parent, {}), **files}
        digest = hashlib.sha1(repr((repo_id, parent, sorted(tree.items()))).encode())
        commit = digest.hexdigest()
        commits[commit] = tree
        self.branches[repo_id][branch] = commit
        self.messages[commit] = message
        return commit

    def resolve(self, repo_id: str, revision: str) -> str | None:
        """The commit hash a branch name or commit hash stands for, ``None`` if it is neither."""
        if revision in self.branches[repo_id]:
            return self.branches[repo_id][revision]
        return revision if revision in self.commits[repo_id] else None

    def paths(self, method: str | None = None) -> list[str]:
        """Paths requested so far (with ``method`` only)."""
        return [r.path for r in self.requests if method in (None, r.method)]


class _HubHandler(BaseHTTPRequestHandler):
    """Routes a request to the file server or to the upload API of ``self.server.hub``."""

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Keep the test output quiet (the requests are recorded in ``hub.requests``)."""

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._file(send_body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._file(send_body=True)

    def _record(self) -> list[str]:
        """Record the request, unless it is ``huggingface_hub``'s own once-a-process user-agent registry look-up
        (``/api/agent-harnesses``, answered 404), which belongs to no load or push; return the unquoted path parts."""
        path = urlsplit(self.path).path
        if path != "/api/agent-harnesses":
            self.hub.requests.append(Request(self.command, path, self.headers.get("Authorization")))
        return [unquote(part) for part in path.split("/")[1:]]

    def _file(self, send_body: bool) -> None:
        """``/{org}/{name}/resolve/{revision}/{filename}``, answered as the hub does."""
        parts = self._record()
        if len(parts) < 5 or parts[2] != "resolve":
            return self._reply(404, b"")
        repo_id, revision, filename = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
        if repo_id not in self.hub.commits:
            return self._reply(404, b"", {"X-Error-Code": "RepoNotFound"})
        commit = self.hub.resolve(repo_id, revision)
        if commit is None:
            return self._reply(404, b"", {"X-Error-Code": "RevisionNotFound"})
        content = self.hub.commits[repo_id][commit].get(filename)
        if content is None:
            return self._reply(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        etag = f'"{hashlib.sha256(content).hexdigest()}"'
        self._reply(200, content, {"X-Repo-Commit": commit, "ETag": etag}, send_body=send_body)

    def do_POST(self) -> None:  # noqa: N802
        parts = self._record()
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if parts == ["api", "repos", "create"]:
            return self._create_repo(json.loads(body))
        if parts == ["api", "validate-yaml"]:
            return self._json({"errors": [], "warnings": []})
        if len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] == "preupload":
            files = json.loads(body)["files"]
            return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                         for f in files]})
        if len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] == "commit":
            return self._commit(f"{parts[2]}/{parts[3]}", parts[5], body)
        self._reply(404, b"")

    def _create_repo(self, payload: dict[str, Any]) -> None:
        repo_id = f"{payload['organization']}/{payload['name']}"
        if repo_id in self.hub.commits:
            return self._json({"error": "You already created this model repo"}, status=409)
        self.hub.commits[repo_id], self.hub.branches[repo_id] = {}, {}
        self.hub.private[repo_id] = payload.get("visibility") == "private"
        self._json({"url": f"{self.hub.url}/{repo_id}"})

    def _commit(self, repo_id: str, branch: str, body: bytes) -> None:
        """An NDJSON commit: a header line, then one line per file (base64, since preupload said "regular")."""
        lines = [json.loads(line) for line in body.splitlines() if line]
        files = {line["value"]["path"]: base64.b64decode(line["value"]["content"])
                 for line in lines if line["key"] == "file"}
        if len(files) != len(lines) - 1:
            return self._json({"error": "this fake hub accepts only regular files"}, status=400)
        commit = self.hub.commit(repo_id, files, branch, message=lines[0]["value"]["summary"])
        self._json({"commitUrl": f"{self.hub.url}/{repo_id}/commit/{commit}", "commitOid": commit,
                    "pullRequestUrl": None})

    def _json(self, data: dict[str, Any], status: int = 200) -> None:
        self._reply(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None, send_body: bool = True) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A fake hub on 127.0.0.1, with ``huggingface_hub`` pointed at it and its cache under ``tmp_path/hf_home``.

    No token of the developer's can leak to it: ``HF_TOKEN`` is unset and the token file is moved to ``tmp_path``.
    """
    fake = FakeHub()
    monkeypatch.setattr(constants, "ENDPOINT", fake.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf_home" / "stored_tokens"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    yield fake
    fake.stop()


def make_network(seed: int) -> CoordinatewiseLSTM:
    """A tiny network whose weights depend on ``seed``."""
    torch.manual_seed(seed)
    return CoordinatewiseLSTM(NetworkConfig(hidden_size=4, num_layers=1))


def weights_files(network: CoordinatewiseLSTM, folder: Path) -> dict[str, bytes]:
    """``config.json`` and ``model.safetensors`` as ``save_pretrained`` writes them (and as a hub repo holds them)."""
    network.save_pretrained(folder)
    return {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors")}


def same_weights(a: CoordinatewiseLSTM, b: CoordinatewiseLSTM) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def optimizer_for(weights: str, **kwargs: Any) -> LSTMOptimizer:
    return LSTMOptimizer([torch.zeros(3, requires_grad=True)], weights=weights, **kwargs)


def test_download_loads_into_the_optimizer_and_records_the_commit(hub: FakeHub, tmp_path: Path) -> None:
    network = make_network(0)
    commit = hub.commit("org/net", weights_files(network, tmp_path / "saved"))
    optimizer = optimizer_for("org/net")
    assert same_weights(optimizer.network, network)
    assert optimizer.network.source.revision == commit
    assert Path(optimizer.network.source.folder).name == commit
    assert optimizer.state_dict()["network"]["source"] == {
        "weights": "org/net", "folder": optimizer.network.source.folder, "revision": commit}
    assert hub.paths("GET") == ["/org/net/resolve/main/config.json", f"/org/net/resolve/{commit}/model.safetensors"]
    # The source is metadata: the same network loaded from a local folder accepts the state dict.
    local = optimizer_for(str(tmp_path / "saved"))
    local.load_state_dict(optimizer.state_dict())


def test_a_second_load_is_served_from_the_cache(hub: FakeHub, tmp_path: Path) -> None:
    commit = hub.commit("org/net", weights_files(make_network(0), tmp_path / "saved"))
    optimizer_for("org/net")
    hub.requests.clear()
    optimizer_for("org/net")
    assert hub.paths() == ["/org/net/resolve/main/config.json"]  # one HEAD: is "main" still this commit?
    assert hub.requests[0].method == "HEAD"
    hub.requests.clear()
    optimizer_for("org/net", revision=commit)
    assert hub.requests == []  # a commit hash never changes: no request at all


def test_a_revision_pins_the_weights(hub: FakeHub, tmp_path: Path) -> None:
    old, new = make_network(1), make_network(2)
    old_commit = hub.commit("org/net", weights_files(old, tmp_path / "old"))
    new_commit = hub.commit("org/net", weights_files(new, tmp_path / "new"))
    hub.commit("org/net", weights_files(old, tmp_path / "old"), branch="v1")
    pinned = CoordinatewiseLSTM.from_pretrained("org/net", revision=old_commit, token="hf_reader")
    assert same_weights(pinned, old) and pinned.source.revision == old_commit
    assert {r.authorization for r in hub.requests} == {"Bearer hf_reader"}
    latest = optimizer_for("org/net").network
    assert same_weights(latest, new) and latest.source.revision == new_commit
    branch = optimizer_for("org/net", revision="v1").network
    assert same_weights(branch, old) and branch.source.revision == hub.branches["org/net"]["v1"]


@pytest.mark.parametrize(("repo_id", "revision", "expected"), [
    ("org/missing", None, "repository not found"),
    ("org/net", "v9", "revision not found"),
    ("org/bare", None, "has no config.json: not a torch_lstm_optim weights repo"),
])
def test_what_is_not_on_the_hub_is_named(hub: FakeHub, tmp_path: Path, repo_id: str, revision: str | None,
                                         expected: str) -> None:
    hub.commit("org/net", weights_files(make_network(0), tmp_path / "saved"))
    hub.commit("org/bare", {"README.md": b"# nothing here"})
    with pytest.raises(WeightsError, match=expected) as error:
        optimizer_for(repo_id, revision=revision)
    assert f"hub repo {repo_id!r} at revision {revision or 'main'!r} on {hub.url}" in str(error.value)


def test_a_repo_with_only_pickles_is_refused_and_never_unpickled(hub: FakeHub, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"

    class Trap:
        """Unpickling this creates ``marker``."""

        def __reduce__(self) -> tuple[Any, tuple[str, str]]:
            return open, (str(marker), "w")

    files = weights_files(make_network(0), tmp_path / "saved")
    hub.commit("org/pickled", {"config.json": files["config.json"], "pytorch_model.bin": pickle.dumps(Trap())})
    with pytest.raises(WeightsError, match="has no model.safetensors: torch_lstm_optim loads only safetensors"):
        optimizer_for("org/pickled")
    assert not marker.exists()
    assert not any("pytorch_model.bin" in path for path in hub.paths())


def test_a_corrupt_file_is_named(hub: FakeHub, tmp_path: Path) -> None:
    files = weights_files(make_network(0), tmp_path / "saved")
    commit = hub.commit("org/corrupt", {**files, "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!"})
    with pytest.raises(WeightsError, match="model.safetensors: not a valid safetensors file") as error:
        optimizer_for("org/corrupt")
    assert f"models--org--corrupt/snapshots/{commit}/model.safetensors" in str(error.value)


def test_offline_loads_a_prepared_cache(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    network = make_network(0)
    commit = hub.commit("org/net", weights_files(network, tmp_path / "saved"))
    optimizer_for("org/net")  # fills the cache
    hub.stop()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets when huggingface_hub loads
    loaded = optimizer_for("org/net").network
    assert same_weights(loaded, network) and loaded.source.revision == commit


def test_offline_with_an_empty_cache_says_what_to_do(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError) as error:
        optimizer_for("org/net")
    message = str(error.value)
    for part in ("'org/net' at revision 'main'", hub.url, "config.json is not in the hub cache", "HF_HUB_OFFLINE=1",
                 "local folder", "bundled_names()", *bundled_names()):
        assert part in message
    assert hub.requests == []


def test_an_unreachable_hub_says_what_was_tried(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.stop()
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda seconds: None)  # skip the retry back-off
    with pytest.raises(WeightsError) as error:
        optimizer_for("org/net", revision="v1")
    message = str(error.value)
    for part in ("'org/net' at revision 'v1'", hub.url, "could not reach the hub", "ConnectError", "local folder",
                 "bundled name"):
        assert part in message


CARD_BODY = "\n# Trained on MNIST\n\npython -m torch_lstm_optim.meta_train --task mnist\n\n| task | loss |\n|---|---|\n"


@pytest.fixture
def trained_folder(tmp_path: Path) -> Path:
    """A folder as the meta-trainer leaves it: weights, its own model card, and files that must not be published."""
    folder = tmp_path / "trained"
    make_network(3).save_pretrained(folder)
    (folder / "README.md").write_text(f"---\nlicense: mit\ntags:\n- mnist\n---\n{CARD_BODY}")
    (folder / "pytorch_model.bin").write_bytes(b"a pickle")
    (folder / "checkpoint.pt").write_bytes(b"another pickle")
    return folder


def test_push_publishes_weights_and_card_then_loads_back(hub: FakeHub, trained_folder: Path) -> None:
    info = push_to_hub(trained_folder, "org/pushed", token="hf_writer", private=True, commit_message="first")
    commit = hub.branches["org/pushed"]["main"]
    assert info.oid == commit and hub.messages[commit] == "first" and hub.private["org/pushed"]
    files = hub.commits["org/pushed"][commit]
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    assert files["model.safetensors"] == (trained_folder / "model.safetensors").read_bytes()
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "torch_lstm_optim" and card.data.license == "mit"
    assert {"mnist", "learned-optimizer", "learning-to-learn"} <= set(card.data.tags)
    assert card.text == CARD_BODY
    assert (trained_folder / "README.md").read_bytes() == files["README.md"]  # the folder is what the hub holds
    assert {r.authorization for r in hub.requests} == {"Bearer hf_writer"}
    loaded = optimizer_for("org/pushed").network
    assert same_weights(loaded, make_network(3)) and loaded.source.revision == commit


def test_push_refuses_an_invalid_folder_before_any_request(hub: FakeHub, trained_folder: Path) -> None:
    (trained_folder / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="model.safetensors: file not found"):
        push_to_hub(trained_folder, "org/pushed")
    assert hub.requests == []


def test_cli_push(hub: FakeHub, trained_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["push", "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("FOLDER", "REPO_ID", "--private", "--token", "--commit-message"):
        assert flag in help_text
    assert main(["push", str(trained_folder), "org/cli", "--commit-message", "from the CLI"]) == 0
    commit = hub.branches["org/cli"]["main"]
    assert hub.messages[commit] == "from the CLI" and not hub.private["org/cli"]
    assert commit in capsys.readouterr().out
    assert main(["push", str(trained_folder / "missing"), "org/cli"]) == 1
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("repo_id", ["bad id!!", "no-org"])
def test_push_refuses_an_invalid_repo_id_before_any_request_or_write(hub: FakeHub, trained_folder: Path,
                                                                     repo_id: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    card = (trained_folder / "README.md").read_bytes()
    assert main(["push", str(trained_folder), repo_id]) == 1
    assert capsys.readouterr().err.startswith(f"error: {repo_id!r} is not a valid hub repo id")
    assert hub.requests == [] and (trained_folder / "README.md").read_bytes() == card


def test_a_push_to_an_unreachable_hub_is_one_error_line_and_leaves_the_card(
        hub: FakeHub, trained_folder: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    hub.stop()
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda seconds: None)  # skip the retry back-off
    card = (trained_folder / "README.md").read_bytes()
    assert main(["push", str(trained_folder), "org/cli"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: pushing {trained_folder} to org/cli failed (") and "Traceback" not in err
    assert (trained_folder / "README.md").read_bytes() == card
