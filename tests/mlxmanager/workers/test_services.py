from __future__ import annotations

import pytest

from mlxmanager.errors import Conflict, DomainError
from mlxmanager.workers import services
from mlxmanager.workers.selectors import enabled_workers


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("studio-2.lan:7000", "tcp://studio-2.lan:7000"),
        ("tcp://10.0.0.5:7000", "tcp://10.0.0.5:7000"),
        ("tls://gpu.example.com:443", "tls://gpu.example.com:443"),
        ("[::1]:7000", "tcp://[::1]:7000"),
        (" host:07000 ", "tcp://host:7000"),
    ],
)
def test_addresses_are_normalised(given: str, stored: str) -> None:
    assert services.normalise_address(given) == stored


@pytest.mark.parametrize(
    "bad", ["", "host", "host:0", "host:70000", "http://host:80", "a b:1", "host:-1", None]
)
def test_bad_addresses_are_refused(bad: object) -> None:
    with pytest.raises(DomainError, match="HOST:PORT") as exc:
        services.normalise_address(bad)
    assert exc.value.param == "address"


@pytest.mark.django_db
def test_create_toggle_delete() -> None:
    w = services.worker_create(name="Studio-2", address="studio:7000")
    assert (w.name, w.address) == ("studio-2", "tcp://studio:7000")
    assert enabled_workers() == [("studio-2", "tcp://studio:7000")]
    with pytest.raises(Conflict):
        services.worker_create(name="other", address="tcp://studio:7000")
    with pytest.raises(DomainError, match="lowercase"):
        services.worker_create(name="no spaces", address="x:1")
    services.worker_set_enabled(worker=w, enabled=False)
    assert enabled_workers() == []
    services.worker_delete(worker=w)
    with pytest.raises(DomainError, match="no such worker"):
        services.worker_get(w.pk)
