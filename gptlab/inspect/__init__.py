"""Looking inside a GPT on one text: attention weights per layer and head, each token's loss, the
top-k next tokens and the logit lens (``compute``), drawn as PNG grids (``draw``) and one HTML page
(``page``). ``gptlab-inspect`` writes them all; ``gptlab-serve`` shows the page at ``/inspect``."""

from gptlab.inspect.compute import Inspection, inspect_ids, inspect_text, lens_logits, traced_forward

__all__ = ["Inspection", "inspect_ids", "inspect_text", "lens_logits", "traced_forward"]
