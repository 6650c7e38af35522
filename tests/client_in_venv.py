"""Run by a fresh venv's Python that has only `streamguard-client` installed (see
test_python_client.py): drive a real service through the client and print what happened as JSON.

usage: python client_in_venv.py SERVICE_URL TOKEN RTSP_URL
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time

from streamguard_client import StreamGuard
from streamguard_client.errors import UnknownStreamError

WAIT_S = 120.0


async def main(url: str, token: str, camera: str) -> dict:
    report: dict = {
        "modules": {name: importlib.util.find_spec(name) is not None for name in ("torch", "streamguard")}
    }
    async with StreamGuard(url, token) as client:
        stream = await client.open_rtsp(camera)
        stream_id = report["stream_id"] = stream["id"]
        deadline = time.monotonic() + WAIT_S
        while (stream := await client.stream(stream_id))["stats"]["chunks_processed"] < 1:
            assert time.monotonic() < deadline, f"no chunk processed in {WAIT_S} s: {stream}"
            await asyncio.sleep(0.2)
        answer = client.ask(stream_id, "What is moving?", max_tokens=4)
        report["deltas"] = [delta async for delta in answer]
        report["answer"] = answer.done
        report["stats"] = (await client.stream(stream_id))["stats"]
        report["listed"] = [listed["id"] for listed in await client.streams()]
        report["deleted"] = (await client.delete(stream_id))["id"]
        try:
            await client.stream(stream_id)
        except UnknownStreamError as exc:
            report["after_delete"] = exc.code
    return report


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:4]))))
