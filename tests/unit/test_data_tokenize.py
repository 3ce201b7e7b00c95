"""Rows -> token ids: the plain-text rule of train/steps.py, truncation sides and EOS, chat templates."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from overopt.data.readers import DataError
from overopt.data.synthetic import SyntheticTask
from overopt.data.tokenize import finish_response, id_columns, length_percentiles, text_columns, tokenize_table, truncate_prompt
from overopt.data.tokenizer import build_synthetic_tokenizer

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def synthetic():
    return build_synthetic_tokenizer(SyntheticTask())


def chat_tokenizer(eos="<|im_end|>", template=CHATML):
    """A word-level tokenizer with ChatML-style specials, built locally (no hub)."""
    words = "user assistant system hi hello sky colour blue green red is it the".split()
    specials = ["<pad>", "<unk>", "<eos>", "<|im_start|>", "<|im_end|>"]
    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token=eos,
        additional_special_tokens=[t for t in ("<eos>", "<|im_start|>", "<|im_end|>") if t != eos],
    )
    tokenizer.chat_template = template
    return tokenizer


def ids(tokenizer, text, special=False):
    return tokenizer(text, add_special_tokens=special)["input_ids"]


# --- plain text: the rule of train/steps.py --------------------------------------------------------------


def test_plain_text_matches_the_training_rule(synthetic):
    """Prompts with the tokenizer's specials (<bos>), responses without them + <eos> (steps.tokenize_*)."""
    task = SyntheticTask()
    prompts = task.prompts(5, seed=1)
    rows = [{"prompt": p, "completion": task.ideal_response(p)} for p in prompts]
    columns, report = tokenize_table("sft", rows, synthetic)
    eos = synthetic.eos_token_id
    assert columns["prompt_ids"] == [synthetic(r["prompt"])["input_ids"] for r in rows]
    assert columns["response_ids"] == [synthetic(r["completion"], add_special_tokens=False)["input_ids"] + [eos] for r in rows]
    assert columns["prompt_ids"][0][0] == synthetic.bos_token_id
    assert columns["prompt_text"] == prompts and columns["completion_text"] == [r["completion"] for r in rows]
    assert report.rows_kept == 5 and report.defects == [] and report.locations == [f"row {i}" for i in range(1, 6)]

    pairs = [{"prompt": prompts[0], "chosen": "w01 w02", "rejected": "w03"}]
    columns, _ = tokenize_table("pairs", pairs, synthetic)
    assert columns["chosen_ids"] == [ids(synthetic, "w01 w02") + [eos]]
    assert columns["rejected_ids"] == [ids(synthetic, "w03") + [eos]]
    assert (
        set(columns)
        == set(text_columns("pairs") + id_columns("pairs"))
        == {"prompt_text", "chosen_text", "rejected_text", "prompt_ids", "chosen_ids", "rejected_ids"}
    )


def test_eval_rows_with_and_without_reference(synthetic):
    rows = [{"prompt": "w01 <sep>", "reference": "w01"}, {"prompt": "w02 <sep>", "reference": None}]
    columns, report = tokenize_table("eval", rows, synthetic)
    assert columns["reference_text"] == ["w01", None]
    assert columns["reference_ids"] == [ids(synthetic, "w01") + [synthetic.eos_token_id], []]
    assert report.token_lengths["response"]["max"] == 2  # only the one reference counts


# --- truncation -----------------------------------------------------------------------------------------


def test_prompts_keep_their_last_tokens_and_their_bos(synthetic):
    words = [f"w{i:02d}" for i in range(10)]
    rows = [{"prompt": " ".join(words), "completion": "w01"}]
    columns, report = tokenize_table("sft", rows, synthetic, max_prompt_tokens=4)
    assert columns["prompt_ids"] == [[synthetic.bos_token_id] + ids(synthetic, " ".join(words[-3:]))]
    assert columns["prompt_text"] == [" ".join(words)]  # the text is not truncated
    assert report.token_lengths["prompt"]["max"] == 11 and report.token_lengths["truncated_prompts"] == 1


