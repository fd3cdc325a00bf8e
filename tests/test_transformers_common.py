"""transformers' own common model and config tests (``ModelTesterMixin``, ``ConfigTester``) on K2's classes.

The suites come from the sdist of the installed transformers (see ``upstream_transformers.py``), so a release
that changes what a model must do (like 5.24's cache rename) fails here, in CI, before a user sees it. The
module is in the slow tier: collecting it fetches the sdist once per transformers version.
"""

import os
import unittest
from unittest import mock

import pytest
import torch
from transformers.models.auto import modeling_auto
from upstream_sdist import UpstreamUnavailable

from k2hf import (
    K2Config,
    K2ForCausalLM,
    K2ForQuestionAnswering,
    K2ForSequenceClassification,
    K2ForTokenClassification,
    K2Model,
)
from upstream_transformers import import_upstream

pytestmark = pytest.mark.slow

try:
    modeling_common = import_upstream("test_modeling_common")
    configuration_common = import_upstream("test_configuration_common")
    generation_stand_in = import_upstream("generation.test_utils")
except UpstreamUnavailable as error:
    if os.environ.get("CI"):  # CI reaches the package index: there, not running these is a failure
        raise
    pytest.skip(str(error), allow_module_level=True)

# The common tests pick each class's role (labels, heads, generation) from transformers' name tables, which
# registering with the Auto classes does not fill: K2 is added to them for these tests only.
ROLES = {
    "MODEL_MAPPING_NAMES": K2Model,
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": K2ForCausalLM,
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": K2ForSequenceClassification,
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES": K2ForTokenClassification,
    "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES": K2ForQuestionAnswering,
}


@pytest.fixture(scope="module", autouse=True)
def k2_in_transformers_name_tables():
    with mock.patch.dict(modeling_auto.CONFIG_MAPPING_NAMES, {"k2": "K2Config"}):
        patches = [mock.patch.dict(getattr(modeling_auto, table), {"k2": cls.__name__}) for table, cls in ROLES.items()]
        for patch in patches:
            patch.start()
        try:
            yield
        finally:
            for patch in reversed(patches):
                patch.stop()


class K2ModelTester:
    """A tiny K2 and its inputs, shaped as transformers' decoder-only testers shape theirs."""

    def __init__(self, parent, batch_size=13, seq_length=7):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = True
        self.vocab_size = 99
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.intermediate_size = 37
        self.num_labels = 3

    def get_config(self) -> K2Config:
        return K2Config(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size, max_position_embeddings=512, num_labels=self.num_labels,
            pad_token_id=0, bos_token_id=1, eos_token_id=2,
        )

    def prepare_config_and_inputs_for_common(self):
        generator = torch.Generator().manual_seed(0)
        input_ids = torch.randint(3, self.vocab_size, (self.batch_size, self.seq_length), generator=generator)
        attention_mask = torch.tril(torch.ones_like(input_ids))  # row i keeps i+1 tokens: varied right padding
        attention_mask[:, 0] = 1
        return self.get_config(), {"input_ids": input_ids, "attention_mask": attention_mask}


class K2ModelTest(modeling_common.ModelTesterMixin, generation_stand_in.GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (K2Model, K2ForCausalLM, K2ForSequenceClassification, K2ForTokenClassification,
                         K2ForQuestionAnswering)
    test_torch_exportable = True

    def setUp(self):
        self.model_tester = K2ModelTester(self)
        self.config_tester = configuration_common.ConfigTester(self, config_class=K2Config, hidden_size=128)

    def test_config(self):
        self.config_tester.run_common_tests()
