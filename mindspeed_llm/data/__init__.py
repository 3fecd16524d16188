"""mindspeed_llm.data: raw text in six formats -> megatron-core indexed datasets.

Readers per input format (:mod:`.readers`), handlers that turn rows into document text
(:mod:`.handlers`), the HF tokenizer wrapper (:mod:`.tokenizer`), the streamed indexed-dataset
writer (:mod:`.indexed_writer`) and the pipeline (:mod:`.preprocess`); ``preprocess_data.py``
calls :func:`mindspeed_llm.data.cli.main`.
"""

from mindspeed_llm.data.errors import PreprocessError

__all__ = ["PreprocessError"]
