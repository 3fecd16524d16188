"""The one answer to "what is in this checkpoint folder": the trainer, inference and the converter ask
here."""

from __future__ import annotations

import os

from mindspeed_llm.runtime.checkpoint import dist_format, layout, torch_format
from mindspeed_llm.runtime.checkpoint.errors import CheckpointError, DamagedCheckpointError

TORCH, TORCH_DIST = torch_format.FORMAT, dist_format.FORMAT
FORMATS = {
    TORCH: torch_format,
    TORCH_DIST: dist_format,
}  # the formats' modules: detect, read_record, load, save


def detect_format(root: str | os.PathLike, iteration: int | str | None = None) -> str | None:
    """The format of ``root``'s checkpoint at ``iteration`` (default: the tracker's); None when ``root`` holds
    none.

    None only when no iteration is asked for and there is no tracker; a tracker that cannot be read,
    an iteration folder that is missing, or one that holds neither format is a :class:`CheckpointError`
    naming it.
    """
    root = os.fspath(root)
    if iteration is None:
        if not os.path.isfile(os.path.join(root, layout.TRACKER_FILENAME)):
            return None
        iteration = layout.read_tracker(root)
    folder = layout.iteration_dir(root, iteration)
    if not os.path.isdir(folder):
        named_by = f", but {layout.TRACKER_FILENAME} names it" if _tracker_names(root, iteration) else ""
        raise CheckpointError(f"{folder} not found{named_by}: the checkpoint is incomplete")
    for name in (TORCH_DIST, TORCH):  # a torch_dist folder never holds rank folders; its marker decides first
        if FORMATS[name].detect(folder):
            return name
    if dist_format.looks_distributed(folder):  # torch_dist's files without its marker: name the marker
        raise CheckpointError(
            f"{os.path.join(folder, dist_format.MARKER)} not found: {folder} holds torch_dist files without "
            f"megatron-core's marker, the save did not finish or the folder is damaged; restore it, or write "
            f"an earlier iteration into {layout.TRACKER_FILENAME} to load that one"
        )
    raise DamagedCheckpointError(
        f"{folder} holds neither mp_rank_*/{layout.MODEL_FILENAME} (--ckpt-format torch) nor "
        f"{dist_format.MARKER} (torch_dist): the save did not finish or the folder is damaged; restore it, "
        f"or write an earlier iteration into {layout.TRACKER_FILENAME} to load that one"
    )


def _tracker_names(root: str, iteration: int | str) -> bool:
    """True when ``root``'s tracker names ``iteration`` (for the message about a missing folder)."""
    try:
        return layout.read_tracker(root) == iteration
    except CheckpointError:
        return False
