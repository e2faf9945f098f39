"""Thin entry points: each ``pipelines/<stage>.py`` runs one stage, ``full.py`` all of them."""