def test_responses_keep_their_first_tokens_and_the_cap_includes_eos(synthetic):
    eos = synthetic.eos_token_id
    rows = [{"prompt": "w01 <sep>", "completion": "w01 w02 w03 w04 w05"}, {"prompt": "w01 <sep>", "completion": "w06 w07"}]
    columns, report = tokenize_table("sft", rows, synthetic, max_response_tokens=3)
    assert columns["response_ids"] == [ids(synthetic, "w01 w02") + [eos], ids(synthetic, "w06 w07") + [eos]]
    assert all(len(r) <= 3 for r in columns["response_ids"])
    assert report.token_lengths["truncated_responses"] == 1 and report.token_lengths["response"]["max"] == 6


def test_max_length_cuts_responses_to_fit_after_the_prompt(synthetic):
    rows = [{"prompt": "w01 w02 <sep>", "completion": "w01 w02 w03 w04 w05"}]  # prompt: 4 tokens with <bos>
    columns, _ = tokenize_table("sft", rows, synthetic, max_response_tokens=10, max_length=7)
    assert columns["response_ids"] == [ids(synthetic, "w01 w02") + [synthetic.eos_token_id]]
    assert len(columns["prompt_ids"][0]) + len(columns["response_ids"][0]) == 7


def test_truncation_helpers():
    assert truncate_prompt([1, 5, 6, 7, 8], 3, bos_token_id=1) == [1, 7, 8]
    assert truncate_prompt([5, 6, 7, 8], 3, bos_token_id=None) == [6, 7, 8]
    assert truncate_prompt([5, 6], 3, bos_token_id=1) == [5, 6]
    assert finish_response([5, 6, 7], 3, eos_token_id=2) == ([5, 6, 2], True)
    assert finish_response([5, 2], 3, eos_token_id=2) == ([5, 2], False)  # an EOS already there is not doubled
    assert finish_response([5, 6], None, eos_token_id=2) == ([5, 6, 2], False)
    with pytest.raises(ValueError, match="at least 2"):
        tokenize_table("sft", [{"prompt": "a", "completion": "b"}], build_synthetic_tokenizer(SyntheticTask()), max_response_tokens=1)


# --- defects ------------------------------------------------------------------------------------------------


def test_a_response_that_tokenises_to_nothing(synthetic):
    rows = [{"prompt": "w01 <sep>", "completion": "w01"}, {"prompt": "w01 <sep>", "completion": "  "}]
    with pytest.raises(DataError) as error:
        tokenize_table("sft", rows, synthetic, locations=["x.jsonl:1", "x.jsonl:2"])
    assert [str(d) for d in error.value.defects] == ["x.jsonl:2: completion: tokenises to no tokens"]


def test_pairs_identical_after_truncation(synthetic):
    rows = [{"prompt": "w01 <sep>", "chosen": "w01 w02 w03", "rejected": "w01 w02 w04"}]
    assert tokenize_table("pairs", rows, synthetic, max_response_tokens=4)[0]["chosen_ids"]  # still different
    with pytest.raises(DataError) as error:
        tokenize_table("pairs", rows, synthetic, max_response_tokens=3)
    assert [str(d) for d in error.value.defects] == ["row 1: rejected: identical to chosen once tokenized and truncated to 3 tokens"]
    columns, report = tokenize_table(
        "pairs", rows * 2 + [{**rows[0], "rejected": "w05"}], synthetic, max_response_tokens=3, on_invalid="skip"
    )
    assert report.rows_kept == 1 and len(report.defects) == 2 and report.locations == ["row 3"]


def test_prompt_with_no_room_and_no_usable_rows(synthetic):
    rows = [{"prompt": "w01 w02 w03 <sep>", "completion": "w01"}]  # 5 prompt tokens with <bos>
    with pytest.raises(DataError, match="no usable sft rows after tokenisation") as error:
        tokenize_table("sft", rows, synthetic, max_length=5, on_invalid="skip")
    assert str(error.value.defects[0]) == "row 1: prompt: 5 tokens leave no room for a response within max_length 5"
    with pytest.raises(DataError) as error:
        tokenize_table("sft", rows, synthetic, max_length=6)
    assert str(error.value.defects[0]) == "row 1: prompt: 5 tokens leave room for nothing but EOS within max_length 6"
    assert tokenize_table("sft", rows, synthetic, max_length=7)[0]["response_ids"] == [ids(synthetic, "w01") + [synthetic.eos_token_id]]


# --- chat templates -----------------------------------------------------------------------------------------


