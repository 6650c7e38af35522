"""Memory tiers: host then disk, per-stream and service-wide limits, files written whole, a
deleted stream's files gone, orphaned folders cleaned; and the recall values a client may send."""

from __future__ import annotations

import fcntl
from datetime import UTC, datetime

import pytest
import torch

from streamguard.config import MemorySettings
from streamguard.memory.disk import TMP_SUFFIX, read_chunk, write_chunk
from streamguard.memory.manager import OWNER_FILE, remove_orphans
from streamguard.memory.quota import DiskQuota
from streamguard.memory.records import ChunkPlace, layers_nbytes
from streamguard.memory.spec import InvalidRecallError, SpanRecall, parse_recall
from streamguard.memory.store import TieredStore

TOKENS = 40


def chunk_kv(index: int, tokens: int = TOKENS):
    gen = torch.Generator().manual_seed(index)
    layers = [
        (torch.randn(1, 2, tokens, 8, generator=gen), torch.randn(1, 2, tokens, 8, generator=gen))
        for _ in range(2)
    ]
    place = ChunkPlace(index, index, 2.0 * index, 2.0, 1_000.0 + 2 * index, 0, tokens)
    return place, layers, torch.zeros(1, 2, 8)


CHUNK_BYTES = layers_nbytes(chunk_kv(0)[1])


def fill(store: TieredStore, indices, wall_offset: float = 0.0) -> None:
    for i in indices:
        place, layers, summary = chunk_kv(i)
        place = ChunkPlace(**{**place.__dict__, "wall_end": place.wall_end + wall_offset})
        store.add(place, layers, summary, now_s=place.stream_end_s + 10)


def files(folder):
    return sorted(p for p in folder.iterdir() if p.suffix == ".safetensors")


def test_host_spills_the_oldest_to_disk_and_disk_forgets_the_oldest_within_its_limit(tmp_path):
    settings = MemorySettings(host_bytes=2 * CHUNK_BYTES, disk_bytes=int(3.5 * CHUNK_BYTES))
    store = TieredStore(tmp_path / "s", settings, DiskQuota(2**40))
    for i in range(12):
        fill(store, [i])
        on_disk = files(tmp_path / "s")
        assert store.host_bytes <= settings.host_bytes
        assert sum(p.stat().st_size for p in on_disk) == store.disk_bytes <= settings.disk_bytes
    held = [p.index for p in store.places()]
    assert held == list(range(12 - len(held), 12))  # the oldest went first
    assert [store.tier_of(i) for i in held[-2:]] == ["host", "host"]
    assert {store.tier_of(i) for i in held[:-2]} == {"disk"} and len(held) == 5
    assert store.chunks_offloaded == 12 and store.chunks_forgotten == 7
    place, layers, _ = chunk_kv(held[0])
    for (k, v), (k2, v2) in zip(store.load(place.index), layers, strict=True):  # a round trip through disk
        assert torch.equal(k, k2) and torch.equal(v, v2)


def test_the_service_wide_cap_deletes_the_oldest_file_of_any_stream(tmp_path):
    quota = DiskQuota(int(4.5 * CHUNK_BYTES))
    settings = MemorySettings(host_bytes=0, disk_bytes=2**40)
    first = TieredStore(tmp_path / "a", settings, quota)
    second = TieredStore(tmp_path / "b", settings, quota)
    fill(first, range(3))  # walls 1000, 1002, 1004
    fill(second, range(3), wall_offset=3.0)  # walls 1003, 1005, 1007
    assert quota.used_bytes <= quota.cap_bytes
    on_disk = files(tmp_path / "a") + files(tmp_path / "b")
    assert sum(p.stat().st_size for p in on_disk) == quota.used_bytes
    # four files fit: the two oldest (the first stream's walls 1000 and 1002) went
    assert [p.index for p in first.places()] == [2] and [p.index for p in second.places()] == [0, 1, 2]
    fill(second, [3], wall_offset=3.0)
    # the oldest is now the second stream's first (wall 1003, before the first stream's 1004)
    assert [p.index for p in first.places()] == [2] and [p.index for p in second.places()] == [1, 2, 3]


