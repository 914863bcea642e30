"""A Celery canvas as a run's steps, so ``MpState.start_run`` takes what Celery users write.

::

    canvas = generate.si("a bike") | group(upscale.si(), caption.si()) | publish.si()
    steps_from_canvas(app, canvas)
    # four steps: generate; upscale and caption after generate; publish after both

The canvas only describes the graph. mpstate publishes every step itself
(``send_task(step.operation, kwargs=step.inputs)``) and steps pass data through
``self.artifacts`` / ``self.outputs``, never through Celery's parent results. Hence the rules:

* Shapes: a signature, ``chain``, ``group``, ``chord`` and any nesting of them, objects or their
  dict form (a serialised canvas). A chain link waits for every exit step of the link before it,
  group members run side by side, a chord body waits for every exit step of its header. Celery's
  own normalisation is taken as built: ``a | group(b, c) | d`` is a chain ending in a chord, a
  one-task group is its task, a chain in a chain is flat, and a chord header given as a chain is
  a list of parallel tasks (Celery runs it so). ``chunks``, ``xmap`` and ``xstarmap`` (one task
  running many calls, invisible as steps) are refused, and so are empty groups, chains and chord
  headers and a chord without a body: none has a step to run or wait for.
* Step ids: the task name, made unique with ``-2``, ``-3``... in canvas order, or the user's own
  with ``sig.set(mpstate_step_id="render")`` (or ``with_step_id(sig, "render")``). Explicit ids
  must be unique; an automatic id skips them, so naming one step never renames another.
* Inputs: the signature's kwargs, positional args bound to the task's parameter names
  (``generate.si("a bike")`` gives ``{"prompt": "a bike"}``), because mpstate passes inputs by
  name. They must be storable; missing parameters are allowed (``start_run(inputs=...)`` gives
  every step defaults).
* ``.s()`` after another step is refused: Celery would prepend the previous result to its
  arguments, mpstate does not, so the task would run without it. Write ``.si()``. A step with
  nothing before it may be either.
* Options: none but ``mpstate_step_id``. mpstate publishes each step itself, so ``countdown``,
  ``link``, ``task_id``, ``queue``... would be dropped silently; routing and limits belong on the
  task (``@app.task(queue=...)``) or in ``task_routes``, which ``send_task`` applies. A chain's,
  group's or chord's own options and arguments (passed on to its tasks by Celery) are refused too.
* Every task must be registered in the app: a typo would otherwise fail only when its step is
  published, in the middle of the run.

Each refusal is an ``InvalidPipelineError`` naming the step, raised before anything is created.
Pure: no broker, no store, no publishing; the canvas is not modified.
"""

from __future__ import annotations

import copy
import inspect
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.canvas import Signature, _chain, chord, chunks, group, xmap, xstarmap
from pydantic import ValidationError

from mpstate.celery.identity import RUN_ID, STEP_ID
from mpstate.errors import InvalidPipelineError
from mpstate.fields import ensure_storable
from mpstate.graph import validate_graph
from mpstate.models import StepState

__all__ = ["STEP_ID_OPTION", "is_canvas", "steps_from_canvas", "with_step_id"]

#: The signature option that names a step; the same name as the message header that carries a
#: step's id to its task, since it holds the same value.
STEP_ID_OPTION = STEP_ID

#: Keys of a signature's dict form (``dict(sig)``, celery/canvas.py ``Signature.__init__``).
_SIGNATURE_KEYS = frozenset({"task", "args", "kwargs", "options"})

#: Celery's own tasks (celery/app/builtins.py): canvas machinery, never a step. A plain signature
#: of one is a serialised canvas that lost its ``subtask_type``.
_BUILTIN_TASKS = frozenset(
    {
        "celery.accumulate",
        "celery.backend_cleanup",
        "celery.chain",
        "celery.chord",
        "celery.chord_unlock",
        "celery.chunks",
        "celery.group",
        "celery.map",
        "celery.starmap",
    }
)

#: Canvas types that run many calls of a task inside one task (celery/canvas.py).
_MANY_CALLS_IN_ONE_TASK = (chunks, xmap, xstarmap)

_BY_POSITION_ONLY = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL)


@dataclass(frozen=True, slots=True)
class _Leaf:
    """A task signature of the canvas and the leaves (by index) it waits for."""

    signature: Signature
    explicit_id: str | None
    after: tuple[int, ...]


