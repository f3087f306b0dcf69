"""MCP prompt templates (Markdown files in this folder) and their loader."""

from lanterna.prompts.loader import load_templates, register_prompts

__all__ = ["load_templates", "register_prompts"]
