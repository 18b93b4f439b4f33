"""Small real inputs shipped with the package: sentences for parity, calibration and quality."""

from __future__ import annotations

from pathlib import Path

from tritonforge.errors import TritonForgeError

CORPUS_DIR = Path(__file__).parent / "corpus"
# Calibration sentences are never used for parity or quality figures, and vice versa.
CALIBRATION = CORPUS_DIR / "calibration.txt"
EVALUATION = CORPUS_DIR / "evaluation.txt"


def read_lines(path: Path) -> list[str]:
    """Non-empty, stripped lines of a UTF-8 text file (one text per line)."""
    path = Path(path)
    if not path.is_file():
        raise TritonForgeError(f"text file {path} does not exist: give a file with one text per line")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line]


def sentences(n: int | None = None, path: Path = EVALUATION) -> list[str]:
    """The first n sentences of the shipped evaluation corpus (all of them when n is None)."""
    lines = read_lines(path)
    return lines if n is None else lines[:n]
