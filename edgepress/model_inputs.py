"""What the recipe's model takes: its per-sample input shape and, for a text model, its tokenizer."""

from __future__ import annotations

from pathlib import Path

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
