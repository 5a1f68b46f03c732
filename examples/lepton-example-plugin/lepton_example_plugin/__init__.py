"""An example Lepton plugin: one pass, registered through the `lepton.passes` entry point.

No `@register_pass` here: Lepton registers the class when it loads the entry point (and names the
plugin if its pass name clashes with another one).
"""

from __future__ import annotations

import dataclasses

from lepton_ir import Model
from lepton_passes import Pass


@dataclasses.dataclass(frozen=True)
class StripDocPass(Pass):
    """Clear doc strings of the model, its graphs, nodes and values."""

    name = "example-strip-doc"
    idempotent = True

    keep_model_doc: bool = dataclasses.field(default=False, metadata={"help": "keep the model-level doc string"})

    def run(self, model: Model) -> bool:
        changed = False
        if model.doc and not self.keep_model_doc:
            model.doc = ""
            changed = True
        for g in model.graph.all_graphs():
            if g.doc:
                g.doc = ""
                changed = True
            for v in g.values():
                if v.doc:
                    v.doc = ""
                    changed = True
            for n in g:
                if n.doc:
                    n.doc = ""
                    changed = True
        return changed
