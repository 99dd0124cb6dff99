"""``gptlab-serve``: any gptlab model behind an OpenAI-compatible HTTP API, with a chat page.

``protocol`` holds the API's request bodies and error shape, ``app`` the FastAPI routes over a
continuous-batching ``gptlab.inference.engine.DecodeEngine``, ``chat.html`` the page at ``/``.
"""
