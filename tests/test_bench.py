"""`streamguard bench --quick` end to end on the tiny model, and the helpers it shares."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from service_helpers import random_chunks
from transformers import Qwen2_5OmniThinkerConfig

from streamguard.backbones import load_backbone
from streamguard.bench import report as bench_report
from streamguard.bench.concurrency import measure_concurrency
from streamguard.bench.flops import QWEN25_OMNI_7B, ThinkerDims, prefill_flops
from streamguard.bench.runner import MEASURES
from streamguard.bench.sections import SECTION_NAMES
from streamguard.bench.sections import SECTIONS as TABLE
from streamguard.cli import main
from streamguard.config import load_settings
from streamguard.engine.fidelity import first_token_kl
from streamguard.engine.pipeline import STAGES

SECTIONS = {
    "compression",
    "fidelity",
    "costs",
    "selection",
    "latency",
    "memory",
    "concurrency",
    "prefilter",
    "long_memory",
}
HEADLINE = {
    "input_tokens_pruned_pct",
    "question_latency_ratio",
    "kv_bytes_per_minute",
    "kv_bytes_per_minute_at_7b_bf16",
    "largest_realtime_streams",
    "prefilter",
    "selection_share_pct",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def quick_bench(checkpoint: Path, out: Path, *extra: str) -> dict:
    """`streamguard bench --quick` on the tiny checkpoint into `out`, and its bench.json."""
    args = ["bench", "--config", "tiny", "--model", str(checkpoint), "--out", str(out), "--quick"]
    assert main([*args, *extra]) == 0
    return json.loads((out / "bench.json").read_text())


@pytest.fixture(scope="module")
def bench(tmp_path_factory, clip, checkpoint):
    """One quick bench run, with a panning clip passed as a file of the user's."""
    extra = clip("pan.mp4", 6, width=320, height=240, motion="pan")
    out = tmp_path_factory.mktemp("bench")
    return out, quick_bench(checkpoint, out, "--files", str(extra)) | {"file": str(extra)}


