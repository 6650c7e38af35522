"""A2V predictor: shapes, determinism, padding, checkpoint IO, fallback reference and the Eq. 7–8 loss."""

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from streamguard.pruning.a2v import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    A2VConfig,
    A2VPredictor,
    PredictorCheckpointError,
    PredictorMismatchError,
    SemanticReference,
    a2v_loss,
    load_predictor,
    mean_audio_reference,
    save_predictor,
)

CONFIG = A2VConfig(dim=16, num_queries=4, num_layers=2, num_heads=2)


def _predictor(seed: int = 0) -> A2VPredictor:
    torch.manual_seed(seed)
    return A2VPredictor(CONFIG).eval()


def _audio(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def test_config_rejects_heads_that_do_not_divide_dim() -> None:
    with pytest.raises(ValueError, match="divisible"):
        A2VConfig(dim=10, num_heads=4)


def test_forward_and_predict_shapes() -> None:
    model = _predictor()
    batch = _audio(3, 5, 16)
    assert model(batch).shape == (3, 4, 16)
    assert model(batch[0]).shape == (4, 16)
    assert model.predict(batch).shape == (3, 16)
    assert model.predict(batch[0]).shape == (16,)
    torch.testing.assert_close(model.predict(batch[0]), model(batch[0]).mean(dim=0))
    with pytest.raises(ValueError, match=r"\(B, L, 16\)"):
        model(_audio(5, 8))


def test_forward_is_deterministic_and_batch_independent() -> None:
    batch = _audio(3, 5, 16)
    first, second = _predictor(), _predictor()
    torch.testing.assert_close(first(batch), second(batch), rtol=0, atol=0)
    torch.testing.assert_close(first.predict(batch)[1], first.predict(batch[1]))
    assert not torch.allclose(first.predict(batch), _predictor(seed=1).predict(batch))


def test_padded_audio_tokens_are_ignored() -> None:
    model = _predictor()
    audio = _audio(5, 16)
    padded = torch.cat([audio, 100 * torch.ones(3, 16)]).unsqueeze(0)
    mask = torch.tensor([[False] * 5 + [True] * 3])
    torch.testing.assert_close(model.predict(padded, mask)[0], model.predict(audio))
    with pytest.raises(ValueError, match="every audio token"):
        model(padded, torch.ones(1, 8, dtype=torch.bool))


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = _predictor()
    folder = save_predictor(model, tmp_path / "a2v", "Qwen/Qwen2.5-Omni-7B", 16)
    meta = json.loads((folder / CONFIG_FILE).read_text())
    assert meta["backbone_id"] == "Qwen/Qwen2.5-Omni-7B" and meta["hidden_size"] == 16
    assert meta["config"]["num_queries"] == 4
    # The same checkpoint pointed at as a local folder counts as the same backbone.
    loaded = load_predictor(folder, "/models/Qwen2.5-Omni-7B/", 16)
    assert not loaded.training
    audio = _audio(2, 5, 16)
    torch.testing.assert_close(loaded(audio), model(audio), rtol=0, atol=0)
    as_double = load_predictor(folder, "Qwen/Qwen2.5-Omni-7B", 16, dtype=torch.float64)
    assert next(as_double.parameters()).dtype == torch.float64


def test_save_rejects_a_hidden_size_that_is_not_the_model_width(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="16"):
        save_predictor(_predictor(), tmp_path, "Qwen/Qwen2.5-Omni-7B", 32)


@pytest.mark.parametrize(("backbone", "hidden"), [("Qwen/Qwen2.5-Omni-3B", 16), ("Qwen/Qwen2.5-Omni-7B", 32)])
def test_load_for_another_backbone_or_width_names_both(tmp_path: Path, backbone: str, hidden: int) -> None:
    save_predictor(_predictor(), tmp_path, "Qwen/Qwen2.5-Omni-7B", 16)
    with pytest.raises(PredictorMismatchError) as info:
        load_predictor(tmp_path, backbone, hidden)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "'Qwen/Qwen2.5-Omni-7B' (hidden size 16)" in message
    assert f"{backbone!r} (hidden size {hidden})" in message


def test_missing_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE):
        load_predictor(tmp_path / "nowhere", "m", 16)
    save_predictor(_predictor(), tmp_path, "m", 16)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_predictor(tmp_path, "m", 16)


