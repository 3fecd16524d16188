"""The run's runtime: what training, inference and the converter share once the flags are parsed."""
