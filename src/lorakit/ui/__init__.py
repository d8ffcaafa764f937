"""``lorakit ui``: a local web dashboard over the same configs, run folders and commands as the CLI.

Why this stack: the dashboard is the FastAPI/uvicorn app style ``lorakit serve`` already uses
(both are core dependencies, so the UI needs no extra to install), one static page of plain
JavaScript with no build step, and curves drawn as hand-written SVG polylines. Gradio, which
LlamaBoard uses, would add a large dependency tree and its own server for what is a handful of
JSON endpoints; no charting library on PyPI ships its script for a page to load offline, and
loading one from a CDN would break the no-network use lorakit is built for. A polyline per
series with two axes is what the curves need.

Every setting the UI offers is a key of the config schema, shown with the schema's own
description and default; the UI writes an ordinary config file and runs ``lorakit train`` on
it as a separate process, so there is no setting that exists only here.

Modules: ``guard`` (token, Host header, which paths may be read), ``runs`` (what each run folder
says, read through :mod:`lorakit.run`), ``jobs`` (the training processes the UI starts and stops),
``form`` (the knobs and the config file they make), ``app`` (the HTTP endpoints), ``text`` (the
page's words in English and Chinese).
"""
