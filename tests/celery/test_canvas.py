"""A Celery canvas as a run's steps (``mpstate.celery.canvas``): pure, no broker, no worker.

Each test builds the canvas from a real Celery app's registered tasks and asserts the exact steps:
ids, operations, inputs and ``dependsOn``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery, chain, chord, group
from celery.canvas import Signature, _chain

from mpstate.celery import PipelineTask
from mpstate.celery.canvas import STEP_ID_OPTION, is_canvas, steps_from_canvas, with_step_id
from mpstate.errors import InvalidInputError, InvalidPipelineError
from mpstate.graph import validate_graph
from mpstate.models import StepState

Tasks = SimpleNamespace


@pytest.fixture
def t() -> Tasks:
    """A Celery app (memory broker, never used) with a few registered tasks, and the tasks."""
    app = Celery("t", broker="memory://", set_as_current=False)

    @app.task(shared=False, name="image.generate")
    def generate(prompt: str = "", size: int = 512) -> None: ...

    @app.task(shared=False, bind=True, name="image.upscale")
    def upscale(self: Any, factor: int = 2) -> None: ...

    @app.task(shared=False, name="image.caption")
    def caption(language: str = "en") -> None: ...

    @app.task(shared=False, bind=True, base=PipelineTask, name="video.render")
    def render(self: Any, fps: int = 24, **options: Any) -> None: ...

    @app.task(shared=False, name="publish")
    def publish(channel: str = "web") -> None: ...

    @app.task(shared=False, name="legacy.positional")
    def positional(value: int, /) -> None: ...

    @app.task(shared=False, name="legacy.spread")
    def spread(*values: int) -> None: ...

    return Tasks(
        app=app,
        generate=generate,
        upscale=upscale,
        caption=caption,
        render=render,
        publish=publish,
        positional=positional,
        spread=spread,
    )


def step(
    step_id: str, operation: str, inputs: dict[str, Any] | None = None, after: tuple[str, ...] = ()
) -> dict[str, Any]:
    """One expected step."""
    return {
        "stepId": step_id,
        "operation": operation,
        "inputs": inputs or {},
        "dependsOn": list(after),
    }


def refusal(t: Tasks, canvas: Any) -> InvalidPipelineError:
    with pytest.raises(InvalidPipelineError) as caught:
        steps_from_canvas(t.app, canvas)
    return caught.value


# -- shapes ------------------------------------------------------------------------------------


def test_a_single_signature_is_one_step_that_starts_at_once(t: Tasks) -> None:
    assert steps_from_canvas(t.app, t.generate.si("a bike")) == [
        step("image.generate", "image.generate", {"prompt": "a bike"})
    ]


def test_a_chain_runs_each_link_after_the_one_before(t: Tasks) -> None:
    canvas = chain(t.generate.si("a bike"), t.upscale.si(4), t.publish.si())
    assert steps_from_canvas(t.app, canvas) == [
        step("image.generate", "image.generate", {"prompt": "a bike"}),
        step("image.upscale", "image.upscale", {"factor": 4}, after=("image.generate",)),
        step("publish", "publish", after=("image.upscale",)),
    ]


def test_a_group_runs_its_members_side_by_side(t: Tasks) -> None:
    canvas = group(t.generate.si("a bike"), t.caption.si("fr"))
    assert steps_from_canvas(t.app, canvas) == [
        step("image.generate", "image.generate", {"prompt": "a bike"}),
        step("image.caption", "image.caption", {"language": "fr"}),
    ]
    lazy = group(t.caption.si(language) for language in ("en", "fr"))  # a generator of members
    assert steps_from_canvas(t.app, lazy) == [
        step("image.caption", "image.caption", {"language": "en"}),
        step("image.caption-2", "image.caption", {"language": "fr"}),
    ]


def test_a_chord_body_waits_for_every_header_step(t: Tasks) -> None:
    canvas = chord([t.generate.si("a bike"), t.caption.si()], t.publish.si("shop"))
    assert steps_from_canvas(t.app, canvas) == [
        step("image.generate", "image.generate", {"prompt": "a bike"}),
        step("image.caption", "image.caption"),
        step("publish", "publish", {"channel": "shop"}, after=("image.generate", "image.caption")),
    ]


def test_a_group_between_two_tasks_waits_for_the_first_and_the_last_waits_for_all(
    t: Tasks,
) -> None:
    canvas = t.generate.si("a bike") | group(t.upscale.si(), t.caption.si()) | t.publish.si()
    # Celery turns ``group | task`` inside a chain into a chord (celery/canvas.py _chain.__or__).
    assert isinstance(canvas.tasks[-1], chord)
    assert steps_from_canvas(t.app, canvas) == [
        step("image.generate", "image.generate", {"prompt": "a bike"}),
        step("image.upscale", "image.upscale", after=("image.generate",)),
        step("image.caption", "image.caption", after=("image.generate",)),
        step("publish", "publish", after=("image.upscale", "image.caption")),
    ]


def test_a_group_of_chains_runs_each_chain_in_order_and_the_chains_side_by_side(
    t: Tasks,
) -> None:
    canvas = group(
        chain(t.generate.si("a bike"), t.upscale.si()),
        chain(t.caption.si(), t.publish.si()),
    )
    assert steps_from_canvas(t.app, canvas) == [
        step("image.generate", "image.generate", {"prompt": "a bike"}),
        step("image.upscale", "image.upscale", after=("image.generate",)),
        step("image.caption", "image.caption"),
        step("publish", "publish", after=("image.caption",)),
    ]


def test_a_chord_inside_a_chain_waits_for_the_link_before_it_and_the_next_link_waits_for_its_body(
    t: Tasks,
) -> None:
    canvas = _chain(
        t.generate.si("a bike"),
        chord([t.upscale.si(), t.caption.si()], t.render.si()),
        t.publish.si(),
    )
    assert steps_from_canvas(t.app, canvas) == [
        step("image.generate", "image.generate", {"prompt": "a bike"}),
        step("image.upscale", "image.upscale", after=("image.generate",)),
        step("image.caption", "image.caption", after=("image.generate",)),
        step("video.render", "video.render", after=("image.upscale", "image.caption")),
        step("publish", "publish", after=("video.render",)),
    ]


def test_a_chain_ending_in_a_group_ends_with_every_member(t: Tasks) -> None:
    canvas = chain(t.generate.si("a bike"), group(t.upscale.si(), t.caption.si()))
    assert steps_from_canvas(t.app, canvas) == [
        step("image.generate", "image.generate", {"prompt": "a bike"}),
        step("image.upscale", "image.upscale", after=("image.generate",)),
        step("image.caption", "image.caption", after=("image.generate",)),
    ]
    then = chord([canvas, t.render.si()], t.publish.si())
    assert steps_from_canvas(t.app, then)[-1] == step(
        "publish", "publish", after=("image.upscale", "image.caption", "video.render")
    )


def test_a_chord_header_of_chains_waits_for_the_last_link_of_each(t: Tasks) -> None:
    canvas = chord([chain(t.generate.si("a bike"), t.upscale.si()), t.caption.si()], t.publish.si())
    assert steps_from_canvas(t.app, canvas) == [
        step("image.generate", "image.generate", {"prompt": "a bike"}),
        step("image.upscale", "image.upscale", after=("image.generate",)),
        step("image.caption", "image.caption"),
        step("publish", "publish", after=("image.upscale", "image.caption")),
    ]


def test_a_chord_whose_body_is_a_chain_runs_the_chain_after_the_header(t: Tasks) -> None:
    canvas = chord([t.generate.si("a"), t.caption.si()], chain(t.render.si(), t.publish.si()))
    assert steps_from_canvas(t.app, canvas) == [
        step("image.generate", "image.generate", {"prompt": "a"}),
        step("image.caption", "image.caption"),
        step("video.render", "video.render", after=("image.generate", "image.caption")),
        step("publish", "publish", after=("video.render",)),
    ]


def test_a_chord_header_given_as_a_chain_runs_its_tasks_side_by_side_as_celery_does(
    t: Tasks,
) -> None:
    # chord() keeps a chain header's tasks as a list of parallel members (canvas.py _maybe_group).
    canvas = chord(chain(t.generate.si("a bike"), t.caption.si()), t.publish.si())
    assert steps_from_canvas(t.app, canvas) == [
        step("image.generate", "image.generate", {"prompt": "a bike"}),
        step("image.caption", "image.caption"),
        step("publish", "publish", after=("image.generate", "image.caption")),
    ]


def test_a_one_task_group_and_nested_groups_and_chains_are_plain_steps(t: Tasks) -> None:
    canvas = _chain(
        _chain(t.generate.si("a bike"), group(t.upscale.si())),
        group(group(t.caption.si(), t.render.si()), t.publish.si()),
    )
    assert steps_from_canvas(t.app, canvas) == [
        step("image.generate", "image.generate", {"prompt": "a bike"}),
        step("image.upscale", "image.upscale", after=("image.generate",)),
        step("image.caption", "image.caption", after=("image.upscale",)),
        step("video.render", "video.render", after=("image.upscale",)),
        step("publish", "publish", after=("image.upscale",)),
    ]


def test_the_steps_are_valid_step_states_with_an_explicit_graph(t: Tasks) -> None:
    steps = steps_from_canvas(t.app, t.generate.si("a") | t.upscale.si())
    states = [StepState.model_validate(s) for s in steps]
    validate_graph(states)
    assert [s.depends_on for s in states] == [[], ["image.generate"]]


# -- step ids ----------------------------------------------------------------------------------


def test_a_task_used_more_than_once_gets_numbered_step_ids_in_canvas_order(t: Tasks) -> None:
    canvas = chain(
        group(t.generate.si("front"), t.generate.si("back")), t.generate.si("side")
    ) | chord([t.upscale.si(), t.upscale.si(3)], t.publish.si())
    assert steps_from_canvas(t.app, canvas) == [
        step("image.generate", "image.generate", {"prompt": "front"}),
        step("image.generate-2", "image.generate", {"prompt": "back"}),
        step(
            "image.generate-3",
            "image.generate",
            {"prompt": "side"},
            after=("image.generate", "image.generate-2"),
        ),
        step("image.upscale", "image.upscale", after=("image.generate-3",)),
        step("image.upscale-2", "image.upscale", {"factor": 3}, after=("image.generate-3",)),
        step("publish", "publish", after=("image.upscale", "image.upscale-2")),
    ]


def test_an_explicit_step_id_names_the_step(t: Tasks) -> None:
    canvas = chain(
        t.generate.si("a bike").set(mpstate_step_id="draft"),
        with_step_id(t.upscale.si(), "big"),
    )
    assert steps_from_canvas(t.app, canvas) == [
        step("draft", "image.generate", {"prompt": "a bike"}),
        step("big", "image.upscale", after=("draft",)),
    ]
    assert STEP_ID_OPTION == "mpstate_step_id"


def test_an_automatic_step_id_skips_the_explicit_ones(t: Tasks) -> None:
    canvas = group(
        t.generate.si("front"),
        t.caption.si().set(mpstate_step_id="image.generate"),
        t.generate.si("back").set(mpstate_step_id="image.generate-3"),
        t.generate.si("side"),
    )
    assert steps_from_canvas(t.app, canvas) == [
        step("image.generate-2", "image.generate", {"prompt": "front"}),
        step("image.generate", "image.caption"),
        step("image.generate-3", "image.generate", {"prompt": "back"}),
        step("image.generate-4", "image.generate", {"prompt": "side"}),
    ]


def test_explicit_step_ids_used_twice_are_refused_naming_them(t: Tasks) -> None:
    canvas = group(
        with_step_id(t.generate.si("a"), "shot"),
        with_step_id(t.generate.si("b"), "shot"),
        with_step_id(t.caption.si(), "text"),
        with_step_id(t.caption.si(), "text"),
    )
    error = refusal(t, canvas)
    assert str(error) == "step ids set more than once: shot, text"
    assert error.step_ids == ("shot", "text")


@pytest.mark.parametrize("bad_id", ["", 7])
def test_an_explicit_step_id_that_is_not_a_non_empty_string_is_refused(
    t: Tasks, bad_id: Any
) -> None:
    error = refusal(t, t.generate.si("a").set(mpstate_step_id=bad_id))
    assert "mpstate_step_id of image.generate('a') must be a non-empty string" in str(error)
    with pytest.raises(InvalidPipelineError, match="non-empty string"):
        with_step_id(t.generate.si("a"), bad_id)


# -- inputs ------------------------------------------------------------------------------------


def test_positional_args_are_bound_to_the_task_parameter_names(t: Tasks) -> None:
    canvas = chain(
        t.generate.si("a bike", 1024),  # plain task
        t.upscale.si(3),  # bind=True: self is not a parameter
        t.render.si(30, codec="h264"),  # PipelineTask, extra kwargs go to **options
    )
    assert steps_from_canvas(t.app, canvas) == [
        step("image.generate", "image.generate", {"prompt": "a bike", "size": 1024}),
        step("image.upscale", "image.upscale", {"factor": 3}, after=("image.generate",)),
        step(
            "video.render",
            "video.render",
            {"fps": 30, "codec": "h264"},
            after=("image.upscale",),
        ),
    ]


def test_kwargs_become_the_inputs_and_missing_parameters_are_left_to_run_defaults(
    t: Tasks,
) -> None:
    assert steps_from_canvas(t.app, t.generate.s(size=256)) == [
        step("image.generate", "image.generate", {"size": 256})
    ]


@pytest.mark.parametrize(
    ("build", "problem"),
    [
        (lambda t: t.generate.si("a", 1, 2), "too many positional arguments"),
        (lambda t: t.generate.si("a", prompt="b"), "multiple values for argument 'prompt'"),
        (lambda t: t.generate.si(colour="red"), "got an unexpected keyword argument 'colour'"),
    ],
)
def test_arguments_that_do_not_fit_the_task_are_refused_naming_the_step(
    t: Tasks, build: Callable[[Tasks], Any], problem: str
) -> None:
    error = refusal(t, chain(t.caption.si(), build(t)))
    assert str(error) == (
        "step 'image.generate': the arguments do not fit image.generate"
        f"(prompt='', size=512): {problem}"
    )
    assert error.step_ids == ("image.generate",)


@pytest.mark.parametrize(
    ("build", "step_id", "parameter"),
    [
        (lambda t: t.positional.si(1), "legacy.positional", "value"),
        (lambda t: t.spread.si(1, 2), "legacy.spread", "values"),
    ],
)
def test_arguments_that_can_only_be_passed_by_position_are_refused(
    t: Tasks, build: Callable[[Tasks], Any], step_id: str, parameter: str
) -> None:
    error = refusal(t, build(t))
    assert f"step {step_id!r}: the arguments do not fit" in str(error)
    assert f"{parameter} takes arguments by position only" in str(error)
    assert error.step_ids == (step_id,)


def test_inputs_that_cannot_be_stored_are_refused(t: Tasks) -> None:
    error = refusal(t, t.generate.si("a", float("nan")))
    assert str(error).startswith("step 'image.generate' inputs cannot be stored")
    assert error.step_ids == ("image.generate",)


def test_the_step_identity_kwargs_are_refused_as_inputs(t: Tasks) -> None:
    error = refusal(t, t.render.si(mpstate_step_id="render"))
    assert str(error) == (
        "step 'video.render' passes mpstate_step_id, which mpstate sets itself; name a step "
        "with sig.set(mpstate_step_id=...)"
    )


# -- .s() and .si() ----------------------------------------------------------------------------


def test_a_mutable_signature_after_a_step_is_refused_saying_what_to_write_instead(
    t: Tasks,
) -> None:
    error = refusal(t, t.generate.si("a bike") | t.upscale.s())
    assert str(error) == (
        "step 'image.upscale' is a mutable signature (.s()) after another step: Celery would "
        "pass it the previous result, mpstate passes data through self.artifacts/self.outputs; "
        "write image.upscale.si(...) (immutable) instead"
    )
    assert error.step_ids == ("image.upscale",)


@pytest.mark.parametrize(
    "build",
    [
        lambda t: chain(t.generate.si("a"), group(t.upscale.si(), t.caption.s())),
        lambda t: chord([t.generate.si("a"), t.upscale.si()], t.caption.s()),
        lambda t: chain(t.generate.si("a"), chord([t.caption.s()], t.publish.si())),
    ],
    ids=["group member after a task", "chord body", "chord header after a task"],
)
def test_every_mutable_signature_that_would_receive_a_parent_result_is_refused(
    t: Tasks, build: Callable[[Tasks], Any]
) -> None:
    error = refusal(t, build(t))
    assert error.step_ids == ("image.caption",)
    assert "is a mutable signature (.s()) after another step" in str(error)


def test_a_mutable_signature_with_nothing_before_it_is_accepted(t: Tasks) -> None:
    canvas = chord([t.generate.s("a"), chain(t.caption.s(), t.upscale.si())], t.publish.si())
    assert steps_from_canvas(t.app, canvas) == [
        step("image.generate", "image.generate", {"prompt": "a"}),
        step("image.caption", "image.caption"),
        step("image.upscale", "image.upscale", after=("image.caption",)),
        step("publish", "publish", after=("image.generate", "image.upscale")),
    ]


# -- other refusals ----------------------------------------------------------------------------


def test_a_task_not_registered_in_the_app_is_refused(t: Tasks) -> None:
    error = refusal(t, t.generate.si("a") | Signature("image.upscael", immutable=True))
    assert str(error) == (
        "step 'image.upscael': task 'image.upscael' is not registered in this Celery app (is "
        "the module that defines it imported?)"
    )
    assert error.step_ids == ("image.upscael",)


@pytest.mark.parametrize(
    ("build", "options"),
    [
        (lambda t: t.generate.si("a").set(countdown=10), "countdown"),
        (lambda t: t.generate.si("a").set(queue="gpu", priority=9), "priority, queue"),
        (lambda t: t.generate.si("a").set(task_id="fixed"), "task_id"),
        (lambda t: t.generate.si("a").on_error(t.caption.si()), "link_error"),
        (
            lambda t: t.generate.si("a").set(expires=60, mpstate_step_id="draft"),
            "expires",
        ),
    ],
)
def test_signature_options_mpstate_cannot_honour_are_refused(
    t: Tasks, build: Callable[[Tasks], Any], options: str
) -> None:
    error = refusal(t, build(t))
    assert f"sets {options}, which mpstate cannot honour" in str(error)
    assert len(error.step_ids) == 1


def test_a_link_is_refused_too(t: Tasks) -> None:
    sig = t.generate.si("a")
    sig.link(t.caption.si())
    assert refusal(t, sig).step_ids == ("image.generate",)


@pytest.mark.parametrize(
    ("build", "kind"),
    [
        (lambda t: chain(t.generate.si("a"), t.caption.si()).set(queue="gpu"), "chain"),
        (lambda t: group(t.generate.si("a"), t.caption.si(), countdown=5), "group"),
        (lambda t: chord([t.generate.si("a")], t.caption.si(), expires=9), "chord"),
    ],
)
def test_options_on_a_chain_group_or_chord_are_refused(
    t: Tasks, build: Callable[[Tasks], Any], kind: str
) -> None:
    assert f"a {kind} sets" in str(refusal(t, build(t)))


def test_arguments_of_a_chord_itself_are_refused(t: Tasks) -> None:
    canvas = chord([t.generate.si("a")], t.caption.si(), kwargs={"kwargs": {"size": 3}})
    assert "a chord has arguments of its own" in str(refusal(t, canvas))


@pytest.mark.parametrize(
    ("build", "kind"),
    [
        (lambda t: t.generate.chunks([("a",), ("b",)], 1), "chunks"),
        (lambda t: t.generate.map(["a", "b"]), "xmap"),
        (lambda t: t.generate.starmap([("a",), ("b",)]), "xstarmap"),
    ],
)
def test_chunks_xmap_and_xstarmap_are_refused(
    t: Tasks, build: Callable[[Tasks], Any], kind: str
) -> None:
    assert str(refusal(t, chain(t.caption.si(), build(t)))) == (
        f"{kind} runs many calls of image.generate inside one task, which mpstate cannot "
        "track as steps; write a group of image.generate.si(...) signatures instead"
    )


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda t: group([]), "an empty group has no step to run"),
        (lambda t: chain(), "an empty chain has no step to run"),
        (lambda t: chord([], t.publish.si()), "an empty chord header has no step to run"),
        (lambda t: chord([t.generate.si("a")]), "a chord without a body"),
    ],
)
def test_empty_groups_chains_and_chords_without_a_body_are_refused(
    t: Tasks, build: Callable[[Tasks], Any], message: str
) -> None:
    assert str(refusal(t, build(t))).startswith(message)


@pytest.mark.parametrize(
    "canvas",
    [
        "image.generate",
        [{"stepId": "a", "operation": "image.generate"}],
        {"stepId": "a", "operation": "image.generate"},
        None,
    ],
)
def test_something_that_is_not_a_signature_is_refused(t: Tasks, canvas: Any) -> None:
    assert str(refusal(t, canvas)).startswith("expected a Celery signature or canvas, got ")


def test_a_member_that_is_not_a_signature_is_refused(t: Tasks) -> None:
    error = refusal(t, group([t.generate.si("a"), 42]))
    assert str(error) == "expected a Celery signature or canvas, got int: 42"


def test_a_celery_builtin_task_is_not_a_step(t: Tasks) -> None:
    error = refusal(t, {"task": "celery.group", "args": [], "kwargs": {}, "options": {}})
    assert "is Celery's built-in task 'celery.group', not a step" in str(error)


REFUSALS: list[Callable[[Tasks], Any]] = [
    lambda t: "not a canvas",
    lambda t: group([]),
    lambda t: chord([t.generate.si("a")]),
    lambda t: t.generate.chunks([("a",)], 1),
    lambda t: t.generate.si("a") | t.upscale.s(),
    lambda t: Signature("nope"),
    lambda t: t.generate.si("a").set(countdown=1),
    lambda t: t.generate.si("a", 1, 2),
    lambda t: t.generate.si(float("inf")),
    lambda t: group(with_step_id(t.generate.si(), "x"), with_step_id(t.caption.si(), "x")),
    lambda t: t.generate.si().set(mpstate_step_id="\ud800"),
]


@pytest.mark.parametrize("build", REFUSALS)
def test_every_refusal_is_an_invalid_pipeline_error_and_so_an_invalid_input_error(
    t: Tasks, build: Callable[[Tasks], Any]
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        steps_from_canvas(t.app, build(t))
    assert type(caught.value) is InvalidPipelineError
    assert isinstance(caught.value, ValueError)


# -- dict form and purity ----------------------------------------------------------------------


def test_a_dict_serialised_canvas_gives_the_same_steps_and_is_left_unchanged(t: Tasks) -> None:
    canvas = chain(
        with_step_id(t.generate.si("a bike"), "draft"),
        group(t.upscale.si(2), t.caption.si("fr")),
        t.publish.si(),
    )
    serialised = json.loads(json.dumps(canvas))
    before = copy.deepcopy(serialised)
    expected = [
        step("draft", "image.generate", {"prompt": "a bike"}),
        step("image.upscale", "image.upscale", {"factor": 2}, after=("draft",)),
        step("image.caption", "image.caption", {"language": "fr"}, after=("draft",)),
        step("publish", "publish", after=("image.upscale", "image.caption")),
    ]
    assert steps_from_canvas(t.app, serialised) == expected
    assert steps_from_canvas(t.app, Signature.from_dict(serialised, app=t.app)) == expected
    assert serialised == before
    assert steps_from_canvas(t.app, canvas) == expected


def test_is_canvas_recognises_signatures_and_their_dict_form_but_not_step_lists(
    t: Tasks,
) -> None:
    sig = t.generate.si("a") | t.caption.si()
    assert is_canvas(sig)
    assert is_canvas(t.generate.s())
    assert is_canvas(t.generate.chunks([("a",)], 1))  # a canvas, refused by steps_from_canvas
    assert is_canvas(json.loads(json.dumps(sig)))
    assert not is_canvas([{"stepId": "a", "operation": "image.generate"}])
    assert not is_canvas({"stepId": "a", "operation": "image.generate"})
    assert not is_canvas({"task": 1, "args": [], "kwargs": {}, "options": {}})
    assert not is_canvas("image.generate")
    assert not is_canvas(None)