def conversation_rows():
    prompt = [{"role": "system", "content": "hi"}, {"role": "user", "content": "sky colour"}]
    return [
        {"prompt": prompt, "chosen": [{"role": "assistant", "content": "blue"}], "rejected": [{"role": "assistant", "content": "green"}]}
    ]


def test_chat_template_rendering_and_eos_not_doubled():
    tokenizer = chat_tokenizer()
    columns, _ = tokenize_table("pairs", conversation_rows(), tokenizer)
    prompt_text = "<|im_start|>system\nhi<|im_end|>\n<|im_start|>user\nsky colour<|im_end|>\n<|im_start|>assistant\n"
    assert columns["prompt_text"] == [prompt_text]
    assert columns["prompt_ids"] == [ids(tokenizer, prompt_text)]
    # the template's end-of-turn token is the EOS here: the response ends with exactly one, no trailing "\n"
    assert columns["chosen_text"] == ["blue<|im_end|>"]
    assert columns["chosen_ids"] == [ids(tokenizer, "blue") + [tokenizer.eos_token_id]]
    assert columns["rejected_ids"] == [ids(tokenizer, "green") + [tokenizer.eos_token_id]]


def test_chat_template_with_a_separate_eos_gets_it_appended():
    tokenizer = chat_tokenizer(eos="<eos>")
    columns, _ = tokenize_table(
        "sft", [{"prompt": conversation_rows()[0]["prompt"], "completion": [{"role": "assistant", "content": "blue"}]}], tokenizer
    )
    assert columns["response_ids"] == [ids(tokenizer, "blue<|im_end|>") + [tokenizer.eos_token_id]]
    assert columns["completion_text"] == ["blue<|im_end|>"]


def test_chat_template_truncation_keeps_the_answer_start():
    tokenizer = chat_tokenizer()
    rows = [{"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "it is the sky"}]}]
    columns, _ = tokenize_table("sft", rows, tokenizer, max_response_tokens=3)
    assert columns["response_ids"] == [ids(tokenizer, "it is") + [tokenizer.eos_token_id]]


def test_conversations_need_a_chat_template():
    tokenizer = chat_tokenizer(template=None)
    with pytest.raises(ValueError, match="the pairs table holds conversations .* has no chat template"):
        tokenize_table("pairs", conversation_rows(), tokenizer)


def test_a_template_that_does_not_extend_the_prompt_is_a_defect():
    renamed = CHATML.replace("{{ m.role }}", "{{ 'bot' if m.role == 'assistant' else m.role }}")
    with pytest.raises(DataError) as error:
        tokenize_table("pairs", conversation_rows(), chat_tokenizer(template=renamed), locations=["c.jsonl:1"])
    assert str(error.value.defects[0]).startswith("c.jsonl:1: chosen: the chat template's rendering of prompt + answer does not start")


# --- lengths ------------------------------------------------------------------------------------------------


def test_length_percentiles():
    stats = length_percentiles(list(range(1, 101)))
    assert stats == {"p50": 50.5, "p90": 90.1, "p99": 99.0, "max": 100}
    assert length_percentiles([]) == {}


def test_report_summary_has_token_lengths(synthetic):
    _, report = tokenize_table("sft", [{"prompt": "w01 <sep>", "completion": "w01 w02"}], synthetic, locations=["a.jsonl:1"])
    assert report.summary().endswith(
        "1 rows, 1 demonstrations kept; prompt tokens p50 3 p90 3 p99 3 max 3; response tokens p50 3 p90 3 p99 3 max 3"
    )


def test_empty_responses_are_a_defect_unless_allowed(tmp_path):
    from overopt.data.readers import DataError
    from overopt.data.synthetic import SyntheticTask
    from overopt.data.tokenize import tokenize_table
    from overopt.data.tokenizer import build_synthetic_tokenizer

    tokenizer = build_synthetic_tokenizer(SyntheticTask())
    rows = [{"prompt": "w01 w02 <sep>", "completion": ""}, {"prompt": "w03 <sep>", "completion": "w03"}]
    with pytest.raises(DataError, match="row 1: completion: tokenises to no tokens"):
        tokenize_table("sft", rows, tokenizer)
    columns, _ = tokenize_table("sft", rows, tokenizer, allow_empty_responses=True)  # the synthetic task may say nothing
    assert columns["response_ids"][0] == [tokenizer.eos_token_id]
