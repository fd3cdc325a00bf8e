"""K2 model definition (``k2hf.modeling``): config and model classes, self-contained so they ship as remote code."""

from .configuration_k2 import K2_VOCAB_ROWS, K2Config, llama_dict_to_k2
from .modeling_k2 import K2ForCausalLM, K2Model, K2PreTrainedModel

# `save_pretrained` copies these classes' files into the checkpoint and writes `auto_map`, so
# `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` works where k2hf is not installed.
K2Config.register_for_auto_class("AutoConfig")
K2Model.register_for_auto_class("AutoModel")
K2ForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["K2_VOCAB_ROWS", "K2Config", "K2ForCausalLM", "K2Model", "K2PreTrainedModel", "llama_dict_to_k2"]
