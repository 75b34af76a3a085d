"""Where requests wait, run and finish: the queue every inference replica shares (see base.py)."""