def test_retention_forgets_chunks_older_than_it_and_close_deletes_the_files(tmp_path):
    store = TieredStore(tmp_path / "s", MemorySettings(retention_s=9.0, host_bytes=0), DiskQuota(2**40))
    for i in range(8):
        place, layers, summary = chunk_kv(i)
        store.add(place, layers, summary, now_s=2.0 * i + 8)  # a window of 8 s after it
    # now 22 s: chunk 6 ends at 14 s, within 9 s; chunk 5 ends at 12 s
    assert [p.index for p in store.places()] == [6, 7]
    store.close()
    assert not (tmp_path / "s").exists() and store.disk_bytes == 0


def test_a_chunk_larger_than_the_disk_limit_is_forgotten_not_written(tmp_path):
    store = TieredStore(
        tmp_path / "s", MemorySettings(host_bytes=0, disk_bytes=CHUNK_BYTES // 2), DiskQuota(2**40)
    )
    fill(store, range(3))
    assert store.places() == [] and files(tmp_path / "s") == [] and store.chunks_forgotten == 3


def test_chunk_files_are_renamed_into_place_whole(tmp_path, monkeypatch):
    _, layers, _ = chunk_kv(0)
    path = tmp_path / "c.safetensors"
    import streamguard.memory.disk as disk

    def interrupted(tensors, name):
        (tmp_path / "c.safetensors.tmp").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(disk, "save_file", interrupted)
    with pytest.raises(OSError):
        write_chunk(path, layers)
    assert not path.exists()  # a reader finds nothing rather than half a file
    monkeypatch.undo()
    write_chunk(path, layers)
    assert not (tmp_path / f"c.safetensors{TMP_SUFFIX}").exists()
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(read_chunk(path), layers, strict=True))


def test_a_starting_worker_removes_folders_nobody_holds(tmp_path):
    from streamguard.memory.manager import _host_prefix

    dead = tmp_path / f"{_host_prefix()}999999-dead"
    (dead / "stream").mkdir(parents=True)
    (dead / OWNER_FILE).write_text("")
    live = tmp_path / f"{_host_prefix()}1-live"
    live.mkdir()
    other_host = tmp_path / "worker-elsewhere-5-x"
    other_host.mkdir()
    with open(live / OWNER_FILE, "w") as owner:
        fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert remove_orphans(tmp_path) == [dead]
    assert live.exists() and other_host.exists() and not dead.exists()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("auto", "auto"),
        ("recent", "recent"),
        ({"from": -300}, SpanRecall(-300.0, None)),
        ({"from": 10, "to": 70.5}, SpanRecall(10.0, 70.5)),
        ({"from": -60, "to": 30}, SpanRecall(-60.0, 30.0)),  # whether it is empty depends on now
        (
            {"from": "2026-12-02T14:30:00Z", "to": "2026-12-02T14:35:00+00:00"},
            SpanRecall(datetime(2026, 12, 2, 14, 30, tzinfo=UTC), datetime(2026, 12, 2, 14, 35, tzinfo=UTC)),
        ),
    ],
)
def test_recall_values_parse(value, expected):
    assert parse_recall(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("everything", 'must be "auto", "recent"'),
        (5, "must be a string or an object"),
        ({"to": 5}, "needs 'from'"),
        ({"from": 1, "until": 2}, "only 'from' and 'to'"),
        ({"from": 10, "to": 5}, "must end after it starts"),
        ({"from": -10, "to": -20}, "must end after it starts"),
        ({"from": float("nan")}, "finite"),
        ({"from": True}, "seconds or an ISO time"),
        ({"from": "yesterday", "to": "today"}, "not an ISO 8601 time"),
        ({"from": "2026-12-02T14:30:00", "to": "2026-12-02T14:35:00"}, "needs a timezone"),
        ({"from": "2026-12-02T14:30:00Z"}, "needs 'to' as well"),
        ({"from": "2026-12-02T14:30:00Z", "to": 5}, "must both be stream seconds or both ISO"),
    ],
)
def test_bad_recall_values_say_what_is_wrong(value, message):
    with pytest.raises(InvalidRecallError, match=message):
        parse_recall(value)
