"""EleutherAI's lm-evaluation-harness on gptlab's models, and tasks of the book that run offline.

Importing this package registers the harness model ``gptlab`` (``GptlabLM``, any source
``LLM.load`` opens), so that, in the same process::

    import gptlab.harness
    from lm_eval import simple_evaluate

    simple_evaluate(model="gptlab", model_args={"source": "smollm2-135m-instruct"}, tasks=["arc_easy"])

``gptlab-eval harness SOURCE --tasks ...`` runs it with gptlab's tasks on the path and writes the
results into the run; ``gptlab-lm-eval`` is the harness's own command line with both in place.
lm-eval is an optional extra (``pip install 'gptlab[harness]'``).
"""

from gptlab.extras import require_extra

require_extra("lm_eval", "the lm-evaluation-harness backend")

from gptlab.harness.backend import GptlabLM  # noqa: E402  (registers the model "gptlab")
from gptlab.harness.run import evaluate  # noqa: E402
from gptlab.harness.suite import TASKS_DIR, task_files  # noqa: E402

__all__ = ["GptlabLM", "TASKS_DIR", "evaluate", "task_files"]
