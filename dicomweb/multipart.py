"""Multipart request bodies (STOW-RS, the upload form) streamed to disk as they arrive.

python-multipart's streaming parser (the one Starlette's own forms use) splits
the body; each part's content goes to one anonymous temporary file in the
node's data area (``<data_dir>/tmp``, gone when closed or when the process
dies), never to the heap. The event loop only hands the body over in batches:
parsing and writing run in the thread pool (:func:`spool_request`). Once the
body has ended whole, the parts are read back one at a time, each mapped from
the file (:meth:`MultipartSpool.content`), by code that runs in the thread pool
too.

A body that is not well-formed multipart is a :class:`MalformedMultipart`
naming what is wrong (the handlers answer 400 with it); one longer than its
limit is :class:`BodyTooLarge` (413). Headers are the one thing of a part kept
in memory, so they are bounded per body: all parts' header lines together
may hold :data:`MAX_HEADER_BYTES` (more is a :class:`MalformedMultipart`), and
of each part only the headers the node reads (:data:`KEPT_HEADERS`) are kept.

A spool that the disk cannot hold keeps parsing, so that every part is still
named, but keeps no content: :attr:`MultipartSpool.lost` says why (out of
resources for each part; 507 for an upload). The disk is checked when the
spool is opened (for a body that declares its length) and again each time the
spool has grown by :data:`SPACE_CHECK_BYTES` (a chunked body declares none).
"""

from __future__ import annotations

import logging
import mmap
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import IO

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from uronode.errors import OutOfResources, UronodeError
from uronode.store import Store

log = logging.getLogger(__name__)

BATCH_BYTES = 1 << 20
"""How much of the body the event loop gathers before handing it to the thread pool."""
MAX_PART_HEADERS = 32
MAX_PARTS = 100_000
"""More parts than this in one body is refused: each one named costs memory (a CT series has a few thousand)."""
MAX_HEADER_BYTES = 8 * 1024 * 1024
"""The header lines (names and values) of all parts of one body together; more is refused. A part as clients
send it carries one to three short headers (STOW-RS: about 30 bytes; a browser's form: under 300 with a long
file name), so a CT series of a few thousand files needs well under 1 MB."""
KEPT_HEADERS = frozenset({"content-type", "content-disposition", "content-location"})
"""The part headers the node reads (names in lower case); the others are parsed and dropped."""
SPACE_CHECK_BYTES = 64 * 1024 * 1024
"""The spool checks the disk (its watermark, and room for this much more, twice) each time it grew by this much."""

NO_PART = "the body holds no part with the boundary its Content-Type names"
NO_PARTS = "the body holds no parts"
NO_BLANK_LINE = "a part has no blank line after its headers"
TRUNCATED = "the body ends without its closing boundary: it is truncated"


class MalformedMultipart(UronodeError):
    """The body is not well-formed multipart; the message says what is wrong."""


class BodyTooLarge(UronodeError):
    """The body is longer than its limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is larger than {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class SpooledPart:
    """One part of the body: its headers (names in lower case) and where its content lies in the spool."""

    headers: dict[str, str]
    offset: int
    size: int

    @property
    def content_type(self) -> str:
        """The media type without parameters, in lower case; ``application/dicom`` when the part names none."""
        return self.headers.get("content-type", "application/dicom").split(";")[0].strip().lower()

    def disposition(self) -> tuple[str, dict[str, str]]:
        """The Content-Disposition (form-data parts): its type and parameters (``name``, ``filename``)."""
        kind, params = parse_options_header(self.headers.get("content-disposition", ""))
        return kind.decode("latin-1"), {k.decode("latin-1"): _text(v) for k, v in params.items()}


def _text(raw: bytes) -> str:
    """A header parameter as browsers send it: UTF-8 (a file name), else Latin-1."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _on_disk(exc: OSError) -> str:
    """Why the spool lost its content, when the disk refused a write."""
    return f"the upload could not be kept on disk: {exc.strerror or exc}"


