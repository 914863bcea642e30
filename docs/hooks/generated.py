"""MkDocs hook: the parts of the docs that would drift if written by hand are rendered from the
code at build time.

A page asks for a table with an HTML comment on a line of its own, ``<!-- generated: NAME -->``,
and the hook replaces that line with the table:

- ``redis-keys``: every key pattern ``mpstate.redis.keys.RedisKeys`` builds, with its type and
  purpose from the layout in ``keys.py``'s docstring (which ``tests/redis/test_layout.py`` checks
  against a real server, type included). A method whose key the layout does not describe, or a
  layout line no method builds, fails the build.
- ``reply-codes``: ``mpstate.changes.Written`` and ``Refusal``, the codes the Lua scripts return.
- ``lua-scripts``: each file in ``mpstate/redis/scripts/`` with the first line of its header.
- ``celery-settings``: every field of ``mpstate.celery.CelerySettings`` (``app.conf.mpstate_*``)
  with its default and its ``#:`` comment.
- ``cli-env``: every environment variable the ``mpstate`` command reads, from its click options.
- ``cli-help``: the ``--help`` of ``mpstate`` and of every subcommand.
- ``event-kinds``: every event kind of ``mpstate.events`` with its fields, camelCase.
- ``provider-presets``: each preset provider's signature scheme and payload adapter.

An unknown name fails the build too (``mkdocs build --strict`` is what ``make docs`` runs).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)


class GeneratedDocsError(Exception):
    """The code and what a generated table says about it disagree."""


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace each ``<!-- generated: NAME -->`` line with its table."""
    return _MARKER.sub(lambda found: render(found.group(1)), markdown)


def render(name: str) -> str:
    try:
        generator = GENERATORS[name]
    except KeyError:
        raise GeneratedDocsError(
            f"no generated table {name!r}; known: {', '.join(sorted(GENERATORS))}"
        ) from None
    return "\n".join(generator())


def _cell(text: str) -> str:
    """Docstring text as one Markdown table cell (reST ``code`` becomes `code`)."""
    return text.replace("``", "`").replace("|", "\\|").replace("\n", " ")


# -- the Redis key layout -------------------------------------------------------------------------

_LAYOUT_LINE = re.compile(
    r"^\s{4}(mp:(?:<[^>]*>|\S)+)\s+(string|hash|list|set|zset|stream)\s+(.+)$"
)


def documented_layout() -> dict[str, tuple[str, str]]:
    """The layout block of ``keys.py``'s docstring: ``{pattern: (type, purpose)}``."""
    import mpstate.redis.keys  # noqa: PLC0415 - loaded at build time only

    doc = mpstate.redis.keys.__doc__ or ""
    start = doc.find("Layout (prefix ``mp``)::")
    if start < 0:
        raise GeneratedDocsError("the layout block of mpstate/redis/keys.py was not found")
    layout = {}
    for line in doc[start:].splitlines()[1:]:
        found = _LAYOUT_LINE.match(line)
        if found:
            pattern, kind, purpose = found.groups()
            layout[pattern] = (kind, purpose.replace("\\\\", "\\"))
    return layout


def built_patterns() -> Iterator[tuple[str, str]]:
    """``(code that builds it, pattern)`` for every key ``RedisKeys("mp")`` builds, ids shown as
    placeholders (``R`` a run, ``T`` a tenant, ``K`` an idempotency key, ``P`` a provider,
    ``J`` a job, ``D`` a delivery, ``<s>`` a status)."""
    from mpstate.models import PipelineRunStatus  # noqa: PLC0415
    from mpstate.redis.keys import IndexGroup, RedisKeys  # noqa: PLC0415

    keys = RedisKeys("mp")
    status = PipelineRunStatus.RUNNING

    def with_status(key: str) -> str:
        return key.replace(f":status:{status.value}", ":status:<s>")

    def any_shard(key: str) -> str:
        """A global shard's key with its tag (``all.<n>.<salt>``) as the placeholder."""
        return re.sub(r"\{all\.\d+\.\d+\}", "{all.<n>.<salt>}", key)

    calls: dict[str, Callable[[], str]] = {
        "run(R)": lambda: keys.run("R"),
        "events(R)": lambda: keys.events("R"),
        "lock(R)": lambda: keys.lock("R"),
        "lock_wake(R)": lambda: keys.lock_wake("R"),
        "operations(R)": lambda: keys.operations("R"),
        "operation(R, op_id)": lambda: keys.operation("R", "<op id>"),
        "void(R)": lambda: keys.void("R"),
        "idempotency(T, K)": lambda: keys.idempotency("T", "K"),
        "job(P, J)": lambda: keys.job("P", "J"),
        "job_providers(J)": lambda: keys.job_providers("J"),
        "delivery(P, D)": lambda: keys.delivery("P", "D"),
        "unmatched()": keys.unmatched,
        "unmatched_counts()": keys.unmatched_counts,
        "global_group(R).everything": lambda: any_shard(keys.global_group("R").everything),
        "global_group(R).status(s)": lambda: any_shard(
            with_status(keys.global_group("R").status(status))
        ),
        "global_group(R).entries": lambda: any_shard(keys.global_group("R").entries),
        "by_tenant(T)": lambda: keys.by_tenant("T"),
        "tenant_group(T).status(s)": lambda: with_status(keys.tenant_group("T").status(status)),
        "tenant_group(T).entries": lambda: keys.tenant_group("T").entries,
        "by_idempotency_key(K)": lambda: keys.by_idempotency_key("K"),
        "idempotency_group(K).entries": lambda: keys.idempotency_group("K").entries,
    }
    # Every public method that builds one key must be listed above: a new key cannot be missed.
    covered = {call.split("(")[0] for call in calls}
    builders = {
        name
        for name, member in inspect.getmembers(RedisKeys, inspect.isfunction)
        if not name.startswith("_")
        and inspect.signature(member).return_annotation in ("str", str)
        and name != "pattern"
    }
    missing = builders - covered
    if missing:
        raise GeneratedDocsError(
            f"RedisKeys builds keys the docs generator does not render: {sorted(missing)} "
            "(add them to docs/hooks/generated.py and to the layout in keys.py's docstring)"
        )
    assert {"everything", "tenant_id", "tracks_status"} <= {
        f.name for f in dataclasses.fields(IndexGroup)
    }
    for call, build in calls.items():
        yield call, build()


