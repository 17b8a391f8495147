"""Pre-trained students converted for downstream engines (``mmseg``: mmsegmentation backbones).

An export renames a student's timm weights to the engine's names, loads them strictly into the
engine's own backbone before anything is written, and records every key's fate in a report.
"""