class _Where(Enum):
    PREAMBLE = "preamble"  # before the first delimiter
    HEADERS = "headers"
    CONTENT = "content"
    END = "end"  # after the closing delimiter


def boundary_of(content_type: str) -> str | None:
    """The ``boundary`` parameter of a Content-Type, or None."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary", b"").decode("latin-1")
    return boundary or None


def headers_too_large() -> str:
    """The refusal of a body whose parts' headers exceed :data:`MAX_HEADER_BYTES`."""
    return f"the parts' headers exceed {MAX_HEADER_BYTES} bytes"


class MultipartSpool:
    """A multipart body fed in pieces (:meth:`write`), its parts' contents kept in a temporary file in ``folder``.

    Anything before the first delimiter (a preamble) is skipped; anything after
    the closing one (an epilogue) is ignored. Not thread-safe: one writer at a time.
    ``check_space`` (called with the bytes still to come, raising
    :class:`OutOfResources`) is asked every :data:`SPACE_CHECK_BYTES` of content;
    when it refuses, the spool keeps no more content and :attr:`lost` says why.
    """

    def __init__(
        self, boundary: str, folder: Path, *, lost: str | None = None, check_space: Callable[[int], None] | None = None
    ) -> None:
        if not boundary:
            raise MalformedMultipart("the Content-Type names no boundary")
        self._delimiter = b"--" + boundary.encode("latin-1")
        try:
            self._parser = MultipartParser(
                boundary.encode("latin-1"),
                callbacks={
                    "on_part_begin": self._on_part_begin,
                    "on_header_field": self._on_header_field,
                    "on_header_value": self._on_header_value,
                    "on_header_end": self._on_header_end,
                    "on_headers_finished": self._on_headers_finished,
                    "on_part_data": self._on_part_data,
                    "on_part_end": self._on_part_end,
                    "on_end": self._on_end,
                },
                max_header_count=MAX_PART_HEADERS,
            )
        except FormParserError as exc:
            raise MalformedMultipart(f"the boundary cannot be used: {exc}") from exc
        self.lost = lost
        """Why the parts' contents could not be kept (the disk is full), or None."""
        self._file: IO[bytes] | None = None
        if lost is None:
            try:
                self._file = tempfile.TemporaryFile(dir=folder, prefix="upload-")
            except OSError as exc:
                self._lose(_on_disk(exc))
        self._check_space = check_space
        self._next_check = SPACE_CHECK_BYTES
        self._header_bytes = 0
        self._where = _Where.PREAMBLE
        self._carry = b""  # the preamble's last bytes: the start of a delimiter split between two pieces
        self._parts: list[SpooledPart] = []
        self._begun = False
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._offset = 0
        self._size = 0

    # -- feeding ----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Parse the next piece of the body. Raises :class:`MalformedMultipart`."""
        if self._where is _Where.PREAMBLE:
            data = self._carry + data
            start = data.find(self._delimiter)
            if start < 0:
                self._carry = data[-(len(self._delimiter) - 1):]
                return
            self._carry = b""
            self._where = _Where.HEADERS
            data = data[start:]
        if self._where is _Where.END:
            return
        try:
            self._parser.write(data)
        except FormParserError as exc:
            if not self._begun:
                raise MalformedMultipart(NO_PART) from exc  # "--boundary" followed by anything but a line end
            if self._where is _Where.HEADERS:
                raise MalformedMultipart(NO_BLANK_LINE) from exc
            raise MalformedMultipart(f"the body is not well-formed multipart: {exc}") from exc

    def finish(self) -> list[SpooledPart]:
        """The parts, once the whole body was written. Raises :class:`MalformedMultipart`."""
        if self._where is _Where.PREAMBLE:
            raise MalformedMultipart(NO_PART)
        if self._where is _Where.HEADERS:
            raise MalformedMultipart(NO_BLANK_LINE)
        if self._where is _Where.CONTENT:
            raise MalformedMultipart(TRUNCATED)
        if not self._parts:
            raise MalformedMultipart(NO_PARTS)
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                self._lose(_on_disk(exc))
        return list(self._parts)

    # -- reading back -----------------------------------------------------------------

    @contextmanager
    def content(self, part: SpooledPart) -> Iterator[bytes | memoryview]:
        """A part's content, mapped from the spool (no copy on the heap) for the time of the ``with``.

        Only after :meth:`finish`, and only while :attr:`lost` is None.
        """
        if self._file is None or self.lost is not None:
            raise RuntimeError(f"the spool holds no content: {self.lost}")
        if part.size == 0:
            yield b""
            return
        start = part.offset - part.offset % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(self._file.fileno(), part.offset + part.size - start, access=mmap.ACCESS_READ,
                           offset=start)
        view = memoryview(mapped)
        piece = view[part.offset - start:]
        try:
            yield piece
        finally:
            try:
                piece.release()
                view.release()
                mapped.close()
            except BufferError:  # a view of it is still referenced (a traceback): unmapped once that is freed
                log.debug("a part's mapping outlives its use; it is unmapped when collected")

    def close(self) -> None:
        """Remove the spool (its file has no name: closing it frees its space)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> MultipartSpool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the parser's callbacks -------------------------------------------------------

    def _lose(self, reason: str) -> None:
        self.lost = reason
        log.warning("%s", self.lost)
        if self._file is not None:
            self._file.close()
            self._file = None

    def _on_part_begin(self) -> None:
        self._begun = True
        self._where = _Where.HEADERS
        self._headers = {}

    def _count_header_bytes(self, count: int) -> None:
        self._header_bytes += count
        if self._header_bytes > MAX_HEADER_BYTES:
            raise MalformedMultipart(headers_too_large())

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        if name in KEPT_HEADERS:
            self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        self._where = _Where.CONTENT
        self._offset = self._size

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            try:
                self._file.write(memoryview(data)[start:end])
            except OSError as exc:
                self._lose(_on_disk(exc))
        self._size += end - start
        if self._size >= self._next_check:
            self._next_check = self._size + SPACE_CHECK_BYTES
            if self._file is not None and self._check_space is not None:
                try:
                    self._check_space(SPACE_CHECK_BYTES)
                except OutOfResources as exc:
                    self._lose(str(exc))

    def _on_part_end(self) -> None:
        if len(self._parts) >= MAX_PARTS:
            raise MalformedMultipart(f"the body holds more than {MAX_PARTS} parts")
        self._parts.append(SpooledPart(self._headers, self._offset, self._size - self._offset))
        self._where = _Where.HEADERS  # the next part's headers, unless the closing delimiter follows

    def _on_end(self) -> None:
        self._where = _Where.END


def open_spool(store: Store, boundary: str, size: int | None) -> MultipartSpool:
    """A spool in the store's temporary folder for a body of ``size`` bytes (None: unknown).

    When the disk cannot take the body twice (the spool, then the instances
    made from it) or is over its watermark, the spool keeps no content and
    :attr:`MultipartSpool.lost` says why; the same check runs again as the
    spool grows, whether the size was known or not. Touches the disk: call it
    in the thread pool.
    """
    lost = None
    if size is not None:
        try:
            store.check_space(size)
        except OutOfResources as exc:
            lost = str(exc)
    return MultipartSpool(boundary, store.tmp_dir, lost=lost, check_space=store.check_space)


async def spool_request(request: Request, spool: MultipartSpool, limit: int) -> list[SpooledPart]:
    """Feed the request's body to the spool, in batches parsed and written in the thread pool; its parts.

    Raises :class:`BodyTooLarge` as soon as more than ``limit`` bytes came,
    :class:`MalformedMultipart` as soon as the body is found broken.
    """
    batch: list[bytes] = []
    pending = received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise BodyTooLarge(limit)
        batch.append(chunk)
        pending += len(chunk)
        if pending >= BATCH_BYTES:
            await run_in_threadpool(spool.write, b"".join(batch))
            batch, pending = [], 0
    if batch:
        await run_in_threadpool(spool.write, b"".join(batch))
    return spool.finish()