def redis_keys() -> Iterator[str]:
    layout = documented_layout()
    built = list(built_patterns())
    undocumented = [pattern for _, pattern in built if pattern not in layout]
    if undocumented:
        raise GeneratedDocsError(
            f"keys.py's layout docstring does not describe {undocumented}: describe each there"
        )
    unbuilt = sorted(set(layout) - {pattern for _, pattern in built})
    if unbuilt:
        raise GeneratedDocsError(f"keys.py's layout describes keys no method builds: {unbuilt}")
    yield "| key (prefix `mp`) | type | holds | built by `RedisKeys.` |"
    yield "|---|---|---|---|"
    for call, pattern in built:
        kind, purpose = layout[pattern]
        yield f"| `{pattern}` | {kind} | {_cell(purpose)} | `{call}` |"


# -- the Lua protocol ---------------------------------------------------------------------------


def reply_codes() -> Iterator[str]:
    from mpstate.changes import Refusal, Written  # noqa: PLC0415

    source = Path(inspect.getfile(Refusal))
    written = _member_comments(source, "Written")
    refused = _member_comments(source, "Refusal")
    yield "| code | name | means, or reaches a caller as |"
    yield "|---:|---|---|"
    for member in Written:
        means = _cell(written.get(member.name, ""))
        yield f"| {member.value} | `Written.{member.name}` | {means} |"
    for member in Refusal:
        reaches = _cell(refused.get(member.name) or _error_of(member))
        yield f"| {member.value} | `Refusal.{member.name}` | {reaches} |"


def _error_of(member: Any) -> str:
    from mpstate.changes import refusal_error  # noqa: PLC0415

    error = refusal_error(
        member,
        "R",
        expected_version=1,
        actual_version=2,
        status="completed",
        new_status="running",
        idempotency_key="K",
        existing_run_id="R0",
        fence=1,
        current_fence=2,
    )
    return f"`{type(error).__name__}`"


def lua_scripts() -> Iterator[str]:
    from mpstate.redis.scripts import SCRIPT_NAMES, lua_script  # noqa: PLC0415

    yield "| script | what it does (first line of its header) |"
    yield "|---|---|"
    for name in SCRIPT_NAMES:
        script = lua_script(name)
        first = script.source.splitlines()[0].removeprefix("--[[").strip()
        summary = first.split(":", 1)[1].strip() if first.startswith(f"{name}:") else first
        yield f"| `{script.file_name}` | {_cell(summary)} |"


# -- configuration --------------------------------------------------------------------------------


def celery_settings() -> Iterator[str]:
    from mpstate.celery.settings import PREFIX, CelerySettings  # noqa: PLC0415

    comments = _member_comments(Path(inspect.getfile(CelerySettings)), "CelerySettings")
    yield "| `app.conf` key | default | meaning |"
    yield "|---|---|---|"
    groups: list[tuple[list[str], str]] = []
    defaults = CelerySettings()
    for field in dataclasses.fields(CelerySettings):
        comment = comments.get(field.name)
        if comment is not None:
            groups.append(([field.name], comment))
        elif groups:  # no comment of its own: described with the fields before it
            groups[-1][0].append(field.name)
        else:
            raise GeneratedDocsError(f"CelerySettings.{field.name} has no #: comment")
    for names, comment in groups:
        keys = ", ".join(f"`{PREFIX}{name}`" for name in names)
        values = ", ".join(_default(getattr(defaults, name)) for name in names)
        yield f"| {keys} | {values} | {_cell(comment)} |"


