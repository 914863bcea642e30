import pytest
from photo.tasks import app

pytest_plugins = ["mpstate.testing.plugin"]


@pytest.fixture
def mpstate_celery_app():
    return app
