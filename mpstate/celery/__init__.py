"""Celery integration: step tasks that keep their run's state by themselves, and webhook resume.

``MpState(app, store)`` binds a store to a Celery app; ``PipelineTask`` is the base class of step
tasks; plain tasks published with a step identity get the same events through signal receivers.
``Reconciler`` repairs steps whose worker died or whose advancement was lost.
Needs ``pip install 'mpstate[celery]'``.
"""

from mpstate.celery.binding import RECONCILE, RESOLVE_WEBHOOK, MpState, revoke_running_steps
from mpstate.celery.canvas import STEP_ID_OPTION, is_canvas, steps_from_canvas, with_step_id
from mpstate.celery.identity import ROLE, RUN_ID, STEP_ID, StepIdentity
from mpstate.celery.reconciler import ReconcilePolicy, Reconciler, ReconcileReport, StalledStep
from mpstate.celery.results import StepResult
from mpstate.celery.settings import CelerySettings
from mpstate.celery.task import PipelineTask
from mpstate.celery.webhook import PayloadAdapter, ProviderError, WebhookOutcome, default_adapter

__all__ = [
    "RECONCILE",
    "RESOLVE_WEBHOOK",
    "ROLE",
    "RUN_ID",
    "STEP_ID",
    "STEP_ID_OPTION",
    "CelerySettings",
    "MpState",
    "PayloadAdapter",
    "PipelineTask",
    "ProviderError",
    "ReconcilePolicy",
    "ReconcileReport",
    "Reconciler",
    "StalledStep",
    "StepIdentity",
    "StepResult",
    "WebhookOutcome",
    "default_adapter",
    "is_canvas",
    "revoke_running_steps",
    "steps_from_canvas",
    "with_step_id",
]
