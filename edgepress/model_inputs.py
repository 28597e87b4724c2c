"""What the recipe's model takes: its per-sample input shape and, for a text model, its tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepress.errors import UserError
from edgepress.recipe import Recipe


def input_shape_of(recipe: Recipe) -> tuple[int, ...] | None:
    """Without the batch axis: [C, H, W] for an image model, [sequence length] for a text model.
    The first look at the recipe's model: an ONNX file is checked here, before any session opens it."""
    if recipe.model.onnx is not None:
        from edgepress.onnx_check import check_onnx_file, refuse_external_data

        external = check_onnx_file(recipe.model.onnx, what="[model] onnx")
        refuse_external_data(recipe.model.onnx, external, what="[model] onnx")
    shape = _declared_shape(recipe)
    if recipe.data.modality == "text" and shape is not None and recipe.model.name is not None:
        from edgepress.models.zoo import text_model_limits

        _, longest = text_model_limits(name=recipe.model.name, entry=None)
        if longest is not None and (len(shape) != 1 or shape[0] > longest):
            raise UserError(f"model {recipe.model.name!r} reads sequences of at most {longest} tokens, "
                            f"but [model] input_shape is {list(shape)}",
                            fix=f"set input_shape = [n] with n <= {longest} (128 is the usual length)")
    return shape


def _declared_shape(recipe: Recipe) -> tuple[int, ...] | None:
    if recipe.model.input_shape is not None:
        return recipe.model.input_shape
    if recipe.model.onnx is not None:
        from edgepress.runtime.session import open_session, sample_shape

        return sample_shape(open_session(recipe.model.onnx, threads=1))
    from edgepress.models.zoo import default_input_shape

    shape = default_input_shape(name=recipe.model.name, entry=recipe.model.entry)
    if shape is None:
        raise UserError(f"the model entry {recipe.model.entry!r} does not say its input shape",
                        fix="add input_shape = [C, H, W] (or [sequence length] for text) to [model]")
    return shape


def tokenizer_of(recipe: Recipe) -> Path | None:
    """A text recipe's tokenizer.json: [data] tokenizer, else the zoo model's own; None for images."""
    if recipe.data.modality != "text":
        return None
    if recipe.data.tokenizer is not None:
        return recipe.data.tokenizer
    if recipe.model.name is not None:
        from edgepress.models.zoo import text_model_limits

        return text_model_limits(name=recipe.model.name, entry=None)[0]
    return None


TOP1_FIX = ('data.metric = "top1" scores a classifier: make forward return only its N x K class scores '
            '(K >= 2), e.g. by wrapping the model in a module that picks them')


def output_classes(recipe: Recipe, sample: np.ndarray) -> int | None:
    """How many classes the recipe's model scores: the last axis of its first output for one `sample` (an ONNX
    file's declared size when fixed). A torch model whose output top-1 cannot score (a tuple or dict, one value
    per sample, more than two axes) is refused here, before any stage: evaluation would crash on it, or pass a
    regressor as 100 % "agreement"."""
    if recipe.model.onnx is not None:
        from edgepress.runtime.session import as_feed, check_feed, open_session

        session = open_session(recipe.model.onnx, threads=1)
        declared = session.get_outputs()[0].shape
        if len(declared) == 2 and isinstance(declared[1], int) and declared[1] >= 2:
            return declared[1]
        check_feed(session, sample[None], source="the evaluation data")
        scores = session.run(None, as_feed(session, sample[None]))[0]
    else:
        scores = _torch_scores(recipe, sample)
    if scores.ndim != 2 or scores.shape[-1] < 2:
        raise UserError(f"the model's output for one sample has shape {list(scores.shape)}, not [1, K] class "
                        "scores with K >= 2", fix=TOP1_FIX)
    return int(scores.shape[-1])


def _torch_scores(recipe: Recipe, sample: np.ndarray) -> np.ndarray:
    """The untrained model's output for one sample: the class count is the architecture's, not the weights'."""
    import torch

    from edgepress.models.zoo import build_model

    with torch.random.fork_rng(devices=[]):  # the run's seeded draws stay what they were
        model = build_model(name=recipe.model.name, entry=recipe.model.entry, kwargs=recipe.model.kwargs).eval()
        try:
            with torch.no_grad():
                out = model(torch.from_numpy(np.ascontiguousarray(sample[None])))
        except Exception as exc:  # the user's forward failing on the recipe's own data: their bug, one line
            reason = (str(exc).strip().splitlines() or [""])[0][:300]
            raise UserError(f"the model failed on one evaluation sample of shape {list(sample.shape)}: "
                            f"{type(exc).__name__}: {reason}",
                            fix="make the model's forward take the data's shape, or fix the data") from None
    if not isinstance(out, torch.Tensor):
        what = f"a {type(out).__name__}" + (f" of {len(out)} outputs" if isinstance(out, (tuple, list, dict)) else "")
        raise UserError(f"the model returns {what}, not one tensor of class scores", fix=TOP1_FIX)
    return out.detach().numpy()
