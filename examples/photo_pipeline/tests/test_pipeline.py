"""The pipeline on a real worker thread and an in-memory store (mpstate's pytest plugin)."""

from photo.pipelines import start_product_photo
from photo.receiver import receiver_for

from mpstate.testing import assert_event_kinds, deliver, sign_webhook, wait_for_status


def test_a_product_photo_run_completes(mpstate_celery):
    run = start_product_photo(mpstate_celery, "a red bicycle")
    done = wait_for_status(mpstate_celery, run.run_id, "completed")
    assert done.step("upscale").artifact_ids == ["img-a-red-bicycle-4k"]
    assert done.cost_usd == 0.06


def test_each_step_starts_and_completes_once(mpstate_celery):
    run = start_product_photo(mpstate_celery, "a blue kettle")
    done = wait_for_status(mpstate_celery, run.run_id, "completed")
    assert_event_kinds(
        done, ["step-started", "step-progress", "step-completed"], step_id="generate"
    )
    assert_event_kinds(done, ["step-started", "step-completed"], step_id="upscale")


def test_the_same_order_starts_one_run(mpstate_celery):
    first = start_product_photo(mpstate_celery, "a lamp", order_id="order-7")
    again = start_product_photo(mpstate_celery, "a lamp", order_id="order-7")
    assert again.run_id == first.run_id
    wait_for_status(mpstate_celery, first.run_id, "completed")


def test_the_providers_signed_callback_resumes_and_completes_the_run(mpstate_celery):
    run = start_product_photo(mpstate_celery, "a green chair", video=True)
    waiting = wait_for_status(mpstate_celery, run.run_id, "suspended")
    job = waiting.step("video").external_jobs[-1]

    callback = sign_webhook(
        "video",
        {"jobId": job.job_id, "status": "succeeded", "artifactIds": ["vid-1"], "costUsd": 0.5},
        "test-secret",
    )
    answer = deliver(receiver_for(mpstate_celery.app, "test-secret"), callback)
    assert answer.status_code == 202, answer.text

    done = wait_for_status(mpstate_celery, run.run_id, "completed")
    assert done.step("video").artifact_ids == ["vid-1"]
    assert_event_kinds(done, ["step-started", "step-waiting", "step-completed"], step_id="video")


def test_a_callback_with_a_wrong_signature_is_refused(mpstate_celery):
    callback = sign_webhook("video", {"jobId": "vid-x", "status": "succeeded"}, "wrong-secret")
    answer = deliver(receiver_for(mpstate_celery.app, "test-secret"), callback)
    assert answer.status_code == 401