def test_corrupt_files_are_reported(tmp_path: Path) -> None:
    save_predictor(_predictor(), tmp_path, "m", 16)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"\x00garbage")
    with pytest.raises(PredictorCheckpointError, match=r"unreadable .*model\.safetensors"):
        load_predictor(tmp_path, "m", 16)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(PredictorCheckpointError, match=r"unreadable .*a2v_config\.json"):
        load_predictor(tmp_path, "m", 16)


def test_weights_that_do_not_fit_the_config_are_reported(tmp_path: Path) -> None:
    save_predictor(_predictor(), tmp_path, "m", 16)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    meta["config"]["num_queries"] = 8
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(PredictorCheckpointError, match="does not match its config"):
        load_predictor(tmp_path, "m", 16)


def test_mean_audio_reference() -> None:
    audio = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(mean_audio_reference(audio), torch.tensor([2.0, 3.0]))


def test_semantic_reference_falls_back_loudly_once(caplog: pytest.LogCaptureFixture) -> None:
    reference = SemanticReference()
    assert reference.mode == "mean_audio"
    audio = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    with caplog.at_level(logging.WARNING, logger="streamguard.pruning"):
        torch.testing.assert_close(reference(audio), torch.tensor([2.0, 3.0]))
        reference(audio)
    warnings = [r for r in caplog.records if r.name == "streamguard.pruning"]
    assert len(warnings) == 1 and "mean audio" in warnings[0].getMessage()


def test_semantic_reference_uses_the_predictor(caplog: pytest.LogCaptureFixture) -> None:
    model = _predictor()
    reference = SemanticReference(model)
    assert reference.mode == "a2v"
    audio = _audio(5, 16).to(torch.float64)
    with caplog.at_level(logging.WARNING, logger="streamguard.pruning"):
        out = reference(audio)
    assert not caplog.records
    assert out.dtype == torch.float64 and out.shape == (16,)
    torch.testing.assert_close(out, model.predict(audio.float()).double())


def _loss_case() -> tuple[torch.Tensor, torch.Tensor]:
    # Rows are videos, columns chunks. Normalised targets: (1,0) (1,0) | (0,1) (-1,0).
    pred = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 2.0]]])
    target = torch.tensor([[[1.0, 0.0], [2.0, 0.0]], [[0.0, 3.0], [-1.0, 0.0]]])
    return pred, target


@pytest.mark.parametrize("tau", [0.5, 0.07])
def test_a2v_loss_matches_a_hand_computed_case(tau: float) -> None:
    pred, target = _loss_case()
    r = 1 / math.sqrt(2)
    # Positive cosines: 1, 0, r, 0.
    expected_cos = ((1 - 1) + (1 - 0) + (1 - r) + (1 - 0)) / 4
    e = math.exp
    # Video 0 predictions see video 1's targets (cosines 0, -1 and 1, 0) as negatives;
    # video 1 predictions see video 0's targets (r, r and 0, 0): each of those rows is log 3.
    rows = [
        -math.log(e(1 / tau) / (e(1 / tau) + e(0) + e(-1 / tau))),
        -math.log(e(0) / (e(0) + e(1 / tau) + e(0))),
        math.log(3),
        math.log(3),
    ]
    expected_ctr = sum(rows) / 4
    total, loss_cos, loss_ctr = a2v_loss(pred, target, torch.tensor([7, 9]), lambda_cos=5.0, tau=tau)
    assert loss_cos.item() == pytest.approx(expected_cos, rel=1e-5)
    assert loss_ctr.item() == pytest.approx(expected_ctr, rel=1e-5)
    assert total.item() == pytest.approx(5.0 * expected_cos + expected_ctr, rel=1e-5)


def test_a2v_loss_excludes_every_chunk_of_the_same_video() -> None:
    pred, target = _loss_case()
    # Both rows are the same video: no negatives at all, so every contrastive term is -log 1.
    _, loss_cos, loss_ctr = a2v_loss(pred, target, torch.tensor([4, 4]))
    assert loss_ctr.item() == pytest.approx(0.0, abs=1e-6)
    assert loss_cos.item() == pytest.approx((3 - 1 / math.sqrt(2)) / 4, rel=1e-6)


def test_a2v_loss_has_gradients_and_checks_shapes() -> None:
    pred, target = _loss_case()
    pred.requires_grad_(True)
    total, _, _ = a2v_loss(pred, target, torch.tensor([0, 1]))
    total.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="video_ids"):
        a2v_loss(pred, target, torch.tensor([0, 1, 2]))
