"""The download manager end to end: the real huggingface_hub transfer code against the fake
hub, with throttling so pause, resume, cancel and restarts happen mid-file."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from mlxmanager.downloads import manager as manager_module
from mlxmanager.downloads import selectors, services, storage
from mlxmanager.downloads.models import Download
from tests.mlxmanager.downloads.conftest import BIG, EMBED, GATED, QWEN, file_bytes, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
Status = Download.Status
SHARD = "model-00001-of-00002.safetensors"


def row(pk: int) -> Download:
    return Download.objects.get(pk=pk)


def expected_files(fakehub, repo_id: str) -> dict[str, bytes]:
    return {name: f.data for name, f in fakehub.repos[repo_id].files.items() if name != "pytorch_model.bin"}


def partial_size(download: Download, name: str = SHARD) -> int:
    return storage.file_size(storage.partial_path(Path(download.local_dir), name))


def cdn_ranges(fakehub, repo_id: str, name: str = SHARD) -> list[int]:
    return fakehub.ranges(f"/cdn/{fakehub.repos[repo_id].files[name].sha256}")


def wait_status(pk: int, *statuses: str, timeout: float = 30) -> Download:
    return wait_for(lambda: (d := row(pk)).status in statuses and d, timeout=timeout)


def test_a_download_completes_with_identical_files(fakehub, manager_factory) -> None:
    d = services.download_create(repo_id=QWEN)
    manager_factory()
    done = wait_status(d.pk, Status.COMPLETED)
    local = Path(done.local_dir)
    assert file_bytes(local) == expected_files(fakehub, QWEN)
    assert not (local / storage.PARTIAL_DIR).exists()
    assert done.bytes_done == done.bytes_total == sum(len(b) for b in expected_files(fakehub, QWEN).values())
    assert done.percent == 100 and done.files_done == len(done.files) and done.finished_at is not None
    assert done.speed == 0 and done.error == ""
    # The weights came from the CDN origin, without the token, pinned to the commit.
    sha = fakehub.repos[QWEN].sha
    assert any(r.path == f"/{QWEN}/resolve/{sha}/model.safetensors" for r in fakehub.requests)
    assert len(fakehub.gets("/cdn/")) == 1
    (local_model,) = selectors.local_model_list()
    assert local_model.repo_id == QWEN and local_model.path == local


def test_the_token_goes_to_the_hub_but_not_to_the_cdn(fakehub, manager_factory, settings) -> None:
    settings.MLXM_HF_TOKEN = "hf_secret"
    d = services.download_create(repo_id=QWEN)
    manager_factory()
    wait_status(d.pk, Status.COMPLETED)
    assert all(r.token == "hf_secret" for r in fakehub.requests if "/resolve/" in r.path)
    assert all(r.token is None for r in fakehub.requests if r.path.startswith("/cdn/"))


def test_progress_is_persisted_while_it_runs(fakehub, manager_factory) -> None:
    fakehub.throttle = 250_000
    d = services.download_create(repo_id=BIG)
    manager_factory()
    seen = wait_for(
        lambda: (r := row(d.pk)).status == Status.RUNNING and 100_000 < r.bytes_done < r.bytes_total and r
    )
    assert seen.speed > 0 and seen.eta is not None and seen.current_file
    assert 0 < seen.percent < 100
    assert any(0 < f["done"] < f["size"] for f in seen.files)
    wait_status(d.pk, Status.COMPLETED)


def test_pause_keeps_the_partial_bytes_and_resume_continues_with_a_range_request(
    fakehub, manager_factory
) -> None:
    fakehub.throttle = 150_000
    d = services.download_create(repo_id=BIG)
    manager = manager_factory()
    wait_for(lambda: partial_size(d) > 100_000)

    services.download_pause(download_id=d.pk)
    wait_for(lambda: not manager.transfers)  # the transfer has let go
    paused = row(d.pk)
    kept = partial_size(paused)
    assert paused.status == Status.PAUSED and paused.speed == 0
    assert 100_000 < kept < 400_000
    assert paused.bytes_done >= kept  # the small files are finished too

    services.download_resume(download_id=d.pk)
    done = wait_status(d.pk, Status.COMPLETED)
    assert file_bytes(Path(done.local_dir)) == expected_files(fakehub, BIG)
    assert kept in cdn_ranges(fakehub, BIG), "resumed from the partial size, not from zero"


def test_cancel_stops_and_deletes_the_partial_files(fakehub, manager_factory) -> None:
    fakehub.throttle = 150_000
    d = services.download_create(repo_id=BIG)
    manager = manager_factory()
    wait_for(lambda: partial_size(d) > 50_000)
    services.download_cancel(download_id=d.pk)
    wait_for(lambda: not manager.transfers)
    wait_for(lambda: not Path(d.local_dir).exists())
    cancelled = row(d.pk)
    assert cancelled.status == Status.CANCELLED and cancelled.bytes_done == 0


def test_a_restart_resumes_a_running_download(fakehub, manager_factory) -> None:
    fakehub.throttle = 150_000
    d = services.download_create(repo_id=BIG)
    first = manager_factory()
    wait_for(lambda: partial_size(d) > 100_000)
    first.stop()  # the web/worker process goes away mid-file
    interrupted = row(d.pk)
    kept = partial_size(interrupted)
    assert interrupted.status == Status.RUNNING and kept > 100_000

    manager_factory()  # a new process starts
    done = wait_status(d.pk, Status.COMPLETED)
    assert file_bytes(Path(done.local_dir)) == expected_files(fakehub, BIG)
    assert kept in cdn_ranges(fakehub, BIG)


def test_several_downloads_run_at_once_up_to_the_limit(fakehub, manager_factory) -> None:
    fakehub.throttle = 150_000
    ids = [services.download_create(repo_id=r).pk for r in (BIG, QWEN, EMBED)]
    manager_factory(concurrency=2)
    statuses = wait_for(
        lambda: (
            (s := dict(Download.objects.values_list("id", "status")))
            and list(s.values()).count("running") == 2
            and s
        )
    )
    assert statuses[ids[2]] == Status.QUEUED  # the third waits for a free slot
    for pk in ids:
        wait_status(pk, Status.COMPLETED)


def test_pausing_a_queued_download_keeps_it_from_starting(fakehub, manager_factory) -> None:
    fakehub.throttle = 200_000
    first = services.download_create(repo_id=BIG)
    second = services.download_create(repo_id=QWEN)
    services.download_pause(download_id=second.pk)
    manager_factory(concurrency=1)
    wait_status(first.pk, Status.COMPLETED)
    assert row(second.pk).status == Status.PAUSED
    services.download_resume(download_id=second.pk)
    wait_status(second.pk, Status.COMPLETED)


def test_a_gated_model_without_access_fails_with_a_clear_message(fakehub, manager_factory, settings) -> None:
    settings.MLXM_HF_TOKEN = "hf_token"
    fakehub.tokens.add("hf_token")
    d = services.download_create(repo_id=GATED)
    fakehub.tokens.clear()  # access revoked (or a token without access) by the time it runs
    manager_factory()
    failed = wait_status(d.pk, Status.FAILED)
    assert "gated" in failed.error and "HF_TOKEN" in failed.error
    assert "hf_token" not in failed.error


def test_a_401_fails_with_an_authentication_message(fakehub, manager_factory) -> None:
    d = services.download_create(repo_id=QWEN)
    fakehub.inject(401, path_contains="/resolve/")
    manager_factory()
    failed = wait_status(d.pk, Status.FAILED)
    assert "authentication is required" in failed.error


def test_a_file_gone_from_the_hub_fails_with_a_404_message(fakehub, manager_factory) -> None:
    d = services.download_create(repo_id=QWEN)
    del fakehub.repos[QWEN].files["model.safetensors"]
    manager_factory()
    failed = wait_status(d.pk, Status.FAILED)
    assert "was not found on the hub" in failed.error and "model.safetensors" in failed.error


def test_a_dropped_connection_is_resumed_with_a_range_request(fakehub, manager_factory) -> None:
    fakehub.drop(SHARD, after=123_456)
    d = services.download_create(repo_id=BIG)
    manager_factory()
    done = wait_status(d.pk, Status.COMPLETED)
    assert file_bytes(Path(done.local_dir)) == expected_files(fakehub, BIG)
    # huggingface_hub retried from the last whole chunk it had written, not from zero.
    (start,) = cdn_ranges(fakehub, BIG)
    assert 100_000 < start <= 123_456


def test_the_hub_going_down_fails_the_download_and_resume_continues(fakehub, manager_factory) -> None:
    fakehub.throttle = 150_000
    d = services.download_create(repo_id=BIG)
    manager_factory()
    wait_for(lambda: partial_size(d) > 100_000)
    fakehub.stop()
    failed = wait_status(d.pk, Status.FAILED, timeout=40)  # after huggingface_hub's own retries
    assert failed.error.startswith(f"Network error while downloading {SHARD}: Cannot reach the hub")
    assert "Resume" in failed.error
    kept = partial_size(failed)
    assert kept > 100_000

    fakehub.start()
    fakehub.throttle = None
    services.download_resume(download_id=d.pk)
    done = wait_status(d.pk, Status.COMPLETED)
    assert file_bytes(Path(done.local_dir)) == expected_files(fakehub, BIG)
    assert kept in cdn_ranges(fakehub, BIG)


def test_not_enough_disk_space_when_it_starts(manager_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    d = services.download_create(repo_id=BIG)
    monkeypatch.setattr(storage, "free_bytes", lambda path: 1024)
    manager_factory()
    failed = wait_status(d.pk, Status.FAILED)
    assert failed.error.startswith("Not enough disk space")
    assert "1.0\xa0KB free" in failed.error


def test_disk_full_while_writing(fakehub, manager_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = manager_module._Sink.write
    calls = {"n": 0}

    def write(self, chunk: bytes) -> int:
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, chunk)

    monkeypatch.setattr(manager_module._Sink, "write", write)
    d = services.download_create(repo_id=BIG)
    manager_factory()
    failed = wait_status(d.pk, Status.FAILED)
    assert failed.error.startswith("Disk full while writing")
    assert "free some space, then resume" in failed.error


def test_a_corrupted_file_is_detected_and_deleted(fakehub, manager_factory) -> None:
    d = services.download_create(repo_id=QWEN)
    f = fakehub.repos[QWEN].files["model.safetensors"]
    f.data = bytes(reversed(f.data))  # same size, different bytes than the listing promised
    manager_factory()
    failed = wait_status(d.pk, Status.FAILED)
    assert "does not match its checksum" in failed.error
    assert partial_size(failed, "model.safetensors") == 0
    assert not (Path(failed.local_dir) / "model.safetensors").exists()


def test_a_restart_deletes_files_of_downloads_cancelled_while_it_was_down(
    hub_settings, manager_factory
) -> None:
    d = services.download_create(repo_id=QWEN)
    Download.objects.filter(pk=d.pk).update(status=Status.RUNNING)
    partial = storage.partial_path(Path(d.local_dir), "model.safetensors")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"x" * 10)
    services.download_cancel(download_id=d.pk)  # running, but no worker to stop it
    assert Path(d.local_dir).exists()
    manager_factory()
    assert not Path(d.local_dir).exists()


def test_the_manager_writes_a_heartbeat(manager_factory) -> None:
    assert not selectors.download_service_alive()
    manager_factory()
    wait_for(selectors.download_service_alive)


def test_pause_and_resume_at_once_still_resumes_from_the_partial_bytes(fakehub, manager_factory) -> None:
    fakehub.throttle = 150_000
    d = services.download_create(repo_id=BIG)
    manager_factory()
    wait_for(lambda: partial_size(d) > 100_000)
    services.download_pause(download_id=d.pk)
    services.download_resume(download_id=d.pk)  # before the worker even saw the pause
    done = wait_status(d.pk, Status.COMPLETED)
    assert file_bytes(Path(done.local_dir)) == expected_files(fakehub, BIG)
    assert any(start > 100_000 for start in cdn_ranges(fakehub, BIG))


EVIL = "acme/evil-names"


@pytest.mark.parametrize("name", ["../../evil.txt", "sub/../../../evil.txt", "ABSOLUTE"])
def test_a_hub_file_name_outside_the_model_folder_fails_the_download(
    fakehub, manager_factory, hub_settings, tmp_path: Path, name: str
) -> None:
    """The worker joins the hub's file names onto the model folder: a hostile hub (or endpoint)
    listing `../../evil.txt` or an absolute path must not get a file written outside it."""
    outside = tmp_path / "outside" / "evil.txt"
    outside.parent.mkdir()
    if name == "ABSOLUTE":
        name = str(outside)
    repo = fakehub.add_repo(
        EVIL,
        {"config.json": {"model_type": "llama"}, "model.safetensors": b"w" * 1000, name: b"pwned"},
        tags=["mlx"],
        library_name="mlx",
    )
    # What the client asks for when it joins that name into a resolve URL (dot segments are
    # collapsed by the HTTP client): a hostile hub answers it.
    for path in (f"/{EVIL}/evil.txt", f"/{EVIL}/resolve/{repo.sha}/evil.txt", f"/{EVIL}/resolve/evil.txt"):
        fakehub.raw[path] = b"pwned"
    d = services.download_create(repo_id=EVIL)
    manager_factory()
    failed = wait_status(d.pk, Status.FAILED, Status.COMPLETED)
    assert failed.status == Status.FAILED
    assert "unsafe file name" in failed.error and repr(name) in failed.error
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.read_bytes() == b"pwned"]
    assert written == []
    assert not any(r.path.endswith("evil.txt") for r in fakehub.requests)
