"""K2 model definition (``k2hf.modeling``): config and model classes, self-contained so they ship as remote code."""

from .configuration_k2 import K2_VOCAB_ROWS, K2Config, llama_dict_to_k2
from .modeling_k2 import (
    CACHE_ARG,
    K2ForCausalLM,
    K2ForQuestionAnswering,
    K2ForSequenceClassification,
    K2ForTokenClassification,
    K2Model,
    K2PreTrainedModel,
)

# Each model class with the Auto class that loads it (the same pairs as LLaMA's).
AUTO_CLASSES = {
    "AutoModel": K2Model,
    "AutoModelForCausalLM": K2ForCausalLM,
    "AutoModelForSequenceClassification": K2ForSequenceClassification,
    "AutoModelForTokenClassification": K2ForTokenClassification,
    "AutoModelForQuestionAnswering": K2ForQuestionAnswering,
}

# `save_pretrained` copies these classes' files into the checkpoint and writes `auto_map`, so
# `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` works where k2hf is not installed.
K2Config.register_for_auto_class("AutoConfig")
for _auto_class, _model_class in AUTO_CLASSES.items():
    _model_class.register_for_auto_class(_auto_class)

__all__ = [
    "AUTO_CLASSES",
    "CACHE_ARG",
    "K2_VOCAB_ROWS",
    "K2Config",
    "K2ForCausalLM",
    "K2ForQuestionAnswering",
    "K2ForSequenceClassification",
    "K2ForTokenClassification",
    "K2Model",
    "K2PreTrainedModel",
    "llama_dict_to_k2",
]
