"""Hand-edit what a checkpoint file's header says about its model (the record and the Megatron args alike)."""

from __future__ import annotations

import dataclasses

from mindspeed_llm.runtime.checkpoint.record import RECORD_KEY, read_header


def edit_recorded_model(state: dict, **changes) -> None:
    """Set ``changes`` (ModelRecord fields) in a loaded rank file's record and ``args``; None removes the
    arg."""
    record = read_header(state, "the edited file")
    state[RECORD_KEY] = record.replace(model=dataclasses.replace(record.model, **changes)).to_dict()
    for name, value in changes.items():
        if value is None:
            vars(state["args"]).pop(name, None)
        else:
            setattr(state["args"], name, value)
