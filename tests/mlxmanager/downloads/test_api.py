"""/api: search, model info, downloads and local models; admins only; errors as problem+json."""

from __future__ import annotations

import pytest
from django.test import Client

from mlxmanager.downloads import selectors, storage
from mlxmanager.downloads.models import Download
from mlxmanager.profiles.models import Profile
from tests.mlxmanager.downloads.conftest import BIN_ONLY, GATED, QWEN, VISION, make_model_dir, wait_for

pytestmark = pytest.mark.django_db
PROBLEM = "application/problem+json"


class ApiClient:
    """A logged-in browser-like client: session cookie plus the CSRF token header."""

    def __init__(self, user) -> None:
        self.client = Client(enforce_csrf_checks=True)
        self.client.force_login(user)
        self.client.get("/keys/")  # a page with a form sets the csrftoken cookie
        self.csrf = self.client.cookies["csrftoken"].value

    def get(self, path: str):
        return self.client.get(path)

    def post(self, path: str, body: object | None = None):
        headers = {"X-CSRFToken": self.csrf}
        if body is None:
            return self.client.post(path, headers=headers)
        return self.client.post(path, body, content_type="application/json", headers=headers)

    def put(self, path: str, body: object):
        return self.client.put(
            path, body, content_type="application/json", headers={"X-CSRFToken": self.csrf}
        )

    def delete(self, path: str):
        return self.client.delete(path, headers={"X-CSRFToken": self.csrf})


@pytest.fixture
def api(admin) -> ApiClient:
    return ApiClient(admin)


def assert_problem(resp, status: int) -> dict:
    assert resp.status_code == status, resp.content
    assert resp["Content-Type"].startswith(PROBLEM)
    body = resp.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


# --- access ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/hub/models"),
        ("get", f"/api/hub/models/{QWEN}"),
        ("get", "/api/downloads"),
        ("post", "/api/downloads"),
        ("get", "/api/local-models"),
        ("delete", "/api/local-models/abc"),
    ],
)
def test_members_get_403(member, method: str, path: str) -> None:
    client = ApiClient(member)
    resp = client.post(path, {"repo_id": QWEN}) if method == "post" else getattr(client, method)(path)
    body = assert_problem(resp, 403)
    assert body["detail"] == "only admins can search, download and delete models"
    assert not Download.objects.exists()


def test_anonymous_gets_401(client: Client) -> None:
    assert_problem(client.get("/api/downloads"), 401)


# --- hub ------------------------------------------------------------------------------


def test_search(api: ApiClient) -> None:
    resp = api.get("/api/hub/models?q=qwen&type=vision&sort=recent&limit=5")
    assert resp.status_code == 200, resp.content
    (item,) = resp.json()
    assert item["repo_id"] == VISION and item["mlx"] is True and item["weights_bytes"] == 9_000_000
    assert item["pipeline_tag"] == "image-text-to-text"


def test_search_max_size(api: ApiClient) -> None:
    repos = [m["repo_id"] for m in api.get("/api/hub/models?max_gb=0.001").json()]
    assert VISION not in repos and QWEN in repos


def test_search_by_quantization(api: ApiClient) -> None:
    items = api.get("/api/hub/models?quantization=4bit").json()
    assert {m["repo_id"] for m in items} >= {QWEN, VISION}
    assert {m["quantization"] for m in items} == {"4bit"}
    body = assert_problem(api.get("/api/hub/models?quantization=7bit"), 400)
    assert body["param"] == "quantization"


def test_search_all_models(api: ApiClient) -> None:
    repos = [m["repo_id"] for m in api.get("/api/hub/models?mlx=false").json()]
    assert GATED in repos and BIN_ONLY in repos


def test_search_bad_sort_is_a_400(api: ApiClient) -> None:
    body = assert_problem(api.get("/api/hub/models?sort=name"), 400)
    assert body["param"] == "sort"


def test_search_when_the_hub_is_down_is_a_502(api: ApiClient, fakehub, settings) -> None:
    # One 503: huggingface_hub retries it after 1 s, past the page's 0.5 s deadline.
    fakehub.inject(503, path_contains="/api/models", times=1)
    settings.MLXM_HF_TIMEOUT = 0.5
    body = assert_problem(api.get("/api/hub/models"), 502)
    assert body["title"] == "Hub unavailable" and "did not answer within 0.5 s" in body["detail"]
    wait_for(lambda: len(fakehub.gets("/api/models")) == 2)  # the abandoned call ends before the test


