"""MCP prompts from the Markdown templates next to this file.

A template starts with a small header between `---` lines: `name`, `title`, `description` and
`arguments` (one per line, `name: required|optional | description`). The body is the prompt text;
`{argument}` is replaced by the argument's value, or by its default when the client gave none.
Computed values (`{model_facts}`) come from the model registry at render time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.prompts.base import Prompt, PromptArgument, UserMessage

from lanterna.engines.registry import ModelRegistry

DEFAULTS = {"target_score": "30", "max_rounds": "5", "shots": "4"}


@dataclass
class Template:
    name: str
    title: str
    description: str
    body: str
    arguments: list[PromptArgument] = field(default_factory=list)

    def render(self, values: dict[str, str]) -> str:
        def substitute(match: re.Match) -> str:
            key = match.group(1)
            return values[key] if key in values else match.group(0)

        return re.sub(r"\{([a-z_]+)\}", substitute, self.body)


def parse_template(text: str) -> Template:
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.S)
    if not match:
        raise ValueError("a prompt template starts with a --- header ---")
    header, body = match.groups()
    meta: dict[str, str] = {}
    arguments: list[PromptArgument] = []
    in_arguments = False
    for line in header.splitlines():
        if not line.strip():
            continue
        if line.startswith("  ") and in_arguments:
            arg_name, _, rest = line.strip().partition(":")
            need, _, description = rest.partition("|")
            arguments.append(PromptArgument(name=arg_name.strip(), description=description.strip(),
                                            required=need.strip() == "required"))
            continue
        key, _, value = line.partition(":")
        in_arguments = key.strip() == "arguments"
        if not in_arguments:
            meta[key.strip()] = value.strip()
    return Template(meta["name"], meta.get("title", meta["name"]), meta.get("description", ""), body.strip() + "\n",
                    arguments)


def load_templates() -> list[Template]:
    folder = resources.files("lanterna.prompts")
    return [parse_template(entry.read_text(encoding="utf-8"))
            for entry in sorted(folder.iterdir(), key=lambda e: e.name) if entry.name.endswith(".md")]


def model_facts(registry: ModelRegistry, model: str | None) -> str:
    """What list_models would say about one model, as prompt text."""
    name = model or registry.default_image_model or registry.default_video_model
    if name is None:
        return "- No models are installed on this server; say so and stop."
    try:
        engine = registry.engine(name)
    except Exception as e:
        return f"- The model {name!r} is not available here ({e}). Available: {', '.join(registry.names()) or 'none'}."
    d = engine.defaults
    lines = [f"- name: {name} (kind {getattr(engine, 'kind', '?')})",
             f"- can do: {', '.join(sorted(engine.capabilities))} (t2i text to image, i2i img2img, inpaint, "
             f"t2v text to video)",
             f"- native size: {d.width}x{d.height}, default steps {d.steps}, guidance {d.guidance}, "
             f"sampler {d.sampler}"]
    if d.frames:
        lines.append(f"- video: {d.frames} frames at {d.fps or 8} fps by default")
    vocabulary = engine.vocabulary()
    if vocabulary is None:
        lines.append("- vocabulary: open (free English prompts)")
    else:
        words = [w for w in vocabulary if not (w.startswith("<") and w.endswith(">"))]
        lines.append(f"- closed vocabulary of {len(words)} words: {', '.join(words)}")
    return "\n".join(lines)


def values_for(template: Template, arguments: dict[str, Any], registry: ModelRegistry) -> dict[str, str]:
    values = {**DEFAULTS, **{k: str(v) for k, v in arguments.items() if v not in (None, "")}}
    if "model" not in values:
        default = registry.default_video_model if template.name == "storyboard" else registry.default_image_model
        values["model"] = default or "(the default model)"
    if "{model_facts}" in template.body:
        values["model_facts"] = model_facts(registry, arguments.get("model") or None)
    return values


def renderer(template: Template, registry: ModelRegistry) -> Callable[..., list[UserMessage]]:
    def render(**arguments: Any) -> list[UserMessage]:
        return [UserMessage(template.render(values_for(template, arguments, registry)))]

    return render


def register_prompts(server: MCPServer, registry: ModelRegistry) -> None:
    for template in load_templates():
        server.add_prompt(Prompt(name=template.name, title=template.title, description=template.description,
                                 arguments=template.arguments, fn=renderer(template, registry)))
