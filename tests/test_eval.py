"""`streamguard eval` on a generated question set and the tiny model; the benchmarks' adapters on
records in their published shapes; the errors bad datasets get."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamguard.cli import main
from streamguard.eval.datasets import DatasetError, load_dataset
from streamguard.ingest.synthetic import write_clip

METHODS = ("contextguard", "full")
# Three clips (two questions on the first), a corrupt file and a missing one.
QUESTIONS = [
    {"id": "still-1", "video": "still.mp4", "question": "What moves?", "options": ["nothing", "squares", "a pan"], "answer": "A", "task": "motion"},
    {"id": "still-2", "video": "still.mp4", "question": "What do you hear?", "options": ["A. a tone", "B. speech"], "answer": 0, "task": "sound"},
    {"id": "moving", "video": "moving.mp4", "question": "What moves?", "options": ["nothing", "squares"], "answer": "squares", "category": "motion"},
    {"id": "pan", "video": "pan.mp4", "question": "How does the camera move?", "options": ["it pans", "it is still", "it zooms"], "answer": "A", "task": "motion"},
    {"id": "corrupt", "video": "corrupt.mp4", "question": "What moves?", "options": ["x", "y"], "answer": "B"},
    {"id": "missing", "video": "missing.mp4", "question": "What moves?", "options": ["x", "y"], "answer": "B"},
]  # fmt: skip


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> str:
    return str(checkpoint)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("set")
    for name, motion in (("still", "static"), ("moving", "moving"), ("pan", "pan")):
        write_clip(folder / f"{name}.mp4", 4, motion=motion)
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    path = folder / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return path


def run_eval(dataset: Path, model: str, out: Path, *extra: str) -> int:
    args = ["eval", str(dataset), "--config", "tiny", "--model", model, "--out", str(out)]
    return main([*args, "--methods", ",".join(METHODS), "--max-new-tokens", "4", *extra])


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_run(dataset: Path, model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one-run")
    assert run_eval(dataset, model, out) == 0
    return out


def test_summary_scores_every_method(one_run: Path):
    summary = json.loads((one_run / "summary.json").read_text())
    assert summary["questions"] == len(QUESTIONS)
    assert summary["run"]["format"] == "streamguard"
    for name in METHODS:
        method = summary["methods"][name]
        assert (method["scored"], method["errors"], method["not_run"]) == (4, 2, 0)
        assert 0.0 <= method["accuracy"] <= 1.0
        assert method["correct"] == round(method["accuracy"] * 4)
        assert set(method["per_task"]) == {"motion", "sound"}
        assert method["per_task"]["motion"]["scored"] == 3
    contextguard, full = summary["methods"]["contextguard"], summary["methods"]["full"]
    assert contextguard["video_tokens_pruned_pct"] > 0
    assert 0 < contextguard["input_tokens_pruned_pct"] < contextguard["video_tokens_pruned_pct"]
    assert contextguard["kl_vs_full_mean"] > 0
    assert full["video_tokens_pruned_pct"] == full["input_tokens_pruned_pct"] == 0
    assert full["kl_vs_full_mean"] == 0


def test_broken_videos_are_errors_with_their_reason(one_run: Path):
    summary = json.loads((one_run / "summary.json").read_text())
    failed = {f["id"]: f["error"] for f in summary["methods"]["contextguard"]["failed"]}
    assert set(failed) == {"corrupt", "missing"}
    assert failed["corrupt"].startswith("MediaError")
    assert failed["missing"].startswith("FileNotFoundError") and "missing.mp4" in failed["missing"]


def test_each_result_line_holds_the_choice_the_text_and_the_stream(one_run: Path):
    scored = [r for r in lines(one_run) if "error" not in r]
    assert len(scored) == 4 * len(METHODS)
    for r in scored:
        assert r["prediction"] in r["option_probs"]
        assert sum(r["option_probs"].values()) == pytest.approx(1.0)
        assert r["correct"] == (r["prediction"] == r["answer"])
        assert isinstance(r["text"], str)
        assert r["chunks"] == 2 and r["input_tokens"] >= r["input_tokens_kept"] > 0
    # The two questions on one video are asked of the same streams.
    still = [r for r in scored if r["id"].startswith("still") and r["method"] == "contextguard"]
    assert len({(r["video_tokens_kept"], r["kv_tokens"]) for r in still}) == 1


def test_resume_answers_only_what_is_missing(dataset: Path, model: str, one_run: Path, tmp_path: Path):
    assert run_eval(dataset, model, tmp_path, "--limit", "2") == 0
    assert len(lines(tmp_path)) == 2 * len(METHODS)
    assert run_eval(dataset, model, tmp_path, "--resume") == 0
    assert len(lines(tmp_path)) == len(QUESTIONS) * len(METHODS)
    # Nothing scored is asked again; only the broken videos are retried.
    assert run_eval(dataset, model, tmp_path, "--resume") == 0
    assert len(lines(tmp_path)) == (len(QUESTIONS) + 2) * len(METHODS)
    assert json.loads((tmp_path / "summary.json").read_text())["run"]["questions_tried_this_run"] == 2
    # Interrupted and resumed, the run scores as one run does.
    resumed, whole = (json.loads((p / "summary.json").read_text())["methods"] for p in (tmp_path, one_run))
    for name in METHODS:
        assert resumed[name]["accuracy"] == whole[name]["accuracy"]
        assert resumed[name]["kl_vs_full_mean"] == pytest.approx(whole[name]["kl_vs_full_mean"])


def test_an_existing_run_is_not_overwritten_without_resume(dataset: Path, model: str, one_run: Path, capsys):
    before = (one_run / "results.jsonl").read_text()
    assert run_eval(dataset, model, one_run) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert (one_run / "results.jsonl").read_text() == before


def test_an_unknown_method_fails_before_the_model_loads(dataset: Path, tmp_path: Path, capsys):
    args = ["eval", str(dataset), "--config", "tiny", "--out", str(tmp_path), "--methods", "full,fastv"]
    assert main(args) == 2
    assert "unknown method(s) ['fastv']" in capsys.readouterr().err
    assert not (tmp_path / "results.jsonl").exists()


# -- adapters ----------------------------------------------------------------------------------


def write(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


def test_daily_omni_qa_json(tmp_path: Path):
    video = tmp_path / "Videos" / "Ec_lQgZ9wlg" / "Ec_lQgZ9wlg_video.mp4"
    video.parent.mkdir(parents=True)
    video.touch()
    record = {
        "Question": "What was shown right after the dog barked?",
        "Choice": ["A. A cat", "B. A ball", "C. A door", "D. A car"],
        "Answer": "B",
        "video_id": "Ec_lQgZ9wlg",
        "Type": "Event Sequence",
        "content_parent_category": "Lifestyle",
        "video_category": "People & Blogs",
        "video_duration": "30s",
    }
    fmt, [item] = load_dataset(write(tmp_path / "qa.json", [record]))
    assert fmt == "daily-omni"
    assert item.video == video
    assert item.options == ("A cat", "A ball", "A door", "A car")
    assert (item.answer, item.task, item.id) == (1, "Event Sequence", "1")


def test_worldsense_qa_json(tmp_path: Path):
    document = {
        "ZvkG8Ek3": {
            "duration": 95.0,
            "domain": "Sports",
            "sub_category": "Basketball",
            "audio_class": ["speech"],
            "video_caption": "A game.",
            "task1": {
                "question": "Who scores?",
                "candidates": ["A. The guard.", "B. The center.", "C. Nobody.", "D. The coach."],
                "answer": "C",
                "task_domain": "Recognition",
                "task_type": "Entity Recognition",
            },
            "task2": {
                "question": "What is heard?",
                "candidates": ["A. Cheering.", "B. Music.", "C. Rain.", "D. Silence."],
                "answer": "A",
                "task_domain": "Recognition",
                "task_type": "Audio Recognition",
            },
        }
    }
    fmt, items = load_dataset(write(tmp_path / "worldsense_qa.json", document), video_root=tmp_path / "ws")
    assert fmt == "worldsense"
    assert [i.id for i in items] == ["ZvkG8Ek3/task1", "ZvkG8Ek3/task2"]
    assert items[0].video == tmp_path / "ws" / "ZvkG8Ek3.mp4"
    assert items[0].options[0] == "The guard."
    assert [(i.answer, i.task) for i in items] == [(2, "Entity Recognition"), (0, "Audio Recognition")]


def test_video_mme_rows(tmp_path: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "fFjv93ACGo8.mp4").touch()
    row = {
        "video_id": "001",
        "duration": "short",
        "domain": "Knowledge",
        "sub_category": "Humanity & History",
        "url": "https://www.youtube.com/watch?v=fFjv93ACGo8",
        "videoID": "fFjv93ACGo8",
        "question_id": "001-1",
        "task_type": "Counting Problem",
        "question": "How many people appear?",
        "options": ["A. 1.", "B. 2.", "C. 3.", "D. 4."],
        "answer": "D",
    }
    path = tmp_path / "videomme.jsonl"
    path.write_text(json.dumps(row) + "\n")
    fmt, [item] = load_dataset(path)
    assert fmt == "video-mme"
    assert (item.id, item.video, item.answer, item.task) == (
        "001-1",
        tmp_path / "data" / "fFjv93ACGo8.mp4",
        3,
        "Counting Problem",
    )


def test_avqa_val_qa_json(tmp_path: Path):
    record = {
        "id": 183,
        "video_name": "-HG3Omg_89c_000030",
        "video_id": 341,
        "question_text": "What is the main sound source of the video?",
        "multi_choice": ["car", "dog", "piano", "train"],
        "answer": 2,
        "question_relation": "Both",
        "question_type": "Which",
    }
    fmt, [item] = load_dataset(write(tmp_path / "val_qa.json", [record]))
    assert fmt == "avqa"
    assert (item.id, item.video.name, item.options[2], item.answer_letter) == (
        "183",
        "-HG3Omg_89c_000030.mp4",
        "piano",
        "C",
    )


def test_omnivideobench_data_json(tmp_path: Path):
    record = {
        "video": "video_1",
        "video_type": "Vlog",
        "duration": "03:28",
        "questions": [
            {
                "question": "How many vehicles were parked on the left?",
                "question_type": "counting",
                "audio_type": "Speech",
                "reasoning_steps": [{"modality": "vision", "evidence": "...", "inference": "2."}],
                "answer": "2",
                "options": ["A.0", "B.1", "C.2", "D.3"],
                "correct_option": "C",
            }
        ],
    }
    fmt, [item] = load_dataset(write(tmp_path / "data.json", [record]))
    assert fmt == "omnivideobench"
    assert (item.id, item.video.name, item.options, item.answer) == (
        "video_1/1",
        "video_1.mp4",
        ("0", "1", "2", "3"),
        2,
    )


# -- bad datasets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"clip": "a.mp4", "q": "?"}\n', r"matches no adapter: the first record has fields \['clip', 'q'\]"),
        ('{"video": "a.mp4", "question": "?", "options": ["x", "y"], "answer": "A"}\n{"video": "b.mp4"}\n', r"line 2: missing field 'question'"),
        ('{"video": "a.mp4", "question": "?", "options": ["x", "y"], "answer": "A"}\n{"video": \n', r"line 2: invalid JSON"),
        ('{"video": "a.mp4", "question": "?", "options": ["x", "y", "z"], "answer": "E"}\n', r"line 1: answer 'E' is not a letter A-C, an index 0-2"),
        ('{"video": "a.mp4", "question": "?", "options": ["x"], "answer": 0}\n', r"line 1: expected 2 to 26 options, got 1"),
        ('{"id": 7, "video": "a.mp4", "question": "?", "options": ["x", "y"], "answer": 0}\n' * 2, r"question 2: id '7' repeats question 1's"),
    ],
)  # fmt: skip
def test_bad_datasets_get_specific_errors(tmp_path: Path, content: str, message: str):
    path = tmp_path / "set.jsonl"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_dataset(path)


def test_a_forced_format_names_the_field_it_misses(tmp_path: Path):
    path = write(
        tmp_path / "set.json", [{"video": "a.mp4", "question": "?", "options": ["x", "y"], "answer": 0}]
    )
    with pytest.raises(
        DatasetError, match=r"record 1: missing field 'video_name' \(the avqa format needs it\)"
    ):
        load_dataset(path, "avqa")


def test_the_cli_prints_a_bad_dataset_in_one_line(tmp_path: Path, capsys):
    path = write(tmp_path / "set.json", {"not": "a benchmark"})
    assert main(["eval", str(path), "--config", "tiny", "--out", str(tmp_path / "out")]) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "set.json: matches no adapter: expected question records" in err and "Traceback" not in err
