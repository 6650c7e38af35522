"""`streamguard serve` picks a config a fresh machine can run, and starts in one command."""

from __future__ import annotations

import argparse
import json

import httpx
import pytest
import torch
from service_helpers import TOKEN, receive, serve_process, wait_until
from websockets.exceptions import ConnectionClosed

from streamguard.cli import _serve_config
from streamguard.config import CONFIG_DIR, load_settings, resolve_config_path
from streamguard.ingest.synthetic import write_clip

MAX_MESSAGE_BYTES = 4096


def test_serve_runs_the_tiny_demo_without_a_gpu_and_says_so(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _serve_config(argparse.Namespace(config=None)) == "tiny"
    assert "tiny demo model" in capsys.readouterr().err


def test_serve_runs_the_production_default_on_a_gpu_and_an_explicit_config_always(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _serve_config(argparse.Namespace(config=None)) == "default"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _serve_config(argparse.Namespace(config="qwen2.5-omni-3b")) == "qwen2.5-omni-3b"


@pytest.mark.parametrize(
    "name", sorted(path.name.removesuffix(".yaml") for path in CONFIG_DIR.glob("*.yaml"))
)
def test_every_shipped_config_loads_by_its_bare_name(name):
    """`--config qwen2.5-omni-3b` as the README writes it: the dots are part of the name."""
    assert resolve_config_path(name) == CONFIG_DIR / f"{name}.yaml"
    load_settings(name)


def test_serve_on_the_tiny_config_starts_in_one_command_and_stops_on_ctrl_c(tmp_path):
    env = {
        "STREAMGUARD_CACHE": str(tmp_path / "cache"),  # the tiny model is built here on first use
        "STREAMGUARD_SERVICE__TOKENS": json.dumps([TOKEN]),
        "STREAMGUARD_SERVICE__ALLOW_FILE_SOURCES": "true",
        "STREAMGUARD_SERVICE__FILE_ROOT": str(tmp_path),
        "STREAMGUARD_SERVICE__MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
    }
    with serve_process(tmp_path, ["--config", "tiny"], env) as serving:
        service = serving.service
        page = httpx.get(f"{service.url}/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")

        clip = write_clip(tmp_path / "clip.mp4", seconds=2)
        created = service.http.post("/v1/streams", json={"source": "file", "path": str(clip)})
        assert created.status_code == 201, created.text
        with service.ws(f"/v1/streams/{created.json()['id']}/ws") as ws:
            ws.send(json.dumps({"type": "x" * MAX_MESSAGE_BYTES}))  # over the app's limit: an error
            assert receive(ws)["code"] == "message_too_large"
            ws.send(json.dumps({"type": "x" * 4 * MAX_MESSAGE_BYTES}))  # over the transport's: closed
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1009
        # the token in a websocket URL is blanked in the access log however its name is spelled,
        # accepted (`tok%65n` decodes to `token`) or refused (`TOKEN`)
        socket_path = f"/v1/streams/{created.json()['id']}/ws"
        with service.ws(f"{socket_path}?tok%65n={TOKEN}", token=None) as ws:
            ws.send(json.dumps({"type": "stats.subscribe"}))
            assert receive(ws)["type"] == "stream.stats"
        with service.ws(f"{socket_path}?TOKEN={TOKEN}", token=None) as ws:
            assert receive(ws)["code"] == "missing_token"
        wait_until(lambda: "TOKEN=***" in serving.output(), "the refused socket in the log")
    # left with Ctrl-C: a clean exit that said where everything is
    output = serving.output()
    assert serving.process.returncode == 0, output
    assert "tok%65n=***" in output and TOKEN not in output
    url = service.url
    assert f"page     {url}/" in output and f"API docs {url}/docs" in output
