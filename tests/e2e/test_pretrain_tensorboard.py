"""--tensorboard-dir: the scalars written are the ones the log lines print (read back with tensorboard's
reader)."""

import pytest

from tests.e2e.pretrain_helpers import (
    losses,
    make_hf_model,
    make_indexed_dataset,
    model_flags,
    run_pretrain,
    train_flags,
)


@pytest.mark.slow
def test_tensorboard_scalars_match_the_log(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    hf = make_hf_model(tmp_path / "hf", num_layers=2)
    data = make_indexed_dataset(tmp_path / "data" / "tb_text_document", seed=3)
    board = tmp_path / "tb"
    out = run_pretrain(*model_flags(hf), *train_flags(data, iters=4), "--tensorboard-dir", str(board))
    logged = losses(out)
    assert sorted(logged) == [1, 2, 3, 4]

    events = EventAccumulator(str(board))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"lm loss", "learning-rate", "grad-norm", "batch-size"} <= tags
    written = {e.step: e.value for e in events.Scalars("lm loss")}
    assert sorted(written) == [1, 2, 3, 4]
    for it, value in logged.items():
        assert abs(written[it] - value) <= 1e-6 * abs(value), (it, written[it], value)
    assert all(e.value == 4 for e in events.Scalars("batch-size"))
