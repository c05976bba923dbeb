"""Writes: creating, pausing, resuming, cancelling and removing downloads (no transfer
runs here: that is the manager's job), and deleting local models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download

from mlxmanager.downloads import selectors, services, storage
from mlxmanager.downloads.errors import HubAccessDenied, InsufficientStorage
from mlxmanager.downloads.models import Download
from mlxmanager.errors import Conflict, DomainError, NotFound
from mlxmanager.profiles.models import Profile
from tests.mlxmanager.downloads.conftest import BIG, BIN_ONLY, GATED, QWEN, make_model_dir

pytestmark = pytest.mark.django_db
Status = Download.Status


def test_create_queues_a_download_pinned_to_the_commit(fakehub, admin, hub_settings) -> None:
    d = services.download_create(repo_id=QWEN, user=admin)
    assert d.status == Status.QUEUED and d.repo_id == QWEN and d.revision == "main"
    assert d.commit == fakehub.repos[QWEN].sha
    assert d.local_dir == str(hub_settings["models"] / "mlx-community--Qwen3-0.6B-4bit")
    names = {f["name"] for f in d.files}
    assert names == {
        "config.json",
        "tokenizer_config.json",
        "tokenizer.json",
        "model.safetensors",
        "README.md",
    }
    assert d.bytes_total == sum(f["size"] for f in d.files) and d.bytes_done == 0
    weights = next(f for f in d.files if f["name"] == "model.safetensors")
    assert weights["sha256"] == fakehub.repos[QWEN].files["model.safetensors"].sha256
    assert d.created_by == admin
    assert not Path(d.local_dir).exists()  # the web process transfers nothing


def test_create_counts_bytes_already_on_disk(hub_settings) -> None:
    local = storage.local_dir_for(QWEN)
    storage.partial_path(local, "model.safetensors").parent.mkdir(parents=True)
    storage.partial_path(local, "model.safetensors").write_bytes(b"x" * 1000)
    d = services.download_create(repo_id=QWEN)
    assert d.bytes_done == 1000


def test_create_refuses_a_second_active_download() -> None:
    services.download_create(repo_id=QWEN)
    with pytest.raises(Conflict) as exc:
        services.download_create(repo_id=QWEN)
    assert "Already downloading" in exc.value.message
    assert Download.objects.count() == 1


def test_create_restarts_a_paused_or_failed_download() -> None:
    d = services.download_create(repo_id=QWEN)
    Download.objects.filter(pk=d.pk).update(status=Status.FAILED, error="boom")
    again = services.download_create(repo_id=QWEN)
    assert again.pk == d.pk and again.status == Status.QUEUED and again.error == ""


def test_create_refuses_when_already_downloaded(hub_settings) -> None:
    d = services.download_create(repo_id=QWEN)
    make_model_dir(Path(d.local_dir))
    Download.objects.filter(pk=d.pk).update(status=Status.COMPLETED)
    with pytest.raises(Conflict) as exc:
        services.download_create(repo_id=QWEN)
    assert "Already downloaded" in exc.value.message


def test_create_again_after_the_folder_was_deleted() -> None:
    d = services.download_create(repo_id=QWEN)
    Download.objects.filter(pk=d.pk).update(status=Status.COMPLETED)
    assert services.download_create(repo_id=QWEN).status == Status.QUEUED


def test_create_refuses_to_overwrite_a_folder_it_did_not_make(hub_settings) -> None:
    make_model_dir(hub_settings["models"] / "mlx-community--Qwen3-0.6B-4bit")
    with pytest.raises(Conflict) as exc:
        services.download_create(repo_id=QWEN)
    assert "already exists" in exc.value.message


def test_create_refuses_a_repo_without_mlx_weights() -> None:
    with pytest.raises(DomainError) as exc:
        services.download_create(repo_id=BIN_ONLY)
    assert "no MLX weights" in exc.value.message
    assert not Download.objects.exists()


def test_create_refuses_a_gated_model_without_a_token() -> None:
    with pytest.raises(HubAccessDenied) as exc:
        services.download_create(repo_id=GATED)
    assert "gated" in exc.value.message and exc.value.status == 403
    assert not Download.objects.exists()


def test_create_an_unknown_repo_is_404() -> None:
    with pytest.raises(NotFound):
        services.download_create(repo_id="nobody/nothing")


def test_create_checks_free_disk_space(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "free_bytes", lambda path: 1000)
    with pytest.raises(InsufficientStorage) as exc:
        services.download_create(repo_id=BIG)
    assert exc.value.status == 507
    assert "Not enough disk space" in exc.value.message and "1000" in exc.value.message
    assert not Download.objects.exists()


# --- pause / resume / cancel / remove -------------------------------------------------


def test_pause_and_resume_transitions() -> None:
    d = services.download_create(repo_id=QWEN)
    assert services.download_pause(download_id=d.pk).status == Status.PAUSED
    assert services.download_pause(download_id=d.pk).status == Status.PAUSED  # idempotent
    assert services.download_resume(download_id=d.pk).status == Status.QUEUED
    assert services.download_resume(download_id=d.pk).status == Status.QUEUED  # idempotent


def test_resume_counts_partial_bytes(hub_settings) -> None:
    d = services.download_create(repo_id=QWEN)
    services.download_pause(download_id=d.pk)
    partial = storage.partial_path(Path(d.local_dir), "model.safetensors")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"x" * 4096)
    resumed = services.download_resume(download_id=d.pk)
    assert resumed.bytes_done == 4096
    assert next(f["done"] for f in resumed.files if f["name"] == "model.safetensors") == 4096


def test_resume_checks_disk_space(monkeypatch: pytest.MonkeyPatch) -> None:
    d = services.download_create(repo_id=QWEN)
    services.download_pause(download_id=d.pk)
    monkeypatch.setattr(storage, "free_bytes", lambda path: 10)
    with pytest.raises(InsufficientStorage):
        services.download_resume(download_id=d.pk)
    assert selectors.download_get(download_id=d.pk).status == Status.PAUSED


def test_cannot_pause_a_finished_download() -> None:
    d = services.download_create(repo_id=QWEN)
    Download.objects.filter(pk=d.pk).update(status=Status.COMPLETED)
    with pytest.raises(Conflict) as exc:
        services.download_pause(download_id=d.pk)
    assert "completed download cannot be paused" in exc.value.message
    with pytest.raises(Conflict):
        services.download_resume(download_id=d.pk)
    with pytest.raises(Conflict):
        services.download_cancel(download_id=d.pk)


def test_cancel_an_idle_download_deletes_its_partial_files(hub_settings) -> None:
    d = services.download_create(repo_id=QWEN)
    services.download_pause(download_id=d.pk)
    partial = storage.partial_path(Path(d.local_dir), "model.safetensors")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"x" * 100)
    cancelled = services.download_cancel(download_id=d.pk)
    assert cancelled.status == Status.CANCELLED and cancelled.bytes_done == 0
    assert not Path(d.local_dir).exists()
    assert services.download_cancel(download_id=d.pk).status == Status.CANCELLED  # idempotent


def test_cancel_a_running_download_leaves_the_files_to_the_worker(hub_settings) -> None:
    d = services.download_create(repo_id=QWEN)
    Download.objects.filter(pk=d.pk).update(status=Status.RUNNING)
    make_model_dir(Path(d.local_dir))
    assert services.download_cancel(download_id=d.pk).status == Status.CANCELLED
    assert Path(d.local_dir).exists()  # the worker deletes them once its transfer has stopped


def test_remove_only_finished_downloads() -> None:
    d = services.download_create(repo_id=QWEN)
    with pytest.raises(Conflict):
        services.download_remove(download_id=d.pk)
    services.download_cancel(download_id=d.pk)
    services.download_remove(download_id=d.pk)
    assert not Download.objects.exists()


@pytest.mark.parametrize(
    "action", ["download_pause", "download_resume", "download_cancel", "download_remove"]
)
def test_actions_on_an_unknown_download(action: str) -> None:
    with pytest.raises(NotFound):
        getattr(services, action)(download_id=999)


# --- local models ----------------------------------------------------------------------


def test_delete_a_local_model(hub_settings) -> None:
    path = make_model_dir(hub_settings["models"] / "mlx-community--Qwen3-0.6B-4bit")
    Download.objects.create(repo_id=QWEN, local_dir=str(path), status=Status.COMPLETED)
    (m,) = selectors.local_model_list()
    deleted = services.local_model_delete(model_id=m.id)
    assert deleted.path == path and not path.exists()
    assert not Download.objects.exists()  # so it can be downloaded again
    assert selectors.local_model_list() == []


def test_delete_refuses_a_model_used_by_profiles(hub_settings) -> None:
    path = make_model_dir(hub_settings["models"] / "org--chat")
    Profile.objects.create(name="chat", model_path=str(path))
    Profile.objects.create(name="chat-precise", model_path=str(path))
    (m,) = selectors.local_model_list()
    with pytest.raises(Conflict) as exc:
        services.local_model_delete(model_id=m.id)
    assert exc.value.status == 409
    assert exc.value.message == (
        "Can't delete org--chat: the profiles chat, chat-precise use it. Change or delete the profiles first."
    )
    assert path.exists()


def test_delete_refuses_a_model_that_is_downloading(hub_settings) -> None:
    path = make_model_dir(hub_settings["models"] / "org--x")
    Download.objects.create(repo_id="org/x", local_dir=str(path), status=Status.RUNNING)
    # A running download keeps its partial folder: make it look complete to the scanner.
    (m,) = selectors.local_model_list()
    with pytest.raises(Conflict) as exc:
        services.local_model_delete(model_id=m.id)
    assert "while it downloads" in exc.value.message and path.exists()


def test_delete_from_the_hugging_face_cache(fakehub, hub_settings) -> None:
    cache = hub_settings["hf_cache"]
    for name in ("config.json", "model.safetensors"):
        hf_hub_download(QWEN, name, endpoint=fakehub.url, cache_dir=cache, token=False)
    (m,) = selectors.local_model_list()
    services.local_model_delete(model_id=m.id)
    assert not m.path.exists()
    assert selectors.local_model_list() == []


def test_delete_refuses_models_in_configured_folders(settings, tmp_path: Path) -> None:
    path = make_model_dir(tmp_path / "mine" / "custom")
    settings.MLXM_MODEL_DIRS = [tmp_path / "mine"]
    (m,) = selectors.local_model_list()
    with pytest.raises(Conflict) as exc:
        services.local_model_delete(model_id=m.id)
    assert "does not delete models in configured folders" in exc.value.message and path.exists()


def test_remove_tree_refuses_paths_outside_the_models_dir(tmp_path: Path) -> None:
    outside = make_model_dir(tmp_path / "precious")
    with pytest.raises(ValueError):
        storage.remove_tree(outside, within=storage.models_dir())
    with pytest.raises(ValueError):
        storage.remove_tree(storage.models_dir(), within=storage.models_dir())
    assert outside.exists()


# --- the Hugging Face token ------------------------------------------------------------


def test_hub_token_is_stored_encrypted_and_audited_without_the_secret(admin) -> None:
    from mlxmanager.audit.models import AdminAction
    from mlxmanager.credentials import crypto
    from mlxmanager.downloads import hub
    from mlxmanager.downloads.models import HubToken

    services.hub_token_set(token="  hf_abcdefghijklmnop1234 ", user=admin)
    row = HubToken.objects.get()
    assert "hf_abcdefghijklmnop1234" not in row.secret_jwe and row.secret_jwe.count(".") == 4  # compact JWE
    assert crypto.decrypt(row.secret_jwe) == "hf_abcdefghijklmnop1234" and row.hint == "1234"
    assert hub.token() == "hf_abcdefghijklmnop1234"
    services.hub_token_set(token="hf_second_token_5678", user=admin)  # replaces, one row
    assert HubToken.objects.count() == 1 and hub.token() == "hf_second_token_5678"
    assert services.hub_token_clear(user=admin) and not services.hub_token_clear(user=admin)
    assert hub.token() is None and not HubToken.objects.exists()
    actions = list(AdminAction.objects.order_by("id").values_list("action", flat=True))
    assert actions[-3:] == [
        "mlxmanager.hub_token.set",
        "mlxmanager.hub_token.set",
        "mlxmanager.hub_token.removed",
    ]
    dumped = str(list(AdminAction.objects.values()))
    assert "hf_abcdefghijklmnop1234" not in dumped and "hf_second_token_5678" not in dumped


@pytest.mark.parametrize("bad", ["", "   ", "hf_two words", "hf_" + "x" * 600, "hf_\x00nul"])
def test_hub_token_refuses_what_is_not_a_token(bad: str) -> None:
    with pytest.raises(DomainError) as exc:
        services.hub_token_set(token=bad)
    assert exc.value.param == "token"


def test_hub_token_is_resealed_on_key_rotation(tmp_path: Path, settings, monkeypatch) -> None:
    from mlxmanager.credentials import crypto
    from mlxmanager.credentials.services import credentials_reencrypt
    from mlxmanager.downloads import hub
    from mlxmanager.downloads.models import HubToken

    monkeypatch.delenv("MLXM_CREDENTIALS_KEY", raising=False)
    settings.MLXM_CREDENTIALS_KEY_FILE = tmp_path / "credentials.key"
    crypto.keyring.reload()
    try:
        services.hub_token_set(token="hf_rotate_me")
        old_kid = HubToken.objects.get().key_id
        crypto.prepend_key_file(crypto.new_secret())
        assert crypto.keyring.current.kid != old_kid
        assert credentials_reencrypt() == 1
        row = HubToken.objects.get()
        assert row.key_id == crypto.keyring.current.kid and crypto.decrypt(row.secret_jwe) == "hf_rotate_me"
        assert hub.token() == "hf_rotate_me"
    finally:
        crypto.keyring.reload()


# --- conversions ------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (path / "model.safetensors").write_bytes(b"x")
    return path


@pytest.mark.parametrize(
    ("change", "kwargs", "param", "message"),
    [
        (None, {"source": "relative/path"}, "source", "absolute path"),
        (None, {"source": "/nonexistent/ckpt"}, "source", "is not a folder"),
        ("no-config", {}, "source", "no config.json"),
        ("quantized", {}, "source", "already a quantized MLX model"),
        ("no-weights", {}, "source", "no .safetensors"),
        (None, {"name": "../escape"}, "name", "letters, digits"),
        (None, {"q_bits": 7}, "q_bits", "q_bits must be one of"),
        (None, {"q_group_size": 48}, "q_group_size", "q_group_size must be one of"),
        (None, {"dtype": "int8"}, "dtype", "dtype must be one of"),
    ],
)
def test_conversion_refuses_bad_input(
    hub_settings, checkpoint: Path, change: str | None, kwargs: dict, param: str, message: str
) -> None:
    if change == "no-config":
        (checkpoint / "config.json").unlink()
    elif change == "quantized":
        (checkpoint / "config.json").write_text(
            json.dumps({"model_type": "llama", "quantization": {"bits": 4}})
        )
    elif change == "no-weights":
        (checkpoint / "model.safetensors").unlink()
    args = {"source": str(checkpoint), "name": "out", **kwargs}
    with pytest.raises(DomainError) as exc:
        services.conversion_create(**args)
    assert exc.value.param == param and message in exc.value.message


def test_conversion_refuses_an_existing_output_and_cancel_rules(
    hub_settings, checkpoint: Path, admin
) -> None:
    from mlxmanager.downloads.models import Conversion

    (hub_settings["models"] / "taken").mkdir()
    with pytest.raises(Conflict):
        services.conversion_create(source=str(checkpoint), name="taken")
    conversion = services.conversion_create(source=str(checkpoint), name="fresh", q_bits=4, user=admin)
    assert conversion.status == Conversion.Status.QUEUED and conversion.recipe == "4-bit, group size 64"
    with pytest.raises(Conflict):
        services.conversion_create(source=str(checkpoint), name="fresh")  # already under way
    assert services.conversion_cancel(conversion_id=conversion.pk).status == Conversion.Status.CANCELLED
    with pytest.raises(Conflict):
        services.conversion_cancel(conversion_id=conversion.pk)
    with pytest.raises(NotFound):
        services.conversion_cancel(conversion_id=999_999)
