"""Point files in every accepted format read back to the same points; bad files are refused by name."""

import io

import numpy as np
import pytest

from tritonforge.errors import TritonForgeError
from tritonforge.export.ov3d.points import MAX_POINTS, read_points
from tritonforge.export.ov3d.scenes import room

POINTS = room("test", 0).points[:500]


def ply_bytes(points, text):
    """A PLY file written by hand: a vertex element with x, y, z and a colour channel."""
    header = (f"ply\nformat {'ascii' if text else 'binary_little_endian'} 1.0\nelement vertex {len(points)}\n"
              "property float x\nproperty float y\nproperty float z\nproperty uchar red\nend_header\n")
    if text:
        return (header + "".join(f"{x:.9g} {y:.9g} {z:.9g} 7\n" for x, y, z in points)).encode()
    table = np.zeros(len(points), [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1")])
    for axis, column in zip("xyz", points.T, strict=True):
        table[axis] = column
    return header.encode() + table.tobytes()


def pcd_bytes(points, data="binary"):
    header = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z intensity\n"
              "SIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\n"
              f"WIDTH {len(points)}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {len(points)}\nDATA {data}\n")
    table = np.column_stack([points, np.ones(len(points))]).astype(np.float32)
    if data == "ascii":
        body = "\n".join(" ".join(f"{v:.9g}" for v in row) for row in table).encode()
    else:
        body = table.tobytes()
    return header.encode() + body


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("make", [lambda p: ply_bytes(p, text=True), lambda p: ply_bytes(p, text=False),
                                  lambda p: pcd_bytes(p, "ascii"), lambda p: pcd_bytes(p, "binary"),
                                  lambda p: npy_bytes(p), lambda p: npy_bytes(np.column_stack([p, p]))],
                         ids=["ply-ascii", "ply-binary", "pcd-ascii", "pcd-binary", "npy", "npy-6-columns"])
def test_every_format_reads_back_the_same_points(make):
    np.testing.assert_allclose(read_points(make(POINTS)), POINTS, rtol=1e-6, atol=1e-6)


def test_bad_point_files_are_refused_with_what_to_do():
    broken = POINTS.copy()
    broken[[7, 9], 1] = [np.nan, np.inf]
    with pytest.raises(TritonForgeError, match=r"2 points hold NaN or infinity \(the first is point 7\)"):
        read_points(npy_bytes(broken))
    with pytest.raises(TritonForgeError, match="none of ply, pcd, npy"):
        read_points(b"OFF\n3 1 0\n")
    with pytest.raises(TritonForgeError, match="binary_compressed.*not read.*ascii"):
        read_points(pcd_bytes(POINTS, "binary_compressed"))
    with pytest.raises(TritonForgeError, match="send the whole file"):
        read_points(pcd_bytes(POINTS)[:-100])
    with pytest.raises(TritonForgeError, match="holds no points"):
        read_points(npy_bytes(np.zeros((0, 3), np.float32)))
    with pytest.raises(TritonForgeError, match="above the limit of 1,000,000"):
        read_points(npy_bytes(np.zeros((MAX_POINTS + 1, 3), np.float32)))
    with pytest.raises(TritonForgeError, match="declares 500 vertices.*send the whole file"):
        read_points(ply_bytes(POINTS, text=False)[:-50])
    with pytest.raises(TritonForgeError, match="cannot be read"):  # numpy's own complaint, wrapped
        read_points(b"\x93NUMPY" + b"\x00" * 20)
    faces_first = ply_bytes(POINTS, text=False).replace(b"element vertex", b"element face 1\nproperty list "
                                                        b"uchar int vertex_indices\nelement vertex")
    with pytest.raises(TritonForgeError, match="list or unknown properties.*put the vertices first"):
        read_points(faces_first)


@pytest.mark.parametrize("encoding", ["ascii", "binary"])
def test_ply_files_written_by_trimesh_read_as_trimesh_reads_them(encoding):
    """A mesh (vertices with normals and colours, then faces with list properties) as trimesh
    writes it: our numpy reader, which the server's python step runs without trimesh, gives
    trimesh's own vertices."""
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=2)
    mesh.visual.vertex_colors = np.tile([200, 100, 50, 255], (len(mesh.vertices), 1)).astype(np.uint8)
    data = trimesh.exchange.ply.export_ply(mesh, encoding=encoding, vertex_normal=True)
    assert b"element face" in data and b"property uchar red" in data
    np.testing.assert_allclose(read_points(data), mesh.vertices, rtol=1e-6)


def test_big_endian_ply_with_an_element_before_the_vertices():
    layout = np.dtype([("x", ">f4"), ("y", ">f4"), ("z", ">f4"), ("intensity", ">u2")])
    table = np.zeros(len(POINTS), layout)
    for axis, column in zip("xyz", POINTS.T, strict=True):
        table[axis] = column
    header = (f"ply\nformat binary_big_endian 1.0\nelement camera 1\nproperty double focal\nproperty int id\n"
              f"element vertex {len(POINTS)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property ushort intensity\nend_header\n").encode()
    data = header + np.array([(2.5, 7)], [("focal", ">f8"), ("id", ">i4")]).tobytes() + table.tobytes()
    np.testing.assert_array_equal(read_points(data), POINTS)
