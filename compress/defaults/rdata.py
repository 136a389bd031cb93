"""A reader for R's serialization format (XDR) and lazy-load databases (.rdx index + .rdb blobs).

Just enough of R to read the character vectors that data packages ship; pure standard library.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

__all__ = ["read_lazyload_db", "unserialize", "named_list", "decompress_blob", "RObject"]

def read_lazyload_db(rdx: bytes, rdb: bytes) -> dict[str, Any]:
    """Objects of an R lazy-load database: the .rdx index (gzip) and the .rdb blobs it points into."""
    index_bytes = gzip.decompress(rdx) if rdx[:2] == b"\x1f\x8b" else decompress_blob(rdx)
    index = named_list(unserialize(index_bytes))
    objects = {}
    for name, where in named_list(index["variables"]).items():
        offset, length = (int(x) for x in where.value)
        objects[name] = unserialize(decompress_blob(rdb[offset:offset + length]))
    return objects


_BLOB_DECOMPRESSORS = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}


def decompress_blob(blob: bytes) -> bytes:
    # 4-byte big-endian uncompressed size, then a zlib stream, or a type byte (Z/2/X/0) and its stream.
    (size,) = struct.unpack(">I", blob[:4])
    kind = blob[4:5]
    data = _BLOB_DECOMPRESSORS[kind](blob[5:]) if kind in _BLOB_DECOMPRESSORS else zlib.decompress(blob[4:])
    if len(data) != size:
        raise ValueError(f"R blob decompressed to {len(data)} bytes, its header says {size}")
    return data


@dataclass
class RObject:
    sexptype: int  # R's SEXPTYPE code
    value: Any  # a list for vectors, str for symbols and strings, [(tag, value)] for pairlists
    attributes: dict[str, Any] = field(default_factory=dict)


_SYMSXP, _LISTSXP, _CHARSXP, _LGLSXP, _INTSXP, _REALSXP, _STRSXP, _VECSXP, _EXPRSXP, _RAWSXP = (
    1, 2, 9, 10, 13, 14, 16, 19, 20, 24)
_VECTOR_SXPS = {_LGLSXP, _INTSXP, _REALSXP, _STRSXP, _VECSXP, _EXPRSXP, _RAWSXP}
_REFSXP, _NILVALUE_SXP = 255, 254
_SINGLETON_SXPS = {253, 252, 251, 250, 242, 241}  # global/unbound/missing/base-namespace/empty/base env
_NA_INTEGER = -(2**31)
_HAS_ATTR, _HAS_TAG = 1 << 9, 1 << 10
_UTF8_MASK, _LATIN1_MASK, _BYTES_MASK, _ASCII_MASK = 8, 4, 2, 64


def named_list(obj: RObject) -> dict[str, Any]:
    return dict(zip(obj.attributes["names"].value, obj.value))


def unserialize(data: bytes) -> RObject | None:
    """Decode R's XDR serialization (saveRDS, lazy-load databases); R's NULL is None."""
    return _RReader(data).read()


class _RReader:
    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise ValueError(f"not R XDR serialization (starts with {data[:2]!r})")
        self.data, self.pos, self.refs = data, 2, []
        version, _writer_version, _min_reader_version = self._ints(3)
        if version not in (2, 3):
            raise ValueError(f"unsupported R serialization version {version}")
        self.native_encoding = "utf-8"
        if version == 3:  # declares the writer's native encoding
            try:
                self.native_encoding = codecs.lookup(self._take(self._int()).decode("ascii", "replace")).name
            except LookupError:
                pass

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"R serialization truncated at byte {self.pos}")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def _ints(self, n: int) -> tuple[int, ...]:
        return struct.unpack(f">{n}i", self._take(4 * n))

    def _int(self) -> int:
        return self._ints(1)[0]

    def read(self) -> Any:
        return self._item(self._int())

    def _item(self, flags: int) -> Any:
        sexptype = flags & 0xFF
        if sexptype == _NILVALUE_SXP:
            return None
        if sexptype == _REFSXP:
            return self.refs[((flags >> 8) or self._int()) - 1]
        if sexptype in _SINGLETON_SXPS:
            return RObject(sexptype, None)
        if sexptype == _SYMSXP:
            self.refs.append(RObject(_SYMSXP, self.read().value))
            return self.refs[-1]
        if sexptype == _LISTSXP:
            return self._pairlist(flags)
        if sexptype == _CHARSXP:
            return RObject(_CHARSXP, self._string(flags >> 12))
        if sexptype not in _VECTOR_SXPS:
            raise ValueError(f"unsupported R object type {sexptype} at byte {self.pos}")
        n = self._int()
        if n == -1:  # long vector: the length follows as two words
            upper, lower = struct.unpack(">II", self._take(8))
            n = (upper << 32) | lower
        if sexptype in (_INTSXP, _LGLSXP):
            cast = bool if sexptype == _LGLSXP else int
            value: Any = [None if x == _NA_INTEGER else cast(x) for x in self._ints(n)]
        elif sexptype == _REALSXP:
            value = list(struct.unpack(f">{n}d", self._take(8 * n)))
        elif sexptype == _STRSXP:
            value = [self.read().value for _ in range(n)]
        elif sexptype in (_VECSXP, _EXPRSXP):
            value = [self.read() for _ in range(n)]
        else:
            value = self._take(n)  # RAWSXP
        return RObject(sexptype, value, self._attributes() if flags & _HAS_ATTR else {})

    def _string(self, levels: int) -> str | None:
        n = self._int()
        if n == -1:
            return None  # NA_character_
        raw = self._take(n)
        if levels & (_LATIN1_MASK | _BYTES_MASK):
            return raw.decode("latin-1")
        return raw.decode("utf-8" if levels & (_UTF8_MASK | _ASCII_MASK) else self.native_encoding, "replace")

    def _pairlist(self, flags: int) -> RObject:
        # Walks the CDR chain in a loop so long pairlists do not hit the recursion limit.
        items, attributes = [], {}
        while flags & 0xFF == _LISTSXP:
            node_attributes = self._attributes() if flags & _HAS_ATTR else {}
            if not items:  # the list's attributes are the head node's
                attributes = node_attributes
            tag = self.read() if flags & _HAS_TAG else None
            items.append((tag.value if tag is not None else None, self.read()))
            flags = self._int()
        if self._item(flags) is not None:
            raise ValueError("improper R pairlist (non-NULL tail)")
        return RObject(_LISTSXP, items, attributes)

    def _attributes(self) -> dict[str, Any]:
        pairlist = self.read()
        return dict(pairlist.value) if pairlist is not None else {}
