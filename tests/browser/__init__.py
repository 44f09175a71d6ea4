"""Browser tests. A package, so this folder's conftest.py does not shadow tests/conftest.py as module ``conftest``."""
