"""
The Kafka codec, generated at import time from the official JSON schemas.

C{schemas/} holds unmodified copies of Apache Kafka's message definitions
(requests, responses and the two headers).  For every message and version
this module compiles a decoder (bytes -> dict) and an encoder (dict ->
bytes) out of small closures, one per field, so one source describes the
flexible versions (compact lengths, tagged fields) and the older ones.

Values are plain dicts keyed by the snake_case field name
(C{ThrottleTimeMs} -> C{throttle_time_ms}).  Encoders fill any key the
caller left out with the field's schema default, so handlers only set what
they know; decoders return every field of the version plus the tagged
fields that were present.  C{records} fields decode to C{bytes} (or None)
and encode from C{bytes}.
"""

from __future__ import annotations

import json
import re
import struct
import uuid
from collections.abc import Callable
from importlib import resources
from typing import Any

__all__ = [
    "API_KEYS",
    "DecodeError",
    "Reader",
    "Schema",
    "Spliced",
    "SplicedBuffer",
    "loadSchemas",
    "messageSchema",
    "snake",
]


class DecodeError(ValueError):
    """The bytes do not follow the schema (truncated, negative length, bad varint...)."""


class Spliced:
    """A C{bytes}/C{records} field value made of several buffers, written without joining.

    Encoded into a L{SplicedBuffer}, only its length prefix is written and
    the parts are remembered at their position, so a Fetch response hands
    the stored batches to C{writeSequence} as they are (no copy); encoded
    into a plain C{bytearray} the parts are appended.
    """

    __slots__ = ("parts", "size")

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts
        self.size = sum(len(p) for p in parts)

    def __len__(self) -> int:
        return self.size


class SplicedBuffer(bytearray):
    """An encode buffer that keeps L{Spliced} values aside: C{splices} is [(position, parts)]."""

    def __init__(self) -> None:
        super().__init__()
        self.splices: list[tuple[int, list[Any]]] = []


def snake(name: str) -> str:
    """C{ThrottleTimeMs} -> C{throttle_time_ms}."""
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    s = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", "_", s)
    return s.lower()


def _versions(spec: str | None) -> tuple[int, int]:
    """Parse C{"3+"}, C{"0-4"}, C{"2"} or C{"none"} into an inclusive range."""
    if spec is None or spec == "none":
        return (1, 0)  # empty
    if spec.endswith("+"):
        return (int(spec[:-1]), 1 << 15)
    if "-" in spec:
        lo, hi = spec.split("-")
        return (int(lo), int(hi))
    return (int(spec), int(spec))


def _within(v: int, r: tuple[int, int]) -> bool:
    return r[0] <= v <= r[1]


# -- reading -------------------------------------------------------------


