# Fill torch's cache of tensor-factory functions before `import mindspeed_llm` wraps them; otherwise
# transformers' from_pretrained builds RoPE buffers from uninitialised memory (CPU device layer issue).
import torch.utils._device

torch.utils._device._device_constructors()