def test_writes_every_section_the_report_and_the_plots(bench):
    out, result = bench
    assert result.keys() >= SECTIONS | {"environment", "headline", "engine"}
    assert result["environment"]["sections"] == list(SECTION_NAMES)
    assert set(result["headline"]) == HEADLINE
    for name in ("question_latency.png", "memory.png", "concurrency.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
        assert name in result["plots"].values()
    report = (out / "report.md").read_text()
    for heading in (
        "Compression",
        "Per-chunk cost",
        "Selection cost",
        "Question latency",
        "Memory",
        "Fidelity",
        "Pre-filter",
        "Long memory",
    ):
        assert heading in report
    assert "![question latency](question_latency.png)" in report and "only mean something on a GPU" in report
    assert "Sections run" not in report  # all of them: nothing to say
    env = result["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["quick"] is True
    assert env["git_commit"] and env["config"]["model"]["path"] == env["model"]
    assert env["random_weights"] is True and "**The model has random weights" in report  # tiny: noise
    assert "tokens" not in env["config"]["service"]  # the service's secrets stay out of the file


def test_the_table_of_sections_covers_every_figure_once():
    keys = [key for section in TABLE for key in section.keys]
    assert sorted(keys) == sorted(SECTIONS)  # each bench.json figure belongs to exactly one section
    assert set(MEASURES) == set(SECTION_NAMES)
    assert {key for key, _ in bench_report._PARTS} == SECTIONS  # the report renders each


def test_only_the_chosen_section_runs(tmp_path, checkpoint, capsys):
    out = tmp_path / "concurrency"
    result = quick_bench(checkpoint, out, "--sections", "concurrency")
    assert result.keys() == {"concurrency", "engine", "environment", "headline", "duration_s", "plots"}
    assert result["environment"]["sections"] == ["concurrency"]
    assert result["headline"] == {
        "largest_realtime_streams": result["engine"]["batched"]["streams_real_time"]
    }
    assert set(result["concurrency"]["engines"]) == {"serial", "batched"}
    assert result["plots"] == {"concurrency": "concurrency.png"}
    assert sorted(p.name for p in out.glob("*.png")) == ["concurrency.png"]
    # the quick scale streams the moving clip: no static clip, no camera cases
    assert sorted(p.name for p in (out / "clips").iterdir()) == ["moving.mp4"]
    report = (out / "report.md").read_text()
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Headline" and len(headings) == 2 and headings[1].startswith("## 6. Concurrency")
    assert "Sections run (`--sections`): concurrency (" in report and "batched keeps" in report
    printed = capsys.readouterr().out
    assert "engine: batched keeps" in printed and "cpu share of all cores" in printed


def test_an_unknown_section_is_refused_with_the_valid_names(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--config", "tiny", "--out", str(tmp_path / "out"), "--sections", "costs,speed"])
    err = capsys.readouterr().err
    assert "unknown section speed" in err and ", ".join(SECTION_NAMES) in err
    assert not (tmp_path / "out").exists()


def test_compression_per_method_on_every_clip(bench):
    _, result = bench
    assert set(result["compression"]) == {"static", "moving", result["file"]}
    for figure in result["compression"].values():
        methods = figure["methods"]
        assert methods["full"]["input_tokens_pruned_pct"] == 0.0
        for name in ("contextguard_current", "contextguard_previous", "contextguard_offline"):
            pruned = methods[name]
            assert 0 < pruned["input_tokens_pruned_pct"] <= pruned["video_tokens_pruned_pct"] < 100
        # Random keeps exactly as many tokens as ContextGuard (the matched-ratio baseline).
        assert methods["random"]["video_tokens_kept"] == methods["contextguard_current"]["video_tokens_kept"]
    dropped = {
        clip: figure["methods"]["contextguard_current"]["chunks_video_dropped"]
        for clip, figure in result["compression"].items()
    }
    # A still camera's video repeats itself: the drop rule removes far more of it than of a pan.
    assert dropped["static"] > dropped[result["file"]]


def test_fidelity_has_a_divergence_for_every_pruned_method(bench):
    _, result = bench
    for clip, kl in result["fidelity"]["kl"].items():
        assert set(kl) == set(result["compression"][clip]["methods"]) - {"full"}
        assert all(math.isfinite(value) and value >= 0 for value in kl.values())


def test_costs_and_selection_at_7b_width(bench):
    _, result = bench
    costs = result["costs"]
    assert set(costs["pruned"]["stages"]) == set(STAGES)
    assert 0 < costs["selection_share_pct"] < 100
    (row,) = result["selection"]["rows"]
    assert result["selection"]["width"] == 3584 and row["grid"] == [2, 16, 16]
    assert 0 < row["kept_video_tokens"] < row["video_tokens"]
    assert row["a2v"]["median_ms"] > 0 and row["mean_audio"]["median_ms"] > 0
    assert row["flops_7b"]["total"] > 1000 * row["flops_loaded"]["total"]
    assert 0 < row["selection_share_pct_at_matmul_throughput"] < 100


def test_rolling_answers_beat_re_prefill_more_as_the_stream_grows(bench):
    _, result = bench
    budget = result["environment"]["config"]["session"]["token_budget"]
    for rows in result["latency"]["methods"].values():
        shortest, longest = rows[0], rows[-1]
        assert shortest["minutes"] < longest["minutes"]
        assert longest["total_ratio"] > shortest["total_ratio"]
        # Before the budget fills both hold the same tokens and give the same greedy answer.
        assert shortest["rolling"]["context_tokens"] == shortest["reprefill"]["context_tokens"]
        assert shortest["same_answer"]
        assert longest["rolling"]["context_tokens"] <= budget


def test_memory_is_bounded_by_the_budget_and_pruning_shrinks_it(bench):
    _, result = bench
    full, pruned = (result["memory"]["methods"][m]["summary"] for m in ("full", "contextguard_current"))
    assert pruned["kv_bytes_per_minute"] < full["kv_bytes_per_minute"]
    for summary in (full, pruned):
        assert summary["kv_bytes_max"] <= summary["kv_bytes_ceiling"]
        assert summary["rss_bytes_peak"] > 0
    assert full["chunks_evicted"] > 0  # the quick replay outgrows the budget


def test_concurrency_runs_both_engines_and_accounts_for_every_chunk(bench):
    _, result = bench
    figure = result["concurrency"]
    assert set(figure["engines"]) == {"serial", "batched"}
    for engine in figure["engines"].values():
        # the quick run lists 1 and 2 streams, then doubles up to 4 while runs keep real time
        counts = [r["streams"] for r in engine["rows"]]
        assert counts == ([1, 2, 4] if engine["rows"][1]["realtime"] else [1, 2])
        assert engine["largest_measured_realtime_streams"] in [0, *counts]
        for row in engine["rows"]:
            assert (
                row["chunks_processed"] + row["chunks_shed"] + row["chunks_failed"] == row["chunks_submitted"]
            )
            assert row["chunks_failed"] == 0 and row["worker_ms_per_chunk"] > 0 and row["load"] > 0
            # questions in flight: one per stream in the quick run's four chunks, each answered
            assert row["questions_asked"] == row["question_total"]["n"] == row["streams"]
            assert 0 < row["cpu_share"]["worker"] <= 1
            assert row["stages_ms"] == {}  # stage timings only when engine.profile_stages asks
    summary = result["engine"]
    for name in ("serial", "batched"):
        assert summary[name].keys() >= {
            "streams_real_time",
            "worker_ms_per_chunk",
            "lag_p95_s",
            "first_delta_p95_s",
            "answer_total_p95_s",
        }
    # the serial engine preprocesses on its worker; the batched one on its pool
    assert (
        summary["serial"]["cpu_share"]["preprocessing"]
        == 0
        < summary["batched"]["cpu_share"]["preprocessing"]
    )
    assert "batched keeps" in (bench[0] / "report.md").read_text()


def test_profiled_engines_say_where_a_chunks_worker_time_went(checkpoint):
    settings = load_settings("tiny", model={"path": str(checkpoint)}, engine={"profile_stages": True})
    backbone = load_backbone(settings.model, settings.chunk)
    figure = measure_concurrency(backbone, settings, random_chunks(2), [1], speed=4.0, tick=lambda: None)
    for engine in figure["engines"].values():
        (row,) = engine["rows"]
        stages = row["stages_ms"]
        assert (
            {"preprocess", "vision_encode", "audio_encode", "select", "prefill"}
            <= stages.keys()
            <= set(STAGES)
        )
        assert stages["vision_encode"] > 0 and min(stages.values()) >= 0


def test_bad_arguments_are_one_clear_line(tmp_path, capsys):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00 not a video" * 200)
    for path in (tmp_path / "missing.mp4", garbage):
        out = tmp_path / "out"
        assert main(["bench", "--config", "tiny", "--out", str(out), "--files", str(path)]) == 2
        assert path.name in capsys.readouterr().err
        assert not out.exists()  # failed before writing anything
    # an option whose sections do not run is refused, before anything is written
    out = tmp_path / "out"
    for option, value, users in [
        ("--files", str(garbage), "compression"),
        ("--streams", "1,2", "concurrency"),
        ("--memory-minutes", "10", "long_memory"),
    ]:
        args = ["bench", "--config", "tiny", "--out", str(out), "--sections", "costs", option, value]
        assert main(args) == 2
        assert f"{option} is used by the {users} section" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit):
        main(["bench", "--config", "tiny", "--out", str(tmp_path), "--minutes", "1,x"])
    assert "expected a positive float, got 'x'" in capsys.readouterr().err


def test_first_token_kl():
    logits = torch.tensor([2.0, 0.0, -1.0])
    assert first_token_kl(logits, logits) == pytest.approx(0.0, abs=1e-12)
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])
    expected = float((p * (p / q).log()).sum())
    assert first_token_kl(p.log(), q.log()) == pytest.approx(expected)
    with pytest.raises(ValueError, match="shapes"):
        first_token_kl(logits, logits[:2])


