"""Loading checkpoints a user hands us without running their pickled code.

Every family reads untrusted `.pt`/`.pth` files through `load_weights`: `torch.load` with
`weights_only=True` (only tensors, containers and plain values; `allowed` adds classes a known
format needs, such as argparse.Namespace in Deformable-DETR checkpoints), and one message per
way it fails.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tritonforge.errors import TritonForgeError

SAVE_WEIGHTS_ALONE = ("save the weights alone, torch.save(model.state_dict(), path) (or safetensors), "
                      "from code you trust")


def load_weights(path: Path, what: str, advice: str = SAVE_WEIGHTS_ALONE,
                 allowed: Sequence[type] = ()) -> Any:
    """The contents of the torch file `path`, loaded weights_only. `what` names it in messages
    (e.g. "--checkpoint model.pt"), `advice` says what to do when it cannot be read."""
    import torch

    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler, zip and EOF errors: what matters is the message
        text = str(exc)
        code = re.search(r"(Unsupported global: GLOBAL [\w.]+)", text)  # a class or function: code
        if code:
            raise TritonForgeError(
                f"{what} cannot be loaded safely ({code[1]}): it holds pickled Python objects, not "
                f"just tensors; {advice}") from None
        detail = re.search(r"WeightsUnpickler error: \s*(.+)", text)
        reason = detail[1] if detail else (text.splitlines()[0][:200] if text else type(exc).__name__)
        raise TritonForgeError(f"{what} is not a PyTorch checkpoint ({reason}): {advice}") from None


def save_checkpoint(path: Path, mark: str, config: dict[str, Any], recipe: dict[str, Any], state_dict: Any,
                    metrics: dict[str, Any]) -> Path:
    """A network trained here: its weights and what rebuilds it, as a plain dict that
    `read_checkpoint` loads weights-only; a JSON beside it says how it was made."""
    import json

    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": mark, "config": config, "recipe": recipe, "state_dict": state_dict}, path)
    path.with_suffix(".json").write_text(json.dumps({"config": config, "recipe": recipe, "metrics": metrics},
                                                    indent=2) + "\n")
    return path


def read_checkpoint(path: Path, mark: str, train_command: str) -> dict[str, Any]:
    """What `save_checkpoint` wrote under the format `mark`; a missing file or another format is
    refused with the command that trains one."""
    path = Path(path)
    if not path.is_file():
        raise TritonForgeError(f"--checkpoint {path} does not exist: train one with `{train_command}`")
    saved = load_weights(path, f"--checkpoint {path}")
    if not isinstance(saved, dict) or saved.get("format") != mark:
        family = mark.split("/")[0].split(".")[-1]  # "tritonforge.spikedepth/1": spikedepth
        raise TritonForgeError(f"--checkpoint {path} is not a {family} checkpoint (no {mark!r} format "
                               f"mark): train one with `{train_command}`")
    return saved
