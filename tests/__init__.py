"""graine's tests, a package: shared helpers live in tests.support (`from tests.support import tiny_run`).

pytest (import mode prepend) puts the repository root on sys.path, so `tests.*` and graine's own packages
both import from it. Child processes that import `tests.*` get the root on their PYTHONPATH (or run with
it as their working directory, as `python -m tests.support....`).
"""
