"""Request bytes -> messages without UNKNOWN: malformed or oversized bytes get a status naming why.

gRPC runs a method's request deserializer before any servicer code; when it raises, grpc.aio answers
UNKNOWN ("Unexpected <class DecodeError>") and logs a traceback. `DecodeInterceptor` gives every
method of the server (SinFusion, health, reflection) a deserializer that never raises: bytes over
--max-message-bytes become `Refused` (RESOURCE_EXHAUSTED) without being parsed, and bytes that do not
parse become `Refused` (INVALID_ARGUMENT) with the offending field found by `explain`. The wrapped
behaviour answers such a request itself; for request streams, the iterator raises RequestError at
the bad message, which the servicer (or, for other services, the wrapper) turns into its status.

Refusing before parsing also keeps memory flat: a rejected 16 MiB request is never copied into a
message object that could outlive the call.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

from .requests import RequestError

log = logging.getLogger("sinfusion.server")

MAX_FIELDS_EXPLAINED = 10_000  # explain() gives up after this many fields: hostile input is cheap to send
MAX_DEPTH = 32


@dataclass(frozen=True)
class Refused:
    """Stands in for a request message that was not decoded; `error` is what to answer."""

    error: RequestError


# --- finding what is wrong in bytes that do not parse ------------------------------------------------

class _Bad(Exception):
    pass


def _varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise _Bad(f"{what} is cut off at byte {pos}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise _Bad(f"{what} is longer than 10 bytes at byte {pos}")


def _walk(descriptor, data: bytes, prefix: str, offset: int, depth: int, budget: list[int]) -> None:
    """Raise _Bad naming the first field the protobuf parser would refuse; return if none found."""
    pos = 0
    while pos < len(data):
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_DEPTH:
            return
        start = pos
        tag, pos = _varint(data, pos, f"the tag at byte {offset + start}")
        number, wire = tag >> 3, tag & 7
        field = descriptor.fields_by_number.get(number)
        name = f"{prefix}{field.name}" if field else f"{prefix}field {number} (unknown)"
        at = f"at byte {offset + start}"
        if number == 0 or number >= 1 << 29:
            raise _Bad(f"field number {number} {at} is not a valid field number")
        if wire == 0:
            _, pos = _varint(data, pos, f"{name} {at}")
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > len(data):
                raise _Bad(f"{name} {at} is cut off")
        elif wire == 2:
            length, pos = _varint(data, pos, f"the length of {name} {at}")
            if pos + length > len(data):
                raise _Bad(f"{name} {at} says {length} bytes but only {len(data) - pos} follow")
            payload = data[pos:pos + length]
            if field is not None and field.type == FieldDescriptor.TYPE_MESSAGE:
                _walk(field.message_type, payload, f"{name}.", offset + pos, depth + 1, budget)
            elif field is not None and field.type == FieldDescriptor.TYPE_STRING:
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    raise _Bad(f"{name} {at} is not valid UTF-8") from None
            pos += length
        elif wire in (3, 4):
            raise _Bad(f"{name} {at} uses a group wire type, which this API never sends")
        else:
            raise _Bad(f"{name} {at} has wire type {wire}, which does not exist")


def explain(descriptor, data: bytes) -> str:
    """Why `data` is not a valid encoding of `descriptor`'s message, naming the field where possible."""
    try:
        _walk(descriptor, data, "", 0, 0, [MAX_FIELDS_EXPLAINED])
    except _Bad as bad:
        return str(bad)
    return "not a valid protobuf encoding"


def safe_deserializer(deserialize: Callable[[bytes], object] | None, limit: int | None
                      ) -> Callable[[bytes], object]:
    """A deserializer that returns Refused instead of raising (and refuses oversized bytes unread)."""
    message_type = getattr(deserialize, "__self__", None)  # generated code passes Message.FromString
    type_name = message_type.DESCRIPTOR.name if message_type is not None else "request"

    def decode(data: bytes):
        if limit is not None and len(data) > limit:
            return Refused(RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                        f"request message is {len(data)} bytes; the server's limit "
                                        f"(--max-message-bytes) is {limit}"))
        if deserialize is None:
            return data
        try:
            return deserialize(data)
        except DecodeError:
            why = explain(message_type.DESCRIPTOR, data) if message_type is not None else \
                "not a valid protobuf encoding"
            return Refused(RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                        f"malformed {type_name}: {why}"))
        except Exception as exc:  # a deserializer of another service failing its own way
            return Refused(RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                        f"malformed {type_name}: {type(exc).__name__}"))

    return decode


# --- wrapping behaviours ---------------------------------------------------------------------------

RefusalHook = Callable[[str, RequestError], None]  # (method, error): logging and metrics


async def _checked_stream(requests, method: str):
    async for request in requests:
        if isinstance(request, Refused):
            raise request.error
        yield request


def _wrap(behavior, method: str, request_streaming: bool, on_refused: RefusalHook):
    """The same behaviour, answering Refused requests (and RequestErrors they raise) with a status."""

    async def answer(context, error: RequestError) -> None:
        on_refused(method, error)
        context.set_code(error.code)
        context.set_details(error.message)

    def arguments(request):
        return _checked_stream(request, method) if request_streaming else request

    if inspect.isasyncgenfunction(behavior):
        async def wrapped_stream(request, context):
            if isinstance(request, Refused):
                await answer(context, request.error)
                return
            responses = behavior(arguments(request), context)
            try:
                async for response in responses:
                    yield response
            except RequestError as error:  # only a service that does not map errors itself
                await answer(context, error)
            finally:  # a cancelled call closes this generator: close the servicer's now, not at GC
                await responses.aclose()
        return wrapped_stream

    async def wrapped(request, context):
        if isinstance(request, Refused):
            await answer(context, request.error)
            return None
        try:
            result = behavior(arguments(request), context)
            return await result if inspect.isawaitable(result) else result
        except RequestError as error:
            await answer(context, error)
            return None
    return wrapped


class DecodeInterceptor(grpc.aio.ServerInterceptor):
    """Gives every method a never-raising deserializer and a behaviour that answers what it refused.

    `limits` maps a method-name prefix to the largest request it accepts unread (the longest prefix
    wins; methods matching none have no limit here, only gRPC's own).
    """

    def __init__(self, limits: dict[str, int], on_refused: RefusalHook) -> None:
        self._limits = sorted(limits.items(), key=lambda kv: -len(kv[0]))
        self._on_refused = on_refused

    def _limit(self, method: str) -> int | None:
        return next((limit for prefix, limit in self._limits if method.startswith(prefix)), None)

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        kind = ("stream" if handler.request_streaming else "unary") + "_" + \
            ("stream" if handler.response_streaming else "unary")
        behavior = getattr(handler, kind)
        return handler._replace(
            request_deserializer=safe_deserializer(handler.request_deserializer, self._limit(method)),
            **{kind: _wrap(behavior, method, handler.request_streaming, self._on_refused)})