# -- public API --------------------------------------------------------------------------------


def is_canvas(value: object) -> bool:
    """Whether ``value`` is a Celery signature or canvas, as an object or in its dict form."""
    if isinstance(value, Signature):
        return True
    return (
        isinstance(value, Mapping)
        and _SIGNATURE_KEYS.issubset(value.keys())
        and isinstance(value.get("task"), str)
    )


def with_step_id(signature: Signature, step_id: str) -> Signature:
    """Name ``signature``'s step: ``signature.set(mpstate_step_id=step_id)``, returned likewise."""
    if not isinstance(step_id, str) or not step_id:
        raise InvalidPipelineError(f"a step id must be a non-empty string, got {step_id!r}")
    return signature.set(**{STEP_ID_OPTION: step_id})


def steps_from_canvas(app: Celery, canvas: Signature | Mapping[str, Any]) -> list[dict[str, Any]]:
    """The steps of ``canvas`` in canvas order: ``stepId``, ``operation``, ``inputs`` and
    ``dependsOn`` (``[]`` for a step that starts at once), ready for ``start_run``.

    Raises ``InvalidPipelineError`` for anything mpstate could not run as the canvas says (see
    the module docstring).
    """
    leaves: list[_Leaf] = []
    _walk(app, canvas, (), leaves)
    step_ids = _assign_ids(leaves)
    steps = [
        _step(app, leaf, step_id, [step_ids[index] for index in leaf.after])
        for leaf, step_id in zip(leaves, step_ids, strict=True)
    ]
    _validate(steps)
    return steps


# -- the canvas as leaves ----------------------------------------------------------------------


def _walk(
    app: Celery, node: object, after: tuple[int, ...], leaves: list[_Leaf]
) -> tuple[int, ...]:
    """Add ``node``'s task signatures to ``leaves``, its first ones waiting for ``after``.

    Returns the leaves that end ``node`` (its exits): what a step after it waits for.
    """
    sig = _signature_of(app, node)
    if isinstance(sig, _MANY_CALLS_IN_ONE_TASK):
        inner = sig.kwargs.get("task")
        name = inner.get("task") if isinstance(inner, Mapping) else inner
        raise InvalidPipelineError(
            f"{type(sig).__name__} runs many calls of {name} inside one task, which mpstate "
            f"cannot track as steps; write a group of {name}.si(...) signatures instead"
        )
    if isinstance(sig, chord):
        return _walk_chord(app, sig, after, leaves)
    if isinstance(sig, group):
        _check_container(sig, "group")
        return _walk_parallel(app, _members(sig, sig.tasks, "group"), after, leaves)
    if isinstance(sig, _chain):  # ``chain`` is a subclass; ``from_dict`` builds ``_chain``
        _check_container(sig, "chain")
        for link in _members(sig, sig.tasks, "chain"):
            after = _walk(app, link, after, leaves)
        return after
    if sig.get("subtask_type") is not None:
        raise InvalidPipelineError(
            f"unsupported canvas type {sig.get('subtask_type')!r}: {_describe(sig)}"
        )
    leaves.append(_Leaf(sig, _explicit_id(sig), after))
    return (len(leaves) - 1,)


def _walk_chord(
    app: Celery, sig: Signature, after: tuple[int, ...], leaves: list[_Leaf]
) -> tuple[int, ...]:
    """A chord: its header in parallel, then its body waiting for every exit of the header."""
    _check_container(sig, "chord")
    if sig.body is None:
        raise InvalidPipelineError(
            f"a chord without a body: nothing waits for its header: {_describe(sig)}"
        )
    header = sig.tasks
    # ``chord()`` keeps its header as a list (celery/canvas.py ``_maybe_group``, which also
    # takes a chain's tasks as parallel members); a group stored by hand is unwrapped the same.
    if isinstance(header, group):
        header = header.tasks
    exits = _walk_parallel(app, _members(sig, header, "chord header"), after, leaves)
    return _walk(app, sig.body, exits, leaves)


def _walk_parallel(
    app: Celery, members: Iterable[object], after: tuple[int, ...], leaves: list[_Leaf]
) -> tuple[int, ...]:
    """Members side by side, each waiting for ``after``; the union of their exits."""
    exits: list[int] = []
    for member in members:
        exits.extend(_walk(app, member, after, leaves))
    return tuple(exits)


