"""The exceptions of the headend.

One base, :class:`HeadendError`. DLMS/COSEM protocol errors split into the peer's
(:class:`RemoteProtocolError`: the bytes we received are wrong) and ours
(:class:`LocalProtocolError`: what we asked to encode cannot be expressed), as h11 does;
a panic in the Rust core is neither: :class:`InternalError`, our bug.
Each carries ``kind`` (a stable name for counting) and ``dlms_error`` (the
ExceptionResponse service-error a server answers with). The Rust core raises these
classes; their attributes are set on the instance.
"""

from __future__ import annotations


class HeadendError(Exception):
    """Base of every error the headend raises on purpose."""


class ProtocolError(HeadendError):
    """A rule of DLMS/COSEM (framing, A-XDR, xDLMS, security) was broken.

    Attributes (set when known): ``kind``, ``dlms_error``, ``field``, ``offset``.
    """

    kind: str = "malformed"
    dlms_error: str = "operation-not-possible"
    field: str | None = None
    offset: int | None = None


class InternalError(HeadendError):
    """A bug in the head-end itself: the Rust core panicked. Never the peer's fault, so
    never a RemoteProtocolError (the fuzz tests fail on it); a worker logs it and closes
    the connection it happened on."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not valid DLMS/COSEM."""


class IncompleteData(RemoteProtocolError):
    """The input ends inside an item; ``needed`` more bytes at least."""

    kind = "truncated"
    needed: int = 0


class LimitExceeded(RemoteProtocolError):
    """A length exceeds its ceiling (``length`` > ``limit``)."""

    kind = "oversize"
    dlms_error = "pdu-too-long"
    length: int = 0
    limit: int = 0


class UnsupportedFeature(RemoteProtocolError):
    """Valid DLMS/COSEM that this implementation does not handle."""

    kind = "unsupported"
    dlms_error = "service-not-supported"


class AuthenticationFailed(RemoteProtocolError):
    """A GCM tag or HLS-GMAC value did not verify. Deliberately says nothing more."""

    kind = "authentication-failed"
    dlms_error = "deciphering-error"


class ReplayedInvocationCounter(RemoteProtocolError):
    """An invocation counter not above the last accepted one (``received``, ``last``)."""

    kind = "replayed-invocation-counter"
    dlms_error = "invocation-counter-error"
    system_title: bytes = b""
    received: int = 0
    last: int = 0


class UnknownSystemTitle(RemoteProtocolError):
    """No keys are known for ``system_title``."""

    kind = "unknown-system-title"
    dlms_error = "deciphering-error"
    system_title: bytes = b""


class LocalProtocolError(ProtocolError, ValueError):
    """We asked to encode something the standard cannot express (a bad argument)."""

    kind = "encode"
