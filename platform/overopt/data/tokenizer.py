"""The synthetic task's word-level tokenizer, a real Hugging Face ``PreTrainedTokenizerFast``.

Built with the ``tokenizers`` library (a WordLevel model over whitespace-split words), it saves and
reloads like any hub tokenizer, so everything downstream uses ``AutoTokenizer.from_pretrained(dir)``
and never knows the task is synthetic. Encoding a prompt prepends ``<bos>``; responses are encoded
with ``add_special_tokens=False`` and end with the ``<eos>`` that data/tokenize.py appends, as for any
causal LM.

Usage:
    tok = build_synthetic_tokenizer(SyntheticTask())
    tok.save_pretrained("runs/tokenizer")
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from overopt.data.synthetic import SEP, SyntheticTask

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, SEP]  # ids 0..4, in this order


def build_synthetic_tokenizer(task: SyntheticTask) -> PreTrainedTokenizerFast:
    """One token per word of the task's vocabulary, plus the special tokens."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + task.content_words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=[SEP],
        padding_side="left",  # generation pads prompts on the left
    )
