"""Layer names in settings (ignored layers, hint layers, blocks to keep) must name real layers."""

from __future__ import annotations

from typing import Any

from edgepress.core.errors import UserError
from edgepress.core.schema import closest


def require_layers(model, names, *, setting: str, candidates: list[str] | None = None) -> dict[str, Any]:
    """{name: module} for `names`; a name that matches nothing is an error naming the closest one."""
    modules = dict(model.named_modules())
    allowed = candidates if candidates is not None else [n for n in modules if n]
    for name in names:
        if name not in allowed:
            guess = closest(name, allowed)
            raise UserError(f"{setting} names {name!r}, which matches no layer of the model",
                            fix=f"did you mean {guess!r}?" if guess else "use module names as in model.named_modules()")
    return {name: modules[name] for name in names}