def test_7b_dimensions_match_the_transformers_default_thinker():
    # transformers' default Qwen2.5-Omni thinker config is the 7B's language model.
    text = ThinkerDims.from_config(Qwen2_5OmniThinkerConfig())
    for name in ("hidden", "layers", "intermediate", "heads", "kv_heads", "audio_hidden", "audio_layers"):
        assert getattr(text, name) == getattr(QWEN25_OMNI_7B, name)
    # Dense work grows linearly with new tokens; attention adds the cached context on top.
    assert prefill_flops(QWEN25_OMNI_7B, 200, 0) > 2 * prefill_flops(QWEN25_OMNI_7B, 100, 0)
    assert prefill_flops(QWEN25_OMNI_7B, 100, 10_000) > prefill_flops(QWEN25_OMNI_7B, 100, 0)


def test_prefilter_calibration_on_every_camera_case(bench):
    _, result = bench
    figure = result["prefilter"]
    cases = figure["cases"]
    assert set(cases) == {"static", "drift", "clock", "enter", "pan", "ir"}
    assert cases["static"]["encoder_skipped_pct"] == 100.0 and cases["drift"]["encoder_skipped_pct"] == 100.0
    assert cases["pan"]["encoder_skipped"] == 0  # every pan chunk goes to the embedding rule
    for event in ("enter", "ir"):
        assert cases[event]["event_kept"] is True and cases[event]["event_chunk"] == 3
    assert cases["enter"]["event_reason"] == "local_change" and cases["ir"]["event_reason"] == "colour_mode"
    time = figure["encoder_time"]
    assert time["pixels"] == {"min": 128 * 28 * 28, "max": 768 * 28 * 28}
    assert time["video_tokens_per_chunk"] == 2 * 13 * 23  # 640x360 -> 644x364: 23x13 merged, 2 patches
    assert time["encoder_skipped"] == time["chunks"] - 1
    assert 0 < time["vision_encode_ms"]["prefilter_on"] < time["vision_encode_ms"]["prefilter_off"]
    assert result["headline"]["prefilter"]["events_kept"] is True


