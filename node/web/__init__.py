"""Web console, REST API and Prometheus metrics of the node (FastAPI + Jinja2): ``node.web.app.create_app`` and
``serve_in_thread``. Reads the store and the stages' public functions; nothing below imports it."""