def _default(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if hasattr(value, "items"):
        value = dict(value.items())  # type: ignore[attr-defined]
    return f"`{value!r}`"


def _member_comments(path: Path, class_name: str) -> dict[str, str]:
    """``#:`` comments above the fields or members of one class, by name."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source)
    comments: dict[str, str] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ClassDef) and node.name == class_name):
            continue
        for statement in node.body:
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                name = statement.target.id
            elif (
                isinstance(statement, ast.Assign)
                and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)
            ):
                name = statement.targets[0].id
            else:
                continue
            block = []
            row = statement.lineno - 2
            while row >= 0 and lines[row].strip().startswith("#:"):
                block.insert(0, lines[row].strip().removeprefix("#:").strip())
                row -= 1
            if block:
                comments[name] = " ".join(block)
    return comments


def cli_env() -> Iterator[str]:
    import click  # noqa: PLC0415

    from mpstate.cli.group import cli  # noqa: PLC0415

    found: dict[str, list[str]] = {}

    def visit(command: click.Command, path: str) -> None:
        for param in command.params:
            envvars = param.envvar or []
            for envvar in [envvars] if isinstance(envvars, str) else envvars:
                option = "/".join(getattr(param, "opts", [param.name or ""]))
                found.setdefault(envvar, []).append(f"`{path} {option}`")
        if isinstance(command, click.Group):
            for name, sub in sorted(command.commands.items()):
                visit(sub, f"{path} {name}")

    visit(cli, "mpstate")
    if not found:
        raise GeneratedDocsError("no environment variable found on the mpstate command")
    yield "| variable | sets |"
    yield "|---|---|"
    for envvar in sorted(found):
        yield f"| `{envvar}` | {', '.join(sorted(set(found[envvar])))} |"


def event_kinds() -> Iterator[str]:
    """Every event kind (``mpstate.events.EVENT_TYPES``) with its own fields, camelCase."""
    from mpstate.events import EVENT_TYPES  # noqa: PLC0415

    common = {"runId", "at", "seq", "meta", "kind"}
    yield "| kind | class | fields (besides `runId`, `at`, `seq`, `meta`) |"
    yield "|---|---|---|"
    for event_type in EVENT_TYPES:
        kind = event_type.model_fields["kind"].default
        own = []
        for name, info in event_type.model_fields.items():
            alias = info.alias or name
            if alias in common:
                continue
            annotation = _type_name(info.annotation)
            optional = "" if info.is_required() else " (optional)"
            own.append(f"`{alias}`: {annotation}{optional}")
        yield f"| `{kind}` | `{event_type.__name__}` | {', '.join(own) or '—'} |"


def _type_name(annotation: Any) -> str:
    import types  # noqa: PLC0415
    from typing import Annotated, Literal, Union, get_args, get_origin  # noqa: PLC0415

    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " \\| ".join(f'"{arg}"' for arg in args)
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type_name(arg) for arg in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(arg) for arg in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def provider_presets() -> Iterator[str]:
    """Each preset provider name, the signature scheme it gets and its payload adapter."""
    from mpstate.celery.adapters import ADAPTERS  # noqa: PLC0415
    from mpstate.webhooks.providers import PRESET_SCHEMES  # noqa: PLC0415
    from mpstate.webhooks.schemes import SCHEME_NAMES  # noqa: PLC0415

    if set(PRESET_SCHEMES) != set(ADAPTERS):
        raise GeneratedDocsError(
            f"presets with a scheme {sorted(PRESET_SCHEMES)} and with an adapter "
            f"{sorted(ADAPTERS)} differ: describe the difference by hand"
        )
    yield "| provider name | signature scheme | payload adapter |"
    yield "|---|---|---|"
    for name, scheme in PRESET_SCHEMES.items():
        adapter = ADAPTERS[name]
        label = getattr(adapter, "__qualname__", type(adapter).__name__).split(".")[0]
        yield f"| `{name}` | `{scheme}` | `{label}` |"
    yield "| any other name | `mpstate` | `default_adapter` |"
    yield ""
    names = ", ".join(f"`{name}`" for name in (*SCHEME_NAMES, "capability"))
    yield f"Schemes any name can be given: {names}."


def cli_help() -> Iterator[str]:
    """``--help`` of the ``mpstate`` command and of each subcommand, as click prints it."""
    import click  # noqa: PLC0415

    from mpstate.cli.group import cli  # noqa: PLC0415

    def visit(command: click.Command, parent: click.Context | None, name: str) -> Iterator[str]:
        ctx = click.Context(
            command, info_name=name, parent=parent, terminal_width=100, max_content_width=100
        )
        path = ctx.command_path
        yield f"### `{path}`"
        yield ""
        yield "```text"
        yield command.get_help(ctx)
        yield "```"
        yield ""
        if isinstance(command, click.Group):
            for sub_name, sub in sorted(command.commands.items()):
                if not sub.hidden:
                    yield from visit(sub, ctx, sub_name)

    yield from visit(cli, None, "mpstate")


GENERATORS: dict[str, Callable[[], Iterator[str]]] = {
    "redis-keys": redis_keys,
    "reply-codes": reply_codes,
    "lua-scripts": lua_scripts,
    "celery-settings": celery_settings,
    "cli-env": cli_env,
    "cli-help": cli_help,
    "event-kinds": event_kinds,
    "provider-presets": provider_presets,
}
