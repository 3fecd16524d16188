"""mindspeed_llm.training."""