def test_model_info(api: ApiClient, fakehub) -> None:
    resp = api.get(f"/api/hub/models/{QWEN}")
    assert resp.status_code == 200, resp.content
    info = resp.json()
    assert info["repo_id"] == QWEN and info["sha"] == fakehub.repos[QWEN].sha
    assert info["kind"] == "text" and info["kind_label"] == "Text"
    assert info["quantization"] == {
        "bits": 4,
        "group_size": 64,
        "mode": None,
        "label": "4-bit, group size 64",
    }
    assert info["template"] == {"has_template": True, "tools": True, "thinking": True}
    assert info["weights_bytes"] == 300_000 and info["fits_memory"] is True
    assert info["architectures"] == ["Qwen3ForCausalLM"] and info["model_type"] == "qwen3"
    assert "pytorch_model.bin" in [f["name"] for f in info["files"]]
    assert "pytorch_model.bin" not in [f["name"] for f in info["download_files"]]


def test_model_info_unknown_repo_is_a_404(api: ApiClient) -> None:
    body = assert_problem(api.get("/api/hub/models/nobody/nothing"), 404)
    assert "was not found on the hub" in body["detail"]


def test_model_info_gated_is_a_403(api: ApiClient) -> None:
    body = assert_problem(api.get(f"/api/hub/models/{GATED}"), 403)
    assert "gated" in body["detail"]


# --- downloads ------------------------------------------------------------------------


def test_create_list_pause_resume_cancel_remove(api: ApiClient, admin) -> None:
    resp = api.post("/api/downloads", {"repo_id": QWEN})
    assert resp.status_code == 201, resp.content
    created = resp.json()
    assert created["status"] == "queued" and created["repo_id"] == QWEN and created["bytes_done"] == 0
    assert created["eta_seconds"] is None and created["percent"] == 0
    assert {f["name"] for f in created["files"]} >= {"config.json", "model.safetensors"}
    assert Download.objects.get().created_by == admin
    pk = created["id"]

    assert [d["id"] for d in api.get("/api/downloads").json()] == [pk]
    assert api.get(f"/api/downloads/{pk}").json()["status"] == "queued"
    assert api.post(f"/api/downloads/{pk}/pause").json()["status"] == "paused"
    assert api.post(f"/api/downloads/{pk}/resume").json()["status"] == "queued"
    assert api.post(f"/api/downloads/{pk}/cancel").json()["status"] == "cancelled"
    resp = api.delete(f"/api/downloads/{pk}")
    assert resp.status_code == 204
    assert api.get("/api/downloads").json() == []


def test_create_twice_is_a_409(api: ApiClient) -> None:
    api.post("/api/downloads", {"repo_id": QWEN})
    body = assert_problem(api.post("/api/downloads", {"repo_id": QWEN}), 409)
    assert "Already downloading" in body["detail"]


def test_create_without_weights_is_a_400(api: ApiClient) -> None:
    body = assert_problem(api.post("/api/downloads", {"repo_id": BIN_ONLY}), 400)
    assert "no MLX weights" in body["detail"] and body["param"] == "repo_id"


def test_create_with_a_full_disk_is_a_507(api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "free_bytes", lambda path: 0)
    body = assert_problem(api.post("/api/downloads", {"repo_id": QWEN}), 507)
    assert "Not enough disk space" in body["detail"]


def test_create_needs_csrf(admin) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin)
    resp = client.post("/api/downloads", {"repo_id": QWEN}, content_type="application/json")
    assert resp.status_code == 403
    assert not Download.objects.exists()


def test_create_validates_the_body(api: ApiClient) -> None:
    assert_problem(api.post("/api/downloads", {"revision": "main"}), 400)


def test_unknown_download_is_a_404(api: ApiClient) -> None:
    assert_problem(api.get("/api/downloads/999"), 404)
    assert_problem(api.post("/api/downloads/999/pause"), 404)


