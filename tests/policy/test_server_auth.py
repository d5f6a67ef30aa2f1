"""Bearer-token authentication, and the refusal to listen beyond loopback without it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from policy.client import PolicyAuthError, PolicyClient
from policy.inference import InferenceEngine
from policy.server_auth import ServerConfigError, check_exposure, is_loopback, read_token_file
from tests.conftest import REPO_ROOT
from tests.policy.server_testing import INSTRUCTION, TOKEN, rgb, running_server


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    engine = InferenceEngine.load(tiny_model_dir, threads=1)
    with running_server(engine, token=TOKEN) as running:
        yield running


def test_requests_without_the_right_token_are_refused(server):
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN[:-1]}"}, {"Authorization": f"Bearer {TOKEN}x"}):
        for method, path in (("POST", "/act"), ("GET", "/metadata")):
            response = requests.request(method, server.url + path, headers=headers, timeout=10)
            assert response.status_code == 401, (headers, path)
            assert response.json()["error"]["type"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    with PolicyClient(server.url, token="not-the-token-at-all") as client, pytest.raises(PolicyAuthError):
        client.act(rgb(32, 32), INSTRUCTION)


def test_the_right_token_is_served_and_health_needs_none(server, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with PolicyClient(server.url, token_file=token_file) as client:
        assert client.act(rgb(32, 32), INSTRUCTION).action.shape == (7,)
        assert client.metadata()["auth"] == {"required": True, "scheme": "Bearer"}
    assert requests.get(server.url + "/health", timeout=10).json()["status"] == "ok"


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True),
                                               ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                               ("192.168.1.20", False), ("::", False), ("gpu-box", False)])
def test_loopback_detection(host, loopback):
    assert is_loopback(host) is loopback
    if loopback:
        check_exposure(host, None)
    else:
        with pytest.raises(ServerConfigError, match="without authentication"):
            check_exposure(host, None)
        check_exposure(host, TOKEN)


def test_token_files_are_checked(tmp_path):
    with pytest.raises(ServerConfigError, match="cannot read"):
        read_token_file(tmp_path / "absent")
    for content in ("", "short", "has a space in the middle of it", "line one long enough\nline two"):
        (tmp_path / "t").write_text(content)
        with pytest.raises(ServerConfigError, match="at least 16"):
            read_token_file(tmp_path / "t")
    (tmp_path / "t").write_text(f"  {TOKEN}\n")
    assert read_token_file(tmp_path / "t") == TOKEN


def test_serve_refuses_a_public_address_without_a_token_before_loading(tmp_path):
    # The checkpoint does not even exist: the refusal must come first, and fast.
    result = subprocess.run([sys.executable, "-m", "fanvla", "serve", "--checkpoint", str(tmp_path / "none"),
                             "--host", "0.0.0.0"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "refusing to listen on '0.0.0.0' without authentication" in result.stderr
    assert "--token-file" in result.stderr
    result = subprocess.run([sys.executable, "-m", "fanvla", "serve", "--checkpoint", str(tmp_path / "none")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "cannot serve" in result.stderr and "not a directory" in result.stderr
