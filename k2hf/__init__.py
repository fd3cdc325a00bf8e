"""k2hf: the Hugging Face-ecosystem home of the LLM360 K2 model family.

``import k2hf`` registers K2 (``model_type="k2"``) with ``AutoConfig`` and the Auto model classes LLaMA has:
``AutoModel``, ``AutoModelForCausalLM``, ``...ForSequenceClassification``, ``...ForTokenClassification``,
``...ForQuestionAnswering``.
"""

import transformers
from transformers import AutoConfig

from .chat_template import (
    ConversationError,
    apply_chat_template_to,
    conversation_segments,
    encode_chat,
    encode_chats,
    k2_chat_template,
    validate_conversation,
)
from .modeling import (
    AUTO_CLASSES,
    K2_VOCAB_ROWS,
    K2Config,
    K2ForCausalLM,
    K2ForQuestionAnswering,
    K2ForSequenceClassification,
    K2ForTokenClassification,
    K2Model,
    K2PreTrainedModel,
)
from .token_layouts import K2_TOOL_TOKENS, LAYOUTS, detect_layout
from .tokenizer import (
    K2_ADDED_TOKENS,
    K2_CHAT_TOKENS,
    K2_CODE_TOKENS,
    build_k2_tokenizer,
    encode_plain_text,
    save_tokenizer,
)
from .tool_format import parse_tool_calls

AutoConfig.register(K2Config.model_type, K2Config, exist_ok=True)
for _auto_class, _model_class in AUTO_CLASSES.items():
    getattr(transformers, _auto_class).register(K2Config, _model_class, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "K2_ADDED_TOKENS",
    "K2_CHAT_TOKENS",
    "K2_CODE_TOKENS",
    "K2_TOOL_TOKENS",
    "K2_VOCAB_ROWS",
    "LAYOUTS",
    "ConversationError",
    "K2Config",
    "K2ForCausalLM",
    "K2ForQuestionAnswering",
    "K2ForSequenceClassification",
    "K2ForTokenClassification",
    "K2Model",
    "K2PreTrainedModel",
    "apply_chat_template_to",
    "build_k2_tokenizer",
    "conversation_segments",
    "detect_layout",
    "encode_chat",
    "encode_chats",
    "encode_plain_text",
    "k2_chat_template",
    "parse_tool_calls",
    "save_tokenizer",
    "validate_conversation",
]
