"""mindspeed_llm.data."""
