"""Distillation methods, one module each (see kdflow.distill.registry for what a module declares).

Importing this package imports nothing heavy: the Snakefile reads the methods' declarations
without torch; ``kdflow.distill.base.get_method`` imports a method's module when a job needs it.
"""
