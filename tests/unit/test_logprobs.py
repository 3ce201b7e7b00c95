"""Sequence log-probs agree with a token-by-token loop, for left and right padding."""

import pytest
import torch

from overopt.logprobs import pack_prompt_response, sequence_logprobs


def _loop_logprob(model, prompt, response):
    """Reference: feed each prefix alone (no padding at all) and add up log p(next token)."""
    total = 0.0
    for t in range(len(response)):
        prefix = torch.tensor([prompt + response[:t]])
        logits = model(input_ids=prefix).logits[0, -1]
        total += torch.log_softmax(logits.double(), -1)[response[t]].item()
    return total


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_matches_token_by_token_loop(tiny_model, tokenizer, task, padding_side):
    prompts = task.prompts(4, seed=3)
    responses = ["w01 w02", "w09", "w01 w01 w03 w04 w05", ""]  # the empty one is just EOS
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    response_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for r in responses]
    batch = pack_prompt_response(prompt_ids, response_ids, tokenizer.pad_token_id, padding_side)
    with torch.no_grad():
        logps, counts = sequence_logprobs(tiny_model, **batch)
        expected = [_loop_logprob(tiny_model, p, r) for p, r in zip(prompt_ids, response_ids)]
    assert counts.tolist() == [len(r) for r in response_ids]
    assert logps.tolist() == pytest.approx(expected, abs=1e-4)


def test_left_and_right_padding_agree(tiny_model):
    prompt_ids = [[1, 5, 6, 7, 4], [1, 8, 4]]
    response_ids = [[9, 2], [10, 11, 12, 2]]
    with torch.no_grad():
        left = sequence_logprobs(tiny_model, **pack_prompt_response(prompt_ids, response_ids, 0, "left"))
        right = sequence_logprobs(tiny_model, **pack_prompt_response(prompt_ids, response_ids, 0, "right"))
    assert torch.allclose(left[0], right[0], atol=1e-5)
    assert left[1].tolist() == right[1].tolist() == [2, 4]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_padding_contents_change_nothing(tiny_model, padding_side):
    """Masked-out positions (padding) count for nothing, whatever token fills them."""
    prompt_ids = [[1, 5, 6, 7, 4], [1, 8, 4]]
    response_ids = [[9, 2], [10, 11, 12, 2]]
    with torch.no_grad():
        zeros = sequence_logprobs(tiny_model, **pack_prompt_response(prompt_ids, response_ids, 0, padding_side))
        other = sequence_logprobs(tiny_model, **pack_prompt_response(prompt_ids, response_ids, 13, padding_side))
    assert torch.allclose(zeros[0], other[0], atol=1e-5)
    assert zeros[1].tolist() == other[1].tolist() == [2, 4]


def test_pack_masks_prompt_and_padding():
    prompts, responses = [[1, 5], [1]], [[7, 2], [8, 9, 10, 2]]
    left = pack_prompt_response(prompts, responses, pad_token_id=0, padding_side="left")
    assert left["input_ids"].tolist() == [[0, 1, 5, 7, 2], [1, 8, 9, 10, 2]]
    assert left["attention_mask"].tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert left["response_mask"].tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 1]]
    right = pack_prompt_response(prompts, responses, pad_token_id=0, padding_side="right")
    assert right["input_ids"].tolist() == [[1, 5, 7, 2, 0], [1, 8, 9, 10, 2]]
    assert right["response_mask"].tolist() == [[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]]


def test_pack_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        pack_prompt_response([[1], [1]], [[2]], 0)
    with pytest.raises(ValueError, match="padding_side"):
        pack_prompt_response([[1]], [[2]], 0, "middle")