def test_remove_an_active_download_is_a_409(api: ApiClient) -> None:
    pk = api.post("/api/downloads", {"repo_id": QWEN}).json()["id"]
    assert_problem(api.delete(f"/api/downloads/{pk}"), 409)


# --- local models ---------------------------------------------------------------------


def test_local_models_list_and_delete(api: ApiClient, hub_settings) -> None:
    used = make_model_dir(hub_settings["models"] / "org--used")
    free = make_model_dir(hub_settings["models"] / "org--free")
    Profile.objects.create(name="chat", model_path=str(used))
    listed = {m["name"]: m for m in api.get("/api/local-models").json()}
    assert listed["org--used"]["used_by"] == ["chat"] and listed["org--free"]["used_by"] == []
    assert listed["org--free"]["path"] == str(free) and listed["org--free"]["deletable"] is True
    assert listed["org--free"]["size_bytes"] > 0

    body = assert_problem(api.delete(f"/api/local-models/{listed['org--used']['id']}"), 409)
    assert "the profile chat uses it" in body["detail"]
    assert used.exists()

    assert api.delete(f"/api/local-models/{listed['org--free']['id']}").status_code == 204
    assert not free.exists()
    assert [m.name for m in selectors.local_model_list()] == ["org--used"]


def test_delete_unknown_local_model_is_a_404(api: ApiClient) -> None:
    assert_problem(api.delete("/api/local-models/0123456789abcdef"), 404)


def test_openapi_documents_the_routes(api: ApiClient) -> None:
    paths = api.get("/api/openapi.json").json()["paths"]
    for path in ("/api/hub/models", "/api/hub/models/{repo_id}", "/api/downloads", "/api/local-models"):
        assert path in paths, sorted(paths)


# --- the Hugging Face token ------------------------------------------------------------


def test_hub_token_is_write_only(api: ApiClient, settings) -> None:
    settings.MLXM_HF_TOKEN = None
    assert api.get("/api/hub/token").json() == {
        "set": False,
        "source": None,
        "hint": None,
        "updated_at": None,
    }
    resp = api.put("/api/hub/token", {"token": "hf_writeonly_9876"})
    assert resp.status_code == 200, resp.content
    body = resp.json()
    assert body["set"] and body["source"] == "stored" and body["hint"] == "9876"
    assert "hf_writeonly_9876" not in resp.content.decode()
    assert "hf_writeonly_9876" not in api.get("/api/hub/token").content.decode()
    problem = assert_problem(api.put("/api/hub/token", {"token": "two words"}), 400)
    assert problem["param"] == "token"
    cleared = api.delete("/api/hub/token")
    assert cleared.status_code == 200 and cleared.json()["set"] is False


def test_hub_token_is_for_admins_only(member) -> None:
    member_api = ApiClient(member)
    assert_problem(member_api.put("/api/hub/token", {"token": "hf_x"}), 403)
    assert_problem(member_api.get("/api/hub/token"), 403)


# --- conversions ------------------------------------------------------------------------


def test_conversions_queue_list_get_and_cancel(api: ApiClient, tmp_path) -> None:
    import json as _json

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(_json.dumps({"model_type": "llama"}))
    (ckpt / "model.safetensors").write_bytes(b"x")
    resp = api.post("/api/conversions", {"source": str(ckpt), "name": "ckpt-4bit", "q_bits": 4})
    assert resp.status_code == 202, resp.content
    body = resp.json()
    assert body["status"] == "queued" and body["q_bits"] == 4 and body["output_dir"].endswith("/ckpt-4bit")
    assert [c["id"] for c in api.get("/api/conversions").json()] == [body["id"]]
    assert api.get(f"/api/conversions/{body['id']}").json()["name"] == "ckpt-4bit"
    assert api.post(f"/api/conversions/{body['id']}/cancel").json()["status"] == "cancelled"
    assert_problem(api.post(f"/api/conversions/{body['id']}/cancel"), 409)
    assert_problem(api.get("/api/conversions/999999"), 404)
    problem = assert_problem(
        api.post("/api/conversions", {"source": str(tmp_path / "nope"), "name": "x"}), 400
    )
    assert problem["param"] == "source"
