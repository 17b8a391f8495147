"""The ``scratch`` baseline: no pre-training; every transfer job starts from a seeded random init."""

DECLARATION = {"name": "scratch", "student": "none"}
