"""Rules: the rules file (loader.py), templates (templates.py), matching (matching.py),
turning a matched event into a Revor payload (build.py) and the never-twice guards (guards.py)."""