class Reader:
    """A cursor over one frame; every read checks the bounds."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes | memoryview, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def take(self, n: int) -> int:
        p = self.pos
        if n < 0 or p + n > self.end:
            raise DecodeError(f"need {n} bytes at {p}, frame ends at {self.end}")
        self.pos = p + n
        return p

    def unpack(self, st: struct.Struct) -> Any:
        return st.unpack_from(self.buf, self.take(st.size))[0]

    def uvarint(self) -> int:
        shift = 0
        out = 0
        buf = self.buf
        while True:
            if self.pos >= self.end:
                raise DecodeError("truncated varint")
            b = buf[self.pos]
            self.pos += 1
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7
            if shift > 63:
                raise DecodeError("varint too long")

    def varint(self) -> int:
        v = self.uvarint()
        return (v >> 1) ^ -(v & 1)

    def raw(self, n: int) -> bytes:
        p = self.take(n)
        return bytes(self.buf[p : p + n])


def writeUvarint(out: bytearray, v: int) -> None:
    """Append an unsigned varint."""
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def writeVarint(out: bytearray, v: int) -> None:
    """Append a zig-zag signed varint."""
    writeUvarint(out, (v << 1) ^ (v >> 63))


_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")

_FIXED = {
    "int8": _I8,
    "int16": _I16,
    "uint16": _U16,
    "int32": _I32,
    "uint32": _U32,
    "int64": _I64,
    "float64": _F64,
}

Decoder = Callable[[Reader], Any]
Encoder = Callable[[bytearray, Any], None]


def _fixedCodec(st: struct.Struct) -> tuple[Decoder, Encoder]:
    unpack, size, pack = st.unpack_from, st.size, st.pack

    def dec(r: Reader) -> Any:
        return unpack(r.buf, r.take(size))[0]

    def enc(out: bytearray, v: Any) -> None:
        out += pack(v)

    return dec, enc


def _boolCodec() -> tuple[Decoder, Encoder]:
    def dec(r: Reader) -> bool:
        return bool(r.buf[r.take(1)])

    def enc(out: bytearray, v: Any) -> None:
        out.append(1 if v else 0)

    return dec, enc


def _uuidCodec() -> tuple[Decoder, Encoder]:
    def dec(r: Reader) -> uuid.UUID:
        return uuid.UUID(bytes=r.raw(16))

    def enc(out: bytearray, v: Any) -> None:
        out += (v or uuid.UUID(int=0)).bytes

    return dec, enc


def _lengthCodec(compact: bool, wide: bool) -> tuple[Callable[[Reader], int], Callable[..., None]]:
    """Length prefix: compact (uvarint n+1, 0 = null) or int16/int32 (-1 = null)."""
    if compact:

        def readLen(r: Reader) -> int:
            return r.uvarint() - 1

        def writeLen(out: bytearray, n: int) -> None:
            writeUvarint(out, n + 1)

        return readLen, writeLen
    st = _I32 if wide else _I16

    def readLenF(r: Reader) -> int:
        return int(r.unpack(st))

    def writeLenF(out: bytearray, n: int) -> None:
        out += st.pack(n)

    return readLenF, writeLenF


def _blobCodec(kind: str, compact: bool, nullable: bool, where: str) -> tuple[Decoder, Encoder]:
    """string, bytes and records: a length then the bytes."""
    readLen, writeLen = _lengthCodec(compact, kind != "string")
    text = kind == "string"

    def dec(r: Reader) -> Any:
        n = readLen(r)
        if n < 0:
            if not nullable:
                raise DecodeError(f"{where}: null in a non-nullable field")
            return None
        p = r.take(n)
        data = r.buf[p : p + n]
        if text:
            try:
                return str(data, "utf-8")
            except UnicodeDecodeError as e:
                raise DecodeError(f"{where}: not UTF-8") from e
        return bytes(data)

    def enc(out: bytearray, v: Any) -> None:
        if v is None:
            if not nullable:
                raise ValueError(f"{where}: None for a non-nullable field")
            writeLen(out, -1)
            return
        if text:
            v = v.encode("utf-8")
        elif type(v) is Spliced:
            writeLen(out, v.size)
            if isinstance(out, SplicedBuffer):
                out.splices.append((len(out), v.parts))
            else:
                for part in v.parts:
                    out += part
            return
        writeLen(out, len(v))
        out += v

    return dec, enc


def _arrayCodec(
    item: tuple[Decoder, Encoder], compact: bool, nullable: bool, where: str
) -> tuple[Decoder, Encoder]:
    readLen, writeLen = _lengthCodec(compact, True)
    decItem, encItem = item

    def dec(r: Reader) -> Any:
        n = readLen(r)
        if n < 0:
            if not nullable:
                raise DecodeError(f"{where}: null array in a non-nullable field")
            return None
        if n > r.end - r.pos:  # every element takes at least one byte
            raise DecodeError(f"{where}: array of {n} cannot fit")
        return [decItem(r) for _ in range(n)]

    def enc(out: bytearray, v: Any) -> None:
        if v is None:
            if not nullable:
                raise ValueError(f"{where}: None for a non-nullable array")
            writeLen(out, -1)
            return
        writeLen(out, len(v))
        for x in v:
            encItem(out, x)

    return dec, enc


def _skipTagged(r: Reader) -> None:
    r.take(r.uvarint())


def _parseDefault(ftype: str, text: Any, nullable: bool) -> Any:
    if ftype.startswith("[]"):
        return None if (text == "null" and nullable) else []
    if text is None:
        if ftype in _FIXED:
            return 0 if ftype != "float64" else 0.0
        return {
            "bool": False,
            "string": "",
            "bytes": b"",
            "records": None,
            "uuid": uuid.UUID(int=0),
        }.get(ftype)
    if text == "null" and nullable:
        return None
    if ftype == "bool":
        return str(text).lower() == "true"
    if ftype in _FIXED:
        return float(text) if ftype == "float64" else int(str(text), 0)
    return text


class _Field:
    __slots__ = ("key", "dec", "enc", "default", "tag", "struct")

    def __init__(self, key: str, dec: Decoder, enc: Encoder, default: Any, tag: int | None):
        self.key = key
        self.dec = dec
        self.enc = enc
        self.default = default
        self.tag = tag


def _defaultFor(f: _Field) -> Any:
    d = f.default
    if isinstance(d, list):
        return []
    if isinstance(d, dict):
        return dict(d)
    return d


class _Compiler:
    """Compiles a message's field tree for one version."""

    def __init__(self, common: dict[str, list[dict[str, Any]]], flexible: bool, version: int):
        self.common = common
        self.flexible = flexible
        self.version = version

    def struct(self, fields: list[dict[str, Any]], where: str) -> tuple[Decoder, Encoder, dict]:
        v = self.version
        plain: list[_Field] = []
        tagged: dict[int, _Field] = {}
        for fd in fields:
            if not _within(v, _versions(fd.get("versions"))):
                continue
            tag = fd.get("tag")
            isTagged = tag is not None and _within(v, _versions(fd.get("taggedVersions")))
            if isTagged and not self.flexible:
                continue
            tagNumber = int(tag) if isTagged and tag is not None else None
            f = self.field(fd, where, tagNumber)
            if tagNumber is not None:
                tagged[tagNumber] = f
            else:
                plain.append(f)
        defaults = {f.key: f.default for f in plain}
        defaults.update({f.key: f.default for f in tagged.values()})
        flexible = self.flexible
        order = sorted(tagged.items())

        def dec(r: Reader) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for f in plain:
                out[f.key] = f.dec(r)
            if flexible:
                for _ in range(r.uvarint()):
                    t = r.uvarint()
                    size = r.uvarint()
                    tf = tagged.get(t)
                    if tf is None:
                        r.take(size)
                        continue
                    sub = Reader(r.buf, r.pos, r.pos + size)
                    r.take(size)
                    out[tf.key] = tf.dec(sub)
                for tf in tagged.values():
                    if tf.key not in out:
                        out[tf.key] = _defaultFor(tf)
            return out

        def enc(out: bytearray, value: dict[str, Any]) -> None:
            get = value.get
            for f in plain:
                x = get(f.key, _MISSING)
                f.enc(out, _defaultFor(f) if x is _MISSING else x)
            if flexible:
                present = []
                for t, tf in order:
                    x = get(tf.key, _MISSING)
                    if x is _MISSING or x == tf.default or x is None:
                        continue
                    body = bytearray()
                    tf.enc(body, x)
                    present.append((t, body))
                writeUvarint(out, len(present))
                for t, body in present:
                    writeUvarint(out, t)
                    writeUvarint(out, len(body))
                    out += body

        return dec, enc, defaults

    def field(self, fd: dict[str, Any], where: str, tag: int | None) -> _Field:
        name = fd["name"]
        key = snake(name)
        here = f"{where}.{name}"
        ftype: str = fd["type"]
        nullable = _within(self.version, _versions(fd.get("nullableVersions")))
        compact = self.flexible
        if "flexibleVersions" in fd:
            compact = _within(self.version, _versions(fd["flexibleVersions"]))
        codec, default = self.typeCodec(ftype, fd, compact, nullable, here)
        if not ftype.startswith("[]") and ftype[0].isupper():
            pass  # struct default built by typeCodec
        else:
            default = _parseDefault(ftype, fd.get("default"), nullable)
        return _Field(key, codec[0], codec[1], default, tag)

    def typeCodec(
        self, ftype: str, fd: dict[str, Any], compact: bool, nullable: bool, where: str
    ) -> tuple[tuple[Decoder, Encoder], Any]:
        if ftype.startswith("[]"):
            inner = ftype[2:]
            item, _ = self.typeCodec(inner, fd, compact, False, where)
            return _arrayCodec(item, compact, nullable, where), None
        if ftype in _FIXED:
            return _fixedCodec(_FIXED[ftype]), None
        if ftype == "bool":
            return _boolCodec(), None
        if ftype == "uuid":
            return _uuidCodec(), None
        if ftype in ("string", "bytes", "records"):
            return _blobCodec(ftype, compact, nullable, where), None
        sub = fd.get("fields")
        if sub is None:
            sub = self.common.get(ftype)
        if sub is None:
            raise ValueError(f"{where}: unknown type {ftype!r}")
        dec, enc, defaults = self.struct(sub, where)
        if nullable:
            # nullable structs: an int8 marker (-1 null, 1 present)
            def decN(r: Reader) -> Any:
                if r.unpack(_I8) < 0:
                    return None
                return dec(r)

            def encN(out: bytearray, v: Any) -> None:
                if v is None:
                    out += _I8.pack(-1)
                else:
                    out += _I8.pack(1)
                    enc(out, v)

            return (decN, encN), None
        return (dec, enc), defaults


