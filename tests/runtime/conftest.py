"""Every runtime test runs on every family (tests/helpers/models.py `FAMILIES`, filtered by
REROUTE_TEST_FAMILIES); a module that needs fewer overrides ``family``."""

import pytest
from tests.helpers.models import FAMILIES


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def model(family):
    return family.make_model()
