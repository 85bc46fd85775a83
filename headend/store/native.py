"""ClickHouse's Native format, written from Python: one block is the column count, the
row count, then each column's name, type and data (fixed-width values little-endian,
strings as LEB128 length and bytes). ClickHouse reads it several times faster than
RowBinary; numpy arrays give the fixed-width columns with ``tobytes()``."""

from __future__ import annotations


def varuint(n: int) -> bytes:
    """`n` as LEB128."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def strings(values: list[str], repeat: int = 1) -> bytes:
    """A String column of `values`, each repeated `repeat` times in a row."""
    parts = []
    for v in values:
        raw = v.encode()
        parts.append((varuint(len(raw)) + raw) * repeat)
    return b"".join(parts)


def block(rows: int, columns: list[tuple[str, str, bytes]]) -> bytes:
    """One block: `columns` as (name, ClickHouse type, data) of `rows` values each."""
    out = [varuint(len(columns)), varuint(rows)]
    for name, ty, data in columns:
        for text in (name, ty):
            out.append(varuint(len(text)) + text.encode())
        out.append(data)
    return b"".join(out)