_MISSING = object()


class Schema:
    """One message (request, response or header): per-version codecs, compiled lazily."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.name: str = spec["name"]
        self.apiKey: int | None = spec.get("apiKey")
        self.kind: str = spec["type"]
        self.validVersions = _versions(spec["validVersions"])
        self.flexibleVersions = _versions(spec.get("flexibleVersions"))
        self.fields: list[dict[str, Any]] = spec["fields"]
        self.common = {c["name"]: c["fields"] for c in spec.get("commonStructs", [])}
        self._compiled: dict[int, tuple[Decoder, Encoder, dict[str, Any]]] = {}

    def isFlexible(self, version: int) -> bool:
        """True when C{version} uses compact types and tagged fields."""
        return _within(version, self.flexibleVersions)

    def _get(self, version: int) -> tuple[Decoder, Encoder, dict[str, Any]]:
        c = self._compiled.get(version)
        if c is None:
            if not _within(version, self.validVersions):
                raise ValueError(f"{self.name} has no version {version}")
            comp = _Compiler(self.common, self.isFlexible(version), version)
            c = comp.struct(self.fields, self.name)
            self._compiled[version] = c
        return c

    def decode(self, version: int, reader: Reader) -> dict[str, Any]:
        """Read one message of C{version} from C{reader}."""
        return self._get(version)[0](reader)  # type: ignore[no-any-return]

    def encode(
        self, version: int, value: dict[str, Any], out: bytearray | None = None
    ) -> bytearray:
        """Append C{value} encoded as C{version} to C{out} (a new buffer by default)."""
        if out is None:
            out = bytearray()
        self._get(version)[1](out, value)
        return out

    def defaults(self, version: int) -> dict[str, Any]:
        """The top-level defaults of C{version} (for tests and documentation)."""
        return dict(self._get(version)[2])


def _load(text: str) -> dict[str, Any]:
    text = re.sub(r"^\s*//.*$", "", text, flags=re.M)
    return json.loads(text)  # type: ignore[no-any-return]


_SCHEMAS: dict[str, Schema] = {}
#: api key -> (request schema, response schema)
API_KEYS: dict[int, tuple[Schema, Schema]] = {}


def loadSchemas() -> dict[str, Schema]:
    """Parse every JSON schema shipped in the package (once)."""
    if _SCHEMAS:
        return _SCHEMAS
    folder = resources.files("robustmq.protocols.kafka").joinpath("schemas")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        spec = _load(entry.read_text("utf-8"))
        _SCHEMAS[spec["name"]] = Schema(spec)
    byKey: dict[int, dict[str, Schema]] = {}
    for s in _SCHEMAS.values():
        if s.apiKey is not None:
            byKey.setdefault(s.apiKey, {})[s.kind] = s
    for k, pair in byKey.items():
        API_KEYS[k] = (pair["request"], pair["response"])
    return _SCHEMAS


def messageSchema(name: str) -> Schema:
    """The schema called C{name} (e.g. C{"FetchRequest"})."""
    return loadSchemas()[name]
