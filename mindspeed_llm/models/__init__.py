"""mindspeed_llm.models."""
