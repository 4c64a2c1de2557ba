"""Model factory, LoRA wrapping, and the trainable state that members exchange."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.config import TrainingConfigError
from training.models import autocast_dtype, build_model_and_tokenizer, count_parameters, select_device
from training.params import (
    TrainableStateError,
    arrays_to_state,
    get_trainable_arrays,
    get_trainable_state,
    load_trainable_state,
    load_trainable_state_metadata,
    save_trainable_state,
    set_trainable_arrays,
    set_trainable_state,
    state_nbytes,
    state_to_arrays,
    trainable_names,
)

HIDDEN, LAYERS = 32, 2  # the tiny model of conftest.py


def _logits(model, tokenizer, texts=("win free cash now", "see you at lunch")):
    model.eval()
    with torch.no_grad():
        return model(**tokenizer(list(texts), padding=True, return_tensors="pt")).logits


def test_lora_exchanges_only_adapters_and_head(make_config):
    model, tokenizer = build_model_and_tokenizer(make_config(lora_r=4))
    state = get_trainable_state(model)
    assert state and all(("lora_" in name) or ("classifier" in name) for name in state)
    adapters = [n for n in state if "lora_" in n]
    head = [n for n in state if "classifier" in n]
    assert len(adapters) == LAYERS * 2 * 2  # layers x (query, value) x (A, B)
    assert len(head) == 2  # weight and bias, saved by peft as modules_to_save
    assert not any("embeddings" in n or "pooler" in n for n in state)
    expected = LAYERS * 2 * (4 * HIDDEN + HIDDEN * 4) + (HIDDEN * 2 + 2)
    trainable, total = count_parameters(model)
    assert sum(t.numel() for t in state.values()) == trainable == expected
    assert trainable < 0.2 * total
    assert model.config.id2label == {0: "ham", 1: "spam"}
    assert tokenizer("win cash")["input_ids"][0] == tokenizer.cls_token_id


def test_full_fine_tuning_exchanges_everything(make_config):
    model, _ = build_model_and_tokenizer(make_config(lora=False))
    trainable, total = count_parameters(model)
    assert trainable == total
    assert any("embeddings" in name for name in get_trainable_state(model))


def test_same_seed_builds_the_same_head_and_other_seed_does_not(make_config):
    a, _ = build_model_and_tokenizer(make_config(seed=3))
    b, _ = build_model_and_tokenizer(make_config(seed=3))
    c, _ = build_model_and_tokenizer(make_config(seed=4))
    sa, sb, sc = get_trainable_state(a), get_trainable_state(b), get_trainable_state(c)
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    assert not all(torch.equal(sa[n], sc[n]) for n in sa)


def test_bad_lora_target_modules_name_the_real_layers(make_config):
    with pytest.raises(TrainingConfigError, match="'query'"):
        build_model_and_tokenizer(make_config(lora_target_modules=("q_proj",)))


def test_set_get_round_trip_reproduces_outputs(make_config):
    a, tokenizer = build_model_and_tokenizer(make_config(seed=0))
    b, _ = build_model_and_tokenizer(make_config(seed=1))
    assert not torch.allclose(_logits(a, tokenizer), _logits(b, tokenizer))
    set_trainable_state(b, get_trainable_state(a))
    torch.testing.assert_close(_logits(a, tokenizer), _logits(b, tokenizer))

    # LoRA B starts at zero (adapter = identity); giving it values must change the outputs.
    state = get_trainable_state(a)
    before = _logits(a, tokenizer)
    for name in state:
        if "lora_B" in name:
            state[name] = torch.full_like(state[name], 0.5)
    set_trainable_state(a, state)
    assert not torch.allclose(before, _logits(a, tokenizer))


def test_get_trainable_state_is_a_copy(make_config):
    model, _ = build_model_and_tokenizer(make_config())
    state = get_trainable_state(model)
    name = next(iter(state))
    saved = state[name].clone()
    with torch.no_grad():
        dict(model.named_parameters())[name].add_(1.0)
    assert torch.equal(state[name], saved)


def test_set_trainable_state_is_strict(make_config):
    model, _ = build_model_and_tokenizer(make_config())
    state = get_trainable_state(model)
    first = next(iter(state))

    missing = dict(state)
    del missing[first]
    with pytest.raises(TrainableStateError, match=r"1 missing \('base_model"):
        set_trainable_state(model, missing)

    extra = dict(state, **{"bert.embeddings.word_embeddings.weight": torch.zeros(3)})
    with pytest.raises(TrainableStateError, match="1 unexpected"):
        set_trainable_state(model, extra)

    reshaped = dict(state)
    reshaped[first] = torch.zeros(3, 3)
    with pytest.raises(TrainableStateError, match=r"wrong shapes: .*got \(3, 3\)"):
        set_trainable_state(model, reshaped)

    other_rank, _ = build_model_and_tokenizer(make_config(lora_r=2))
    with pytest.raises(TrainableStateError, match="wrong shapes"):
        set_trainable_state(model, get_trainable_state(other_rank))


def test_numpy_arrays_round_trip_in_a_stable_order(make_config):
    a, tokenizer = build_model_and_tokenizer(make_config(seed=0))
    b, _ = build_model_and_tokenizer(make_config(seed=5))
    arrays = get_trainable_arrays(a)
    assert all(isinstance(x, np.ndarray) and x.dtype == np.float32 for x in arrays)
    assert [tuple(x.shape) for x in arrays] == [tuple(t.shape) for t in get_trainable_state(b).values()]
    assert trainable_names(a) == trainable_names(b) == list(get_trainable_state(a))
    set_trainable_arrays(b, arrays)
    torch.testing.assert_close(_logits(a, tokenizer), _logits(b, tokenizer))

    state = arrays_to_state(state_to_arrays(get_trainable_state(a)), names=trainable_names(a))
    assert list(state) == trainable_names(a)
    with pytest.raises(TrainableStateError, match="got 1 arrays for"):
        set_trainable_arrays(b, arrays[:1])


def test_state_nbytes(make_config):
    model, _ = build_model_and_tokenizer(make_config())
    state = get_trainable_state(model)
    trainable, _ = count_parameters(model)
    assert state_nbytes(state) == state_nbytes(state_to_arrays(state)) == 4 * trainable


def test_safetensors_file_round_trip(make_config, tmp_path):
    a, tokenizer = build_model_and_tokenizer(make_config(seed=0))
    b, _ = build_model_and_tokenizer(make_config(seed=9))
    path = save_trainable_state(
        tmp_path / "adapter" / "round-1.safetensors", get_trainable_state(a), metadata={"round": "1"}
    )
    loaded = load_trainable_state(path)
    assert set(loaded) == set(trainable_names(a))
    assert load_trainable_state_metadata(path) == {"round": "1"}
    set_trainable_state(b, loaded)
    torch.testing.assert_close(_logits(a, tokenizer), _logits(b, tokenizer))
    with pytest.raises(TrainableStateError, match="no trainable-state file"):
        load_trainable_state(tmp_path / "nope.safetensors")


def test_device_selection_and_precision():
    device = select_device()
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert select_device("cpu").type == "cpu"
    assert autocast_dtype(torch.device("cpu")) is None
    assert autocast_dtype(torch.device("cuda"), enabled=False) is None
    if not torch.cuda.is_available():
        with pytest.raises(TrainingConfigError, match="CUDA was requested"):
            select_device("cuda")


def test_mean_pooling_reads_the_normalised_mean_of_the_token_states(make_config):
    model, tokenizer = build_model_and_tokenizer(make_config(pooling="mean", lora=False))
    model.eval()
    batch = tokenizer(["win free cash now", "lunch"], padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model.encoder(**batch).last_hidden_state
        logits = model(**batch).logits
    # The padded positions of the short text do not count: its vector is the mean of its own tokens.
    for i in range(2):
        n = int(batch["attention_mask"][i].sum())
        vector = torch.nn.functional.normalize(states[i, :n].mean(dim=0), dim=0)
        torch.testing.assert_close(logits[i], model.classifier(vector), rtol=1e-5, atol=1e-6)
    assert model.config.id2label == {0: "ham", 1: "spam"}
    labels = torch.tensor([1, 0])
    loss = model(**batch, labels=labels).loss
    assert loss is not None and float(loss.detach()) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-5
    )


def test_mean_pooling_under_lora_exchanges_adapters_and_head(make_config):
    model, _ = build_model_and_tokenizer(make_config(pooling="mean", lora_r=4))
    state = get_trainable_state(model)
    assert len([n for n in state if "lora_" in n]) == LAYERS * 2 * 2
    assert len([n for n in state if "classifier" in n]) == 2
    assert all("lora_" in n or "classifier" in n for n in state)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_head_only_trains_the_classifier_alone(make_config, pooling):
    model, _ = build_model_and_tokenizer(make_config(pooling=pooling, head_only=True))
    state = get_trainable_state(model)
    assert sorted(state) == ["classifier.bias", "classifier.weight"]
    assert count_parameters(model)[0] == HIDDEN * 2 + 2
    assert not any("lora_" in name for name, _ in model.named_parameters())  # no adapters at all
