"""The MCP app: tools, output resources and prompts on one `MCPServer`.

`create_server(settings, registry)` is the only entry point; transports (stdio, HTTP) and tests
all start from it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError, UnexpectedToolError
from mcp.types import CallToolResult, EmptyResult, LoggingLevel, Resource, SetLevelRequestParams, ToolAnnotations
from pydantic import AnyUrl, BaseModel, Field, ValidationError

import lanterna
from lanterna.config import Settings
from lanterna.engines.registry import ModelRegistry
from lanterna.prompts import register_prompts
from lanterna.server.inputs import InputError
from lanterna.server.jobs import QueueFull
from lanterna.server.runtime import Runtime
from lanterna.server.store import URI_PREFIX, InvalidOutputName, OutputNotFound, mime_type_of, name_from_uri
from lanterna.server.transports import CLIENT_GONE
from lanterna.tools import edit, evaluate, generate_image, generate_video, jobs, list_models
from lanterna.tools.common import ArgumentError, GenerationReport, Outcome, summary_text

log = logging.getLogger("lanterna.server")

INSTRUCTIONS = """lanterna generates and edits images and short videos with local diffusion models and
judges the results. Start with list_models (sizes, defaults, and the words small models know).
Results come back as inline previews plus lanterna://outputs/... links to the full files,
which resources/read serves. Seeds are always returned: reuse one to reproduce or refine an image.
Use evaluate to score images against the prompt; the prompts 'iterate_on_image', 'storyboard'
and 'what_can_this_model_draw' describe workflows."""

RECENT_RESOURCES = 200
TITLES = {"generate_image": "Generate images", "generate_video": "Generate a video", "edit": "Edit an image",
          "evaluate": "Evaluate images and videos", "list_models": "List models", "get_job": "Get a job's result",
          "cancel_job": "Cancel a job"}


class LanternaServer(MCPServer):
    """An MCPServer whose output files are served with their own mime types and listed newest first."""

    def __init__(self, runtime: Runtime, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runtime = runtime
        self.client_log_level: LoggingLevel = "info"
        # logging/setLevel is still part of the 2025 protocol versions clients speak; the SDK's
        # MCPServer leaves it out, and the low-level server is where it says to add it back.
        self._lowlevel_server.add_request_handler("logging/setLevel", SetLevelRequestParams, self._set_log_level)

    async def _set_log_level(self, ctx: Any, params: SetLevelRequestParams) -> EmptyResult:
        # The server sends no log notifications yet; the level is kept for when it does.
        self.client_log_level = params.level
        return EmptyResult()

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Context | None = None):
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as e:
            # Arguments the schema rejects: say which and what is allowed, without pydantic's URLs.
            if isinstance(e.__cause__, ValidationError) and not isinstance(e, UnexpectedToolError):
                raise ToolError(f"invalid arguments for {name}: {argument_message(e.__cause__)}") from e.__cause__
            raise

    async def read_resource(self, uri: AnyUrl | str, context: Context | None = None):
        text = str(uri)
        if not text.startswith(URI_PREFIX):
            return await super().read_resource(uri, context)
        try:
            name = name_from_uri(text)
            data = await anyio.to_thread.run_sync(self.runtime.store.read, name)
        except (InvalidOutputName, OutputNotFound) as e:
            raise ResourceNotFoundError(str(e)) from None
        return [ReadResourceContents(content=data, mime_type=mime_type_of(name))]

    async def list_resources(self) -> list[Resource]:
        listed = await super().list_resources()
        for stored in self.runtime.store.recent(RECENT_RESOURCES):
            listed.append(Resource(uri=stored.uri, name=stored.name, mime_type=stored.mime_type, size=stored.size,
                                   description="generated output"))
        return listed


def create_server(settings: Settings, registry: ModelRegistry) -> LanternaServer:
    runtime = Runtime.create(settings, registry)
    server = LanternaServer(runtime, name="lanterna", version=lanterna_version(), instructions=INSTRUCTIONS,
                            **auth_options(settings))
    register_tools(server, runtime)
    register_resources(server, runtime)
    register_prompts(server, registry)
    return server


def lanterna_version() -> str:
    return getattr(lanterna, "__version__", "") or package_version()


def package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("lanterna")
    except metadata.PackageNotFoundError:
        return ""


def auth_options(settings: Settings) -> dict[str, Any]:
    """A bearer-token check for HTTP when a token is set (stdio never sees HTTP headers)."""
    if not settings.token:
        return {}
    from mcp.server.auth.settings import AuthSettings

    from lanterna.server.transports import StaticTokenVerifier

    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return {
        "token_verifier": StaticTokenVerifier(settings.token),
        "auth": AuthSettings(issuer_url=f"http://{host}:{settings.port}", resource_server_url=None),
    }


# ---- tools ----

def argument_message(error: ValidationError) -> str:
    parts = []
    for err in error.errors():
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] not in ("value_error", "missing") and isinstance(err.get("input"), (int, float, str)):
            value = err["input"]
            message += f" (got {value if not isinstance(value, str) else repr(value[:60])})"
        # Checks across arguments name their argument themselves ("mask: ...").
        parts.append(message if not where or message.startswith(where + ":") else f"{where}: {message}")
    return "; ".join(parts)


def as_call_result(outcome: Outcome) -> CallToolResult:
    return CallToolResult(content=outcome.content,
                          structured_content=outcome.report.model_dump(mode="json", exclude_none=True),
                          is_error=outcome.is_error)


def mcp_tool(name: str, description: str, args_model: type[BaseModel], result_model: type[BaseModel],
             run: Callable[[BaseModel, Context], Awaitable[Outcome]]) -> Callable[..., Any]:
    """A tool function whose parameters are `args_model`'s fields (flat, as agents expect them)."""
    params = []
    for field_name, f in args_model.model_fields.items():
        annotation = Annotated[(f.annotation, *f.metadata, Field(description=f.description))]
        default = inspect.Parameter.empty if f.is_required() else f.get_default(call_default_factory=True)
        params.append(inspect.Parameter(field_name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=annotation))
    params.append(inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context))
    returns = Annotated[CallToolResult, result_model]

    async def tool(**kwargs: Any) -> CallToolResult:
        ctx = kwargs.pop("ctx")
        try:
            args = args_model.model_validate(kwargs)
        except ValidationError as e:
            raise ToolError(argument_message(e)) from None
        try:
            gone = client_gone(ctx)
            outcome = await (run(args, ctx) if gone is None else unless_client_leaves(run(args, ctx), gone))
            return as_call_result(outcome)
        except (ArgumentError, InputError, QueueFull) as e:
            raise ToolError(str(e)) from None
        except ToolError:
            raise
        except Exception as e:  # a bug must still answer with a message, and leave the details in the log
            log.exception("tool %s failed", name)
            raise ToolError(f"{name} failed unexpectedly ({type(e).__name__}: {str(e)[:200]}); "
                            f"the server log has the details") from None

    tool.__name__ = name
    tool.__doc__ = description
    tool.__signature__ = inspect.Signature(params, return_annotation=returns)  # type: ignore[attr-defined]
    tool.__annotations__ = {p.name: p.annotation for p in params} | {"return": returns}
    return tool


