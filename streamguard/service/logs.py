"""Service events as one `event key=value …` line each, through stdlib logging (so the
process's logging setup decides where they go and at which level)."""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import unquote_plus

_log = logging.getLogger("streamguard.service")


def event(name: str, level: int = logging.INFO, exc_info: bool = False, **fields: Any) -> None:
    if _log.isEnabledFor(level):
        line = " ".join([name, *(f"{key}={_value(value)}" for key, value in fields.items())])
        _log.log(level, "%s", line, exc_info=exc_info)


def _value(value: Any) -> str:
    if isinstance(value, float):
        value = round(value, 1)
    text = str(value)
    # quote what would not read back as one token
    return json.dumps(text) if not text or any(c in text for c in ' "=\n') else text


class RedactTokens(logging.Filter):
    """Blank the value of every query parameter whose name, decoded and in any case, is `token`
    (`?token=`, `?TOKEN=`, `?tok%65n=`): browsers put the bearer token in the websocket URL, and
    uvicorn logs that URL, refused or not."""

    _pair = re.compile(r"([?&])([^=&\s\"'#]+)=([^&\s\"'#]*)")

    @classmethod
    def redact(cls, text: str) -> str:
        def blank(pair: re.Match[str]) -> str:
            name = unquote_plus(pair[2]).strip().lower()
            return f"{pair[1]}{pair[2]}=***" if name == "token" else pair[0]

        return cls._pair.sub(blank, text)

    def filter(self, record: logging.LogRecord) -> bool:
        # redact inside the arguments: uvicorn's access formatter reads them one by one
        if isinstance(record.args, tuple):
            record.args = tuple(self.redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = self.redact(record.msg)
        return True


def redact_server_logs() -> None:
    """Install `RedactTokens` on the loggers uvicorn writes request lines to."""
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(RedactTokens())
