"""The commands as a user runs them. Their fixtures are those of the packages they drive: the
diagnose tests' healthy and incident datasets, and the data tests' own image cache (autouse: a
command never writes to the user's ~/.cache)."""
from tests.data.conftest import cache_dir  # noqa: F401
from tests.diagnose.conftest import healthy, healthy_dir, incident  # noqa: F401
