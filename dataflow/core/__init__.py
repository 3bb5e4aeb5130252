"""The core vocabulary every layer shares: messages, metric names, errors and small helpers.

Nothing here imports the rest of the project (``lint-imports`` checks it): the app
(:mod:`dataflow.flow`, the CLI) and the components (:mod:`connectors`, :mod:`operators`)
depend on it, never the other way round.
"""
