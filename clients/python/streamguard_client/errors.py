"""Typed exceptions: one class per error code the service sends, and the client's own two.

The service answers every refusal with a code (`{"error": {"code", "message"}}` over REST, an
`error` event on a websocket). `ERRORS` maps each code to its class, so `except
UnknownStreamError` catches exactly the service's `unknown_stream`. A code this client does not
know yet (a newer service) still raises a `ServiceError` carrying that code.
"""

from __future__ import annotations

from typing import Any, ClassVar


class StreamGuardError(Exception):
    """Anything this client raises."""


class UnreachableError(StreamGuardError):
    """The service could not be reached (refused, timed out, dropped), retries included."""


class ConnectionLostError(StreamGuardError):
    """The websocket closed while a question was being answered; `close_code` says how."""

    def __init__(self, message: str, close_code: int | None = None):
        super().__init__(message)
        self.close_code = close_code


class ServiceError(StreamGuardError):
    """The service refused a request or a websocket message.

    `code` is the service's error code, `status` the HTTP status (a websocket refusal's close
    code minus 4000; None for an error event on an open socket), `question_id` the question it
    concerns and `event_id` the id of the client event it answers, when the service says.
    """

    code: ClassVar[str] = "service_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        question_id: str | None = None,
        event_id: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        if code is not None and code != type(self).code:
            self.code = code  # type: ignore[misc]  # an unknown code kept on the base class
        self.status = status
        self.question_id = question_id
        self.event_id = event_id

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# -- websocket messages ----------------------------------------------------------------------


class BadJsonError(ServiceError):
    code = "bad_json"


class UnknownTypeError(ServiceError):
    code = "unknown_type"


class InvalidMessageError(ServiceError):
    code = "invalid_message"


class MessageTooLargeError(ServiceError):
    code = "message_too_large"


class QuestionTooLongError(ServiceError):
    code = "question_too_long"


class EmptyQuestionError(ServiceError):
    code = "empty_question"


class UnknownQuestionError(ServiceError):
    code = "unknown_question"


class DuplicateQuestionError(ServiceError):
    code = "duplicate_question"


class TooManyQuestionsError(ServiceError):
    code = "too_many_questions"


class InvalidRecallError(ServiceError):
    """A question's `recall` is not "auto", "recent" or a span the stream can resolve."""

    code = "invalid_recall"


class MemoryDisabledError(ServiceError):
    """A recall other than "recent" on a stream without long memory."""

    code = "memory_disabled"


class RecallTooLargeError(ServiceError):
    """A recall span holds more tokens than the service's `memory.recall_tokens`."""

    code = "recall_too_large"


class StreamEndedError(ServiceError):
    """The stream was deleted or expired (the socket then closes with 4410)."""

    code = "stream_ended"


class StreamLostError(ServiceError):
    """The worker holding the stream (not the one this socket reached) went away mid-way; the
    socket then closes with 4503. Reconnect: the stream may have moved to another worker."""

    code = "stream_lost"


class InternalServiceError(ServiceError):
    code = "internal_error"


# -- REST and auth ---------------------------------------------------------------------------


class WorkerUnavailableError(ServiceError):
    """The worker holding the stream did not answer in time (HTTP 503); try again."""

    code = "worker_unavailable"


class AdminOnlyError(ServiceError):
    """An operation only an admin token may ask for (HTTP 403)."""

    code = "admin_only"


class WorkerDrainingError(ServiceError):
    """The worker is shutting down: it takes no new stream (HTTP 503; open it through another),
    and an answer it was writing was cut (the answer log holds it as far as it got)."""

    code = "worker_draining"


class InvalidRequestError(ServiceError):
    code = "invalid_request"


class UnknownStreamError(ServiceError):
    code = "unknown_stream"


class MissingTokenError(ServiceError):
    code = "missing_token"


class InvalidTokenError(ServiceError):
    code = "invalid_token"


class TooManyStreamsError(ServiceError):
    code = "too_many_streams"


class ServiceFullError(ServiceError):
    code = "service_full"


class FileSourcesDisabledError(ServiceError):
    code = "file_sources_disabled"


class InvalidSourceError(ServiceError):
    code = "invalid_source"


class UnsupportedSchemeError(ServiceError):
    code = "unsupported_scheme"


class SourceUnreachableError(ServiceError):
    code = "source_unreachable"


class InvalidSdpError(ServiceError):
    code = "invalid_sdp"


class RequestTooLargeError(ServiceError):
    code = "request_too_large"


class DestinationNotAllowedError(ServiceError):
    code = "destination_not_allowed"


class OriginNotAllowedError(ServiceError):
    code = "origin_not_allowed"


# The one table: the service's error code → its exception class.
ERRORS: dict[str, type[ServiceError]] = {error.code: error for error in ServiceError.__subclasses__()}


def error_from(
    body: dict[str, Any], *, status: int | None = None, event_id: str | None = None
) -> ServiceError:
    """The exception for an error body (`{"code", "message", ...}`, REST or websocket event)."""
    code = str(body.get("code", "service_error"))
    return ERRORS.get(code, ServiceError)(
        str(body.get("message", "")),
        code=code,
        status=status,
        question_id=body.get("id"),
        event_id=body.get("event_id", event_id),
    )