def _signature_of(app: Celery, node: object) -> Signature:
    """``node`` as a ``Signature`` object (a dict form rebuilt from a copy of it)."""
    if isinstance(node, Signature):
        return node
    if not (isinstance(node, Mapping) and is_canvas(node)):
        raise InvalidPipelineError(
            f"expected a Celery signature or canvas, got {type(node).__name__}: {node!r:.80}"
        )
    try:
        # A copy: ``group.from_dict`` rewrites the task list of the dict it is given in place
        # (celery/canvas.py), and the caller's canvas is not ours to change.
        return Signature.from_dict(copy.deepcopy(dict(node)), app=app)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidPipelineError(f"not a Celery signature ({exc!r}): {node!r:.80}") from exc


def _members(sig: Signature, tasks: Iterable[object] | None, kind: str) -> list[object]:
    """The members of a group, chain or chord header; refused when there are none."""
    members = list(tasks or ())  # may be a ``regen`` over a generator (celery/utils/functional)
    if not members:
        raise InvalidPipelineError(f"an empty {kind} has no step to run: {_describe(sig)}")
    return members


def _check_container(sig: Signature, kind: str) -> None:
    """Refuse a chain's, group's or chord's own options and arguments: Celery passes them on
    to its tasks when it runs the canvas, and mpstate never runs it."""
    options = sorted(sig.get("options") or {})
    if options:
        raise InvalidPipelineError(
            f"a {kind} sets {', '.join(options)}, which mpstate cannot honour (it publishes "
            f"each step itself): {_describe(sig)}"
        )
    chord_kwargs = sig.kwargs.get("kwargs") if kind == "chord" else None
    if sig.get("args") or chord_kwargs:
        raise InvalidPipelineError(
            f"a {kind} has arguments of its own, which Celery would pass on to its tasks; give "
            f"each task its own: {_describe(sig)}"
        )


def _explicit_id(sig: Signature) -> str | None:
    """The step id the user set on ``sig`` (``mpstate_step_id`` option), or None."""
    value = (sig.get("options") or {}).get(STEP_ID_OPTION)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidPipelineError(
            f"{STEP_ID_OPTION} of {_describe(sig)} must be a non-empty string, got {value!r}"
        )
    return value


def _describe(sig: Signature) -> str:
    text = repr(sig)
    return text if len(text) <= 80 else text[:77] + "..."


# -- leaves as steps ---------------------------------------------------------------------------


def _assign_ids(leaves: list[_Leaf]) -> list[str]:
    """Each leaf's step id: its explicit one, else its task name made unique in canvas order."""
    explicit = Counter(leaf.explicit_id for leaf in leaves if leaf.explicit_id is not None)
    duplicates = tuple(sorted(step_id for step_id, count in explicit.items() if count > 1))
    if duplicates:
        raise InvalidPipelineError(
            f"step ids set more than once: {', '.join(duplicates)}", step_ids=duplicates
        )
    taken = set(explicit)
    next_suffix: dict[str, int] = {}
    step_ids: list[str] = []
    for leaf in leaves:
        step_id = leaf.explicit_id
        if step_id is None:
            name = str(leaf.signature.get("task"))
            step_id = name
            while step_id in taken:
                suffix = next_suffix.get(name, 2)
                next_suffix[name] = suffix + 1
                step_id = f"{name}-{suffix}"
            taken.add(step_id)
        step_ids.append(step_id)
    return step_ids


def _step(app: Celery, leaf: _Leaf, step_id: str, depends_on: list[str]) -> dict[str, Any]:
    """One step in its camelCase form, after the checks that need its id."""
    sig = leaf.signature
    name = sig.get("task")
    task = _registered_task(app, name, step_id)
    unsupported = sorted(set(sig.get("options") or {}) - {STEP_ID_OPTION})
    if unsupported:
        raise InvalidPipelineError(
            f"step {step_id!r} sets {', '.join(unsupported)}, which mpstate cannot honour: it "
            f"publishes each step itself and reads no signature option but {STEP_ID_OPTION}; "
            "set routing and limits on the task (@app.task(queue=...)) or in task_routes",
            step_ids=(step_id,),
        )
    if depends_on and not sig.get("immutable", False):
        raise InvalidPipelineError(
            f"step {step_id!r} is a mutable signature (.s()) after another step: Celery would "
            "pass it the previous result, mpstate passes data through "
            f"self.artifacts/self.outputs; write {name}.si(...) (immutable) instead",
            step_ids=(step_id,),
        )
    inputs = _inputs(task, sig, step_id)
    return {"stepId": step_id, "operation": name, "inputs": inputs, "dependsOn": depends_on}


