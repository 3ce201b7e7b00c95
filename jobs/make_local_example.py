"""Write a small local stand-in for the paper's setup: a tiny GPT-NeoX, its tokenizer, TL;DR-format data.

    python jobs/make_local_example.py --out runs/local-example
    python jobs/serve_local_judge.py --port 8765 &                    # an OpenAI-compatible judge on 127.0.0.1
    python jobs/scale_sweep.py --config configs/local_tldr.yaml      # the real-data path on a CPU machine

Everything configs/pythia_tldr.yaml reads from the hub has a local twin here, in the same formats:
  model/                 a randomly initialised GPT-NeoX (the Pythia architecture) + a word-level
                         tokenizer trained on the data, saved with save_pretrained (safetensors)
  tldr_sft/train.jsonl   filtered TL;DR SFT rows {subreddit, title, post, summary}
  tldr_sft/validation.jsonl
  comparisons.jsonl      summarize-from-feedback comparisons {info: {post, title, subreddit},
                         summaries: [{text}, {text}], choice}
The posts are made-up word sequences with a few topic words; a good summary names the topic words,
and the comparisons prefer it (with label noise). Nothing is downloaded.
"""

import json
from pathlib import Path

import numpy as np

from overopt.cli import parser_for

SUBREDDITS = ["relationships", "tifu", "personalfinance", "cooking", "running"]
SPECIALS = ["<|endoftext|>", "<|padding|>", "<unk>"]
FILLER = [f"f{i:02d}" for i in range(60)]  # words any post may hold
TOPICS = [f"t{i:02d}" for i in range(30)]  # what a post is about: a good summary names these


def _words(rng, vocabulary, n):
    return [str(w) for w in rng.choice(vocabulary, size=n)]


def make_rows(n: int, seed: int) -> list[dict]:
    """``n`` TL;DR-style rows: the summary lists the post's topic words in order."""
    rng = np.random.default_rng(seed)
    filler, topics = FILLER, TOPICS
    rows = []
    for _ in range(n):
        topic = [str(t) for t in rng.choice(topics, size=int(rng.integers(2, 4)), replace=False)]
        post = _words(rng, filler, int(rng.integers(14, 22)))
        for word in topic:
            post.insert(int(rng.integers(0, len(post) + 1)), word)
        rows.append(
            {
                "subreddit": str(rng.choice(SUBREDDITS)),
                "title": " ".join(_words(rng, filler, 3) + topic[:1]),
                "post": " ".join(post),
                "summary": " ".join(topic),
            }
        )
    return rows


def make_comparisons(rows: list[dict], seed: int) -> list[dict]:
    """Two candidate summaries per post (the topic words, and a noisier one); the better usually chosen."""
    rng = np.random.default_rng([seed, 1])
    comparisons = []
    for row in rows:
        good = row["summary"].split()
        worse = [w for w in good if rng.random() > 0.5] + row["post"].split()[: int(rng.integers(1, 4))]
        if worse == good:
            worse = good + ["f00"]
        texts = [" ".join(good), " ".join(worse)]
        better = 0 if rng.random() < 0.85 else 1  # label noise: raters are not perfect
        order = rng.permutation(2)
        comparisons.append(
            {
                "info": {"post": row["post"], "title": row["title"], "subreddit": row["subreddit"]},
                "summaries": [{"text": " " + texts[i]} for i in order],
                "choice": int(np.where(order == better)[0][0]),
            }
        )
    return comparisons


def save_model_and_tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from overopt.models import builtin_config

    words = FILLER + TOPICS
    prompt_words = ["SUBREDDIT:", "TITLE:", "POST:", "TL;DR:"] + [f"r/{s}" for s in SUBREDDITS]
    vocab = {token: i for i, token in enumerate(SPECIALS + prompt_words + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|padding|>", unk_token="<unk>")
    config = builtin_config("tiny", vocab_size=len(vocab), max_positions=128)
    config.bos_token_id = config.eos_token_id = vocab["<|endoftext|>"]  # as Pythia: one end-of-text token
    config.pad_token_id = vocab["<|padding|>"]
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)  # safetensors
    tokenizer.save_pretrained(directory)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main(argv=None) -> int:
    parser = parser_for(__doc__)
    parser.add_argument("--out", default="runs/local-example", help="directory to write (default: runs/local-example)")
    parser.add_argument("--rows", type=int, default=3000, help="SFT rows (the comparisons reuse their posts)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    train, validation = make_rows(args.rows, args.seed), make_rows(300, args.seed + 1)
    write_jsonl(out / "tldr_sft" / "train.jsonl", train)
    write_jsonl(out / "tldr_sft" / "validation.jsonl", validation)
    write_jsonl(out / "comparisons.jsonl", make_comparisons(make_rows(args.rows, args.seed + 2), args.seed))
    save_model_and_tokenizer(out / "model")
    print(f"wrote {out}/model, {out}/tldr_sft/{{train,validation}}.jsonl and {out}/comparisons.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