def test_long_memory_keeps_the_device_cache_bounded_and_recalls_from_host_and_disk(bench):
    _, result = bench
    figure = result["long_memory"]
    assert figure["stream_minutes"] == 4 and figure["chunks"] == 120
    latency = figure["latency_s"]
    assert set(latency) == {"auto", "span", "recent", "reprefill"}
    assert all(
        set(times) == {"2.5", "4"} and all(t > 0 for t in times.values()) for times in latency.values()
    )
    # the device never holds more than the prefix and a full budget, however long the stream
    ceiling = (figure["token_budget"] + figure["prefix_tokens"]) * figure["kv_bytes_per_token"]
    assert figure["device_kv_bytes_max"] <= ceiling
    assert figure["chunks_offloaded"] == figure["chunks_held"] > 0
    assert 0 < figure["host_bytes"] <= figure["host_limit_bytes"] and figure["disk_bytes"] > 0
    assert all(0 < t <= figure["span_tokens"] for t in figure["recalled_tokens"]["span"].values())
    assert 0 < figure["recalled_tokens"]["auto"]["4"] <= figure["recall_tokens"]
    scale = figure["at_7b_bf16"]["kv_bytes_per_token"] / figure["kv_bytes_per_token"]
    assert figure["at_7b_bf16"]["disk_bytes"] == figure["disk_bytes"] * scale
