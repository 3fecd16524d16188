"""The quick start's training summary and held-out text, on a log written by hand."""

from mindspeed_llm.quickstart.assets import HELDOUT_MODULES, STDLIB_MODULES, heldout_rows
from mindspeed_llm.quickstart.summary import summarise
from mindspeed_llm.training.training import training_plan


def _line(iteration: int, loss: float) -> str:
    return (
        f" [2026-11-29 10:00:00] iteration {iteration:8d}/{30:8d} | consumed samples: {iteration * 4:12d} | "
        f"learning rate: 1.0E-03 | global batch size:     4 | lm loss: {loss:.6E} | loss scale: 1.0 |"
    )


LOG = "\n".join([
    "  successfully loaded checkpoint from ckpt [ t 1/1, p 1/2 ] at iteration 1",
    training_plan(1, 12),
    _line(5, 11.5), _line(10, 8.25), _line(12, 7.0),
    "[after training] iterations: 12 | consumed samples: 44 | mean throughput (tokens/s/device): 100.0",
])


def test_training_plan_counts_the_steps_after_the_loaded_iteration():
    assert training_plan(1, 30) == ("training ... iterations 2 to 30 (29 steps; continuing after the loaded "
                                    "checkpoint's iteration 1, as Megatron-LM does)")
    assert training_plan(0, 30) == "training ... iterations 1 to 30 (30 steps)"
    assert training_plan(30, 30).startswith("training ... nothing to do")


def test_summary_names_intervals_steps_and_one_final_loss():
    assert summarise(LOG) == [
        "[summary] lm loss, mean over each logged interval: iterations 2-5: 11.500 | iterations 6-10: 8.250 "
        "| iterations 11-12: 7.000",
        "[summary] 11 training steps ran, iterations 2-12: training continued after the converted "
        "checkpoint's iteration 1 (Megatron-LM counts a loaded checkpoint's iterations as done)",
        "[summary] final loss 7.000: the mean lm loss of iterations 11-12 (2 steps of 4 sequences); it fell "
        "from 11.500 (iterations 2-5)",
    ]


def test_summary_refuses_a_loss_that_did_not_fall():
    import pytest

    with pytest.raises(ValueError, match="did not fall"):
        summarise("\n".join([training_plan(0, 10), _line(5, 7.0), _line(10, 7.5)]))


def test_heldout_text_is_not_in_the_training_corpus():
    assert not set(HELDOUT_MODULES) & set(STDLIB_MODULES)
    rows = heldout_rows()
    assert [r["instruction"].split("`")[1].split(".")[0] for r in rows] == list(HELDOUT_MODULES)
