"""A name that is neither a folder, a shipped toy nor on the hub says what was tried (the hub is mocked:
these tests raise huggingface_hub's own exceptions and never touch the network)."""

from __future__ import annotations

import importlib

import huggingface_hub
import huggingface_hub.errors
import pytest
from huggingface_hub.errors import (GatedRepoError, HFValidationError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                    RepositoryNotFoundError)

from hooked_vlm import HookedVLM
from hooked_vlm.loading import CheckpointNotFoundError, resolve_checkpoint
from hooked_vlm.toy import TOY_DIR, closest_toy, shipped_toys, toy_checkpoint_path


# The HTTP library huggingface_hub itself uses: httpx2 from hub 2.0, httpx before (make test-min has hub 1.31).
http = importlib.import_module(huggingface_hub.errors.Response.__module__.split(".")[0])


def _response(status: int):
    return http.Response(status, request=http.Request("GET", "https://huggingface.co/api/models/x/revision/main"))


HUB_ERRORS = {
    "repo-not-found": RepositoryNotFoundError("404 Client Error. Repository Not Found for url: https://huggingface.co/"
                                              "api/models/toy-chamelon", response=_response(404)),
    "local-entry": LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub and we cannot "
                                           "find the appropriate snapshot folder for the specified revision on the local disk."),
    "offline": OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled."),
    "connection": ConnectionError("Failed to establish a new connection: [Errno 111] Connection refused"),
}


@pytest.fixture
def hub(monkeypatch):
    """Replace snapshot_download; ``hub.error`` is what it raises, ``hub.calls`` what it was asked."""
    class Hub:
        error: BaseException | None = None
        calls: list = []

        def __call__(self, repo_id, **kwargs):
            self.calls.append(repo_id)
            raise self.error

    fake = Hub()
    fake.calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return fake


def test_shipped_toys_are_listed_and_found():
    assert shipped_toys() == ["toy-chameleon", "toy-chameleon-gen", "toy-llava"]
    assert toy_checkpoint_path("toy-llava") == TOY_DIR / "toy-llava"
    assert toy_checkpoint_path("checkpoints") is None and toy_checkpoint_path("toy-llava/..") is None


@pytest.mark.parametrize("kind", sorted(HUB_ERRORS))
def test_typo_names_the_three_places_and_the_closest_toy(hub, kind):
    hub.error = HUB_ERRORS[kind]
    with pytest.raises(CheckpointNotFoundError) as info:
        HookedVLM.from_pretrained("toy-chamelon")
    text = str(info.value)
    assert hub.calls == ["toy-chamelon"]
    assert "not a local folder" in text and "not a shipped toy (toy-chameleon, toy-chameleon-gen, toy-llava)" in text
    assert type(hub.error).__name__ in text and "Did you mean 'toy-chameleon'?" in text
    assert info.value.__cause__ is hub.error  # the hub's own error stays chained
    assert isinstance(info.value, FileNotFoundError)


def test_far_name_gets_no_toy_suggestion(hub):
    hub.error = HUB_ERRORS["repo-not-found"]
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_checkpoint("meta-llama/some-model")
    assert "Did you mean" not in str(info.value) and "not reachable on the HF hub" in str(info.value)


def test_local_files_only_and_invalid_ids(hub):
    hub.error = HUB_ERRORS["local-entry"]
    with pytest.raises(CheckpointNotFoundError, match="local_files_only=True"):
        resolve_checkpoint("org/model", local_files_only=True)
    hub.error = HFValidationError("Repo id must be in the form 'repo_name' or 'namespace/repo_name': 'a/b/c'.")
    with pytest.raises(CheckpointNotFoundError, match="not a valid hub id"):
        resolve_checkpoint("a/b/c")


def test_near_miss_local_folder_is_suggested(hub, tmp_path):
    (tmp_path / "llava-checkpoint").mkdir()
    hub.error = HFValidationError("Repo id must be in the form 'repo_name' or 'namespace/repo_name'")
    with pytest.raises(CheckpointNotFoundError, match="Did you mean the folder .*llava-checkpoint'"):
        resolve_checkpoint(str(tmp_path / "llava-checkpont"))


def test_gated_repo_says_log_in(hub):
    hub.error = GatedRepoError("401 Client Error. Cannot access gated repo", response=_response(401))
    with pytest.raises(PermissionError, match="gated.*hf auth login"):
        resolve_checkpoint("meta-llama/Llama-3.2-11B-Vision")


def test_closest_toy():
    assert closest_toy("toy-lava") == "toy-llava" and closest_toy("TOY-CHAMELEON") == "toy-chameleon"
    assert closest_toy("qwen/qwen2-vl") is None
