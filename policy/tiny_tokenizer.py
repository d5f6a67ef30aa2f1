"""A small Llama-like tokenizer trained offline on the instruction vocabulary (for the tiny models).

Layout of the ids, mirroring openvla-7b's Llama-2 tokenizer so every rule carries over unchanged:

    0 <unk>, 1 <s> (BOS), 2 </s> (EOS), then BPE pieces learnt from the prompts (SentencePiece-style "▁" word
    prefix, punctuation split off, printable ASCII always present so any ASCII instruction encodes),
    then filler pieces <unused_k>, then 256 action pieces <action_b> for bins b = 255..0
    (so ``vocab_end - 1`` is bin 0, as the reversed action rule requires), then <PAD> = vocab_end.

``vocab_end`` is a multiple of 64, so the embedding size ``vocab_end + 64`` satisfies upstream's
``vocab_end = vocab_size - pad_to_multiple_of``. The encoder adds BOS like Llama's; the prompt-end piece is "▁".
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from policy.prompt import PROMPT_END_PIECE, build_prompt

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
PAD_TOKEN = "<PAD>"
VOCAB_ALIGNMENT = 64

# Used when no instructions are given: words of tabletop manipulation tasks.
DEFAULT_INSTRUCTIONS = (
    "pick up the red block", "pick up the blue cube and place it in the bowl", "put the green block on the plate",
    "place the yellow cube in the box", "move the object to the left", "push the block to the right",
    "open the top drawer", "close the drawer", "stack the red block on the blue block", "lift the cup",
)


def _aligned(count: int) -> int:
    return -(-count // VOCAB_ALIGNMENT) * VOCAB_ALIGNMENT


def train_tiny_tokenizer(instructions: Iterable[str] | None = None, max_text_pieces: int = 512,
                         n_action_bins: int = 256):
    """A ``transformers`` fast tokenizer and its ``vocab_end`` (see the module docstring)."""
    from transformers import PreTrainedTokenizerFast

    texts = [build_prompt(text) for text in (instructions or DEFAULT_INSTRUCTIONS)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=PROMPT_END_PIECE, prepend_scheme="first"),
        pre_tokenizers.Punctuation(behavior="isolated"),
        pre_tokenizers.Split("\n", behavior="isolated"),
    ])
    trainer = trainers.BpeTrainer(vocab_size=max_text_pieces, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=[*string.printable, PROMPT_END_PIECE])
    bpe.train_from_iterator(texts, trainer)
    learnt = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(learnt["vocab"])
    vocab_end = _aligned(len(vocab) + n_action_bins)
    for filler in range(vocab_end - n_action_bins - len(vocab)):
        vocab[f"<unused_{filler}>"] = len(vocab)
    for offset in range(n_action_bins):  # id vocab_end - 1 - b is bin b
        vocab[f"<action_{n_action_bins - 1 - offset}>"] = len(vocab)
    vocab[PAD_TOKEN] = vocab_end
    merges = [tuple(pair) if isinstance(pair, list) else tuple(pair.split(" ")) for pair in learnt["merges"]]

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tokenizer.pre_tokenizer = bpe.pre_tokenizer
    tokenizer.decoder = decoders.Metaspace(replacement=PROMPT_END_PIECE, prepend_scheme="first")
    tokenizer.add_special_tokens([*SPECIAL_TOKENS, PAD_TOKEN])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                            special_tokens=[("<s>", 1)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                      unk_token="<unk>", pad_token=PAD_TOKEN)
    return wrapped, vocab_end
