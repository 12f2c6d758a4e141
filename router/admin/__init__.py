"""The admin HTTP API under /admin, one router per resource; `router.app` includes them.

deps.py holds what every route shares (the bearer-token check, the gateway dependency, error
models); experiments.py, actions.py, reports.py, audit.py, adapters.py and flywheel.py the routes.
"""
