"""mindspeed_llm.ops."""
