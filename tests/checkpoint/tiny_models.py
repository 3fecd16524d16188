"""The tiny models moved to :mod:`tests.helpers.tiny`; these names stay importable from here for tests not
yet changed over (import them from ``tests.helpers.tiny``)."""

from tests.helpers.tiny import load_hf_model, make_tiny_hf_model, tiny_hf_config  # noqa: F401