def client_gone(ctx: Context) -> anyio.Event | None:
    """The event set when this call's HTTP client disconnects (None over stdio or in memory)."""
    try:
        request = ctx.request_context.request
    except (AttributeError, ValueError):
        return None
    scope = getattr(request, "scope", None)
    return scope.get(CLIENT_GONE) if isinstance(scope, dict) else None


T = TypeVar("T")


async def unless_client_leaves(work: Awaitable[T], gone: anyio.Event) -> T:
    """`work`'s result, or a ToolError once the client disconnects.

    Leaving cancels `work`, which the job wait turns into cancelling the job, so an engine never
    keeps generating for a client that can no longer receive the answer.
    """
    results: list[T] = []
    errors: list[Exception] = []
    async with anyio.create_task_group() as group:
        async def watch() -> None:
            await gone.wait()
            group.cancel_scope.cancel()

        group.start_soon(watch)
        try:
            results.append(await work)
        except Exception as e:  # re-raised below, outside the group, so it is not wrapped in a group
            errors.append(e)
        group.cancel_scope.cancel()
    if errors:
        raise errors[0]
    if not results:
        log.info("the client disconnected; its call was cancelled")
        raise ToolError("the client disconnected; the call and its job were cancelled")
    return results[0]


def progress_of(ctx: Context):
    async def report(progress: float, total: float | None, message: str) -> None:
        await ctx.report_progress(progress, total, message)

    return report


def register_tools(server: MCPServer, rt: Runtime) -> None:
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    creates = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                              open_world_hint=False)

    async def run_generate_image(args, ctx):
        return await generate_image.generate_image(args, rt, progress_of(ctx))

    async def run_generate_video(args, ctx):
        return await generate_video.generate_video(args, rt, progress_of(ctx))

    async def run_edit(args, ctx):
        return await edit.edit(args, rt, progress_of(ctx))

    async def run_evaluate(args, ctx):
        report = await evaluate.evaluate(args, rt)
        return Outcome(report, [summary_text(report)])

    async def run_get_job(args, ctx):
        return await jobs.get_job(args, rt, progress_of(ctx))

    async def run_cancel_job(args, ctx):
        return await jobs.cancel_job(args, rt)

    specs: Iterable[tuple[str, str, type[BaseModel], type[BaseModel], Any, ToolAnnotations]] = (
        (generate_image.NAME, generate_image.DESCRIPTION, generate_image.GenerateImageArgs,
         GenerationReport, run_generate_image, creates),
        (generate_video.NAME, generate_video.DESCRIPTION, generate_video.GenerateVideoArgs,
         GenerationReport, run_generate_video, creates),
        (edit.NAME, edit.DESCRIPTION, edit.EditArgs, GenerationReport, run_edit, creates),
        (evaluate.NAME, evaluate.DESCRIPTION, evaluate.EvaluateArgs, evaluate.EvaluationReport, run_evaluate,
         read_only),
        (jobs.GET_NAME, jobs.GET_DESCRIPTION, jobs.GetJobArgs, GenerationReport, run_get_job, read_only),
        (jobs.CANCEL_NAME, jobs.CANCEL_DESCRIPTION, jobs.CancelJobArgs, jobs.CancelReport, run_cancel_job,
         ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)),
    )
    for name, description, args_model, result_model, run, annotations in specs:
        server.add_tool(mcp_tool(name, description, args_model, result_model, run), title=TITLES[name],
                        annotations=annotations)

    async def list_models_tool() -> list_models.ModelList:
        return await anyio.to_thread.run_sync(list_models.list_models, rt)

    list_models_tool.__doc__ = list_models.DESCRIPTION
    server.add_tool(list_models_tool, name=list_models.NAME, title=TITLES[list_models.NAME], annotations=read_only)


# ---- resources ----

def register_resources(server: MCPServer, rt: Runtime) -> None:
    @server.resource(URI_PREFIX + "{name}", name="output", mime_type="application/octet-stream",
                     description="A generated file: PNG image, MP4 or GIF video, or the JSON sidecar with "
                                 "every parameter (same name, .json). Served with its own mime type.")
    def output(name: str) -> bytes:
        # Reads of lanterna://outputs/ are answered by LanternaServer.read_resource; this template
        # advertises the URI shape in resources/templates/list.
        return rt.store.read(name)
