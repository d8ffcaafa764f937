"""``lorakit verify``: the hand-off from training to every consumer, checked on the user's own run.

A module per family of checks (``stops``, ``prompt_ids``, ``merge``, ``gguf``, ``ollama``,
``server``), each a function from a :class:`~lorakit.verify.subject.Subject` to report rows;
``run`` puts them in order and writes ``verify.json``.
"""
