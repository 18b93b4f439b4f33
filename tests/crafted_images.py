"""Image files no image library will write, crafted byte by byte for the bad-input tests."""

from __future__ import annotations

import struct
import zlib


def png_header(width: int, height: int) -> bytes:
    """The start of a PNG declaring width x height (8-bit RGB): its header and one row of
    pixels. Pillow reads the header only on open, so this tests the size limits (a small file
    claiming a huge image) and the 0 x 0 case, which Pillow can neither write nor open."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = zlib.compress(bytes(1 + 3 * min(width, 100)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row)
