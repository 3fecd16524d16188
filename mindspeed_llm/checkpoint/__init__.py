"""mindspeed_llm.checkpoint."""