def _registered_task(app: Celery, name: object, step_id: str) -> Any:
    """The app's task named ``name``; refused when it is Celery's own or not registered."""
    if name in _BUILTIN_TASKS:
        raise InvalidPipelineError(
            f"step {step_id!r} is Celery's built-in task {name!r}, not a step (a canvas in dict "
            "form that lost its subtask_type?)",
            step_ids=(step_id,),
        )
    task = app.tasks.get(name) if isinstance(name, str) else None
    if task is None:
        raise InvalidPipelineError(
            f"step {step_id!r}: task {name!r} is not registered in this Celery app (is the "
            "module that defines it imported?)",
            step_ids=(step_id,),
        )
    return task


def _inputs(task: Any, sig: Signature, step_id: str) -> dict[str, Any]:
    """The step's inputs: ``sig``'s kwargs and its positional args bound to parameter names."""
    kwargs = dict(sig.get("kwargs") or {})
    reserved = sorted({RUN_ID, STEP_ID}.intersection(kwargs))
    if reserved:
        raise InvalidPipelineError(
            f"step {step_id!r} passes {', '.join(reserved)}, which mpstate sets itself; name a "
            f"step with sig.set({STEP_ID_OPTION}=...)",
            step_ids=(step_id,),
        )
    inputs = _bind(task, tuple(sig.get("args") or ()), kwargs, step_id)
    try:
        ensure_storable(inputs, f"step {step_id!r} inputs")
    except ValueError as exc:
        raise InvalidPipelineError(str(exc), step_ids=(step_id,)) from exc
    return inputs


def _bind(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], step_id: str) -> dict[str, Any]:
    """The call's arguments by parameter name, as mpstate passes them (kwargs only).

    ``task.run`` is the decorated function, bound to the task when ``bind=True`` (celery/app/
    base.py ``_task_from_fun``), so its signature already leaves ``self`` out.
    """
    try:
        parameters = inspect.signature(task.run)
    except (TypeError, ValueError):  # not introspectable: kwargs pass as they are
        if args:
            raise InvalidPipelineError(
                f"step {step_id!r}: positional arguments cannot be bound to names, the "
                f"signature of {task.name} is unknown; pass them by name",
                step_ids=(step_id,),
            ) from None
        return kwargs
    where = f"step {step_id!r}: the arguments do not fit {task.name}{_unannotated(parameters)}"
    try:
        bound = parameters.bind_partial(*args, **kwargs)
    except TypeError as exc:
        raise InvalidPipelineError(f"{where}: {exc}", step_ids=(step_id,)) from exc
    inputs: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = parameters.parameters[name].kind
        if kind in _BY_POSITION_ONLY:
            raise InvalidPipelineError(
                f"{where}: {name} takes arguments by position only, and mpstate passes a step's "
                "inputs by name",
                step_ids=(step_id,),
            )
        if kind is inspect.Parameter.VAR_KEYWORD:
            inputs.update(value)
        else:
            inputs[name] = value
    return inputs


def _unannotated(parameters: inspect.Signature) -> inspect.Signature:
    """``parameters`` without annotations, for messages: ``(prompt, size=512)``."""
    return parameters.replace(
        parameters=[p.replace(annotation=p.empty) for p in parameters.parameters.values()],
        return_annotation=inspect.Signature.empty,
    )


def _validate(steps: list[dict[str, Any]]) -> None:
    """Each step as a ``StepState``, and the graph as ``mpstate.graph`` checks it."""
    states: list[StepState] = []
    for step in steps:
        try:
            states.append(StepState.model_validate(step))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()
            )
            raise InvalidPipelineError(
                f"step {step['stepId']!r} cannot be stored: {problems}", step_ids=(step["stepId"],)
            ) from exc
    validate_graph(states)
