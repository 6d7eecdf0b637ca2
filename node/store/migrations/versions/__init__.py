"""One module per schema revision, oldest first: ``NNNN_slug.py`` (revision id ``NNNN``). Never edit a released one."""
