"""The `factory` fixture: one real local factory for the session (`up` in a temp home, `down` at the end).

It yields a `core_factory.Factory` (`.home: FactoryHome`, `.info`: the JSON `up` printed).
"""

from core_factory import factory  # noqa: F401  (a fixture, found by pytest by its name)
