"""`streamguard serve` picks a config a fresh machine can run."""

from __future__ import annotations

import argparse

import torch

from streamguard.cli import _serve_config


def test_serve_runs_the_tiny_demo_without_a_gpu_and_says_so(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _serve_config(argparse.Namespace(config=None)) == "tiny"
    assert "tiny demo model" in capsys.readouterr().err


def test_serve_runs_the_production_default_on_a_gpu_and_an_explicit_config_always(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _serve_config(argparse.Namespace(config=None)) == "default"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _serve_config(argparse.Namespace(config="qwen2.5-omni-3b")) == "qwen2.5-omni-3b"
