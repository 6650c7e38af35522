"""StreamGuard's Python client: open streams, ask questions, watch live stats.

```python
import asyncio
from streamguard_client import StreamGuard

async def main() -> None:
    async with StreamGuard("http://127.0.0.1:8000", "streamguard-dev-token") as client:
        stream = await client.open_rtsp("rtsp://camera.local/stream1")
        answer = client.ask(stream["id"], "What just happened?")
        async for delta in answer:
            print(delta, end="", flush=True)
        print(answer.stats)

asyncio.run(main())
```

`Client` is the same, blocking. `streamguard-publish` (the `[publish]` extra) sends a camera,
microphone, file or RTSP URL to the service over WebRTC.
"""

from streamguard_client.backoff import Backoff
from streamguard_client.client import StreamGuard
from streamguard_client.errors import (
    ERRORS,
    ConnectionLostError,
    ServiceError,
    StreamGuardError,
    UnreachableError,
)
from streamguard_client.live import Answer, StreamSocket
from streamguard_client.sync import Client, SyncAnswer

__all__ = [
    "ERRORS",
    "Answer",
    "Backoff",
    "Client",
    "ConnectionLostError",
    "ServiceError",
    "StreamGuard",
    "StreamGuardError",
    "StreamSocket",
    "SyncAnswer",
    "UnreachableError",
]
