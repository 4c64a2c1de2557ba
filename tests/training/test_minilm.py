"""The packaged MiniLM-L6, loaded offline: the real default base model."""

from __future__ import annotations

import pytest
import torch

from training.config import TrainConfig
from training.data import LabelledTable, make_loader
from training.loops import train
from training.models import build_model_and_tokenizer, count_parameters
from training.params import get_trainable_state, state_nbytes

pytestmark = pytest.mark.slow


def test_minilm_lora_parameter_count_and_one_step(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may come from a hub
    config = TrainConfig(labels=("ham", "spam"), max_steps=1, batch_size=4)
    model, tokenizer = build_model_and_tokenizer(config)
    trainable, total = count_parameters(model)
    lora = 6 * 2 * (8 * 384 + 384 * 8)  # 6 layers x (query, value) x (A: r x d + B: d x r) = 73,728
    head = 384 * 2 + 2
    assert trainable == lora + head == 74_498
    assert 22_000_000 < total < 23_500_000 and trainable / total < 0.005
    state = get_trainable_state(model)
    assert state_nbytes(state) == 4 * trainable  # ~291 KiB on the wire per member per round
    assert tokenizer("Free entry in 2 a wkly comp")["input_ids"][0] == tokenizer.cls_token_id

    table = LabelledTable.from_lists(
        texts=["Free entry to win cash now", "See you at lunch", "URGENT claim your prize", "Ok lar, joking"],
        labels=["spam", "ham", "spam", "ham"],
        label_names=config.labels,
    )
    loader = make_loader(table, tokenizer=tokenizer, config=config, shuffle=True)
    result = train(model, loader, config=config, device=torch.device("cpu"))
    assert result.steps == 1 and result.examples == 4 and result.loss > 0
    after = get_trainable_state(model)
    assert any(not torch.equal(state[n], after[n]) for n in state)
