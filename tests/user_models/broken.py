"""A model file that fails to import (for the error-message tests)."""

import a_module_that_does_not_exist  # noqa: F401


def make():
    raise AssertionError("never reached")
