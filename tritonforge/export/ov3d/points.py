"""Point files as bytes -> [N, 3] float32 (x, y, z): `.ply`, `.pcd` and `.npy`, read with numpy alone.

The format is told by the bytes, not a name (a request carries no file name): PLY starts with
"ply", NumPy's format with "\\x93NUMPY", PCD with its header ("# .PCD" or "VERSION"). PCD's
header is read here (ascii and binary data; binary_compressed is refused with the command that
converts it). Every reader keeps x, y and z and drops other fields (colour, normals).

The server's python step (`cloud_step.py`) runs this file beside it without tritonforge or
trimesh installed, so the client and the server read the same bytes into the same points.
"""

from __future__ import annotations

import io

import numpy as np

from tritonforge.errors import TritonForgeError

MAX_POINTS = 1_000_000  # a request's point file may hold at most this many points
FORMATS = ("ply", "pcd", "npy")
PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8",
             ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8"}


def point_format(data: bytes) -> str:
    head = bytes(data[:16])
    if head.startswith(b"ply"):
        return "ply"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith((b"# .PCD", b"VERSION", b"FIELDS")):
        return "pcd"
    raise TritonForgeError(f"the point file starting {head[:8]!r} is none of {', '.join(FORMATS)}: send a "
                           ".ply, .pcd or .npy file's bytes")


def read_points(data: bytes, label: str = "points") -> np.ndarray:
    """[N, 3] float32 of the file `data`, checked: finite, at least one and at most MAX_POINTS."""
    kind = point_format(data)
    try:
        points = {"ply": _ply, "pcd": _pcd, "npy": _npy}[kind](bytes(data))
    except TritonForgeError:
        raise
    except Exception as error:  # a reader's own complaint about a damaged file
        raise TritonForgeError(f"{label}: the {kind} file cannot be read ({error}): send a complete "
                               "file") from None
    return checked(points, label)


def checked(points: np.ndarray, label: str = "points") -> np.ndarray:
    points = np.asarray(points, np.float32)
    if points.ndim != 2 or points.shape[1] != 3:
        raise TritonForgeError(f"{label} are {list(points.shape)}, not [N, 3] (x, y, z)")
    if not len(points):
        raise TritonForgeError(f"{label}: the file holds no points")
    if len(points) > MAX_POINTS:
        raise TritonForgeError(f"{label}: {len(points):,} points, above the limit of {MAX_POINTS:,}: "
                               "subsample the cloud before sending it")
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        raise TritonForgeError(f"{label}: {int(bad.sum())} points hold NaN or infinity (the first is point "
                               f"{int(np.argmax(bad))}): drop them before sending")
    return points


PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
             "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
             "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def _ply(data: bytes) -> np.ndarray:
    """The vertex element's x, y, z (ascii or binary, either byte order). Elements before the
    vertices are skipped: in ascii by their line count, in binary by their size, which needs
    fixed-size (non-list) properties."""
    end = data.find(b"end_header")
    if end < 0:
        raise TritonForgeError("the PLY header has no end_header line: send the whole file")
    body = data.index(b"\n", end) + 1
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []  # (name, count, [(property, type)])
    encoding = ""
    for line in data[:end].decode("ascii", errors="replace").splitlines():
        words = line.split()
        if words[:1] == ["format"] and len(words) >= 2:
            encoding = words[1]
        elif words[:1] == ["element"] and len(words) == 3:
            elements.append((words[1], int(words[2]), []))
        elif words[:1] == ["property"] and elements:
            elements[-1][2].append((words[-1], "list" if words[1] == "list" else words[1]))
    names = [name for name, _count, _props in elements]
    if "vertex" not in names:
        raise TritonForgeError(f"the PLY file has no vertex element (it has {names}): send a point cloud")
    before = elements[:names.index("vertex")]
    _name, count, properties = elements[names.index("vertex")]
    if not {"x", "y", "z"} <= {name for name, _kind in properties}:
        raise TritonForgeError(f"the PLY vertices have {[n for n, _k in properties]}: x, y and z are needed")
    if encoding == "ascii":
        skip = sum(n for _e, n, _p in before)
        rows = data[body:].decode("ascii", errors="replace").splitlines()[skip:skip + count]
        table = np.loadtxt(rows, dtype=np.float64, ndmin=2) if rows else np.zeros((0, len(properties)))
        if len(table) < count:
            raise TritonForgeError(f"the PLY file declares {count} vertices and holds {len(table)}: send the "
                                   "whole file")
        return np.column_stack([table[:, [n for n, _k in properties].index(axis)] for axis in "xyz"])
    order = {"binary_little_endian": "<", "binary_big_endian": ">"}.get(encoding)
    if order is None:
        raise TritonForgeError(f"PLY format {encoding!r} is not read: save as ascii or binary PLY")

    def record(props: list[tuple[str, str]], what: str) -> np.dtype:
        if any(kind not in PLY_TYPES for _n, kind in props):
            raise TritonForgeError(f"the PLY {what} has list or unknown properties {props}: put the vertices "
                                   "first and give them plain number properties")
        return np.dtype([(name, order + PLY_TYPES[kind]) for name, kind in props])

    offset = body + sum(n * record(p, f"element {e!r}").itemsize for e, n, p in before)
    vertex = record(properties, "vertex element")
    if len(data) - offset < count * vertex.itemsize:
        raise TritonForgeError(f"the PLY file declares {count} vertices of {vertex.itemsize} bytes and holds "
                               f"{max(len(data) - offset, 0)} bytes of them: send the whole file")
    table = np.frombuffer(data, vertex, count=count, offset=offset)
    return np.column_stack([table[axis].astype(np.float64) for axis in "xyz"])


def _npy(data: bytes) -> np.ndarray:
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if array.ndim != 2 or array.shape[1] < 3 or not np.issubdtype(array.dtype, np.number):
        raise TritonForgeError(f"the .npy array is {array.dtype} {list(array.shape)}: save points as a "
                               "number array [N, 3] (x, y, z; more columns are ignored)")
    return array[:, :3]


def _pcd(data: bytes) -> np.ndarray:
    header: dict[str, list[str]] = {}
    offset = 0
    while True:
        end = data.find(b"\n", offset)
        if end < 0:
            raise TritonForgeError("the PCD header ends before its DATA line")
        line = data[offset:end].decode("ascii", errors="replace").strip()
        offset = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        header[key.upper()] = values
        if key.upper() == "DATA":
            break
    fields = header.get("FIELDS", [])
    if not {"x", "y", "z"} <= set(fields):
        raise TritonForgeError(f"the PCD fields are {fields}: x, y and z are needed")
    count = int(header.get("POINTS", [0])[0]) or int(header["WIDTH"][0]) * int(header.get("HEIGHT", ["1"])[0])
    encoding = header["DATA"][0].lower()
    if encoding == "ascii":
        text = data[offset:].decode("ascii", errors="replace")
        table = np.loadtxt(io.StringIO(text), dtype=np.float64, ndmin=2)
        columns = np.cumsum([0] + [int(c) for c in header.get("COUNT", ["1"] * len(fields))])
        return np.column_stack([table[:, columns[fields.index(axis)]] for axis in "xyz"])[:count]
    if encoding == "binary":
        sizes, types = header["SIZE"], header["TYPE"]
        counts = header.get("COUNT", ["1"] * len(fields))
        try:
            dtype = np.dtype([(name, PCD_TYPES[(kind.upper(), int(size))], (int(n),) if int(n) > 1 else ())
                              for name, size, kind, n in zip(fields, sizes, types, counts, strict=True)])
        except KeyError as error:
            raise TritonForgeError(f"the PCD field type {error.args[0]} is unknown") from None
        if len(data) - offset < count * dtype.itemsize:
            raise TritonForgeError(f"the PCD file declares {count} points of {dtype.itemsize} bytes and "
                                   f"holds {len(data) - offset} bytes of data: send the whole file")
        table = np.frombuffer(data, dtype, count=count, offset=offset)
        return np.column_stack([table[axis] for axis in "xyz"])
    raise TritonForgeError(f"PCD data {encoding!r} is not read: save the cloud as binary or ascii PCD "
                           "(pcl_convert_pcd_ascii_binary IN OUT 1), or send .ply or .npy")
